"""Gadre et al. 2024 ("Language models scale reliably with over-training and on downstream
tasks"), eq. (4): L(C, M) = E + (a M^eta + b M^-eta) C^-eta with C = 6 N D and token
multiplier M = D / N, i.e. a Chinchilla law with alpha = beta = 2 eta written in compute and
over-training."""

import itertools

import numpy as np

from . import bootstrap
from ._blas import single_threaded_blas
from ._checks import as_columns, check_spread
from ._fitting import linear_fit, multistart_least_squares, record_fit
from .law import ScalingLaw, as_float_array, output

FN = "fit_overtraining"

# The starts of the paper's code (github.com/mlfoundations/scaling, scaling/laws.py, commit
# a003c49), written in eq. (4)'s parameters: coefficients in {1e2, 3e2, 1e3, 3e3}, eta in
# {0.05, 0.15} (their exponent of N is -2 eta) and E in {0, 1, 2, 10}.
INIT_GRID = {
    "E": (0.0, 1.0, 2.0, 10.0),
    "a": (1e2, 3e2, 1e3, 3e3),
    "b": (1e2, 3e2, 1e3, 3e3),
    "eta": (0.05, 0.15),
}


class OvertrainingLaw(ScalingLaw):
    """L = E + (a M^eta + b M^-eta) C^-eta, C = 6 N D, M = D / N (N parameters, D tokens)."""

    name = "overtraining"
    formula = "L(C, M) = E + (a * M^eta + b * M^-eta) * C^-eta,  C = 6 N D,  M = D / N"
    param_names = ("E", "a", "b", "eta")

    def predict(self, N, D):
        """Loss of a model with ``N`` parameters trained on ``D`` tokens (broadcast)."""
        N, D = as_float_array(N), as_float_array(D)
        return self.predict_from_compute(6 * N * D, D / N)

    def predict_from_compute(self, C, M):
        """Loss at training compute ``C`` FLOPs and token multiplier ``M`` = D / N."""
        C, M = as_float_array(C), as_float_array(M)
        return output(self.E + (self.a * M**self.eta + self.b * M**-self.eta) * C**-self.eta)


@single_threaded_blas()
def fit_overtraining(N, D, loss, *, n_boot=0, seed=None, confidence=0.95, progress=None):
    """Fit Gadre et al.'s L(C, M) = E + (a M^eta + b M^-eta) C^-eta.

    N: 1-D array-like of model sizes (parameters, > 0). Gadre et al. count every
        parameter, embeddings included (``params_N`` in the shared CSV).
    D: 1-D array-like of training tokens (> 0), same length. The runs need at least 2
        distinct token multipliers M = D / N (else a and b cannot be told apart).
    loss: 1-D array-like of validation losses (> 0), same length (the paper: C4 eval).
    n_boot, seed, confidence, progress: case-resampling bootstrap (``bootstrap.attach``);
        refits start from the point fit; a resample whose runs share one M counts as failed.

    Least squares on the loss itself (as the paper's scipy curve_fit), Levenberg-Marquardt
    (scipy's least_squares, method "lm", analytic Jacobian) from every point of
    ``INIT_GRID`` (the paper's starts) plus, for robustness on other data, the best start
    of a scan over eta in which (E, a, b) solve a linear least-squares problem. Keeps the
    lowest sum of squares among converged runs; a fit with no converged run warns
    (ConvergenceWarning) with the optimizer's message.
    """
    bootstrap.check_settings(FN, n_boot, confidence, seed)
    N, D, loss = as_columns(FN, 4, N=N, D=D, loss=loss)
    log_c, log_m = np.log(6 * N * D), np.log(D / N)
    if not _several_multipliers(log_m):
        raise ValueError(f"{FN}: N and D must give at least 2 distinct token multipliers M = D/N (with one, "
                         f"a M^eta + b M^-eta is a single constant and a, b cannot be told apart); "
                         f"every point has M = {np.exp(log_m[0]):.6g}")
    # L = E + a 6^-eta N^-2eta + b 6^-eta D^-2eta: with one N (one D) the a (b) term is a
    # constant that E absorbs; the 4 parameters need n_N + n_D >= 5 distinct values.
    check_spread(FN, "N", N, 2, "with one model size a M^eta C^-eta = a (6 N^2)^-eta is a constant that E absorbs")
    check_spread(FN, "D", D, 2, "with one token count b M^-eta C^-eta = b (6 D^2)^-eta is a constant that E absorbs")
    if len(np.unique(N)) + len(np.unique(D)) < 5:
        raise ValueError(f"{FN}: N and D take {len(np.unique(N))} and {len(np.unique(D))} distinct values; the law "
                         "(E + a' N^-2eta + b' D^-2eta) has 4 parameters and needs at least 5 distinct values of N "
                         "and D together (e.g. 2 model sizes and 3 token counts)")
    starts = [np.array(s) for s in itertools.product(*INIT_GRID.values())] + [_projected_start(log_c, log_m, loss)]
    result = _fit(log_c, log_m, loss, starts)
    law = record_fit(FN, OvertrainingLaw(**dict(zip(OvertrainingLaw.param_names, result.x))),
                     objective=2 * result.cost, converged=result.success, message=result.message,
                     n_points=len(loss), n_starts=len(starts))

    def refit(columns, start):
        n, d, l = columns
        if not _several_multipliers(np.log(d / n)):  # a resample of one M: a, b not identifiable
            return list(start.params.values()), False
        result = _fit(np.log(6 * n * d), np.log(d / n), l, [np.array(list(start.params.values()))])
        return result.x, result.success

    return bootstrap.attach(law, refit, [N, D, loss], n_boot=n_boot, seed=seed, confidence=confidence,
                            progress=progress, fn=FN)


def _several_multipliers(log_m):
    """Whether the token multipliers take at least 2 values. Multipliers within 0.1% of
    each other count as one: N and D read from a CSV are often rounded."""
    return np.ptp(log_m) > 1e-3


def _fit(log_c, log_m, loss, starts):
    def parts(theta):
        E, a, b, eta = theta
        up, down = np.exp(eta * (log_m - log_c)), np.exp(-eta * (log_m + log_c))  # M^eta C^-eta, M^-eta C^-eta
        return E, a, b, up, down

    def residuals(theta):
        E, a, b, up, down = parts(theta)
        return E + a * up + b * down - loss

    def jacobian(theta):
        E, a, b, up, down = parts(theta)
        d_eta = a * up * (log_m - log_c) - b * down * (log_m + log_c)
        return np.stack([np.ones_like(up), up, down, d_eta], axis=1)

    return multistart_least_squares(FN, residuals, jacobian, starts, method="lm", x_scale="jac", max_nfev=1000)


def _projected_start(log_c, log_m, loss):
    """For fixed eta the law is linear in (E, a, b): scan eta, solve each linear problem,
    and return the (E, a, b, eta) with the smallest sum of squares."""
    best = None
    for eta in np.geomspace(0.01, 1.0, 25):
        features = np.stack([np.ones_like(loss), np.exp(eta * (log_m - log_c)), np.exp(-eta * (log_m + log_c))], 1)
        coef, sse = linear_fit(features, loss)
        if best is None or sse < best[0]:
            best = (sse, np.array([*coef, eta]))
    return best[1]
