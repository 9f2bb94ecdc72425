"""The CPU suite of ``adaptkern bench``, repeated: every ratio of adaptkern's cpu backend to
the other implementations of a case (peer ms / cpu-backend ms, > 1: adaptkern faster),
measured side by side within each run, as the median and range over the repetitions.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cpu_ratios.py --repeat 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cpu_ratios.py --repeat 3 --clock cpu   # on a shared machine

Writes every run's full results (``adaptkern bench`` JSON) and a summary to --out. Issue
15's goals are the rows marked with their target.
"""

import argparse
import contextlib
import json
import os
import statistics
import sys

import torch

from adaptkern.bench import runner, suite, timing

# (op, case, mode, peer) -> the ratio issue 15 asks for.
GOALS = {
    ("varlen_attention", "cpu-equal-8x128", "fwd_bwd", "padded SDPA"): 1.0,
    ("varlen_attention", "cpu-spread-8", "fwd_bwd", "padded SDPA"): 2.0,
    ("patch_embed", "cpu-spread-p16", "fwd_bwd", "resample + conv2d per image"): 1.5,
    ("interp_pos_embed", "cpu-spread-16", "fwd_bwd", "F.interpolate per image"): 1.5,
}


def ratios(data) -> dict:
    """{(op, case, mode, peer): peer ms / cpu-backend ms} of one run."""
    out = {}
    for row in data["rows"]:
        if row["ours"] and "reference" not in row["impl"] and row.get("speedup_vs"):
            for peer, ratio in row["speedup_vs"].items():
                out[row["op"], row["case"], row["mode"], peer] = ratio
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of the whole CPU suite (default 3)")
    parser.add_argument("--rep-ms", type=float, default=300.0, help="timing budget per implementation and mode")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "cpu"))
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default) or the process's CPU time, which leaves out waiting for a core "
                             "on a shared machine (use with OMP_NUM_THREADS=1)")
    parser.add_argument("--op", action="append", choices=suite.OPS, help="only this op (repeatable; default all)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    command = " ".join(["python"] + sys.argv)
    runs = []
    for i in range(args.repeat):
        with timing.cpu_clock() if args.clock == "cpu" else contextlib.nullcontext():
            data = suite.run_suite("cpu", ops=args.op or suite.OPS, rep_ms=args.rep_ms, command=command, progress=False)
        path = runner.write_results(data, args.out)
        errors = f" ({len(data['errors'])} errors)" if data["errors"] else ""
        print(f"run {i + 1}/{args.repeat}: wrote {path}{errors}")
        for error in data["errors"]:
            print(f"ERROR: {error}", file=sys.stderr)
        runs.append(ratios(data))
    keys = sorted(set().union(*runs))
    summary = []
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock; peer ms / adaptkern "
          f"cpu-backend ms (> 1: adaptkern faster), median [min, max] of {args.repeat} runs")
    for key in keys:
        values = [r[key] for r in runs if key in r]
        goal = GOALS.get(key)
        summary.append(dict(op=key[0], case=key[1], mode=key[2], peer=key[3], median=statistics.median(values),
                            min=min(values), max=max(values), runs=values, goal=goal))
        mark = "" if goal is None else f"   goal >= {goal}: {'met' if statistics.median(values) >= goal else 'MISSED'}"
        print(f"{key[0]:17} {key[1]:20} {key[2]:8} vs {key[3]:36} {statistics.median(values):6.2f}x "
              f"[{min(values):.2f}, {max(values):.2f}]{mark}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ratios.json"), "w") as f:
        json.dump({"command": command, "threads": torch.get_num_threads(), "clock": args.clock, "ratios": summary}, f,
                  indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
