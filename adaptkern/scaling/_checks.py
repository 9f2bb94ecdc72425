"""Validation of fit data. Every message starts with the public function's name and names
the argument (or CSV column) and what was expected, as in ``adaptkern/_checks.py``."""

import numbers

import numpy as np


def as_data(fn: str, name: str, values, *, positive: bool = True) -> np.ndarray:
    """``values`` as a 1-D float64 array of finite numbers (and > 0 when ``positive``)."""
    if isinstance(values, (str, bytes)) or values is None:
        raise TypeError(f"{fn}: {name} must be a 1-D sequence of numbers, got {type(values).__name__}")
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as error:  # e.g. ragged nesting: [1.0, [2.0, 3.0]]
        raise ValueError(f"{fn}: {name} must be a 1-D sequence of numbers; numpy cannot read it as one "
                         f"array: {error}") from None
    if np.iscomplexobj(array):
        raise TypeError(f"{fn}: {name} must hold real numbers, got complex values ({array.dtype})")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.number) or array.dtype == object):
        raise TypeError(f"{fn}: {name} must hold numbers, got dtype {array.dtype}")
    try:
        array = array.astype(np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: {name} must hold numbers, got {array.dtype} values that are not") from None
    if array.ndim != 1:
        raise ValueError(f"{fn}: {name} must be 1-D, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{fn}: {name} must be finite, but {name}[{i}] = {array[i]}")
    if positive and (array <= 0).any():
        i = int(np.argmax(array <= 0))
        raise ValueError(f"{fn}: {name} must be > 0, but {name}[{i}] = {array[i]}")
    return array


def as_columns(fn: str, n_params: int, **columns) -> list:
    """Validate named data columns (positive, finite, one length, enough points to fit
    ``n_params`` parameters); returns them as float64 arrays, in the order given."""
    arrays = {name: as_data(fn, name, values) for name, values in columns.items()}
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"len({name})={n}" for name, n in lengths.items())
        raise ValueError(f"{fn}: the data columns must have one length, got {shown}")
    n = next(iter(lengths.values()))
    if n < n_params:
        raise ValueError(f"{fn}: {n} data points cannot determine {n_params} parameters; "
                         f"pass at least {n_params} points in {', '.join(arrays)}")
    distinct = len(np.unique(np.stack(list(arrays.values()), axis=1), axis=0))
    if distinct < n_params:
        raise ValueError(f"{fn}: {distinct} distinct data points ({n} rows, some repeated) cannot determine "
                         f"{n_params} parameters; pass at least {n_params} distinct points in {', '.join(arrays)}")
    return list(arrays.values())


def check_spread(fn: str, name: str, values: np.ndarray, minimum: int, why: str) -> None:
    """Raise unless ``values`` (a predictor) takes at least ``minimum`` distinct values: a law
    fitted along a predictor that barely varies has parameters the data cannot determine,
    and an optimizer still reports them as converged."""
    distinct = np.unique(values)
    if len(distinct) < minimum:
        shown = ", ".join(f"{v:.6g}" for v in distinct[:4]) + (", ..." if len(distinct) > 4 else "")
        raise ValueError(f"{fn}: {name} takes {len(distinct)} distinct value{'s' if len(distinct) != 1 else ''} "
                         f"({shown}); {why}: pass data with at least {minimum} distinct {name} values")


def as_real(fn: str, name: str, value) -> float:
    """A scalar argument as a finite float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a real number, got {type(value).__name__}")
    if not np.isfinite(value):
        raise ValueError(f"{fn}: {name} must be finite, got {value}")
    return float(value)


def check_confidence(fn: str, confidence) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real):
        raise TypeError(f"{fn}: confidence must be a number in (0, 1), got {type(confidence).__name__}")
    if not 0 < confidence < 1:
        raise ValueError(f"{fn}: confidence must be in (0, 1), got {confidence}")
    return float(confidence)


def check_n_boot(fn: str, n_boot) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral):
        raise TypeError(f"{fn}: n_boot must be an int, got {type(n_boot).__name__}")
    if n_boot < 0:
        raise ValueError(f"{fn}: n_boot must be >= 0, got {n_boot}")
    return int(n_boot)
