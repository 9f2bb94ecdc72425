"""Variable-length attention: adaptkern vs padded SDPA, PyTorch's FA2 varlen kernel and
FlexAttention with a document mask (cases in adaptkern/bench/varlen_attention.py).

pytest-benchmark (small CPU cases; the suite runs with --benchmark-disable by default):
    .venv/bin/python -m pytest benchmarks/bench_varlen_attention.py --benchmark-enable
GPU (or CPU) table and JSON in benchmarks/results/:
    .venv/bin/python benchmarks/bench_varlen_attention.py [--cpu] [--fwd-only] [--head-dims 64 128]
"""

import argparse
from pathlib import Path

import pytest
import torch

import adaptkern as ak
from adaptkern.bench import varlen_attention as cases
from adaptkern.bench.runner import save_rows

RESULTS = Path(__file__).resolve().parent / "results"


@pytest.fixture(scope="module")
def batch():
    lengths = cases.sample_lengths("small", 256)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(lengths), 4, 32, generator=gen) for _ in range(3))
    cu = ak.cu_seqlens_from_lengths(lengths)
    return dict(q=q, k=k, v=v, cu=cu, lengths=lengths, impls=cases.implementations(lengths, True, q, k, v,
                                                                                   torch.device("cpu")))


def _ours(batch, backend="reference"):
    longest = max(batch["lengths"])
    return ak.varlen_attention(batch["q"], batch["k"], batch["v"], batch["cu"], batch["cu"], longest, longest,
                               causal=True, backend=backend)


def test_reference_forward(benchmark, batch):
    benchmark(_ours, batch)


def test_cpu_forward(benchmark, batch):
    benchmark(_ours, batch, "cpu")


def test_padded_sdpa_forward(benchmark, batch):
    attend, pad, unpad, _ = batch["impls"]["padded SDPA"]
    padded = [pad(t) for t in (batch["q"], batch["k"], batch["v"])]
    out = benchmark(attend, *padded)
    torch.testing.assert_close(unpad(out), _ours(batch), rtol=1e-5, atol=1e-5)


def test_run_rows_cover_every_impl():
    rows = cases.run("cpu", rep_ms=5.0)
    cpu_impls = {cases.OURS, f"{cases.OURS} (reference)", "padded SDPA"}
    assert {r["impl"] for r in rows} == cpu_impls | {"torch varlen (FA2)", "FlexAttention (document mask)"}
    timed = [r for r in rows if r["ms"] is not None]
    assert {r["impl"] for r in timed} == cpu_impls and all(r["tflops"] > 0 for r in timed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the small CPU case even when a GPU is present")
    parser.add_argument("--fwd-only", action="store_true", help="time the forward only")
    parser.add_argument("--head-dims", type=int, nargs="+", default=None)
    parser.add_argument("--rep-ms", type=float, default=100.0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    modes = ("fwd",) if args.fwd_only else ("fwd", "fwd_bwd")
    rows = cases.run(device, head_dims=args.head_dims, modes=modes, rep_ms=args.rep_ms)
    print(cases.format_rows(rows))
    out = args.out or RESULTS / f"varlen_attention-{'gpu' if device.type == 'cuda' else 'cpu'}.json"
    print(f"wrote {save_rows(out, device, rows)}")


if __name__ == "__main__":
    main()
