"""The device's measured peaks, against which every benchmark row reports its fraction:
a large square matmul per dtype (TFLOP/s, 2*n^3 FLOPs) and a large device-to-device copy
(GB/s, bytes read + bytes written), timed like the benchmarks (``timing.time_ms``)."""

import contextlib

import torch

from .timing import gbps, time_ms, tflops

# (matmul n, copy MiB): large enough to saturate an H100; small enough for a shared CPU.
SIZES = {"cuda": (8192, 1024), "cpu": (1024, 64)}


@contextlib.contextmanager
def no_tf32():
    """IEEE float32 matmuls and convolutions on CUDA (PyTorch lets cuDNN use TF32 by
    default); adaptkern's float32 kernels are IEEE, so peers and peaks must be too."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _dtype(name):
    dtype = getattr(torch, str(name).replace("torch.", ""), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"adaptkern.bench.measure_peaks: dtypes must name torch dtypes, got {name!r}")
    return dtype


def measure_peaks(device, dtypes=("bfloat16",), *, rep_ms: float = 100.0) -> dict:
    """{"matmul_tflops": {dtype: TFLOP/s}, "copy_gbps": GB/s, "matmul_n", "copy_bytes", "method"}.

    On CUDA, matmuls run with TF32 off (IEEE float32, like the benchmarks). On CPU,
    bfloat16 and float16 are skipped (no fast path to compare against on most CPUs).
    """
    device = torch.device(device)
    n, mib = SIZES["cuda" if device.type == "cuda" else "cpu"]
    out = {"matmul_tflops": {}, "matmul_n": n, "copy_bytes": None, "copy_gbps": None,
           "method": f"median of torch.mm on ({n}, {n}) x ({n}, {n}) per dtype; dst.copy_(src) of {mib} MiB "
                     "(bytes read + written)"}
    gen = torch.Generator().manual_seed(0)
    with no_tf32():
        _matmuls(out, device, dtypes, n, gen, rep_ms)
    src = torch.empty(mib * 2 ** 20 // 4, device=device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device=device, rep_ms=rep_ms)["median"]
    out["copy_bytes"] = 2 * src.numel() * src.element_size()
    out["copy_gbps"] = gbps(out["copy_bytes"], ms)
    return out


def _matmuls(out, device, dtypes, n, gen, rep_ms):
    for name in dtypes:
        dtype = _dtype(name)
        if device.type != "cuda" and dtype in (torch.bfloat16, torch.float16):
            continue
        a, b = (torch.randn(n, n, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
        c = torch.empty(n, n, device=device, dtype=dtype)
        ms = time_ms(lambda: torch.mm(a, b, out=c), device=device, rep_ms=rep_ms)["median"]
        out["matmul_tflops"][str(dtype).replace("torch.", "")] = tflops(2 * n ** 3, ms)


def fractions(row: dict, peaks: dict) -> dict:
    """The row's fraction of the measured peaks: {"frac_peak_flops", "frac_peak_bw"} (None
    where the row has no throughput or the peak was not measured for its dtype)."""
    peak_flops = (peaks.get("matmul_tflops") or {}).get(row.get("dtype"))
    peak_bw = peaks.get("copy_gbps")
    tf, gb = row.get("tflops"), row.get("gbps")
    return {"frac_peak_flops": tf / peak_flops if tf is not None and peak_flops else None,
            "frac_peak_bw": gb / peak_bw if gb is not None and peak_bw else None}
