"""Benchmark cases for the variable patch-size embedding.

Same-shape batches compare ``ak.flexi_patch_embed`` with the two usual PyTorch paths, each
after the PI-resize a user writes (``timm_resample``: timm's ``resample_patch_embed``, the
weight flattened to (D, C, ph0*pw0) times the (ph0*pw0, ph*pw) pseudo-inverse, here with
that matrix cached, timm's best case; adaptkern's ``pi_resize`` applies the same matrix in
its separable form):

* ``resample + conv2d``: F.conv2d(images, w, b, stride=p).flatten(2).transpose(1, 2) (timm's
  PatchEmbed with a resampled weight),
* ``unfold + linear``: F.unfold into (B, C*p*p, N) columns, then F.linear.

Mixed-resolution batches compare ``ak.flexi_patch_embed_packed`` (one launch, no padding)
with zero-padding every image to the largest one and running the batch (pad included in
the timing, as a loader would have to do it).

TFLOP/s always uses the *exact* FLOPs (ak.flops: real tokens only, plus the resize), so
padded work shows up as lower throughput. ``floor_ratio`` = time / max(FLOPs / peak FLOP/s,
bytes / peak bandwidth) on GPUs whose peaks are listed in PEAKS; bytes are the minimum any
implementation moves (images, weight, tokens; fwd_bwd adds the token gradient, a second
read of the images and the weight gradient).

In float32 adaptkern keeps IEEE float32 products, while cuDNN convolutions run in TF32 by
default (torch.backends.cudnn.allow_tf32): compare float32 rows with that in mind.
"""

import torch
import torch.nn.functional as F

from .. import _backend
from ..flops.patch_embed import patch_embed_backward_flops, patch_embed_flops
from ..ops.patch_embed import flexi_patch_embed, flexi_patch_embed_packed
from ..ops.pi_resize import pi_resize, pi_resize_matrix
from .timing import time_ms, tflops

# Dense peaks (TFLOP/s for bf16/fp16 tensor cores, fp32 without TF32; TB/s HBM), SXM parts.
PEAKS = {
    "H100": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0, "tbps": 3.35},
    "H200": {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0, "tbps": 4.8},
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5, "tbps": 2.0},
}

# (name, batch, chans, image size, base patch, patch, D): FlexiViT-B at 240 px (base 32).
GPU_CASES = [
    ("flexivit-b-240-p8", 64, 3, 240, 32, 8, 768),
    ("flexivit-b-240-p16", 128, 3, 240, 32, 16, 768),
    ("flexivit-b-240-p30", 256, 3, 240, 32, 30, 768),
    ("vit-b16-224-noresize", 128, 3, 224, 16, 16, 768),
]
# (name, image heights (widths cycle through the same list), chans, base patch, patch, D).
GPU_MIXED_CASES = [
    ("mixed-128to512-p16", [128, 192, 256, 320, 384, 448, 512] * 16, 3, 32, 16, 768),
]
CPU_CASES = [("cpu-b4-64-p8", 4, 3, 64, 16, 8, 64)]
# On CPU: a spread of resolutions (issue 15's goal case) and equal ones, ViT-Ti width.
CPU_MIXED_CASES = [("cpu-mixed-p8", [32, 48, 64, 24, 40, 56], 3, 16, 8, 64),
                   ("cpu-spread-p16", [64, 96, 128, 160, 224, 112, 48, 192], 3, 32, 16, 192),
                   ("cpu-equal-p16", [128] * 8, 3, 32, 16, 192)]


def timm_resample(weight, patch):
    """The PI-resize as timm writes it: (D, C, ph0*pw0) @ the full (ph0*pw0, ph*pw)
    pseudo-inverse, in float32 (the matrix from adaptkern's cache: computed once)."""
    old, new = tuple(weight.shape[2:]), (patch, patch) if isinstance(patch, int) else tuple(patch)
    if old == new:
        return weight
    matrix = pi_resize_matrix(old, new, device=weight.device)
    return (weight.flatten(2).float() @ matrix.T).reshape(*weight.shape[:2], *new).to(weight.dtype)


def conv_path(images, weight, bias, patch, resample=timm_resample):
    """timm-style: PI-resampled weight, F.conv2d with stride = patch, flatten to tokens."""
    resized = resample(weight, patch)
    return F.conv2d(images, resized.to(images.dtype), None if bias is None else bias.to(images.dtype),
                    stride=patch).flatten(2).transpose(1, 2)


def unfold_path(images, weight, bias, patch):
    """F.unfold into (B, C*p*p, N) patch columns, then one F.linear."""
    resized = timm_resample(weight, patch)
    columns = F.unfold(images, kernel_size=patch, stride=patch).transpose(1, 2)
    return F.linear(columns, resized.reshape(resized.shape[0], -1).to(images.dtype),
                    None if bias is None else bias.to(images.dtype))


def per_image_path(images, weight, bias, patch, resample=timm_resample):
    """A list of images as a user writes it: one PI-resize, F.conv2d per image, tokens
    concatenated. ``resample``: timm's (default) or adaptkern's ``pi_resize``."""
    resized = resample(weight, patch)
    return torch.cat([F.conv2d(x[None], resized.to(x.dtype), None if bias is None else bias.to(x.dtype),
                               stride=patch).flatten(2).transpose(1, 2)[0] for x in images])


def padded_path(images, weight, bias, patch, embed=conv_path):
    """Zero-pad every image to the largest height and width, stack, embed the batch."""
    height = max(x.shape[1] for x in images)
    width = max(x.shape[2] for x in images)
    batch = torch.stack([F.pad(x, (0, width - x.shape[2], 0, height - x.shape[1])) for x in images])
    return embed(batch, weight, bias, patch)


def _fn(forward, weight, bias, mode):
    """A zero-argument callable: forward only (no autograd), or forward + backward into the
    float32 base weight and bias (the images are data: no gradient)."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                forward(weight, bias)
        return run
    weight, bias = weight.detach().requires_grad_(), bias.detach().requires_grad_()

    def run():
        out = forward(weight, bias)
        out.backward(torch.ones_like(out))
    return run


def _floor_ms(device, dtype, flops, nbytes):
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peaks = next((p for key, p in PEAKS.items() if key in name), None)
    if peaks is None:
        return None
    peak_flops = peaks[str(dtype).replace("torch.", "")] * 1e12
    return max(flops / peak_flops, nbytes / (peaks["tbps"] * 1e12)) * 1e3


def _counts(tokens, chans, base, patch, dim, image_elements, element_size):
    """Exact FLOPs and minimum bytes per mode."""
    forward = patch_embed_flops(tokens, chans, patch, dim, base_patch_size=base)
    backward = patch_embed_backward_flops(tokens, chans, patch, dim, base_patch_size=base)
    weight_bytes = dim * chans * patch * patch * element_size
    fwd_bytes = image_elements * element_size + weight_bytes + tokens * dim * element_size
    flops = {"fwd": forward, "fwd_bwd": forward + backward}
    nbytes = {"fwd": fwd_bytes, "fwd_bwd": 2 * fwd_bytes + weight_bytes}
    return flops, nbytes


def _time_rows(case, impls, params, device, dtype, flops, nbytes, modes, rep_ms):
    rows = []
    for mode in modes:
        floor = _floor_ms(device, dtype, flops[mode], nbytes[mode])
        first = None
        for impl, forward in impls.items():
            timing = time_ms(_fn(forward, *params, mode), device=device, rep_ms=rep_ms)
            first = first or timing["median"]
            rows.append(dict(case=case, impl=impl, mode=mode, dtype=str(dtype).replace("torch.", ""),
                             ms=timing["median"], p20=timing["p20"], p80=timing["p80"], flops=flops[mode],
                             tflops=tflops(flops[mode], timing["median"]), vs_adaptkern=timing["median"] / first,
                             floor_ratio=None if floor is None else timing["median"] / floor))
    return rows


def _default_backends(device):
    if device.type != "cuda":
        return ["reference"]
    return [b for b in _backend.available_backends(device) if b != "reference"]


def run_case(case, device, dtype, *, backends=None, modes=("fwd", "fwd_bwd"), rep_ms=100.0, seed=0):
    """Rows for one same-shape case: adaptkern (each backend) first, then the baselines;
    vs_adaptkern is the time relative to the first adaptkern row."""
    name, batch, chans, size, base, patch, dim = case
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, chans, size, size, generator=gen).to(device=device, dtype=dtype)
    params = _params(chans, base, dim, device, gen)
    impls = {f"adaptkern ({b})": (lambda b: lambda w, bias: flexi_patch_embed(images, w, bias, patch, backend=b))(b)
             for b in backends or _default_backends(device)}
    impls["resample + conv2d"] = lambda w, bias: conv_path(images, w, bias, patch)
    impls["unfold + linear"] = lambda w, bias: unfold_path(images, w, bias, patch)
    tokens = batch * (size // patch) ** 2
    flops, nbytes = _counts(tokens, chans, base, patch, dim, images.numel(), images.element_size())
    return _time_rows(name, impls, params, device, dtype, flops, nbytes, modes, rep_ms)


def mixed_images(sizes, chans, dtype, device, gen):
    """One image per size; the width cycles through the same sizes for varied aspect ratios."""
    return [torch.randn(chans, h, sizes[(i + 3) % len(sizes)], generator=gen).to(device=device, dtype=dtype)
            for i, h in enumerate(sizes)]


def run_mixed_case(case, device, dtype, *, backends=None, modes=("fwd", "fwd_bwd"), rep_ms=100.0, seed=0):
    """Rows for one mixed-resolution case: packed (each backend) vs padding to the largest image."""
    name, sizes, chans, base, patch, dim = case
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    images = mixed_images(sizes, chans, dtype, device, gen)
    params = _params(chans, base, dim, device, gen)
    backends = backends or _default_backends(device)
    impls = {f"adaptkern packed ({b})": (lambda b: lambda w, bias: flexi_patch_embed_packed(
        images, w, bias, patch, backend=b).tokens)(b) for b in backends}
    impls[f"pad + adaptkern ({backends[0]})"] = lambda w, bias: padded_path(
        images, w, bias, patch, embed=lambda x, w_, b_, p: flexi_patch_embed(x, w_, b_, p, backend=backends[0]))
    impls["pad + resample + conv2d"] = lambda w, bias: padded_path(images, w, bias, patch)
    tokens = sum((x.shape[1] // patch) * (x.shape[2] // patch) for x in images)
    pixels = sum(x.numel() for x in images)
    flops, nbytes = _counts(tokens, chans, base, patch, dim, pixels, images[0].element_size())
    return _time_rows(name, impls, params, device, dtype, flops, nbytes, modes, rep_ms)


def _params(chans, base, dim, device, gen):
    # float32 base weight and bias (master weights); the ops cast the resized weight.
    weight = torch.randn(dim, chans, base, base, generator=gen) / (chans * base * base) ** 0.5
    return weight.to(device), torch.randn(dim, generator=gen).to(device)


def run(device=None, *, dtypes=None, cases=None, mixed_cases=None, backends=None, modes=("fwd", "fwd_bwd"),
        rep_ms=100.0):
    """All rows for ``device`` (default: CUDA when present): GPU cases in bfloat16 (and
    float32) on a GPU, the small CPU cases in float32 on CPU."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    dtypes = dtypes or ([torch.bfloat16, torch.float32] if on_gpu else [torch.float32])
    cases = (GPU_CASES if on_gpu else CPU_CASES) if cases is None else cases
    mixed_cases = (GPU_MIXED_CASES if on_gpu else CPU_MIXED_CASES) if mixed_cases is None else mixed_cases
    rows = []
    for dtype in dtypes:
        for case in cases:
            rows += run_case(case, device, dtype, backends=backends, modes=modes, rep_ms=rep_ms)
        for case in mixed_cases:
            rows += run_mixed_case(case, device, dtype, backends=backends, modes=modes, rep_ms=rep_ms)
    return rows


def format_rows(rows) -> str:
    lines = [f"{'case':24} {'impl':30} {'mode':8} {'dtype':9} {'ms':>9} {'TFLOP/s':>8} {'vs ours':>8} {'floor':>6}"]
    for r in rows:
        floor = f"{r['floor_ratio']:6.2f}" if r["floor_ratio"] is not None else f"{'-':>6}"
        lines.append(f"{r['case']:24} {r['impl']:30} {r['mode']:8} {r['dtype']:9} {r['ms']:9.3f} "
                     f"{r['tflops']:8.2f} {r['vs_adaptkern']:7.2f}x {floor}")
    return "\n".join(lines)
