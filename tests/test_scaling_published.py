"""The fits reproduce published numbers from the public data in ../shared/data (see its
README): Gadre et al. 2024's RedPajama laws and Besiroglu et al. 2024's refit of Hoffmann
et al.'s Approach 3 on the Chinchilla points Epoch AI extracted."""

import warnings
from pathlib import Path

import numpy as np
import pytest

from adaptkern import scaling
from adaptkern.scaling import data as scaling_data

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GADRE_CSV = DATA / "gadre2024_per_model_compact.csv"
EPOCH_CSV = DATA / "epoch_analyzing_chinchilla" / "svg_extracted_data.csv"

# Gadre et al.'s loss law is fitted on these 5 runs per dataset (their scaling/shared.py,
# fit_ds); the error law on the same plus the 1.4B model at multiplier 1.0.
LOSS_RUNS = ["d=96_l=8_h=4-1.0", "d=512_l=8_h=4-1.0", "d=576_l=24_h=8-1.0", "d=1024_l=24_h=8-1.0",
             "d=96_l=8_h=4-16.0"]
ERROR_RUNS = LOSS_RUNS + ["open_lm_1b-1.0"]


def need(path):
    if not path.exists():
        pytest.skip(f"public scaling data not found at {path} (the shared/ folder beside the repository)")
    return path


def rpj_rows(names):
    table = scaling_data.read_csv(need(GADRE_CSV))
    rows = scaling_data.filter_rows(table, ["name=" + ",".join(f"rpj-{n}" for n in names)])
    assert sorted(rows["name"]) == sorted(f"rpj-{n}" for n in names)
    return rows


def column(rows, name):
    return np.array(rows[name], dtype=float)


def test_gadre_redpajama_loss_law_and_extrapolation():
    # Paper / their notebook: N = all parameters ("params", our params_N), D = tokens, loss
    # on C4 eval (loss_c4_val), least squares on the loss itself.
    rows = rpj_rows(LOSS_RUNS)
    law = scaling.fit_overtraining(column(rows, "params_N"), column(rows, "tokens_D"), column(rows, "loss_c4_val"))
    published = {"E": 1.84, "a": 212.0, "b": 367.0, "eta": 0.136}
    for name, value in published.items():
        assert getattr(law, name) == pytest.approx(value, rel=0.02), name
    # Their explorer notebook prints 0.7103% and 0.7320% relative error on the two held-out
    # runs; matching those to 0.01 points shows the same optimum, not just a nearby one.
    targets = rpj_rows(["open_lm_1b-32.0", "open_lm_7b-1.0"])
    predicted = law.predict(column(targets, "params_N"), column(targets, "tokens_D"))
    relative = np.abs(predicted / column(targets, "loss_c4_val") - 1)
    expected = {"rpj-open_lm_1b-32.0": 0.007103, "rpj-open_lm_7b-1.0": 0.007320}
    for name, rel in zip(targets["name"], relative):
        assert rel < 0.015, name
        assert rel == pytest.approx(expected[name], abs=1e-4), name


def test_gadre_redpajama_downstream_law():
    rows = rpj_rows(ERROR_RUNS)
    law = scaling.fit_downstream(column(rows, "loss_c4_val"), column(rows, "err_avg17"))
    for name, value in {"epsilon": 0.857, "k": 2.21, "gamma": 0.715}.items():
        assert getattr(law, name) == pytest.approx(value, rel=0.02), name


def test_gadre_bootstrap_intervals_contain_the_fit():
    rows = rpj_rows(LOSS_RUNS)
    with warnings.catch_warnings():
        # 5 points and 4 parameters: some resamples are degenerate; the count is reported.
        warnings.simplefilter("ignore", scaling.ConvergenceWarning)
        law = scaling.fit_overtraining(column(rows, "params_N"), column(rows, "tokens_D"),
                                       column(rows, "loss_c4_val"), n_boot=40, seed=0, progress=False)
    # Four of the five runs share M = 1: about 1 in 5 usable resamples leaves out the one
    # run at M = 16, cannot tell a from b, and must count as failed (not as a wild refit).
    assert law.fit_info["n_boot"] == 40 and 0 < law.fit_info["n_boot_failed"] < 20
    for name, (low, high) in law.intervals.items():
        assert low <= getattr(law, name) <= high, name
    # Every refit that counts separates a and b: both come out positive in every replica.
    assert law.intervals["a"][0] > 0 and law.intervals["b"][0] > 0
    assert np.all(law.boot_params[:, 1:3] > 0)


@pytest.fixture(scope="module")
def epoch_fit():
    table = scaling_data.read_csv(need(EPOCH_CSV))
    N, C, loss = (np.array(table[k], dtype=float) for k in ("Model Size", "Training FLOP", "loss"))
    # Besiroglu et al. drop the 5 highest losses (their notebook: keep loss < 5th highest).
    keep = loss < np.sort(loss)[-5]
    assert keep.sum() == 240
    N, D, loss = N[keep], C[keep] / (6 * N[keep]), loss[keep]
    # The full 4500-start grid of Hoffmann et al.: the slow part of this file (~20 s).
    return scaling.fit_chinchilla(N, D, loss, n_boot=30, seed=0, progress=False), (N, D, loss)


def test_epoch_approach3_matches_besiroglu(epoch_fit):
    law, _ = epoch_fit
    assert law.fit_info["converged"] and law.fit_info["n_starts"] == 4500
    # Besiroglu et al. 2024 report alpha 0.35, beta 0.37, E 1.82 (two decimals): the fit
    # must round to them, i.e. lie within half a unit of the last digit. The data are read
    # off a figure, so closer agreement with the paper is not meaningful; closer agreement
    # with their notebook's own L-BFGS run on the same points is (next assertions).
    assert law.alpha == pytest.approx(0.35, abs=0.005)
    assert law.beta == pytest.approx(0.37, abs=0.005)
    assert law.E == pytest.approx(1.82, abs=0.005)
    # Epoch's notebook ("Replicate exactly", L-BFGS-B with default tolerances and numerical
    # gradients): A=477.84, B=2143.86, E=1.81724, alpha=0.347313, beta=0.367183; its best
    # starts differ among themselves by ~1e-4 in the exponents, so allow 5e-4.
    assert law.alpha == pytest.approx(0.347313, abs=5e-4)
    assert law.beta == pytest.approx(0.367183, abs=5e-4)
    assert law.E == pytest.approx(1.81724, rel=1e-3)
    assert law.A == pytest.approx(477.84, rel=0.01)
    assert law.B == pytest.approx(2143.86, rel=0.01)
    # Their best objective (sum of Huber losses) was 0.00101827403.
    assert law.fit_info["objective"] <= 0.00101827403 * (1 + 1e-6)
    # Hoffmann et al.'s published beta = 0.28 is what Besiroglu et al. could not reproduce.
    assert abs(law.beta - 0.28) > 0.05


def test_epoch_bootstrap_and_compute_optimal(epoch_fit):
    law, (N, D, loss) = epoch_fit
    assert set(law.intervals) == {"E", "A", "B", "alpha", "beta"}
    for name, (low, high) in law.intervals.items():
        assert low < getattr(law, name) < high, name
    # The compute-optimal split at Chinchilla's budget (5.76e23 FLOPs) spends it all.
    N_opt, D_opt = law.compute_optimal(5.76e23)
    assert 6 * N_opt * D_opt == pytest.approx(5.76e23)
    low, high = law.interval(lambda replica: replica.compute_optimal(5.76e23)[0])
    assert low < N_opt < high


def test_epoch_bootstrap_refit_reaches_the_resample_optimum(epoch_fit, seed):
    # Bootstrap refits start at the point fit instead of the 4500-start grid; they must
    # still reach each resample's own optimum, at least as low as a cold multi-start fit.
    from adaptkern.scaling.chinchilla import _refit

    law, (N, D, loss) = epoch_fit
    idx = np.random.default_rng(seed).integers(0, len(N), len(N))
    params, converged = _refit([N[idx], D[idx], loss[idx]], law, delta=1e-3)
    warm = scaling.ChinchillaLaw(**dict(zip(law.param_names, params)))
    grid = {"a": [0.0, 10.0], "b": [0.0, 10.0], "e": [-1.0, 0.5], "alpha": [0.0, 0.5], "beta": [0.0, 0.5]}
    cold = scaling.fit_chinchilla(N[idx], D[idx], loss[idx], init_grid=grid, progress=False)
    residual = np.log(warm.predict(N[idx], D[idx])) - np.log(loss[idx])
    objective = np.sum(np.where(np.abs(residual) <= 1e-3, residual**2 / 2, 1e-3 * (np.abs(residual) - 5e-4)))
    assert converged
    assert objective <= cold.fit_info["objective"] * (1 + 1e-6)
    assert warm.alpha == pytest.approx(cold.alpha, abs=2e-3) and warm.beta == pytest.approx(cold.beta, abs=2e-3)
