"""FLOP report for a model config and a set of shapes: exact counts per sample and per step
(forward, backward, total) per layer type, beside the 6*N*D estimate and what a padded
batch would execute.

Each distinct shape is counted once, exactly, by ``count_step`` on a batch of one (real
index tensors, ``compute=False`` by default so even ViT-L takes seconds on a CPU). The
rest is exact integer arithmetic on those counts, which tests/test_flops_model.py checks
against direct counts of whole batches:

* per step (B samples of one shape) = B * per sample + per call, where "per call" is the
  PI-resize of the patch-embedding weight (once per forward, whatever the batch size);
* a packed mixed batch = the sum of its samples' counts + per call (each sample counted
  through the list path PackedViT takes for mixed resolutions);
* the same batch padded to its largest sample (every image zero-padded to the largest
  height and width, every sequence to the longest): B * (count of the largest) + per call,
  since attention and every token-wise layer then run on the padded length.

6*N*D: N is Kaplan et al.'s non-embedding parameter count (every parameter except the
patch embedding, the positional embedding and token-embedding tables; biases and the
output head included), D the tokens processed (image patches, or the sequence length).
The same estimate with every parameter (as Hoffmann et al. count N) is in the JSON as
``six_nd_all_params``.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .model import LAYER_TYPES, StepFlops, count_step, num_params

_OP = "adaptkern.flops.flops_report"
_VIT = dict(kind="vit", in_chans=3, num_classes=1000, base_patch_size=16, pos_grid=(14, 14), mlp_ratio=4.0,
            image_size=224, shapes=(8, 16, 32))
MODELS = {
    "vit-ti": dict(_VIT, dim=192, depth=12, num_heads=3),
    "vit-s": dict(_VIT, dim=384, depth=12, num_heads=6),
    "vit-b": dict(_VIT, dim=768, depth=12, num_heads=12),
    "vit-l": dict(_VIT, dim=1024, depth=24, num_heads=16),
    # adaptkern demo's models (adaptkern/train/tasks.py, demo.py presets).
    "vit-demo": dict(kind="vit", in_chans=3, num_classes=10, dim=64, depth=2, num_heads=4, mlp_ratio=2.0,
                     base_patch_size=8, pos_grid=(8, 8), image_size=32, shapes=(4, 8, 16)),
    "lm-demo": dict(kind="lm", vocab_size=256, dim=64, depth=2, num_heads=4, mlp_ratio=4.0, shapes=(16, 64, 256)),
    "lm-small": dict(kind="lm", vocab_size=32000, dim=512, depth=8, num_heads=8, mlp_ratio=4.0,
                     shapes=(256, 1024, 4096)),
}
_BUILD_KEYS = {"vit": ("num_classes", "in_chans", "dim", "depth", "num_heads", "mlp_ratio", "base_patch_size",
                       "pos_grid"),
               "lm": ("vocab_size", "dim", "depth", "num_heads", "mlp_ratio")}


@dataclass
class ShapeCount:
    """Exact counts of one shape: ``sample`` per sample (without per-call work), ``per_call``
    once per forward, ``tokens`` per sample."""

    label: str
    tokens: int
    sample: StepFlops
    per_call: StepFlops

    def batch(self, batch_size: int) -> StepFlops:
        return batch_size * self.sample + self.per_call


@dataclass
class MixedBatch:
    """A packed batch of different shapes against the same batch padded to its largest."""

    label: str
    samples: list  # per-sample shape labels
    padded_label: str
    tokens: int
    padded_tokens: int
    exact: StepFlops
    padded: StepFlops


@dataclass
class FlopReport:
    model: str
    config: dict
    params: int
    params_non_embedding: int
    batch_size: int
    shapes: list = field(default_factory=list)  # ShapeCount
    mixed: list = field(default_factory=list)  # MixedBatch

    def six_nd(self, tokens: int, *, all_params: bool = False) -> int:
        return 6 * (self.params if all_params else self.params_non_embedding) * tokens

    def to_dict(self) -> dict:
        def shape_dict(s):
            step = s.batch(self.batch_size)
            return {"shape": s.label, "tokens_per_sample": s.tokens, "per_sample": s.sample.to_dict(),
                    "per_call": s.per_call.to_dict(), "per_step": step.to_dict(),
                    "six_nd_per_sample": self.six_nd(s.tokens),
                    "six_nd_all_params_per_sample": self.six_nd(s.tokens, all_params=True),
                    "exact_over_six_nd": s.sample.total / self.six_nd(s.tokens)}

        def mixed_dict(m):
            return {"shape": m.label, "samples": m.samples, "padded_to": m.padded_label, "tokens": m.tokens,
                    "padded_tokens": m.padded_tokens, "exact": m.exact.to_dict(), "padded": m.padded.to_dict(),
                    "six_nd": self.six_nd(m.tokens), "padded_over_exact": _ratio(m.padded.total, m.exact.total),
                    "padded_over_exact_by_layer": {k: _ratio(m.padded.by_layer()[k], v)
                                                   for k, v in m.exact.by_layer().items()}}

        return {"format": "adaptkern.flops.report", "version": 1, "model": self.model, "config": self.config,
                "params": self.params, "params_non_embedding": self.params_non_embedding,
                "six_nd_convention": "N = non-embedding parameters (Kaplan et al.); D = tokens",
                "batch_size": self.batch_size, "layer_types": list(LAYER_TYPES),
                "shapes": [shape_dict(s) for s in self.shapes], "mixed": [mixed_dict(m) for m in self.mixed]}


def _ratio(a, b):
    return a / b if b else None


def model_config(model) -> tuple:
    """(name, config) from a preset name in ``MODELS`` or a config dict (``kind`` "vit" or
    "lm" plus the constructor arguments of PackedViT / PackedLM)."""
    if isinstance(model, str):
        if model not in MODELS:
            raise ValueError(f"{_OP}: model must be one of {sorted(MODELS)} or a config dict, got {model!r}")
        return model, dict(MODELS[model])
    if not isinstance(model, dict) or model.get("kind") not in _BUILD_KEYS:
        raise ValueError(f"{_OP}: model config must be a dict with kind 'vit' or 'lm', got {model!r}")
    return f"custom-{model['kind']}", dict(model)


def build_model(config: dict):
    from ..models import PackedLM, PackedViT

    cls = PackedViT if config["kind"] == "vit" else PackedLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return cls(**{k: config[k] for k in _BUILD_KEYS[config["kind"]] if k in config})


def _pair(name, value):
    """An int or "HxW" / (H, W) -> (H, W)."""
    if isinstance(value, str) and "x" in value:
        value = tuple(value.split("x", 1))
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    try:
        pair = tuple(int(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"{_OP}: {name} must hold ints or 'HxW' sizes, got {value!r}") from None
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{_OP}: {name} must hold sizes >= 1, got {value!r}")
    return pair


def _ints(name, values, minimum=1):
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"{_OP}: {name} must be ints >= {minimum}, got {v!r}")
        out.append(v)
    if not out:
        raise ValueError(f"{_OP}: {name} must not be empty")
    return out


class _Counter:
    """Counts of one model, cached per (size, patch) or context length."""

    def __init__(self, config, compute):
        self.config, self.compute = config, compute
        self.model = build_model(config)
        self.cache = {}

    def vit(self, size, patch, packed=False) -> ShapeCount:
        """One image of ``size`` as a (1, C, H, W) batch, or with ``packed`` as a one-image
        list: the path PackedViT takes for a mixed-resolution batch."""
        key = (size, patch, packed)
        if key not in self.cache:
            model, chans = self.model, self.config["in_chans"]
            model.patch_embed.prewarm([patch])  # fill the resize cache outside the counted step
            images = [torch.zeros(chans, *size)] if packed else torch.zeros(1, chans, *size)
            labels = torch.zeros(1, dtype=torch.long)
            counted = count_step(model, lambda: F.cross_entropy(model(images, patch), labels), compute=self.compute)
            per_call = counted.only({"patch_resize"})
            tokens = (size[0] // patch) * (size[1] // patch)
            self.cache[key] = ShapeCount(f"p{patch}@{size[0]}x{size[1]}", tokens, counted - per_call, per_call)
        return self.cache[key]

    def lm(self, length) -> ShapeCount:
        if length not in self.cache:
            model = self.model
            tokens = torch.zeros(1, length, dtype=torch.long)

            def loss():
                return F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())

            self.cache[length] = ShapeCount(f"ctx{length}", length, count_step(model, loss, compute=self.compute),
                                            StepFlops())
        return self.cache[length]


def _mixed(counts, padded, label) -> MixedBatch:
    exact = sum((c.sample for c in counts), StepFlops()) + padded.per_call
    return MixedBatch(label, [c.label for c in counts], padded.label, sum(c.tokens for c in counts),
                      len(counts) * padded.tokens, exact, padded.batch(len(counts)))


def flops_report(model="vit-b", *, patch_sizes=None, image_size=None, context_lengths=None, batch_size=1,
                 resolutions=None, mixed_lengths=None, compute=False, progress=False) -> FlopReport:
    """Exact FLOPs of ``model`` (a name in ``MODELS`` or a config dict) at every shape.

    ViT: ``patch_sizes`` (default the preset's) at ``image_size`` (int or (H, W)); with
    ``resolutions`` (ints or (H, W)) also a mixed-resolution batch of ``batch_size``
    images (at least one per resolution) cycling through them, at every patch size. LM:
    ``context_lengths``; with ``mixed_lengths`` a packed batch of sequences of those
    lengths, cycled likewise. Per-step counts are for ``batch_size`` samples of each shape.
    ``compute``: see ``count_step``. ``progress``: a tqdm bar over the shapes counted.
    """
    name, config = model_config(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{_OP}: batch_size must be an int >= 1, got {batch_size!r}")
    vit = config["kind"] == "vit"
    wrong = (context_lengths, "context_lengths", mixed_lengths, "mixed_lengths") if vit else \
        (patch_sizes, "patch_sizes", image_size, "image_size", resolutions, "resolutions")
    for value, arg in zip(wrong[::2], wrong[1::2]):
        if value is not None:
            raise ValueError(f"{_OP}: {arg} does not apply to a {config['kind']} model ({name})")
    if vit:
        shapes = _ints("patch_sizes", config["shapes"] if patch_sizes is None else patch_sizes)
        size = _pair("image_size", config["image_size"] if image_size is None else image_size)
        sizes = [_pair("resolutions", r) for r in resolutions or ()]
        for p in shapes:
            for arg, s in [("image_size", size)] + [("resolutions", s) for s in sizes]:
                if s[0] % p or s[1] % p:
                    raise ValueError(f"{_OP}: {arg} {s[0]}x{s[1]} is not divisible by patch size {p} (patch_sizes)")
        config.update(image_size=size, shapes=tuple(shapes))
    else:
        shapes = _ints("context_lengths", config["shapes"] if context_lengths is None else context_lengths)
        sizes = _ints("mixed_lengths", mixed_lengths) if mixed_lengths else []
        config.update(shapes=tuple(shapes))
    batch = [sizes[i % len(sizes)] for i in range(max(batch_size, len(sizes)))] if sizes else []
    largest = (max(h for h, _ in batch), max(w for _, w in batch)) if vit and batch else max(batch, default=None)
    if vit:
        keys = [(size, p, False) for p in shapes] + [(s, p, True) for p in shapes for s in batch] + \
            [(largest, p, False) for p in shapes if batch]
    else:
        keys = list(shapes) + batch + ([largest] if batch else [])
    counter = _Counter(config, compute)
    keys = list(dict.fromkeys(keys))
    if progress:
        from tqdm.auto import tqdm

        keys = tqdm(keys, desc=f"counting {name}", unit="shape", leave=False)
    for key in keys:
        counter.vit(*key) if vit else counter.lm(key)
    report = FlopReport(name, config, num_params(counter.model), num_params(counter.model, embedding=False),
                        batch_size)
    if vit:
        report.shapes = [counter.vit(size, p) for p in shapes]
        for p in shapes if batch else ():
            report.mixed.append(_mixed([counter.vit(s, p, packed=True) for s in batch], counter.vit(largest, p),
                                       f"p{p} mixed"))
    else:
        report.shapes = [counter.lm(n) for n in shapes]
        if batch:
            report.mixed.append(_mixed([counter.lm(n) for n in batch], counter.lm(largest), "mixed"))
    return report


def si(value) -> str:
    """1234567 -> '1.235 M' (FLOP counts to 4 significant digits)."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    exp = min(max(int(math.floor(math.log10(abs(value)) / 3)), 0), 6)
    return f"{value / 10 ** (3 * exp):.4g}{' ' + 'kMGTPE'[exp - 1] if exp else ''}"


def _table(rows) -> list:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]


def _describe(report) -> str:
    c = report.config
    if c["kind"] == "vit":
        return (f"PackedViT: dim {c['dim']}, depth {c['depth']}, heads {c['num_heads']}, MLP ratio {c['mlp_ratio']}, "
                f"base patch {c['base_patch_size']}, pos grid {c['pos_grid'][0]}x{c['pos_grid'][1]}, "
                f"{c['num_classes']} classes")
    return (f"PackedLM: vocab {c['vocab_size']}, dim {c['dim']}, depth {c['depth']}, heads {c['num_heads']}, "
            f"MLP ratio {c['mlp_ratio']}, causal")


def format_report(report: FlopReport) -> str:
    """The report as plain-text tables (FLOPs with SI prefixes; the JSON holds exact ints)."""
    b = report.batch_size
    lines = [f"adaptkern flops: {report.model} ({_describe(report)})",
             f"parameters: {si(report.params)} total; N = {si(report.params_non_embedding)} non-embedding "
             "(6*N*D uses this N, Kaplan et al.; D = tokens)",
             "exact: FlopCounterMode's formulas over one training step (forward + backward; the optimizer is "
             "excluded)", ""]
    if report.mixed:  # the batch asked for comes first; the per-shape tables below explain it
        lines += _mixed_tables(report) + ["", "each shape alone:", ""]
    rows = [["per sample", "tokens", "forward", "backward", "total", "6*N*D", "exact/6ND", "attention"]]
    for s in report.shapes:
        six = report.six_nd(s.tokens)
        share = s.sample.by_layer()["attention"] / s.sample.total
        rows.append([s.label, str(s.tokens), si(s.sample.forward), si(s.sample.backward), si(s.sample.total),
                     si(six), f"{s.sample.total / six:.3f}", f"{share:.1%}"])
    lines += _table(rows) + [""]
    per_call = any(s.per_call.total for s in report.shapes)
    rows = [[f"per step (batch {b})", "forward", "backward", "total"]]
    rows += [[s.label, si(s.batch(b).forward), si(s.batch(b).backward), si(s.batch(b).total)] for s in report.shapes]
    lines += _table(rows)
    if per_call:
        lines.append(f"  (= {b} x per sample + the patch-embedding PI-resize, once per call)")
    lines += ["", "per layer type, forward + backward per sample"]
    used = [lay for lay in LAYER_TYPES if any(s.sample.by_layer()[lay] for s in report.shapes)]
    rows = [["layer"] + [s.label for s in report.shapes]]
    rows += [[lay] + [si(s.sample.by_layer()[lay]) for s in report.shapes] for lay in used]
    rows.append(["total"] + [si(s.sample.total) for s in report.shapes])
    if per_call:
        rows.append(["patch_resize, per call"] + [si(s.per_call.total) for s in report.shapes])
    lines += _table(rows)
    return "\n".join(lines)


def _mixed_tables(report: FlopReport) -> list:
    """One table per mixed batch: exact (packed) vs padded, per layer type."""
    lines = []
    for m in report.mixed:
        counts = {}
        for label in m.samples:
            counts[label] = counts.get(label, 0) + 1
        if lines:
            lines.append("")
        lines += [f"{m.label}: {len(m.samples)} samples ({', '.join(f'{k} x{v}' for k, v in counts.items())}), "
                  f"{m.tokens} tokens packed; padded to {m.padded_label}: {m.padded_tokens} tokens"]
        rows = [["layer", "exact (packed)", "padded", "padded/exact"]]
        exact, padded = m.exact.by_layer(), m.padded.by_layer()
        for lay in [lay for lay in LAYER_TYPES if exact[lay] or padded[lay]]:
            ratio = _ratio(padded[lay], exact[lay])
            rows.append([lay, si(exact[lay]), si(padded[lay]), "-" if ratio is None else f"{ratio:.3f}"])
        rows.append(["total", si(m.exact.total), si(m.padded.total), f"{_ratio(m.padded.total, m.exact.total):.3f}"])
        rows.append(["6*N*D", si(report.six_nd(m.tokens)), si(report.six_nd(m.padded_tokens)), ""])
        lines += _table(rows)
    return lines


def plot_report(report: FlopReport, path) -> str:
    """Two panels, written to ``path`` (PNG): training FLOPs per sample (forward + backward;
    the once-per-call PI-resize left out) against the shape on log-log axes, per layer type,
    with the total and 6*N*D; and each layer type's share of the total."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vit = report.config["kind"] == "vit"
    x = [int(s.label[1:].split("@")[0]) if vit else s.tokens for s in report.shapes]
    parts = {lay: [s.sample.by_layer()[lay] for s in report.shapes] for lay in LAYER_TYPES}
    parts = {lay: v for lay, v in parts.items() if any(v)}
    totals = [s.sample.total for s in report.shapes]
    fig, (ax, share) = plt.subplots(1, 2, figsize=(12, 4.5))
    for lay, values in parts.items():
        ax.plot(x, [v or float("nan") for v in values], "o-", label=lay)
    ax.plot(x, totals, "k-", lw=2.5, label="total (exact)")
    ax.plot(x, [report.six_nd(s.tokens) for s in report.shapes], "k--", label="6*N*D")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(x, [str(v) for v in x])
    size = report.config.get("image_size") or (0, 0)
    ax.set_xlabel(f"patch size ({size[0]}x{size[1]} images)" if vit else "context length")
    ax.set_ylabel("training FLOPs per sample (fwd + bwd)")
    ax.set_title(f"{report.model}: exact FLOPs per sample")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    bottom = [0.0] * len(x)
    for lay, values in parts.items():
        frac = [v / t for v, t in zip(values, totals)]
        share.bar([str(v) for v in x], frac, bottom=bottom, label=lay, width=0.6)
        bottom = [a + f for a, f in zip(bottom, frac)]
    share.set_xlabel("patch size" if vit else "context length")
    share.set_ylabel("share of the step's FLOPs")
    share.set_title("by layer type")
    share.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
