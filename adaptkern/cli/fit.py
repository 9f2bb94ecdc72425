"""``adaptkern fit``: fit a scaling law to a CSV, print the parameters with bootstrap
intervals, and write the law as JSON and a PNG of data vs fit."""

import os
import re
import sys

from ._types import fraction, int_at_least

# Named run subsets: the runs a paper fits its laws on, as (column values) rows to keep.
# Gadre et al. 2024 fit their loss law on 5 runs per dataset and their error law on those
# plus the 1.4B model at M = 20 (their scaling/shared.py; ../shared/data/README.md).
_GADRE_LOSS_RUNS = [("d=96_l=8_h=4", 1.0), ("d=512_l=8_h=4", 1.0), ("d=576_l=24_h=8", 1.0),
                    ("d=1024_l=24_h=8", 1.0), ("d=96_l=8_h=4", 16.0)]
SUBSETS = {
    "gadre2024": {
        "columns": ("model", "chinchilla_multiplier"),
        "runs": {"chinchilla": _GADRE_LOSS_RUNS, "overtraining": _GADRE_LOSS_RUNS,
                 "downstream": _GADRE_LOSS_RUNS + [("open_lm_1b", 1.0)]},
        "help": "Gadre et al. 2024's fitting runs (5 per dataset for the loss laws, plus open_lm_1b at M=20 for "
                "downstream); combine with --where dataset=...",
    },
}


def run(args) -> int:
    from adaptkern import scaling
    from adaptkern.scaling import data as scaling_data

    try:
        overrides = _parse_columns(args.columns)
        table = scaling_data.filter_rows(scaling_data.read_csv(args.data), args.where or ())
        if args.subset:
            table = _subset(table, args.subset, args.law)
        groups = _groups(table, args.group)
        stem = os.path.splitext(os.path.basename(args.data))[0]
        paths = {}
        for value, _ in groups:
            name = f"{stem}_{args.law}" + (f"_{_slug(args.subset)}" if args.subset else "") + \
                (f"_{_slug(value)}" if value is not None else "")
            paths[value] = os.path.join(args.out, name + ".json"), os.path.join(args.out, name + ".png")
        existing = [p for pair in paths.values() for p in pair if os.path.exists(p)]
        if existing and not args.overwrite:
            raise ValueError(f"{existing[0]} exists (an earlier fit); pass --overwrite to replace it, or another --out")
        os.makedirs(args.out, exist_ok=True)
        for value, rows in groups:
            columns = scaling_data.law_columns(rows, args.law, overrides)
            law = scaling.FITS[args.law](**columns, n_boot=args.n_boot, seed=args.seed, confidence=args.confidence)
            json_path, png_path = paths[value]
            _write_json(law, json_path, args, overrides, value)
            scaling.plot_fit(law, columns, png_path, title=None if value is None else f"{args.group} = {value}")
            _report(law, value, args.group, json_path, png_path)
    except (ValueError, OSError) as error:
        print(f"adaptkern fit: error: {error}", file=sys.stderr)
        return 2
    return 0


def _parse_columns(items):
    overrides = {}
    for item in items or ():
        arg, sep, column = item.partition("=")
        if not sep or not arg or not column:
            raise ValueError(f"--columns: expected ARG=COLUMN (e.g. loss=loss_c4_val), got {item!r}")
        overrides[arg.strip()] = column
    return overrides


def _subset(table, name, law):
    spec = SUBSETS[name]
    runs = spec["runs"].get(law)
    if runs is None:
        raise ValueError(f"--subset {name}: defined for --law {', '.join(spec['runs'])}, not {law}")
    missing = [c for c in spec["columns"] if c not in table]
    if missing:
        raise ValueError(f"--subset {name}: the data has no column {missing[0]!r} (needs {', '.join(spec['columns'])})")
    wanted = set(runs)
    types = [type(v) for v in runs[0]]  # compare as the run lists spell them (1 == 1.0)
    rows = zip(*(table[c] for c in spec["columns"]))
    keep = [i for i, row in enumerate(rows) if tuple(t(v) for t, v in zip(types, row)) in wanted]
    if not keep:
        raise ValueError(f"--subset {name}: no row of the data is one of its runs")
    return {c: [values[i] for i in keep] for c, values in table.items()}


def _groups(table, column):
    if column is None:
        return [(None, table)]
    if column not in table:
        raise ValueError(f"--group: no column {column!r} in the data; columns: {', '.join(table)}")
    values = list(dict.fromkeys(table[column]))
    return [(v, {k: [x for x, g in zip(col, table[column]) if g == v] for k, col in table.items()}) for v in values]


def _slug(value):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(value))


def _write_json(law, path, args, overrides, group_value):
    import json

    payload = law.to_dict()
    payload["data"] = {"csv": os.path.abspath(args.data), "where": list(args.where or ()), "subset": args.subset,
                       "columns": overrides, "group": args.group, "group_value": group_value}
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")


def _report(law, group_value, group, json_path, png_path):
    info = law.fit_info
    header = f"{law.name} law" + (f" ({group} = {group_value})" if group_value is not None else "")
    print(f"{header}: {law.formula}")
    status = "converged" if info.get("converged") else "DID NOT CONVERGE"
    print(f"  {info['n_points']} points, {info['n_starts']} starts, objective {info['objective']:.6g}, {status}: "
          f"{info['message']}")
    width = max(len(k) for k in law.param_names)
    ci = f"{law.confidence:.0%} CI" if law.intervals else ""
    if law.intervals:
        print(f"  {'':<{width}}  {'estimate':>12}  {ci:>27}   (bootstrap: {info['n_boot']} resamples, "
              f"{info['n_boot_failed']} failed, seed {info['seed']})")
    for key, value in law.params.items():
        line = f"  {key:<{width}}  {value:>12.6g}"
        if key in law.intervals:
            low, high = law.intervals[key]
            line += f"  [{low:>12.6g}, {high:>12.6g}]"
        print(line)
    print(f"  wrote {json_path}\n  wrote {png_path}")


def register(subparsers) -> None:
    from adaptkern.scaling.data import DEFAULT_COLUMNS

    defaults = "; ".join(f"{law}: " + ", ".join(f"{arg}={'|'.join(cols)}" for arg, cols in args.items())
                         for law, args in DEFAULT_COLUMNS.items())
    parser = subparsers.add_parser(
        "fit", help="fit a scaling law to a CSV; print it with bootstrap intervals, write JSON and a PNG",
        description="Fit a scaling law to the rows of a CSV file. Default columns (first present wins): "
                    f"{defaults}. For chinchilla/overtraining, D may come from a compute column (C=COLUMN, "
                    "D = C / 6N).")
    parser.add_argument("data", metavar="DATA.csv", help="CSV file with a header row")
    parser.add_argument("--law", required=True, choices=["chinchilla", "overtraining", "downstream", "shape"])
    parser.add_argument("--columns", nargs="+", action="extend", metavar="ARG=COLUMN",
                        help="map the law's arguments to CSV columns, e.g. N=params_N 'loss=loss_c4_val'")
    parser.add_argument("--where", action="append", metavar="COND",
                        help="keep rows where COND holds (repeatable, all must hold): COLUMN OP VALUE with OP in "
                             "= != < <= > >=; '=' and '!=' take comma-separated alternatives, e.g. dataset=rpj")
    parser.add_argument("--subset", choices=sorted(SUBSETS), metavar="NAME",
                        help="keep only a paper's fitting runs: " + "; ".join(f"{k}: {v['help']}"
                                                                                for k, v in SUBSETS.items()))
    parser.add_argument("--group", metavar="COLUMN", help="fit one law per distinct value of COLUMN (e.g. a shape)")
    parser.add_argument("--out", default=".", metavar="DIR", help="output folder for JSON and PNG (default: .)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the JSON / PNG of an earlier fit of the same name (refused otherwise)")
    parser.add_argument("--n-boot", type=int_at_least(0), default=200, metavar="K",
                        help="bootstrap resamples for the intervals (default 200; 0 turns them off)")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--confidence", type=fraction, default=0.95, help="interval level (default 0.95)")
    parser.set_defaults(func=run)
