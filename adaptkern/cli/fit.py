"""``adaptkern fit``: fit a scaling law to a CSV, print the parameters with bootstrap
intervals, and write the law as JSON and a PNG of data vs fit."""

import os
import re
import sys

from ._types import fraction, int_at_least


def run(args) -> int:
    from adaptkern import scaling
    from adaptkern.scaling import data as scaling_data

    try:
        overrides = _parse_columns(args.columns)
        table = scaling_data.filter_rows(scaling_data.read_csv(args.data), args.where or ())
        groups = _groups(table, args.group)
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.splitext(os.path.basename(args.data))[0]
        for value, rows in groups:
            columns = scaling_data.law_columns(rows, args.law, overrides)
            law = scaling.FITS[args.law](**columns, n_boot=args.n_boot, seed=args.seed, confidence=args.confidence)
            name = f"{stem}_{args.law}" + (f"_{_slug(value)}" if value is not None else "")
            json_path, png_path = os.path.join(args.out, name + ".json"), os.path.join(args.out, name + ".png")
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
    payload["data"] = {"csv": os.path.abspath(args.data), "where": list(args.where or ()),
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
    parser.add_argument("--group", metavar="COLUMN", help="fit one law per distinct value of COLUMN (e.g. a shape)")
    parser.add_argument("--out", default=".", metavar="DIR", help="output folder for JSON and PNG (default: .)")
    parser.add_argument("--n-boot", type=int_at_least(0), default=200, metavar="K",
                        help="bootstrap resamples for the intervals (default 200; 0 turns them off)")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--confidence", type=fraction, default=0.95, help="interval level (default 0.95)")
    parser.set_defaults(func=run)
