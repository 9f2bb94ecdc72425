"""Per-shape law E(C) = c + a (C + d)^-b: the loss a model of one fixed shape reaches after
C training FLOPs (Anagnostidis et al. 2023 fit one such curve per patch size / context
length and switch shapes where another curve needs less compute per unit of loss). The
adaptive schedule (``ak.schedule``) uses ``inverse`` and ``d_inverse``."""

import numpy as np

from . import bootstrap
from ._blas import single_threaded_blas
from ._checks import as_columns, as_real, check_spread
from ._fitting import linear_fit, multistart_least_squares, record_fit
from .law import ScalingLaw, as_float_array, output

FN = "fit_shape_law"


class ShapeLaw(ScalingLaw):
    """E(C) = c + a (C + d)^-b with c >= 0 (the loss this shape tends to with infinite
    compute), a > 0, b > 0, d >= 0 (a compute offset: the loss at C = 0 is c + a d^-b).
    Every method takes floats or numpy arrays and returns the same."""

    name = "shape"
    formula = "E(C) = c + a * (C + d)^-b"
    param_names = ("c", "a", "b", "d")

    def predict(self, C):
        """Loss after ``C`` training FLOPs (C >= 0)."""
        C = as_float_array(C)
        return output(self.c + self.a * (C + self.d) ** -self.b)

    def inverse(self, L):
        """Training FLOPs this shape needs to reach loss ``L`` from scratch: inf where
        L <= c (never reached), 0 where L is at or above the loss at C = 0."""
        L = as_float_array(L)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            compute = np.exp((np.log(self.a) - np.log(L - self.c)) / self.b) - self.d
        return output(np.where(L > self.c, np.maximum(compute, 0.0), np.inf))

    def d_inverse(self, L):
        """dC/dL of ``inverse``, analytic: -(C + d) / (b (L - c)) < 0. It is -inf where
        L <= c and 0 where L is above the loss at C = 0 (``inverse`` is flat there)."""
        L = as_float_array(L)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            shifted = np.exp((np.log(self.a) - np.log(L - self.c)) / self.b)  # C + d
            slope = -shifted / (self.b * (L - self.c))
        slope = np.where(shifted > self.d, slope, 0.0)
        return output(np.where(L > self.c, slope, -np.inf))


@single_threaded_blas()
def fit_shape_law(compute, loss, *, d=None, n_boot=0, seed=None, confidence=0.95, progress=None):
    """Fit E(C) = c + a (C + d)^-b to one shape's (compute, loss) points.

    compute: 1-D array-like of training FLOPs (> 0), one per point.
    loss: 1-D array-like of losses (> 0), same length.
    d: hold the compute offset fixed at this value (>= 0), e.g. 0; None fits it.
    n_boot, seed, confidence, progress: bootstrap of the parameters (see
        ``bootstrap.attach``); n_boot = 0 skips it.

    Minimizes the squared log residuals sum (log E(C_i) - log L_i)^2 (relative errors, so
    every decade of compute counts alike) with scipy's bounded least_squares (trf) and an
    analytic Jacobian. Starts: for a grid of (b, d) the law is linear in (c, a), so
    each grid point gets its least-squares (c, a); the best few seed the full fit.
    A fit whose optimizer does not converge emits a ConvergenceWarning with the
    optimizer's message and records ``fit_info["converged"] = False``.
    """
    bootstrap.check_settings(FN, n_boot, confidence, seed)
    fixed_d = None if d is None else as_real(FN, "d", d)
    if fixed_d is not None and fixed_d < 0:
        raise ValueError(f"{FN}: d must be >= 0, got {d}")
    n_free = 3 if fixed_d is not None else 4
    compute, loss = as_columns(FN, n_free, compute=compute, loss=loss)
    check_spread(FN, "compute", compute, n_free,
                 f"c + a (C + d)^-b has {n_free} free parameters to fix along the compute")
    params, result, starts = _fit(compute, loss, fixed_d, start=None)
    law = record_fit(FN, ShapeLaw(**dict(zip(ShapeLaw.param_names, params))), objective=2 * result.cost,
                     converged=result.success, message=result.message, n_points=len(loss), n_starts=starts,
                     fixed_d=fixed_d)

    def refit(columns, start):
        params, result, _ = _fit(*columns, fixed_d, start=start)
        return params, result.success

    return bootstrap.attach(law, refit, [compute, loss], n_boot=n_boot, seed=seed, confidence=confidence,
                            progress=progress, fn=FN, n_free=n_free)


def _fit(compute, loss, fixed_d, start):
    """Least squares in scaled units x = C / s (s the geometric mean compute), where the
    law reads c + A (x + delta)^-b with A = a s^-b and delta = d / s."""
    scale = float(np.exp(np.mean(np.log(compute))))
    x, log_loss = compute / scale, np.log(loss)
    if start is not None:
        starts = [np.array([start.c, np.log(start.a) - start.b * np.log(scale), start.b, start.d / scale])]
    else:
        starts = _linear_starts(x, loss, fixed_d, scale)
    free = slice(None) if fixed_d is None else slice(0, 3)
    delta0 = 0.0 if fixed_d is None else fixed_d / scale

    def unpack(theta):
        c, log_a, b = theta[:3]
        return c, np.exp(log_a), b, (theta[3] if fixed_d is None else delta0)

    def residuals(theta):
        c, A, b, delta = unpack(theta)
        return np.log(c + A * (x + delta) ** -b) - log_loss

    def jacobian(theta):
        c, A, b, delta = unpack(theta)
        term = A * (x + delta) ** -b
        pred = c + term
        columns = [1 / pred, term / pred, -term * np.log(x + delta) / pred, -b * term / (x + delta) / pred]
        return np.stack(columns[:3] if fixed_d is not None else columns, axis=1)

    # c stays below every observed loss (log of a positive prediction); b <= 10 keeps
    # (x + delta)^-b finite; delta is an offset in units of the geometric-mean compute.
    lower = np.array([0.0, -np.inf, 1e-6, 0.0])[free]
    upper = np.array([np.min(loss) * (1 - 1e-9), np.inf, 10.0, np.inf])[free]
    starts = [np.clip(theta0[free], lower, upper) for theta0 in starts]
    best = multistart_least_squares(FN, residuals, jacobian, starts, bounds=(lower, upper), method="trf",
                                    x_scale="jac", max_nfev=2000)
    c, A, b, delta = unpack(best.x)
    d = delta * scale if fixed_d is None else fixed_d  # a fixed d comes back exactly as given
    return np.array([c, A * scale**b, b, d]), best, len(starts)


def _linear_starts(x, loss, fixed_d, scale, keep=3):
    """Best ``keep`` starts (c, log A, b, delta) over a (b, delta) grid, each with its
    least-squares c >= 0 and A > 0."""
    deltas = [fixed_d / scale] if fixed_d is not None else [0.0, *(np.min(x) * np.array([0.1, 1.0, 10.0]))]
    candidates = []
    for b in np.geomspace(0.02, 3.0, 12):
        for delta in deltas:
            z = (x + delta) ** -b
            (c, A), _ = linear_fit(np.stack([np.ones_like(z), z], axis=1), loss)
            c = min(max(c, 0.0), 0.999 * np.min(loss))
            A = max(float(np.dot(z, loss - c) / np.dot(z, z)), 1e-12)
            sse = float(np.sum((np.log(c + A * z) - np.log(loss)) ** 2))
            candidates.append((sse, np.array([c, np.log(A), b, delta])))
    candidates.sort(key=lambda item: item[0])
    return [theta for _, theta in candidates[:keep]]
