"""``adaptkern bench``: time adaptkern's ops against their peers (checked against the
reference first), with exact TFLOP/s, GB/s and the fraction of the device's measured peaks;
write ``<out>/<device>-<date>.json`` and a PNG. ``--table`` prints a results file as markdown."""

import os
import sys

from ._types import positive_float


def _table(args) -> int:
    from adaptkern.bench import table

    if args.table != "latest":
        try:
            data = table.load(args.table)
        except (OSError, ValueError) as error:
            print(f"adaptkern bench: error: --table {args.table}: {error}", file=sys.stderr)
            return 2
    else:
        path, data = table.latest(args.out)
        if data is None:
            print(f"No GPU benchmark results in {args.out}/ yet: GPU figures need a GPU. Run `adaptkern bench` "
                  "(or benchmarks/gpu_check.sh) on a CUDA machine and commit the JSON it writes.")
            return 0
    print(table.markdown(data))
    return 0


def _command(args) -> str:
    """The command line this run is equivalent to (recorded in the results)."""
    parts = ["adaptkern bench", f"--op {args.op}"] + (["--quick"] if args.quick else [])
    parts += [f"--device {args.device}"] if args.device else []
    parts += [f"--rep-ms {args.rep_ms:g}"] if args.rep_ms else []
    return " ".join(parts + [f"--out {args.out}"])


def _static(args) -> int:
    from adaptkern.bench import static

    ops = None if args.op == "all" else [args.op]
    try:
        static.run_audit(ops, archs=tuple(args.arch))
    except (RuntimeError, ValueError) as error:
        print(f"adaptkern bench: error: --static: {error}", file=sys.stderr)
        return 1
    return 0


def run(args) -> int:
    if args.table is not None:
        return _table(args)
    if args.static:
        return _static(args)
    import torch

    from adaptkern.bench import plot, runner, suite, table

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("adaptkern bench: error: --device cuda, but CUDA is not available", file=sys.stderr)
        return 2
    if device.type != "cuda":
        print(suite.CPU_NOTE)
    ops = list(suite.OPS) if args.op == "all" else [args.op]
    saved = {}

    def checkpoint(data):  # partial results survive a crash or a time limit
        saved["path"] = runner.write_results(data, args.out, saved.get("path"))

    data = suite.run_suite(device, ops=ops, quick=args.quick, rep_ms=args.rep_ms, command=_command(args),
                           progress=not args.no_progress, checkpoint=checkpoint)
    print(table.header(data).replace("  \n", "\n").replace("**", ""))
    print(table.text(data))
    for note in data["notes"]:
        print(f"note: {note}")
    path = runner.write_results(data, args.out, saved.get("path"))
    print(f"wrote {path}")
    if not args.no_plot and data["rows"]:
        print(f"wrote {plot.plot_results(data, os.path.splitext(path)[0] + '.png')}")
    for error in data["errors"]:
        print(f"ERROR: {error}", file=sys.stderr)
    if data["errors"]:
        print(f"adaptkern bench: {len(data['errors'])} op(s) FAILED (see above); their rows are missing",
              file=sys.stderr)
        return 1
    return 0


def register(subparsers) -> None:
    from adaptkern.bench.suite import OPS
    from adaptkern.bench.table import RESULTS_DIR

    parser = subparsers.add_parser(
        "bench", help="benchmark the ops against their peers (GPU; a small CPU suite without one)",
        description="Check every implementation against the reference, then time it (CUDA events via "
                    "triton.testing.do_bench on a GPU). Reports exact TFLOP/s, GB/s, the fraction of the measured "
                    "matmul / copy peaks and the ratio to every peer timed in the same run; writes "
                    "<out>/<device>-<date>.json and a PNG. Without a GPU it runs a small CPU suite (reference "
                    "path vs naive padded PyTorch): GPU figures need a GPU.")
    parser.add_argument("--op", default="all", choices=list(OPS) + ["all"], help="which op (default all)")
    parser.add_argument("--quick", action="store_true", help="fewer cases and shorter timings (a few minutes on GPU)")
    parser.add_argument("--out", default=RESULTS_DIR, metavar="DIR", help=f"results folder (default {RESULTS_DIR})")
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when available")
    parser.add_argument("--rep-ms", type=positive_float, metavar="MS", help="timing budget per measurement")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--table", nargs="?", const="latest", metavar="FILE",
                        help="print FILE (default: the newest GPU results in --out) as a markdown table; run nothing")
    parser.add_argument("--static", action="store_true",
                        help="no timing: compile each Triton kernel as launched for --arch (no GPU needed) and print "
                             "registers, spills, shared memory, tensor-core use and hot-loop instructions per unit "
                             "of work (a static proxy for speed)")
    parser.add_argument("--arch", type=int, nargs="+", default=[90], choices=[80, 90],
                        help="SM architectures for --static (default 90)")
    parser.set_defaults(func=run)
