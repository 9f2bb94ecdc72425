"""Case-resampling bootstrap: refit a law on data points drawn with replacement and report
percentile intervals of every parameter (and, through ``ScalingLaw.interval``, of any
prediction)."""

import numbers
import warnings

import numpy as np
from tqdm.auto import tqdm

from ._checks import check_confidence, check_n_boot
from .law import ConvergenceWarning, percentile_interval

# A resample with fewer distinct points than free parameters cannot determine the law; it is
# drawn again, at most this many times per replica (small data sets need a few tries:
# 5 points and 4 parameters accept about 42% of draws).
_MAX_REDRAWS = 1000


def check_settings(fn, n_boot, confidence, seed=None):
    """Validate the bootstrap arguments up front, before a fit spends any time."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise (ValueError if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) else TypeError)(
            f"{fn}: seed must be None or an int >= 0, got {seed!r}")
    return check_n_boot(fn, n_boot), check_confidence(fn, confidence)


def attach(law, refit, columns, *, fn, n_boot, seed=None, confidence=0.95, progress=None, n_free=None):
    """Bootstrap ``law`` in place and return it.

    law: the point fit (a ``ScalingLaw``); its parameters are handed to ``refit`` as the
        start of every refit.
    refit: ``refit(columns, law) -> (params, converged)``; ``columns`` the resampled data
        (list of 1-D arrays), ``params`` a sequence in ``law.param_names`` order.
    columns: the data the point fit used, as a list of equally long 1-D arrays.
    n_boot: number of bootstrap replicas (0: nothing to do).
    seed: int or None; None draws fresh entropy, recorded in ``law.fit_info`` so the run
        can be replayed.
    confidence: level of the percentile intervals, in (0, 1).
    progress: show a tqdm bar (None: only on a terminal).
    fn: the public fit function, named in messages.
    n_free: parameters the refit determines (default: all of ``law.param_names``; fewer
        when the fit holds some fixed); a resample needs that many distinct points.

    Replicas whose refit raises or does not converge are dropped and counted in
    ``law.fit_info["n_boot_failed"]``; more than 10% failing triggers a ConvergenceWarning.
    """
    n_boot, confidence = check_settings(fn, n_boot, confidence)
    if n_boot == 0:
        return law
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % 2**63)
    rng = np.random.default_rng(seed)
    n_params = len(law.param_names)
    n_free = n_params if n_free is None else n_free
    _, point_ids = np.unique(np.stack(columns, axis=1), axis=0, return_inverse=True)  # repeated rows share an id
    rows, failed = [], 0
    for _ in tqdm(range(n_boot), desc=f"bootstrap {law.name}", disable=None if progress is None else not progress,
                  leave=False):
        idx = _draw(rng, point_ids.ravel(), n_free, fn)
        try:
            params, converged = refit([c[idx] for c in columns], law)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            failed += 1
            continue
        if not converged or not np.all(np.isfinite(params)):
            failed += 1
            continue
        rows.append(np.asarray(params, dtype=np.float64))
    law.boot_params = np.array(rows).reshape(-1, n_params)
    law.confidence = confidence
    if len(rows):
        low, high = percentile_interval(law.boot_params, confidence)
        law.intervals = {p: (float(lo), float(hi)) for p, lo, hi in zip(law.param_names, low, high)}
    law.fit_info.update(n_boot=n_boot, n_boot_failed=failed, seed=seed)
    if failed > 0.1 * n_boot:
        warnings.warn(f"{fn}: {failed} of {n_boot} bootstrap refits failed or did not converge; "
                      f"the intervals rest on the other {len(rows)}", ConvergenceWarning, stacklevel=4)
    return law


def _draw(rng, point_ids, n_free, fn):
    n = len(point_ids)
    for _ in range(_MAX_REDRAWS):
        idx = rng.integers(0, n, n)
        if len(np.unique(point_ids[idx])) >= n_free:
            return idx
    raise ValueError(f"{fn}: n_boot needs resamples of the {n} data points with {n_free} distinct ones, which "
                     f"they rarely give; pass more points or n_boot=0")
