"""Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models"), Approach 3:
L(N, D) = E + A / N^alpha + B / D^beta, fitted by minimizing the Huber loss (delta = 1e-3)
between the log-sum-exp form of log L and the observed log loss with L-BFGS, from their
grid of initializations, keeping the best."""

import functools
import itertools

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber
from tqdm.auto import tqdm

from . import bootstrap
from ._blas import single_threaded_blas
from ._checks import as_columns, as_data, as_real, check_spread
from ._fitting import best_result, record_fit
from .law import ScalingLaw, as_float_array, output

FN = "fit_chinchilla"

# Hoffmann et al. 2022, Appendix D.2: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ...,
# 1}, a, b in {0, 5, ..., 25}: 5 * 5 * 5 * 6 * 6 = 4500 starts over (a, b, e, alpha, beta).
# Besiroglu et al. 2024 use the same grid.
INIT_GRID = {
    "a": np.arange(0.0, 30.0, 5.0),
    "b": np.arange(0.0, 30.0, 5.0),
    "e": np.arange(-1.0, 1.5, 0.5),
    "alpha": np.arange(0.0, 2.5, 0.5),
    "beta": np.arange(0.0, 2.5, 0.5),
}


class ChinchillaLaw(ScalingLaw):
    """L(N, D) = E + A / N^alpha + B / D^beta; N parameters, D training tokens."""

    name = "chinchilla"
    formula = "L(N, D) = E + A / N^alpha + B / D^beta"
    param_names = ("E", "A", "B", "alpha", "beta")

    def predict(self, N, D):
        """Loss of a model with ``N`` parameters trained on ``D`` tokens (broadcast)."""
        N, D = as_float_array(N), as_float_array(D)
        return output(self.E + self.A * N**-self.alpha + self.B * D**-self.beta)

    def compute_optimal(self, C):
        """(N_opt, D_opt) minimizing the loss at training compute ``C`` FLOPs under
        C = 6 N D (Hoffmann et al. eq. 4): N_opt = G (C/6)^(beta/(alpha+beta)),
        D_opt = (C/6)^(alpha/(alpha+beta)) / G, G = (alpha A / (beta B))^(1/(alpha+beta))."""
        C = as_float_array(C)
        total = self.alpha + self.beta
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / total)
        return output(G * (C / 6) ** (self.beta / total)), output((C / 6) ** (self.alpha / total) / G)


@single_threaded_blas()
def fit_chinchilla(N, D, loss, *, delta=1e-3, init_grid=None, n_boot=0, seed=None, confidence=0.95, progress=None):
    """Fit L(N, D) = E + A / N^alpha + B / D^beta by Hoffmann et al.'s Approach 3.

    N: 1-D array-like of model sizes (parameters, > 0).
    D: 1-D array-like of training tokens (> 0), same length.
    loss: 1-D array-like of final losses (> 0), same length.
    delta: Huber threshold on log-loss residuals (Hoffmann et al.: 1e-3).
    init_grid: {name: values} for some of a, b, e, alpha, beta, replacing those axes of
        ``INIT_GRID`` (e.g. a coarser grid: the full one costs ~4500 L-BFGS runs, ~20 s).
    n_boot, seed, confidence, progress: case-resampling bootstrap (``bootstrap.attach``);
        each bootstrap refit starts from the point fit's parameters instead of the full
        grid (which costs ~4500 L-BFGS runs), with tight L-BFGS-B tolerances so that it
        walks all the way to the resample's own optimum.
        progress also governs the bar over the grid (None: only on a terminal).

    Minimizes sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i) over
    (a, b, e, alpha, beta) with scipy's L-BFGS-B (default tolerances, analytic gradient)
    from every point of the grid and keeps the lowest objective among the runs that
    report convergence; E, A, B = exp(e), exp(a), exp(b). If no start converges, the best
    run is kept, ``fit_info["converged"]`` is False and a ConvergenceWarning carries
    L-BFGS-B's message.
    """
    bootstrap.check_settings(FN, n_boot, confidence, seed)
    N, D, loss = as_columns(FN, 5, N=N, D=D, loss=loss)
    check_spread(FN, "N", N, 3, "A / N^alpha needs 3 model sizes to fix A and alpha apart from E")
    check_spread(FN, "D", D, 3, "B / D^beta needs 3 token counts to fix B and beta apart from E")
    delta = as_real(FN, "delta", delta)
    if delta <= 0:
        raise ValueError(f"{FN}: delta must be > 0, got {delta}")
    objective = _objective(np.log(N), np.log(D), np.log(loss), delta)
    grid = dict(INIT_GRID)
    if init_grid is not None and not isinstance(init_grid, dict):
        raise TypeError(f"{FN}: init_grid must be a dict {{name: values}}, got {type(init_grid).__name__}")
    for key, values in (init_grid or {}).items():
        if key not in grid:
            raise ValueError(f"{FN}: init_grid keys must be among {', '.join(grid)}, got {key!r}")
        grid[key] = as_data(FN, f"init_grid[{key!r}]", np.atleast_1d(values), positive=False)
        if grid[key].size == 0:
            raise ValueError(f"{FN}: init_grid[{key!r}] must hold at least one start value, got none")
    starts = np.array(list(itertools.product(*grid.values())))
    results = [minimize(objective, theta0, jac=True, method="L-BFGS-B")
               for theta0 in tqdm(starts, desc=f"{FN}: L-BFGS from the init grid",
                                  disable=None if progress is None else not progress, leave=False)]
    chosen, converged = best_result(results, cost=lambda result: result.fun)
    law = record_fit(FN, _law(chosen.x), objective=chosen.fun, converged=converged, message=chosen.message,
                     n_points=len(loss), n_starts=len(starts), delta=delta)

    refit = functools.partial(_refit, delta=delta)
    return bootstrap.attach(law, refit, [N, D, loss], n_boot=n_boot, seed=seed, confidence=confidence,
                            progress=progress, fn=FN)


# Bootstrap refits start at the point fit, where the objective (a sum of Huber losses of
# ~1e-3) already has a gradient below L-BFGS-B's default gtol = 1e-5: with the defaults a
# refit stops after a few steps and the intervals come out several times too narrow.
_REFIT_OPTIONS = {"ftol": 1e-15, "gtol": 1e-12}


def _refit(columns, start, delta):
    """L-BFGS-B on resampled ``columns`` (N, D, loss) from the law ``start``, tight tolerances."""
    n, d, l = columns
    theta0 = [np.log(start.A), np.log(start.B), np.log(start.E), start.alpha, start.beta]
    result = minimize(_objective(np.log(n), np.log(d), np.log(l), delta), theta0, jac=True, method="L-BFGS-B",
                      options=_REFIT_OPTIONS)
    return list(_law(result.x).params.values()), result.success


def _law(theta):
    a, b, e, alpha, beta = theta
    return ChinchillaLaw(E=np.exp(e), A=np.exp(a), B=np.exp(b), alpha=alpha, beta=beta)


def _objective(log_n, log_d, log_loss, delta):
    """Sum of Huber losses of the log-space residuals, and its gradient in (a, b, e, alpha, beta)."""

    def value_and_grad(theta):
        a, b, e, alpha, beta = theta
        u, v = a - alpha * log_n, b - beta * log_d
        top = np.maximum(np.maximum(u, v), e)  # shift so the exponentials cannot overflow
        exp_u, exp_v, exp_e = np.exp(u - top), np.exp(v - top), np.exp(e - top)
        total = exp_u + exp_v + exp_e
        residual = top + np.log(total) - log_loss
        # d LSE / d term = that term's softmax weight; d Huber / d residual = clip(residual).
        scale = np.clip(residual, -delta, delta) / total
        w_u, w_v = exp_u * scale, exp_v * scale
        grad = np.array([w_u.sum(), w_v.sum(), (exp_e * scale).sum(), -(w_u * log_n).sum(), -(w_v * log_d).sum()])
        return float(huber(delta, residual).sum()), grad

    return value_and_grad
