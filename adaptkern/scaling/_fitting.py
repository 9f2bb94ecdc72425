"""Multi-start least squares and the bookkeeping every fit shares (fit_info, the
non-convergence warning)."""

import warnings

import numpy as np
from scipy.optimize import least_squares

from .law import ConvergenceWarning


def multistart_least_squares(fn, residuals, jacobian, starts, **kwargs):
    """Run scipy's least_squares from every start; return the result with the lowest cost
    among those that report success (or the lowest overall when none does).
    Starts whose residuals are not finite are skipped."""
    results = []
    for x0 in starts:
        with np.errstate(all="ignore"):
            if not np.all(np.isfinite(residuals(x0))):
                continue
            result = least_squares(residuals, x0, jac=jacobian, **kwargs)
        if np.isfinite(result.cost):
            results.append(result)
    if not results:
        raise ValueError(f"{fn}: the law gives non-finite values at every start; check the data")
    return best_result(results, cost=lambda result: result.cost)[0]


def best_result(results, cost):
    """``(result, converged)``: the result with the lowest ``cost(result)`` among those that
    report success, else the lowest overall (``converged`` False); ties keep the first."""
    succeeded = [result for result in results if result.success]
    return min(succeeded or results, key=cost), bool(succeeded)


def linear_fit(features, target):
    """Least-squares coefficients of ``target`` on the columns of ``features`` (columns
    rescaled first: in these laws they differ by many decades) and the sum of squares."""
    norms = np.linalg.norm(features, axis=0)
    norms[norms == 0] = 1.0
    coef, *_ = np.linalg.lstsq(features / norms, target, rcond=None)
    coef = coef / norms
    return coef, float(np.sum((features @ coef - target) ** 2))


def record_fit(fn, law, *, objective, converged, message, n_points, n_starts, **extra):
    """Fill ``law.fit_info``; warn with the optimizer's message when it did not converge."""
    law.fit_info = {"n_points": int(n_points), "objective": float(objective), "converged": bool(converged),
                    "message": str(message), "n_starts": int(n_starts), **extra}
    if not converged:
        # stacklevel 4: this helper, the fit function, its single_threaded_blas wrapper, the caller.
        warnings.warn(f"{fn}: the optimizer did not converge: {message}", ConvergenceWarning, stacklevel=4)
    return law
