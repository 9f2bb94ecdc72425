"""What ``adaptkern bench`` runs: each op's cases, built from the op's own benchmark module
(``adaptkern/bench/<op>.py``: its case lists, input generators and peer implementations)
into ``runner.Case`` objects, and the suite that runs them.

On CUDA: adaptkern's GPU kernels against the peers named in each op's issue (``--quick``:
one or two representative cases per op, bfloat16). On CPU: the op modules' CPU cases (equal
and spread length mixes, float32), adaptkern's cpu backend (the ratios' baseline) and its
reference against what a user would write instead (padded SDPA, conv2d per image,
F.interpolate per image); GPU figures need a GPU.
"""

import torch

from .. import _backend
from ..flops.interp_pos_embed import interp_pos_embed_flops
from ..flops.patch_embed import patch_embed_backward_flops, patch_embed_flops
from ..flops.varlen_attention import attention_backward_flops, attention_flops
from ..ops.interp_pos_embed import add_interp_pos_embed
from ..ops.pack import cu_seqlens_from_lengths
from ..ops.patch_embed import flexi_patch_embed, flexi_patch_embed_packed
from ..ops.varlen_attention import varlen_attention
from . import interp_pos_embed as ip
from . import patch_embed as pe
from . import varlen_attention as va
from .runner import Case, Impl, closures

# Run in this order: attention last, as its FlexAttention peer spends a while compiling.
OPS = ("patch_embed", "interp_pos_embed", "varlen_attention")
CPU_NOTE = ("GPU figures need a GPU: this is the CPU suite (adaptkern's cpu backend and reference against plain "
            "PyTorch on small cases). Run `adaptkern bench` on a CUDA machine for kernel timings.")


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _ours(device) -> list:
    if device.type != "cuda":
        return ["cpu", "reference"]
    return [b for b in _backend.available_backends(device) if b != "reference"] or ["reference"]


def _randn(gen, *shape, device, dtype, scale=1.0):
    return (scale * torch.randn(*shape, generator=gen)).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------- varlen attention

def attention_case(spec, head_dim, width, dtype, device, seed=0) -> Case:
    """``spec`` = (name, length mix, target tokens, causal) as in ``varlen_attention.GPU_CASES``;
    Hq = width / head_dim. Peers from ``varlen_attention.implementations``."""
    name, mix, target, causal = spec
    lengths = va.sample_lengths(mix, target, seed)
    heads, total = width // head_dim, sum(lengths)
    gen = torch.Generator().manual_seed(seed + 1)
    q, k, v, dout = (_randn(gen, total, heads, head_dim, device=device, dtype=dtype) for _ in range(4))
    cu = cu_seqlens_from_lengths(lengths, device)
    longest = max(lengths)

    def reference(mode):
        leaves = [t.float() for t in (q, k, v)]
        run, result = closures(lambda a, b, c: varlen_attention(a, b, c, cu, cu, longest, longest, causal=causal,
                                                                 backend="reference"),
                               leaves, dout.float(), mode, ("dq", "dk", "dv"))
        return result()

    def make(fn, pad, unpad):
        def build(mode):
            leaves = [pad(t) if pad else t for t in (q, k, v)]
            return closures(fn, leaves, pad(dout) if pad else dout, mode, ("dq", "dk", "dv"), unpad, unpad)
        return build

    impls = []
    for impl, (fn, pad, unpad, note) in va.implementations(lengths, causal, q, k, v, device).items():
        modes = ("fwd",) if note and "forward only" in note else ("fwd", "fwd_bwd")
        impls.append(Impl(impl, make(fn, pad, unpad) if fn else None, impl == va.OURS, note, modes))
    host_cu = cu_seqlens_from_lengths(lengths)
    forward = attention_flops(host_cu, host_cu, heads, head_dim, causal=causal)
    tensor = total * heads * head_dim * q.element_size()
    return Case("varlen_attention", name, _name(dtype), impls, reference,
                {"fwd": forward, "fwd_bwd": forward + attention_backward_flops(host_cu, host_cu, heads, head_dim,
                                                                                causal=causal)},
                # q, k, v read + out written; backward reads q, k, v, out, dout, writes dq, dk, dv
                {"fwd": 4 * tensor, "fwd_bwd": 12 * tensor},
                dict(head_dim=head_dim, num_heads=heads, sequences=len(lengths), tokens=total, causal=causal,
                     # what FlopCounterMode books for torch's varlen_attn (causal pairs counted as unmasked)
                     torch_counted_flops=va.torch_counted_flops(host_cu, heads, head_dim)))


# ----------------------------------------------------------------------------- patch embedding

def _patch_params(gen, chans, base, dim, device):
    weight = torch.randn(dim, chans, base, base, generator=gen) / (chans * base * base) ** 0.5
    return weight.to(device), torch.randn(dim, generator=gen).to(device)


def _patch_case(name, dtype, impls, reference, tokens, chans, base, patch, dim, pixels, element, params):
    forward = patch_embed_flops(tokens, chans, patch, dim, base_patch_size=base)
    backward = patch_embed_backward_flops(tokens, chans, patch, dim, base_patch_size=base)
    weight = dim * chans * patch * patch * element
    fwd_bytes = (pixels + tokens * dim) * element + weight  # images, resized weight, tokens
    return Case("patch_embed", name, _name(dtype), impls, reference, {"fwd": forward, "fwd_bwd": forward + backward},
                # fwd_bwd: + token gradient read, images read again, weight gradient written
                {"fwd": fwd_bytes, "fwd_bwd": 2 * fwd_bytes + weight}, params)


def _patch_reference(fn_float, weight, bias, dout):
    def reference(mode):
        return closures(fn_float, [weight, bias], dout.float(), mode, ("dweight", "dbias"))[1]()
    return reference


def _patch_impls(named, weight, bias, dout, unpad=None, pad_grad=None):
    def make(fn):
        return lambda mode: closures(fn, [weight, bias], pad_grad(dout) if pad_grad else dout, mode,
                                     ("dweight", "dbias"), unpad)
    return [Impl(name, make(fn), ours) for name, (fn, ours) in named.items()]


def patch_embed_case(spec, dtype, device, seed=0) -> Case:
    """``spec`` = (name, batch, chans, image size, base patch, patch, D) as in
    ``patch_embed.GPU_CASES``: adaptkern vs PI-resample + conv2d and unfold + linear."""
    name, batch, chans, size, base, patch, dim = spec
    gen = torch.Generator().manual_seed(seed)
    images = _randn(gen, batch, chans, size, size, device=device, dtype=dtype)
    weight, bias = _patch_params(gen, chans, base, dim, device)
    tokens = batch * (size // patch) ** 2
    dout = _randn(gen, batch, tokens // batch, dim, device=device, dtype=dtype)
    named = {f"adaptkern ({b})": ((lambda b: lambda w, c: flexi_patch_embed(images, w, c, patch, backend=b))(b), True)
             for b in _ours(device)}
    named["resample + conv2d"] = (lambda w, c: pe.conv_path(images, w, c, patch), False)
    named["unfold + linear"] = (lambda w, c: pe.unfold_path(images, w, c, patch), False)
    reference = _patch_reference(lambda w, c: flexi_patch_embed(images.float(), w, c, patch, backend="reference"),
                                 weight, bias, dout)
    return _patch_case(name, dtype, _patch_impls(named, weight, bias, dout), reference, tokens, chans, base, patch,
                       dim, images.numel(), images.element_size(), dict(batch=batch, image=size, patch=patch))


def patch_embed_mixed_case(spec, dtype, device, seed=0) -> Case:
    """``spec`` = (name, image sizes, chans, base patch, patch, D) as in
    ``patch_embed.GPU_MIXED_CASES``: packed vs zero-padding every image to the largest."""
    name, sizes, chans, base, patch, dim = spec
    gen = torch.Generator().manual_seed(seed)
    images = pe.mixed_images(sizes, chans, dtype, device, gen)
    weight, bias = _patch_params(gen, chans, base, dim, device)
    grids = [(x.shape[1] // patch, x.shape[2] // patch) for x in images]
    rows, cols = max(h for h, _ in grids), max(w for _, w in grids)
    # Row of every real token in the padded (S * rows * cols, D) output.
    index = torch.cat([i * rows * cols + (torch.arange(h)[:, None] * cols + torch.arange(w)).flatten()
                       for i, (h, w) in enumerate(grids)]).to(device)
    tokens = index.numel()
    dout = _randn(gen, tokens, dim, device=device, dtype=dtype)

    def unpad(t):
        return t.reshape(-1, t.shape[-1])[index]

    def pad_grad(g):
        return g.new_zeros(len(images) * rows * cols, dim).index_copy_(0, index, g).view(len(images), rows * cols, dim)

    backends = _ours(device)
    packed = {f"adaptkern packed ({b})": ((lambda b: lambda w, c: flexi_patch_embed_packed(
        images, w, c, patch, backend=b).tokens)(b), True) for b in backends}
    packed["resample + conv2d per image"] = (lambda w, c: pe.per_image_path(images, w, c, patch), False)
    # The same with adaptkern's (separable) PI-resize: what the packing alone gains.
    packed["ak.pi_resize + conv2d per image"] = (lambda w, c: pe.per_image_path(
        images, w, c, patch, resample=pe.pi_resize), False)
    padded = {f"pad + adaptkern ({backends[0]})": (lambda w, c: pe.padded_path(
        images, w, c, patch, embed=lambda x, w_, b_, p: flexi_patch_embed(x, w_, b_, p, backend=backends[0])), False),
              "pad + resample + conv2d": (lambda w, c: pe.padded_path(images, w, c, patch), False)}
    reference = _patch_reference(lambda w, c: flexi_patch_embed_packed(
        [x.float() for x in images], w, c, patch, backend="reference").tokens, weight, bias, dout)
    impls = _patch_impls(packed, weight, bias, dout) + _patch_impls(padded, weight, bias, dout, unpad, pad_grad)
    return _patch_case(name, dtype, impls, reference, tokens, chans, base, patch, dim, sum(x.numel() for x in images),
                       images[0].element_size(), dict(images=len(images), patch=patch, padded_grid=[rows, cols]))


# ----------------------------------------------------------------------------- interpolated position embedding

def interp_case(spec, device, seed=0) -> Case:
    """``spec`` = (name, images, max tokens, base grid, D, prefix tokens, dtype) as in
    ``interp_pos_embed.GPU_CASES``: fused add vs timm NaFlexViT's per-grid F.interpolate."""
    name, images, max_tokens, base_grid, dim, prefix, dtype = spec
    batch = ip.make_batch(images, max_tokens, base_grid, dim, prefix, dtype, device, seed=seed)
    tokens, pos = batch["tokens"], batch["pos_embed"]
    gen = torch.Generator().manual_seed(seed + 2)
    dout = _randn(gen, *tokens.shape, device=device, dtype=dtype)

    def fused(backend):
        return lambda t, p: add_interp_pos_embed(t, p, batch["grid_sizes"], batch["cu_seqlens"],
                                                 num_prefix_tokens=prefix, backend=backend, **ip.OP_OPTIONS)

    def reference(mode):
        return closures(fused("reference"), [tokens.float(), pos.float()], dout.float(), mode, ("dtokens", "dpos"))[1]()

    named = {f"fused ({b})": (fused(b), True) for b in _ours(device)}
    named["per-grid F.interpolate + gather-add"] = (
        lambda t, p: ip.per_grid_interpolate_add(t, p, batch["rows"], **ip.OPTIONS), False)
    if device.type != "cuda":  # what a CPU user without the fused op writes
        named["F.interpolate per image"] = (
            lambda t, p: ip.per_image_interpolate_add(t, p, batch["grids"], batch["cu_seqlens"], prefix, **ip.OPTIONS),
            False)
    impls = [Impl(n, (lambda fn: lambda mode: closures(fn, [tokens, pos], dout, mode, ("dtokens", "dpos")))(fn), ours)
             for n, (fn, ours) in named.items()]
    forward = interp_pos_embed_flops(batch["grids"], base_grid, dim, **ip.OP_OPTIONS)
    fwd_bytes = ip.fused_bytes(batch)
    extra = tokens.numel() * tokens.element_size() + pos.numel() * pos.element_size()  # dout read, dpos written
    return Case("interp_pos_embed", name, _name(dtype), impls, reference, {"fwd": forward, "fwd_bwd": 2 * forward},
                {"fwd": fwd_bytes, "fwd_bwd": fwd_bytes + extra},
                dict(images=len(batch["grids"]), tokens=tokens.shape[0], dim=dim, distinct_grids=len(batch["rows"])))


# ----------------------------------------------------------------------------- the suite

def case_factories(op: str, device, *, quick: bool = False) -> list:
    """[(label, zero-argument factory of a Case)] for ``op`` on ``device``: built lazily, so
    only one case's tensors live at a time."""
    device = torch.device(device)
    gpu = device.type == "cuda"
    if op == "varlen_attention":
        if gpu:
            specs, dims, width, dtype = va.GPU_CASES, (va.GPU_HEAD_DIMS[-1:] if quick else va.GPU_HEAD_DIMS), \
                va.MODEL_WIDTH, torch.bfloat16
        else:  # the op module's causal CPU cases, and a non-causal length mix
            specs = list(va.CPU_CASES) + [("cpu-small-noncausal", "small", 512, False)]
            dims, width, dtype = va.CPU_HEAD_DIMS, va.CPU_MODEL_WIDTH, torch.float32
        return [(f"{s[0]} D={d}", (lambda s, d: lambda: attention_case(s, d, width, dtype, device))(s, d))
                for s in specs for d in dims]
    if op == "patch_embed":
        cases = (pe.GPU_CASES[1:2] if quick else pe.GPU_CASES) if gpu else pe.CPU_CASES
        mixed = pe.GPU_MIXED_CASES if gpu else pe.CPU_MIXED_CASES
        dtypes = ([torch.bfloat16] if quick else [torch.bfloat16, torch.float32]) if gpu else [torch.float32]
        return [(f"{s[0]} {_name(t)}", (lambda s, t: lambda: patch_embed_case(s, t, device))(s, t))
                for t in dtypes for s in cases] + \
               [(f"{s[0]} {_name(t)}", (lambda s, t: lambda: patch_embed_mixed_case(s, t, device))(s, t))
                for t in dtypes for s in mixed]
    if op == "interp_pos_embed":
        specs = (ip.GPU_CASES[:1] if quick else ip.GPU_CASES) if gpu else ip.CPU_CASES
        return [(s[0], (lambda s: lambda: interp_case(s, device))(s)) for s in specs]
    raise ValueError(f"adaptkern bench: op must be one of {OPS} or 'all', got {op!r}")


def dtypes_used(device, ops, quick) -> list:
    gpu = torch.device(device).type == "cuda"
    if not gpu:
        return ["float32"]
    return ["bfloat16"] if quick or ops == ["varlen_attention"] else ["bfloat16", "float32"]


def run_suite(device=None, *, ops=OPS, quick=False, rep_ms=None, command=None, progress=True,
              checkpoint=None) -> dict:
    """Measure the peaks, then run every case of ``ops``; returns the results dict that
    ``adaptkern bench`` writes (``runner.validate`` checks its schema). A mismatch or a
    failure of adaptkern's own implementation stops that op and is listed in "errors".
    ``checkpoint(data)``, if given, is called after every case (to save partial results)."""
    from .peaks import measure_peaks, no_tf32
    from .runner import FORMAT, VERSION, metadata, run_case, with_fractions

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    rep_ms = rep_ms or ((50.0 if quick else 100.0) if gpu else (50.0 if quick else 200.0))
    ops = list(ops)
    data = {"format": FORMAT, "version": VERSION, "meta": metadata(device, command=command, quick=quick, rep_ms=rep_ms),
            "peaks": {}, "rows": [], "notes": [] if gpu else [CPU_NOTE], "errors": []}
    factories = [(op, label, factory) for op in ops for label, factory in case_factories(op, device, quick=quick)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(factories) + 1, desc="bench", unit="case", leave=False)
    try:
        with no_tf32():
            if bar is not None:
                bar.set_postfix_str("measuring peaks")
            data["peaks"] = measure_peaks(device, dtypes_used(device, ops, quick), rep_ms=rep_ms)
            if bar is not None:
                bar.update(1)
            failed = set()
            for op, label, factory in factories:
                if bar is not None:
                    bar.set_postfix_str(f"{op} {label}")
                if op not in failed:
                    try:
                        data["rows"] += with_fractions(run_case(factory(), device, rep_ms=rep_ms), data["peaks"])
                    except Exception as error:  # ResultMismatch, or adaptkern's own implementation failing
                        failed.add(op)
                        data["errors"].append(f"{op} {label}: {type(error).__name__}: {error}")
                if bar is not None:
                    bar.update(1)
                if checkpoint is not None:
                    checkpoint(data)
    finally:
        if bar is not None:
            bar.close()
    data["notes"] += sorted({f"{r['op']}: {r['impl']}: {r['note']}" for r in data["rows"]
                             if r["ms"] is None and r["note"]})
    return data
