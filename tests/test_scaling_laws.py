"""Scaling laws on synthetic data: known parameters plus noise are recovered, the fits reach
at least the objective of the true parameters, and the closed forms (compute-optimal
allocation, the shape law's inverse and its derivative) match independent numerics."""

import warnings

import numpy as np
import pytest
from scipy.differentiate import derivative
from scipy.optimize import minimize_scalar

from adaptkern import scaling
from adaptkern.scaling import ChinchillaLaw, DownstreamLaw, OvertrainingLaw, ShapeLaw

# A coarse version of Hoffmann et al.'s grid (the full 4500 starts run in test_scaling_published.py).
COARSE_GRID = {"a": [0.0, 10.0], "b": [0.0, 10.0], "e": [-1.0, 0.5], "alpha": [0.0, 0.5], "beta": [0.0, 0.5]}


def huber_objective(law, N, D, loss, delta=1e-3):
    residual = np.log(law.predict(N, D)) - np.log(loss)
    return np.sum(np.where(np.abs(residual) <= delta, residual**2 / 2, delta * (np.abs(residual) - delta / 2)))


def random_chinchilla(rng):
    """Exponents near Hoffmann et al.'s; A and B put each reducible term at 0.3-1 in the
    middle of the sampled N (1e7-1e10) and D (1e8-1e11), as in real sweeps."""
    alpha, beta = rng.uniform(0.28, 0.42), rng.uniform(0.26, 0.4)
    return ChinchillaLaw(E=rng.uniform(1.5, 2.0), A=rng.uniform(0.3, 1.0) * 10 ** (8.5 * alpha),
                         B=rng.uniform(0.3, 1.0) * 10 ** (9.5 * beta), alpha=alpha, beta=beta)


def sample_n_d(rng, size):
    return 10 ** rng.uniform(7, 10, size), 10 ** rng.uniform(8, 11, size)


def test_chinchilla_recovers_known_parameters(seed):
    rng = np.random.default_rng(seed)
    truth = random_chinchilla(rng)
    N, D = sample_n_d(rng, 80)
    loss = truth.predict(N, D) * np.exp(rng.normal(0, 0.002, 80))
    law = scaling.fit_chinchilla(N, D, loss, init_grid=COARSE_GRID, progress=False)
    assert law.fit_info["converged"] and law.fit_info["n_starts"] == 32
    # The optimizer must do at least as well as the truth on its own objective.
    assert law.fit_info["objective"] <= huber_objective(truth, N, D, loss) * (1 + 1e-6)
    assert law.fit_info["objective"] == pytest.approx(huber_objective(law, N, D, loss), rel=1e-9)
    # 0.2% noise over three decades of N and D pins the exponents to a few hundredths.
    assert law.alpha == pytest.approx(truth.alpha, abs=0.03)
    assert law.beta == pytest.approx(truth.beta, abs=0.03)
    assert law.E == pytest.approx(truth.E, rel=0.03)
    N_new, D_new = sample_n_d(rng, 20)
    np.testing.assert_allclose(law.predict(N_new, D_new), truth.predict(N_new, D_new), rtol=5e-3)


def test_chinchilla_compute_optimal_matches_numerical_minimum(seed):
    rng = np.random.default_rng(seed)
    law = random_chinchilla(rng)
    for C in 10 ** rng.uniform(18, 25, 4):
        # Independent reference: minimize L(N, C / 6N) over log N numerically.
        found = minimize_scalar(lambda log_n: law.predict(np.exp(log_n), C / (6 * np.exp(log_n))),
                                bounds=(np.log(1e3), np.log(1e15)), method="bounded", options={"xatol": 1e-10})
        N_opt, D_opt = law.compute_optimal(C)
        assert N_opt == pytest.approx(np.exp(found.x), rel=1e-4)
        assert 6 * N_opt * D_opt == pytest.approx(C, rel=1e-12)
    N_opt, D_opt = law.compute_optimal(np.array([1e20, 1e22]))
    assert N_opt.shape == D_opt.shape == (2,)


def test_overtraining_equals_chinchilla_with_tied_exponents(seed):
    # Gadre et al. derive eq. (4) from Chinchilla with alpha = beta = 2 eta and C = 6ND,
    # M = D/N; then a = A 6^eta and b = B 6^eta.
    rng = np.random.default_rng(seed)
    E, a, b, eta = rng.uniform(1.5, 2), rng.uniform(100, 400), rng.uniform(200, 600), rng.uniform(0.1, 0.2)
    law = OvertrainingLaw(E=E, a=a, b=b, eta=eta)
    chinchilla = ChinchillaLaw(E=E, A=a * 6**-eta, B=b * 6**-eta, alpha=2 * eta, beta=2 * eta)
    N, D = 10 ** rng.uniform(7, 10, 50), 10 ** rng.uniform(9, 12, 50)
    np.testing.assert_allclose(law.predict(N, D), chinchilla.predict(N, D), rtol=1e-12)
    assert law.predict_from_compute(6 * N[0] * D[0], D[0] / N[0]) == pytest.approx(law.predict(N[0], D[0]))


def test_overtraining_recovers_known_parameters(seed):
    rng = np.random.default_rng(seed)
    truth = OvertrainingLaw(E=rng.uniform(1.6, 2.2), a=rng.uniform(150, 300), b=rng.uniform(250, 500),
                            eta=rng.uniform(0.12, 0.18))
    N = np.repeat(np.geomspace(1e7, 5e8, 6), 4)
    D = N * np.tile([10.0, 40.0, 160.0, 640.0], 6)
    loss = truth.predict(N, D) * np.exp(rng.normal(0, 0.001, N.size))
    law = scaling.fit_overtraining(N, D, loss)
    assert law.fit_info["converged"]
    sse_truth = np.sum((truth.predict(N, D) - loss) ** 2)
    assert law.fit_info["objective"] <= sse_truth * (1 + 1e-6)
    assert law.eta == pytest.approx(truth.eta, abs=0.02)
    assert law.E == pytest.approx(truth.E, rel=0.03)
    # Extrapolation ten times past the largest model, as the paper does.
    np.testing.assert_allclose(law.predict([5e9, 5e9], [1e11, 3.2e12]), truth.predict([5e9, 5e9], [1e11, 3.2e12]),
                               rtol=0.01)


def test_downstream_recovers_known_parameters(seed):
    rng = np.random.default_rng(seed)
    # Around Gadre et al.'s fits, where the error stays in (0.15, 1) over these losses.
    truth = DownstreamLaw(epsilon=rng.uniform(0.82, 0.92), k=rng.uniform(1.8, 2.4), gamma=rng.uniform(0.6, 0.8))
    loss = rng.uniform(2.2, 5.5, 40)
    err = truth.predict(loss) + rng.normal(0, 0.002, loss.size)
    law = scaling.fit_downstream(loss, err)
    assert law.fit_info["converged"]
    assert law.fit_info["objective"] <= np.sum((truth.predict(loss) - err) ** 2) * (1 + 1e-6)
    for name in ("epsilon", "k", "gamma"):
        assert getattr(law, name) == pytest.approx(getattr(truth, name), rel=0.1), name
    np.testing.assert_allclose(law.predict([2.5, 4.0]), truth.predict([2.5, 4.0]), atol=3e-3)


def random_shape_law(rng):
    """The reducible term a (C + d)^-b is 0.5-3 at C = 1e17, mid-range of the sampled compute."""
    b = rng.uniform(0.15, 0.4)
    return ShapeLaw(c=rng.uniform(1.5, 2.5), a=rng.uniform(0.5, 3.0) * 1e17**b, b=b, d=10 ** rng.uniform(14, 15.5))


@pytest.mark.parametrize("fixed_d", [False, True])
def test_shape_law_recovers_known_parameters(fixed_d, seed):
    rng = np.random.default_rng(seed)
    truth = random_shape_law(rng)
    compute = np.geomspace(1e14, 1e20, 40)
    noise = 0.002
    loss = truth.predict(compute) * np.exp(rng.normal(0, noise, compute.size))
    law = scaling.fit_shape_law(compute, loss, d=truth.d if fixed_d else None)
    assert law.fit_info["converged"]
    sse_truth = np.sum((np.log(truth.predict(compute)) - np.log(loss)) ** 2)
    assert law.fit_info["objective"] <= sse_truth * (1 + 1e-6)
    assert law.b == pytest.approx(truth.b, rel=0.15)
    assert law.c == pytest.approx(truth.c, rel=0.03)
    if fixed_d:
        assert law.d == truth.d
    # The fitted curve against the true one, in log space: least squares with p parameters on
    # n points with noise sigma leaves an RMS error of about sigma * sqrt(p / n) (6.3e-4 here;
    # 300 seeds gave at most 1.9x that). A pointwise bound would be flaky: the error peaks at
    # the low-compute end, where d is weakly determined, and its tail is heavy there.
    log_error = np.log(law.predict(compute) / truth.predict(compute))
    assert np.sqrt(np.mean(log_error**2)) <= 3 * noise * np.sqrt(4 / compute.size)


def test_shape_law_inverse_and_derivative(seed):
    rng = np.random.default_rng(seed)
    law = random_shape_law(rng)
    compute = np.geomspace(1e15, 1e22, 30)
    levels = law.predict(compute)
    np.testing.assert_allclose(law.inverse(levels), compute, rtol=1e-8)
    # d_inverse against scipy's adaptive finite-difference derivative of inverse.
    numeric = derivative(law.inverse, levels, initial_step=1e-3 * (levels - law.c))
    assert np.all(numeric.success)
    np.testing.assert_allclose(law.d_inverse(levels), numeric.df, rtol=1e-6)
    assert np.all(law.d_inverse(levels) < 0)
    assert law.inverse(law.c) == np.inf and law.inverse(law.c * 0.9) == np.inf
    assert law.d_inverse(law.c) == -np.inf
    start = law.predict(0.0)  # loss at zero compute: reaching anything above it costs nothing
    assert law.inverse(start * 1.1) == 0.0 and law.d_inverse(start * 1.1) == 0.0
    assert isinstance(law.inverse(2 * law.c), float) and isinstance(law.predict(1e18), float)
    assert law.inverse(np.array([[3.0, 4.0]])).shape == (1, 2)


def test_bootstrap_intervals_are_reproducible_and_shrink_with_noise(seed):
    rng = np.random.default_rng(seed)
    truth = random_shape_law(rng)
    compute = np.geomspace(1e14, 1e20, 40)
    clean = truth.predict(compute)
    widths = []
    for sigma in (0.01, 0.001):
        loss = clean * np.exp(rng.normal(0, sigma, compute.size))
        law = scaling.fit_shape_law(compute, loss, n_boot=60, seed=7, progress=False)
        again = scaling.fit_shape_law(compute, loss, n_boot=60, seed=7, progress=False)
        assert law.intervals == again.intervals
        assert set(law.intervals) == {"c", "a", "b", "d"} and law.boot_params.shape[1] == 4
        for name, (low, high) in law.intervals.items():
            assert low < high, name
        low, high = law.predict_interval(compute)
        assert np.all(low <= high) and low.shape == compute.shape
        widths.append(np.median(high - low))
    assert widths[1] < widths[0] / 3  # ten times less noise, far narrower band


def test_bootstrap_spread_matches_asymptotic_standard_error(seed):
    # Independent reference for the uncertainty: with many points and a well-specified
    # model, the bootstrap spread of a parameter approaches the least-squares standard error
    # sqrt(s^2 (J^T J)^-1).
    rng = np.random.default_rng(seed)
    truth = DownstreamLaw(epsilon=0.86, k=2.2, gamma=0.7)
    loss = rng.uniform(2.2, 5.5, 300)
    err = truth.predict(loss) + rng.normal(0, 0.005, loss.size)
    law = scaling.fit_downstream(loss, err, n_boot=300, seed=1, progress=False)
    decay = np.exp(-law.gamma * loss)
    J = np.stack([np.ones_like(loss), -decay, law.k * loss * decay], axis=1)
    s2 = law.fit_info["objective"] / (loss.size - 3)
    standard_error = np.sqrt(np.diag(s2 * np.linalg.inv(J.T @ J)))
    ratio = law.boot_params.std(axis=0, ddof=1) / standard_error
    assert np.all((ratio > 0.75) & (ratio < 1.33)), ratio


def test_interval_of_derived_quantity_and_json_round_trip(tmp_path, seed):
    rng = np.random.default_rng(seed)
    truth = random_chinchilla(rng)
    N, D = sample_n_d(rng, 60)
    loss = truth.predict(N, D) * np.exp(rng.normal(0, 0.003, 60))
    law = scaling.fit_chinchilla(N, D, loss, init_grid=COARSE_GRID, n_boot=25, seed=3, progress=False)
    low, high = law.interval(lambda replica: replica.compute_optimal(1e22)[0])
    assert 0 < low < high
    text = law.to_json(tmp_path / "law.json")
    back = scaling.ScalingLaw.from_json(text)
    assert type(back) is ChinchillaLaw and back.params == law.params and back.intervals == law.intervals
    assert back.fit_info["n_boot"] == 25 and back.confidence == 0.95
    assert scaling.ScalingLaw.from_json((tmp_path / "law.json").read_text()).params == law.params
    text = repr(law)
    assert text.startswith("ChinchillaLaw(E=") and "alpha=" in text and "95% CI" in text


def test_non_convergence_warns_with_the_optimizer_message(monkeypatch, seed):
    from adaptkern.scaling import _fitting, chinchilla

    rng = np.random.default_rng(seed)
    compute = np.geomspace(1e14, 1e20, 20)
    loss = random_shape_law(rng).predict(compute)
    real = _fitting.least_squares
    monkeypatch.setattr(_fitting, "least_squares", lambda *a, **k: real(*a, **{**k, "max_nfev": 1}))
    with pytest.warns(scaling.ConvergenceWarning, match="did not converge: The maximum number"):
        law = scaling.fit_shape_law(compute, loss)
    assert law.fit_info["converged"] is False

    real_minimize = chinchilla.minimize
    monkeypatch.setattr(chinchilla, "minimize",
                        lambda *a, **k: real_minimize(*a, **k, options={"maxiter": 1}))
    truth = random_chinchilla(rng)
    N, D = sample_n_d(rng, 30)
    with pytest.warns(scaling.ConvergenceWarning, match="ITERATIONS REACHED LIMIT"):
        law = scaling.fit_chinchilla(N, D, truth.predict(N, D), init_grid=COARSE_GRID, progress=False)
    assert law.fit_info["converged"] is False


GOOD = {"N": [1e7, 3e7, 1e8, 3e8, 1e9, 3e9], "D": [2e8, 6e8, 2e9, 6e9, 2e10, 6e10],
        "loss": [4.0, 3.6, 3.2, 2.9, 2.6, 2.4]}


@pytest.mark.parametrize("fit, kwargs, error, match", [
    (scaling.fit_chinchilla, {"loss": [4.0, 3.6, np.nan, 2.9, 2.6, 2.4]}, ValueError,
     r"loss must be finite.*loss\[2\]"),
    (scaling.fit_chinchilla, {"N": [1e7, np.inf, 1e8, 3e8, 1e9, 3e9]}, ValueError, r"N must be finite.*N\[1\]"),
    (scaling.fit_chinchilla, {"D": [2e8, 6e8, 0.0, 6e9, 2e10, 6e10]}, ValueError, r"D must be > 0.*D\[2\] = 0"),
    (scaling.fit_overtraining, {"loss": [4.0, 3.6, -3.2, 2.9, 2.6, 2.4]}, ValueError,
     r"fit_overtraining: loss must be > 0"),
    (scaling.fit_chinchilla, {"D": [2e8, 6e8, 2e9]}, ValueError, r"one length, got len\(N\)=6, len\(D\)=3"),
    (scaling.fit_chinchilla, {k: v[:4] for k, v in GOOD.items()}, ValueError, "4 data points cannot determine 5"),
    (scaling.fit_chinchilla, {"N": "1e7"}, TypeError, "N must be a 1-D sequence of numbers"),
    (scaling.fit_chinchilla, {"N": ["a"] * 6}, TypeError, "N must hold numbers"),
    (scaling.fit_chinchilla, {"N": np.ones((2, 3))}, ValueError, r"N must be 1-D, got shape \(2, 3\)"),
    (scaling.fit_chinchilla, {"init_grid": {"gamma": [0.0]}}, ValueError, "init_grid keys must be among"),
    (scaling.fit_chinchilla, {"delta": 0.0}, ValueError, "delta must be > 0"),
    (scaling.fit_chinchilla, {"delta": "x"}, TypeError, r"^fit_chinchilla: delta must be a real number, got str"),
    (scaling.fit_chinchilla, {"delta": np.inf}, ValueError, r"^fit_chinchilla: delta must be finite"),
    (scaling.fit_chinchilla, {"N": [complex(n) for n in GOOD["N"]]}, TypeError,
     r"^fit_chinchilla: N must hold real numbers, got complex"),
    (scaling.fit_chinchilla, {"D": [2e8, [6e8, 1.0], 2e9, 6e9, 2e10, 6e10]}, ValueError,
     r"^fit_chinchilla: D must be a 1-D sequence of numbers"),
    (scaling.fit_overtraining, {"n_boot": -1}, ValueError, "n_boot must be >= 0"),
    (scaling.fit_overtraining, {"n_boot": 2.5}, TypeError, "n_boot must be an int"),
    (scaling.fit_overtraining, {"n_boot": 5, "confidence": 1.5}, ValueError, r"confidence must be in \(0, 1\)"),
])
def test_bad_input_names_the_argument(fit, kwargs, error, match):
    args = {**GOOD, **kwargs}
    with pytest.raises(error, match=match):
        fit(**args)


@pytest.mark.parametrize("fit, kwargs, match", [
    (scaling.fit_downstream, {"loss": [3.0, 2.8, 2.6], "err": [0.8, 0.7, np.nan]}, r"err must be finite.*err\[2\]"),
    (scaling.fit_downstream, {"loss": [3.0, 2.8], "err": [0.8, 0.7]}, "2 data points cannot determine 3"),
    (scaling.fit_shape_law, {"compute": [1e15, 1e16, 1e17, 0.0], "loss": [4, 3, 2.5, 2.2]}, r"compute must be > 0"),
    (scaling.fit_shape_law, {"compute": [1e15, 1e16, 1e17], "loss": [4, 3, 2.5]}, "3 data points cannot determine 4"),
    (scaling.fit_shape_law, {"compute": [1e15, 1e16, 1e17, 1e18], "loss": [4, 3, 2.5, 2.2], "d": -1.0},
     "d must be >= 0"),
    (scaling.fit_shape_law, {"compute": [1e15, 1e16, 1e17, 1e18], "loss": [4, 3, 2.5, 2.2], "d": np.nan},
     r"^fit_shape_law: d must be finite, got nan$"),
])
def test_bad_input_for_downstream_and_shape(fit, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(**kwargs)


def test_shape_law_rejects_a_non_number_d():
    with pytest.raises(TypeError, match=r"^fit_shape_law: d must be a real number, got str"):
        scaling.fit_shape_law([1e15, 1e16, 1e17, 1e18], [4, 3, 2.5, 2.2], d="0")


def test_repeated_rows_count_once(seed):
    rng = np.random.default_rng(seed)
    truth = random_chinchilla(rng)
    N, D = sample_n_d(rng, 4)
    with pytest.raises(ValueError, match=r"^fit_chinchilla: 4 distinct data points \(8 rows, some repeated\) cannot "
                                         r"determine 5 parameters; .* in N, D, loss"):
        scaling.fit_chinchilla(np.tile(N, 2), np.tile(D, 2), np.tile(truth.predict(N, D), 2), init_grid=COARSE_GRID,
                               progress=False)
    compute = 10 ** rng.uniform(14, 20, 3)
    loss = random_shape_law(rng).predict(compute)
    with pytest.raises(ValueError, match=r"^fit_shape_law: 3 distinct data points \(6 rows, some repeated\)"):
        scaling.fit_shape_law(np.repeat(compute, 2), np.repeat(loss, 2))


def test_overtraining_needs_two_token_multipliers(seed):
    # With one M = D / N the law is E + (a M^eta + b M^-eta) C^-eta = E + k C^-eta: any a, b
    # with the same k fit equally well, and predictions at another M are arbitrary.
    rng = np.random.default_rng(seed)
    truth = OvertrainingLaw(E=rng.uniform(1.6, 2.2), a=rng.uniform(150, 300), b=rng.uniform(250, 500),
                            eta=rng.uniform(0.12, 0.18))
    N = np.geomspace(1e7, 1e9, 8) * rng.uniform(0.8, 1.25, 8)
    M = rng.uniform(10, 40)
    with pytest.raises(ValueError, match=r"^fit_overtraining: N and D must give at least 2 distinct token multipliers"):
        scaling.fit_overtraining(N, M * N, truth.predict(N, M * N))
    # One more run at 16 M determines the fit; a bootstrap resample that leaves it out (about a
    # third of them) does not, and must count as failed rather than as a refit.
    N = np.append(N, 10 ** rng.uniform(8, 9))
    D = np.append(M * N[:-1], 16 * M * N[-1])
    loss = truth.predict(N, D) * np.exp(rng.normal(0, 0.001, N.size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scaling.ConvergenceWarning)  # more than 10% of the refits fail
        law = scaling.fit_overtraining(N, D, loss, n_boot=60, seed=seed, progress=False)
    assert law.fit_info["converged"]
    assert 0 < law.fit_info["n_boot_failed"] < 40
    assert len(law.boot_params) == 60 - law.fit_info["n_boot_failed"]


def test_bootstrap_with_fixed_d_needs_only_the_free_parameters(seed, monkeypatch):
    from adaptkern.scaling import bootstrap

    rng = np.random.default_rng(seed)
    truth = random_shape_law(rng)
    compute = np.geomspace(1e14, 1e20, 3) * rng.uniform(0.5, 2.0, 3)  # 3 points for c, a, b
    law = scaling.fit_shape_law(compute, truth.predict(compute), d=truth.d, n_boot=10, seed=seed, progress=False)
    assert law.fit_info["n_boot"] == 10 and len(law.boot_params) > 0
    assert np.all(law.boot_params[:, 3] == truth.d)
    # A resample needs 4 distinct points when d is fitted; allow one draw per replica, so
    # that most replicas find none and the bootstrap gives up, naming the fit and n_boot.
    monkeypatch.setattr(bootstrap, "_MAX_REDRAWS", 1)
    compute = np.geomspace(1e14, 1e20, 4) * rng.uniform(0.5, 2.0, 4)
    with pytest.raises(ValueError, match=r"^fit_shape_law: n_boot needs resamples of the 4 data points with 4 "
                                         r"distinct ones"):
        scaling.fit_shape_law(compute, truth.predict(compute), n_boot=20, seed=seed, progress=False)


def test_anchored_shape_law_recovers_parameters_and_starts_at_the_anchor(seed):
    rng = np.random.default_rng(seed)
    L0, c, b = rng.uniform(2.0, 3.0), rng.uniform(0.3, 1.0), rng.uniform(0.3, 0.8)
    d = 10 ** rng.uniform(9, 10)
    truth = ShapeLaw(c=c, a=(L0 - c) * d ** b, b=b, d=d)
    compute = np.geomspace(3e9, 3e12, 25)
    noise = 0.003
    loss = truth.predict(compute) * np.exp(rng.normal(0, noise, compute.size))
    law = scaling.fit_shape_law(compute, loss, initial_loss=L0)
    assert law.fit_info["converged"] and law.fit_info["at_bound"] == []
    assert law.fit_info["initial_loss"] == L0
    assert float(law.predict(0.0)) == pytest.approx(L0, rel=1e-12)  # pinned to the measured start
    sse_truth = np.sum((np.log(truth.predict(compute)) - np.log(loss)) ** 2)
    assert law.fit_info["objective"] <= sse_truth * (1 + 1e-6)
    rms = np.sqrt(np.mean((np.log(law.predict(compute)) - np.log(loss)) ** 2))
    assert law.fit_info["rms_log_residual"] == pytest.approx(rms, rel=1e-9)
    assert rms <= 2 * noise
    assert law.b == pytest.approx(b, rel=0.25) and law.c == pytest.approx(c, abs=0.15)


def test_shape_law_flags_a_parameter_at_its_bound(seed):
    """A plateau then a cliff (the old glyph task's curves) is no saturating power law: the
    free fit ends at the bound b = 10 (an exponential in disguise), and says so."""
    rng = np.random.default_rng(seed)
    compute = np.geomspace(1e9, 1e12, 16)
    loss = 0.4 + 1.3 / (1 + np.exp(4 * (np.log(compute) - np.log(1e11)))) + 0.6 * np.exp(-compute / 3e9)
    loss = loss * np.exp(rng.normal(0, 1e-3, compute.size))
    law = scaling.fit_shape_law(compute, loss)
    assert "b" in law.fit_info["at_bound"] and law.b == pytest.approx(10.0)
    assert law.fit_info["rms_log_residual"] > 0.01
    clean = random_shape_law(rng)
    good = scaling.fit_shape_law(np.geomspace(1e14, 1e20, 20), clean.predict(np.geomspace(1e14, 1e20, 20)))
    assert good.fit_info["at_bound"] == []
