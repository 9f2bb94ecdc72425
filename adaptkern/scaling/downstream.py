"""Gadre et al. 2024, eq. (5): average top-1 error as a function of loss,
Err(L) = epsilon - k exp(-gamma L): epsilon is the error at infinite loss (chance),
and the error falls exponentially as the loss drops."""

import numpy as np

from . import bootstrap
from ._blas import single_threaded_blas
from ._checks import as_columns, check_spread
from ._fitting import linear_fit, multistart_least_squares, record_fit
from .law import ScalingLaw, as_float_array, output

FN = "fit_downstream"


class DownstreamLaw(ScalingLaw):
    """Err(L) = epsilon - k exp(-gamma L)."""

    name = "downstream"
    formula = "Err(L) = epsilon - k * exp(-gamma * L)"
    param_names = ("epsilon", "k", "gamma")

    def predict(self, loss):
        """Average top-1 error at validation loss ``loss``."""
        loss = as_float_array(loss)
        return output(self.epsilon - self.k * np.exp(-self.gamma * loss))


@single_threaded_blas()
def fit_downstream(loss, err, *, n_boot=0, seed=None, confidence=0.95, progress=None):
    """Fit Err = epsilon - k exp(-gamma L) to (loss, error) pairs.

    loss: 1-D array-like of validation losses (> 0), one per model.
    err: 1-D array-like of average top-1 errors (> 0), same length.
    n_boot, seed, confidence, progress: case-resampling bootstrap (``bootstrap.attach``);
        refits start from the point fit.

    Least squares on the error (as the paper's scipy curve_fit), Levenberg-Marquardt with
    an analytic Jacobian, from the paper's start (k, gamma, epsilon) = (1, 1, 1) (curve_fit's
    default) and from a scan over gamma in which (epsilon, k) solve a linear problem;
    keeps the lowest sum of squares among converged runs. A fit with no converged run
    warns (ConvergenceWarning) with the optimizer's message.
    """
    bootstrap.check_settings(FN, n_boot, confidence, seed)
    loss, err = as_columns(FN, 3, loss=loss, err=err)
    check_spread(FN, "loss", loss, 3, "epsilon - k exp(-gamma L) has 3 parameters to fix along the loss")
    starts = [np.ones(3), *_projected_starts(loss, err)]
    result = _fit(loss, err, starts)
    law = record_fit(FN, DownstreamLaw(**dict(zip(DownstreamLaw.param_names, result.x))),
                     objective=2 * result.cost, converged=result.success, message=result.message,
                     n_points=len(loss), n_starts=len(starts))

    def refit(columns, start):
        result = _fit(*columns, [np.array(list(start.params.values()))])
        return result.x, result.success

    return bootstrap.attach(law, refit, [loss, err], n_boot=n_boot, seed=seed, confidence=confidence,
                            progress=progress, fn=FN)


def _fit(loss, err, starts):
    def residuals(theta):
        epsilon, k, gamma = theta
        return epsilon - k * np.exp(-gamma * loss) - err

    def jacobian(theta):
        epsilon, k, gamma = theta
        decay = np.exp(-gamma * loss)
        return np.stack([np.ones_like(loss), -decay, k * loss * decay], axis=1)

    return multistart_least_squares(FN, residuals, jacobian, starts, method="lm", x_scale="jac", max_nfev=1000)


def _projected_starts(loss, err, keep=2):
    """For fixed gamma the law is linear in (epsilon, k): the ``keep`` best gammas of a scan."""
    candidates = []
    for gamma in np.geomspace(0.01, 10.0, 31):
        coef, sse = linear_fit(np.stack([np.ones_like(loss), -np.exp(-gamma * loss)], axis=1), err)
        candidates.append((sse, np.array([*coef, gamma])))
    candidates.sort(key=lambda item: item[0])
    return [theta for _, theta in candidates[:keep]]
