"""Fit data from CSV files: read, filter rows (``--where``), pick and validate columns.

Default column names follow the public data sets in ../shared/data (Gadre et al.'s per-model
CSV and Epoch AI's Chinchilla points), so they fit without flags.
"""

import csv
import operator
import re

import numpy as np

# Per law, each argument of its fit function and the CSV columns tried for it, in order.
# "D" may instead come from a compute column: D = C / (6 N).
DEFAULT_COLUMNS = {
    "chinchilla": {"N": ("params_N", "Model Size", "N"), "D": ("tokens_D", "Training Tokens", "D"),
                   "loss": ("loss_c4_val", "loss", "L")},
    "overtraining": {"N": ("params_N", "Model Size", "N"), "D": ("tokens_D", "Training Tokens", "D"),
                     "loss": ("loss_c4_val", "loss", "L")},
    "downstream": {"loss": ("loss_c4_val", "loss", "L"), "err": ("err_avg17", "err", "error")},
    "shape": {"compute": ("compute", "flops", "C", "Training FLOP"), "loss": ("loss", "L", "loss_c4_val")},
}
COMPUTE_COLUMNS = ("flops_6ND", "Training FLOP", "C", "compute")

_OPS = {"==": operator.eq, "=": operator.eq, "!=": operator.ne, "<=": operator.le, ">=": operator.ge,
        "<": operator.lt, ">": operator.gt}
_WHERE = re.compile(r"^\s*([^=!<>]+?)\s*(==|!=|<=|>=|=|<|>)\s*(.*?)\s*$")


def read_csv(path) -> dict:
    """The CSV at ``path`` as {column: list of strings}."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ValueError(f"read_csv: {path} has no header row")
        columns = {name: [] for name in reader.fieldnames}
        for row in reader:
            # DictReader fills a short row with None and keeps a long row's surplus under None.
            if None in row or any(value is None for value in row.values()):
                fields = len(row) - 1 + len(row[None]) if None in row else sum(v is not None for v in row.values())
                raise ValueError(f"read_csv: {path} line {reader.line_num} has {fields} fields but the header has "
                                 f"{len(reader.fieldnames)}; fix or delete that row")
            for name in reader.fieldnames:
                columns[name].append(row[name])
    return columns


def filter_rows(table: dict, where=()) -> dict:
    """Rows of ``table`` matching every condition in ``where``.

    Each condition is ``COLUMN OP VALUE`` with OP one of = (or ==), !=, <, <=, >, >=.
    ``=`` and ``!=`` accept comma-separated alternatives (``dataset=rpj,c4_original``).
    Values compare as numbers when both sides parse as numbers (``chinchilla_multiplier=1``
    matches ``1.0``), as strings otherwise. Only the first operator splits, so values may
    contain ``=`` (``model=d=96_l=8_h=4``).
    """
    keep = np.ones(_n_rows(table), dtype=bool)
    for condition in where:
        match = _WHERE.match(condition)
        if not match:
            raise ValueError(f"where: cannot parse {condition!r}; expected COLUMN OP VALUE, OP one of "
                             f"{', '.join(_OPS)}")
        name, op, value = match.groups()
        if name not in table:
            raise ValueError(f"where: no column {name!r} in the data; columns: {', '.join(table)}")
        alternatives = value.split(",") if op in ("=", "==", "!=") else [value]
        hit = np.array([any(_compare(cell, alt, _OPS[op] if op != "!=" else operator.eq) for alt in alternatives)
                        for cell in table[name]], dtype=bool)
        keep &= ~hit if op == "!=" else hit
    return {name: [v for v, k in zip(values, keep) if k] for name, values in table.items()}


def law_columns(table: dict, law: str, overrides=None) -> dict:
    """Float columns for ``law``'s fit function, as {argument: array}.

    overrides: {argument: column name} replacing the defaults of ``DEFAULT_COLUMNS``; for
    chinchilla / overtraining, ``C`` names a compute column from which D = C / (6 N) when
    no token column is given or found. Values must be finite and > 0; errors name the
    column and row.
    """
    if law not in DEFAULT_COLUMNS:
        raise ValueError(f"law_columns: law must be one of {', '.join(DEFAULT_COLUMNS)}, got {law!r}")
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(DEFAULT_COLUMNS[law]) - ({"C"} if "D" in DEFAULT_COLUMNS[law] else set())
    if unknown:
        raise ValueError(f"columns: {law} takes {', '.join(DEFAULT_COLUMNS[law])}"
                         f"{' (or C for D)' if 'D' in DEFAULT_COLUMNS[law] else ''}, got {', '.join(sorted(unknown))}")
    if _n_rows(table) == 0:
        raise ValueError("the data has no rows (after filtering with --where)")
    result = {}
    for arg, candidates in DEFAULT_COLUMNS[law].items():
        if arg == "D" and "D" not in overrides and ("C" in overrides or not _first(table, candidates)):
            label = "C" if "C" in overrides else "D"
            compute = _column(table, overrides.get("C") or _first(table, COMPUTE_COLUMNS), label,
                              candidates + COMPUTE_COLUMNS, hint="D=COLUMN (tokens) or C=COLUMN (FLOPs)")
            result["D"] = compute / (6 * result["N"])
            continue
        result[arg] = _column(table, overrides.get(arg) or _first(table, candidates), arg, candidates)
    return result


def _column(table, name, arg, candidates, hint=None):
    if name is None:
        raise ValueError(f"no column for {arg}: none of {', '.join(map(repr, candidates))} is in the data; "
                         f"name one with --columns {hint or arg + '=COLUMN'} (columns: {', '.join(table)})")
    if name not in table:
        raise ValueError(f"column {name!r} (for {arg}) is not in the data; columns: {', '.join(table)}")
    values = []
    for i, cell in enumerate(table[name]):
        try:
            values.append(float(cell))
        except ValueError:
            raise ValueError(f"column {name!r} (for {arg}): row {i + 1} holds {cell!r}, not a number") from None
    values = np.array(values)
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"column {name!r} (for {arg}): row {i + 1} holds {table[name][i]!r}; values must be finite "
                         f"and > 0")
    return values


def _first(table, candidates):
    return next((c for c in candidates if c in table), None)


def _n_rows(table):
    return len(next(iter(table.values()), []))


def _compare(cell, value, op):
    try:
        return op(float(cell), float(value))
    except ValueError:
        return op(cell, value)
