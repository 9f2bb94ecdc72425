"""Per-shape law E(C) = c + a (C + d)^-b: the loss a model of one fixed shape reaches after
C training FLOPs (Anagnostidis et al. 2023 fit one such curve per patch size / context
length and switch shapes where another curve needs less compute per unit of loss). The
adaptive schedule (``ak.schedule``) uses ``inverse`` and ``d_inverse``.

Anchored form (``initial_loss=L0``): E(C) = c + (L0 - c) (1 + C/d)^-b, the same law with
a = (L0 - c) d^b, pinned to the measured loss of the fresh model at C = 0. It is a
saturating power law in C + d: a plateau at L0 for C << d, a power law with exponent b for
C >> d, and the floor c. (The offset form is Hestness et al. 2017's "small-data region ->
power-law region -> irreducible error" curve, and the C + d shift is the one Anagnostidis
et al. 2023, eq. 3, and Kaplan et al. 2020 use for compute or data offsets.) Without the
anchor, nothing ties the law to the loss at C = 0, and a fit to points far from it can put
its "loss at C = 0" anywhere, which the planner used to read as a free descent.

Every fit records ``fit_info["rms_log_residual"]`` (root mean square of log E(C_i) -
log L_i) and ``fit_info["at_bound"]``: the parameters that ended on a bound of the search
box (c = 0 or c at the lowest observed loss, b at 1e-3 or 10, d at the ends of its range).
A law with a parameter at a bound is not a fit of this form to the data: it is flagged,
and callers should not use it silently (``adaptkern demo`` refits or falls back, and says
so)."""

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


B_BOUNDS = (1e-3, 10.0)
LOG_DELTA_BOUNDS = (np.log(1e-6), np.log(1e3))  # d in units of the geometric-mean compute of the points


@single_threaded_blas()
def fit_shape_law(compute, loss, *, d=None, initial_loss=None, n_boot=0, seed=None, confidence=0.95,
                  progress=None):
    """Fit E(C) = c + a (C + d)^-b to one shape's (compute, loss) points.

    compute: 1-D array-like of training FLOPs (> 0), one per point.
    loss: 1-D array-like of losses (> 0), same length.
    d: hold the compute offset fixed at this value (>= 0), e.g. 0; None fits it.
    initial_loss: the measured loss at C = 0 (> every fitted c): fit the anchored form
        c + (L0 - c)(1 + C/d)^-b (three free parameters c, b, d); not with ``d``.
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
    anchor = None if initial_loss is None else as_real(FN, "initial_loss", initial_loss)
    if anchor is not None and (anchor <= 0 or fixed_d is not None):
        raise ValueError(f"{FN}: initial_loss must be > 0 and cannot be combined with a fixed d, got "
                         f"initial_loss={initial_loss}, d={d}")
    n_free = 3 if (fixed_d is not None or anchor is not None) else 4
    compute, loss = as_columns(FN, n_free, compute=compute, loss=loss)
    check_spread(FN, "compute", compute, n_free,
                 f"c + a (C + d)^-b has {n_free} free parameters to fix along the compute")
    fit = _fit if anchor is None else _fit_anchored
    extra = {"fixed_d": fixed_d} if anchor is None else {"initial_loss": anchor}
    params, result, starts, at_bound = fit(compute, loss, fixed_d if anchor is None else anchor, start=None)
    law = ShapeLaw(**dict(zip(ShapeLaw.param_names, params)))
    residual = np.log(np.asarray(law.predict(compute), dtype=float)) - np.log(loss)
    law = record_fit(FN, law, objective=2 * result.cost, converged=result.success, message=result.message,
                     n_points=len(loss), n_starts=starts, rms_log_residual=float(np.sqrt(np.mean(residual ** 2))),
                     at_bound=at_bound, **extra)

    def refit(columns, start):
        params, result, _, _ = fit(*columns, fixed_d if anchor is None else anchor, start=start)
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
    names = [n for n in ("c", "a", "b", "d")[:len(lower)]]
    at_bound = [n for n, v, lo, hi in zip(names, best.x, lower, upper) if n != "d" and _touches(v, lo, hi)]
    return np.array([c, A * scale**b, b, d]), best, len(starts), at_bound


def _touches(value, lo, hi):
    """Whether ``value`` sits on the bound ``lo`` or ``hi`` (relative tolerance 1e-6)."""
    return any(np.isfinite(x) and abs(value - x) <= 1e-6 * max(1.0, abs(x)) for x in (lo, hi))


def _fit_anchored(compute, loss, initial_loss, start):
    """c + (L0 - c)(1 + x/delta)^-b in scaled units x = C / s; parameters (c, b, log delta)."""
    scale = float(np.exp(np.mean(np.log(compute))))
    x, log_loss, L0 = compute / scale, np.log(loss), initial_loss

    def parts(theta):
        c, b, log_delta = theta
        delta = np.exp(log_delta)
        u = 1 + x / delta
        term = (L0 - c) * u ** -b
        return c, b, delta, u, term, c + term

    def residuals(theta):
        return np.log(parts(theta)[-1]) - log_loss

    def jacobian(theta):
        c, b, delta, u, term, pred = parts(theta)
        return np.stack([(1 - u ** -b) / pred, -term * np.log(u) / pred, term * b * (x / delta) / u / pred], axis=1)

    lower = np.array([0.0, B_BOUNDS[0], LOG_DELTA_BOUNDS[0]])
    upper = np.array([min(np.min(loss), L0) * (1 - 1e-9), B_BOUNDS[1], LOG_DELTA_BOUNDS[1]])
    if start is not None:
        starts = [np.array([start.c, start.b, np.log(max(start.d, 1e-300) / scale)])]
    else:
        candidates = []
        for b in np.geomspace(0.05, 3.0, 10):
            for log_delta in np.linspace(LOG_DELTA_BOUNDS[0] + 1, LOG_DELTA_BOUNDS[1] - 1, 9):
                v = (1 + x / np.exp(log_delta)) ** -b
                # loss - L0 v = c (1 - v): least squares c, clipped into the box
                w = 1 - v
                c = float(np.clip(np.dot(w, loss - L0 * v) / max(np.dot(w, w), 1e-300), 0.0, upper[0]))
                pred = c + (L0 - c) * v
                if np.all(pred > 0):
                    candidates.append((float(np.sum((np.log(pred) - log_loss) ** 2)), np.array([c, b, log_delta])))
        candidates.sort(key=lambda item: item[0])
        starts = [theta for _, theta in candidates[:3]]
    starts = [np.clip(theta0, lower, upper) for theta0 in starts]
    best = multistart_least_squares(FN, residuals, jacobian, starts, bounds=(lower, upper), method="trf",
                                    x_scale="jac", max_nfev=2000)
    c, b, log_delta = best.x
    d = float(np.exp(log_delta) * scale)
    at_bound = [n for n, v, lo, hi in zip(("c", "b", "d"), best.x, lower, upper) if _touches(v, lo, hi)]
    return np.array([c, (L0 - c) * d ** b, b, d]), best, len(starts), at_bound


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
