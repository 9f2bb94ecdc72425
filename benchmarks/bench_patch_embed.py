"""Variable patch-size embedding: ``flexi_patch_embed`` vs PI-resample + F.conv2d and
unfold + F.linear; ``flexi_patch_embed_packed`` vs padding mixed resolutions to the largest.

pytest-benchmark (small CPU cases; the suite runs with --benchmark-disable by default):
    .venv/bin/python -m pytest benchmarks/bench_patch_embed.py --benchmark-enable
GPU (or CPU) table and JSON in benchmarks/results/:
    .venv/bin/python benchmarks/bench_patch_embed.py [--cpu] [--fwd-only] [--dtype bfloat16]
"""

import argparse
from pathlib import Path

import pytest
import torch

import adaptkern as ak
from adaptkern.bench import patch_embed as cases
from adaptkern.bench.runner import save_rows

RESULTS = Path(__file__).resolve().parent / "results"
_, BATCH, CHANS, SIZE, BASE, PATCH, DIM = cases.CPU_CASES[0]
_, MIXED_SIZES, _, _, MIXED_PATCH, _ = cases.CPU_MIXED_CASES[0]


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, CHANS, SIZE, SIZE, generator=gen)
    weight = torch.randn(DIM, CHANS, BASE, BASE, generator=gen) / (CHANS * BASE * BASE) ** 0.5
    bias = torch.randn(DIM, generator=gen)
    mixed = cases.mixed_images(MIXED_SIZES, CHANS, torch.float32, "cpu", gen)
    ak.pi_resize(weight, PATCH)  # fill the resize-matrix cache outside the timings
    return images, weight, bias, mixed


def test_flexi_patch_embed(benchmark, inputs):
    images, weight, bias, _ = inputs
    out = benchmark(ak.flexi_patch_embed, images, weight, bias, PATCH)
    torch.testing.assert_close(out, cases.conv_path(images, weight, bias, PATCH), rtol=1e-4, atol=1e-4)


def test_resample_conv2d(benchmark, inputs):
    images, weight, bias, _ = inputs
    benchmark(cases.conv_path, images, weight, bias, PATCH)


def test_unfold_linear(benchmark, inputs):
    images, weight, bias, _ = inputs
    out = benchmark(cases.unfold_path, images, weight, bias, PATCH)
    torch.testing.assert_close(out, cases.conv_path(images, weight, bias, PATCH), rtol=1e-4, atol=1e-4)


def test_packed_mixed(benchmark, inputs):
    _, weight, bias, mixed = inputs
    benchmark(lambda: ak.flexi_patch_embed_packed(mixed, weight, bias, MIXED_PATCH).tokens)


def test_padded_mixed(benchmark, inputs):
    _, weight, bias, mixed = inputs
    benchmark(cases.padded_path, mixed, weight, bias, MIXED_PATCH)


def test_run_rows_are_complete():
    rows = cases.run("cpu", rep_ms=5.0)
    impls = {r["impl"] for r in rows}
    assert {"adaptkern (reference)", "resample + conv2d", "unfold + linear", "adaptkern packed (reference)",
            "pad + resample + conv2d"} <= impls
    assert {r["mode"] for r in rows} == {"fwd", "fwd_bwd"}
    assert all(r["ms"] > 0 and r["flops"] > 0 for r in rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the CPU cases even when a GPU is present")
    parser.add_argument("--fwd-only", action="store_true", help="time the forward only")
    parser.add_argument("--dtype", action="append", choices=["bfloat16", "float16", "float32"],
                        help="dtypes to run (repeatable; default bfloat16 and float32 on GPU, float32 on CPU)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    dtypes = [getattr(torch, d) for d in args.dtype] if args.dtype else None
    modes = ("fwd",) if args.fwd_only else ("fwd", "fwd_bwd")
    rows = cases.run(device, dtypes=dtypes, modes=modes)
    print(cases.format_rows(rows))
    out = args.out or RESULTS / f"patch_embed_{device.type}.json"
    print(f"wrote {save_rows(out, device, rows, peaks=cases.PEAKS)}")


if __name__ == "__main__":
    main()
