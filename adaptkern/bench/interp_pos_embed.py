"""Benchmark cases for the resampled positional embedding on a mixed-resolution packed batch.

Compares ``ak.add_interp_pos_embed`` (one fused pass over the tokens) with what timm's
NaFlexViT does: ``F.interpolate`` once per distinct grid size, then gather the block into
every sequence of that size and add it (here an ``index_add_`` into the packed tokens).
GB/s counts the bytes the fused add must move at least: tokens read, output written,
the base grid read once.
"""

import math
from collections import defaultdict

import torch
import torch.nn.functional as F

from .. import _backend
from ..ops.interp_pos_embed import add_interp_pos_embed
from .timing import gbps, time_ms

# (name, images, max patch tokens per image, base grid, D, prefix tokens, dtype)
GPU_CASES = [
    ("naflex-b16-576", 128, 576, (16, 16), 768, 1, torch.bfloat16),
    ("naflex-so400m-1024", 64, 1024, (16, 16), 1152, 1, torch.bfloat16),
    ("naflex-b16-256-fp32", 256, 256, (16, 16), 768, 1, torch.float32),
]
# On CPU: issue 15's goal cases at ViT-Ti width: a spread of NaFlex grids, and equal grids
# (a list of grids instead of an image count).
CPU_CASES = [
    ("cpu-small", 8, 64, (8, 8), 64, 1, torch.float32),
    ("cpu-spread-16", 16, 256, (16, 16), 192, 1, torch.float32),
    ("cpu-equal-16", [(12, 12)] * 16, 144, (16, 16), 192, 1, torch.float32),
]
OPTIONS = dict(mode="bicubic", antialias=True, align_corners=False)
OP_OPTIONS = dict(interpolation="bicubic", antialias=True, align_corners=False)  # the ops' keyword


def naflex_grids(num_images: int, max_tokens: int, *, seed: int = 0):
    """Patch grids of a NaFlex-style batch: random aspect ratios in [1/3, 3] and sizes, each
    scaled to fit the token budget (h * w <= max_tokens), as its variable-resolution loader does."""
    gen = torch.Generator().manual_seed(seed)
    grids = []
    for _ in range(num_images):
        aspect = math.exp((torch.rand((), generator=gen).item() * 2 - 1) * math.log(3))
        budget = max_tokens * (0.3 + 0.7 * torch.rand((), generator=gen).item())
        h = max(1, int(math.sqrt(budget / aspect)))
        w = max(1, min(int(budget / h), max_tokens // h))
        grids.append((h, w))
    return grids


def make_batch(num_images, max_tokens, base_grid, dim, num_prefix_tokens, dtype, device, *, seed=0):
    """``num_images`` NaFlex grids (or ``num_images`` is the list of grids itself)."""
    grids = list(num_images) if isinstance(num_images, (list, tuple)) else naflex_grids(num_images, max_tokens,
                                                                                          seed=seed)
    lengths = [num_prefix_tokens + h * w for h, w in grids]
    cu_seqlens = torch.zeros(len(grids) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.tensor(lengths).cumsum(0)
    gen = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randn(sum(lengths), dim, generator=gen).to(device=device, dtype=dtype)
    pos_embed = (0.02 * torch.randn(*base_grid, dim, generator=gen)).to(device=device, dtype=dtype)
    # Rows of each distinct grid's patch tokens, precomputed as timm's per-batch Python loop knows them.
    rows = defaultdict(list)
    for i, (h, w) in enumerate(grids):
        rows[h, w].append(torch.arange(h * w) + int(cu_seqlens[i]) + num_prefix_tokens)
    rows = {grid: torch.cat(r).to(device) for grid, r in rows.items()}
    return dict(tokens=tokens, pos_embed=pos_embed, grids=grids, rows=rows,
                grid_sizes=torch.tensor(grids, dtype=torch.int32, device=device),
                cu_seqlens=cu_seqlens.to(device), num_prefix_tokens=num_prefix_tokens)


def per_grid_interpolate_add(tokens, pos_embed, rows, *, mode, antialias, align_corners):
    """The NaFlexViT path: one F.interpolate per distinct grid (float32, as timm), then a
    gather-add of the block into every sequence with that grid."""
    out = tokens.clone()
    grid = pos_embed.permute(2, 0, 1)[None].float()
    for (h, w), index in rows.items():
        block = F.interpolate(grid, size=(h, w), mode=mode, antialias=antialias, align_corners=align_corners)
        block = block[0].permute(1, 2, 0).reshape(h * w, -1).to(tokens.dtype)
        out.index_add_(0, index, block.repeat(index.numel() // (h * w), 1))
    return out


def per_image_interpolate_add(tokens, pos_embed, grids, cu_seqlens, num_prefix_tokens, *, mode, antialias,
                               align_corners):
    """What a user writes without a fused op: F.interpolate per image, added to its patch tokens."""
    out = tokens.clone()
    grid = pos_embed.permute(2, 0, 1)[None].float()
    for (h, w), start in zip(grids, cu_seqlens.tolist()):
        block = F.interpolate(grid, size=(h, w), mode=mode, antialias=antialias, align_corners=align_corners)
        start += num_prefix_tokens
        out[start:start + h * w] += block[0].permute(1, 2, 0).reshape(h * w, -1).to(tokens.dtype)
    return out


def fused_bytes(batch) -> int:
    tokens, pos = batch["tokens"], batch["pos_embed"]
    return 2 * tokens.numel() * tokens.element_size() + pos.numel() * pos.element_size()


def _backward_fn(forward, batch):
    pos = batch["pos_embed"].detach().requires_grad_()
    tokens = batch["tokens"].detach().requires_grad_()

    def run():
        out = forward(tokens, pos)
        out.backward(torch.ones_like(out))
    return run


def run_case(case, device, backends, *, with_backward=True, rep_ms=100.0):
    """Rows {case, impl, direction, ms, p20, p80, GB/s, speedup vs the per-grid path} for one case."""
    name, images, max_tokens, base_grid, dim, prefix, dtype = case
    batch = make_batch(images, max_tokens, base_grid, dim, prefix, dtype, device)
    impls = {"per-grid F.interpolate + gather-add": lambda t, p: per_grid_interpolate_add(t, p, batch["rows"],
                                                                                          **OPTIONS)}
    for backend in backends:
        impls[f"fused ({backend})"] = (lambda b: lambda t, p: add_interp_pos_embed(
            t, p, batch["grid_sizes"], batch["cu_seqlens"], num_prefix_tokens=prefix, backend=b, **OP_OPTIONS))(backend)
    rows, baseline = [], {}
    directions = ["fwd", "fwd+bwd"] if with_backward else ["fwd"]
    for direction in directions:
        for impl, forward in impls.items():
            fn = ((lambda f=forward: f(batch["tokens"], batch["pos_embed"])) if direction == "fwd"
                  else _backward_fn(forward, batch))
            with torch.no_grad() if direction == "fwd" else torch.enable_grad():
                timing = time_ms(fn, device=device, rep_ms=rep_ms)
            baseline.setdefault(direction, timing["median"])
            rows.append(dict(case=name, impl=impl, direction=direction, tokens=batch["tokens"].shape[0], dim=dim,
                             dtype=str(dtype).replace("torch.", ""), distinct_grids=len(batch["rows"]),
                             ms=timing["median"], p20=timing["p20"], p80=timing["p80"],
                             gbps=gbps(fused_bytes(batch), timing["median"]) if direction == "fwd" else None,
                             speedup=baseline[direction] / timing["median"]))
    return rows


def run(device=None, *, cases=None, backends=None, with_backward=True, rep_ms=100.0):
    """All rows for ``device`` (default: CUDA when present). Backends default to the GPU
    kernels available on CUDA and the reference on CPU."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cases is None:
        cases = GPU_CASES if device.type == "cuda" else CPU_CASES
    if backends is None:
        backends = [b for b in _backend.available_backends(device) if device.type == "cuda" and b != "reference"]
        backends = backends or ["reference"]
    return [row for case in cases for row in run_case(case, device, backends, with_backward=with_backward,
                                                        rep_ms=rep_ms)]


def format_rows(rows) -> str:
    lines = [f"{'case':22} {'impl':38} {'dir':8} {'ms':>9} {'GB/s':>8} {'speedup':>8}"]
    for r in rows:
        gb = f"{r['gbps']:8.1f}" if r["gbps"] is not None else f"{'':8}"
        lines.append(f"{r['case']:22} {r['impl']:38} {r['direction']:8} {r['ms']:9.4f} {gb} {r['speedup']:7.2f}x")
    return "\n".join(lines)
