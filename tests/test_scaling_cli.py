"""``adaptkern fit`` end to end on small CSVs written by the tests, and the CSV helpers
(row filters, column defaults) behind it."""

import csv
import json

import numpy as np
import pytest

from adaptkern.cli import main
from adaptkern.scaling import OvertrainingLaw, ScalingLaw, ShapeLaw
from adaptkern.scaling import data as scaling_data

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_csv(path, columns):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values()))
    return str(path)


def assert_fits(law, truth, compute, loss):
    """The fitted law is the least-squares optimum (no worse on the data than the law that made
    it) and predicts the true curve closely. 0.2% noise on 20-30 points gives at most ~0.5%
    error on the curve's ends (max over 400 seeds): 1% stays clear of that tail."""
    sse = lambda f: np.sum(np.log(f.predict(compute) / loss) ** 2)  # noqa: E731
    assert sse(law) <= sse(truth) * (1 + 1e-6)
    np.testing.assert_allclose(law.predict(compute), truth.predict(compute), rtol=1e-2)


def shape_curve(rng, size=30):
    b = rng.uniform(0.2, 0.35)
    truth = ShapeLaw(c=rng.uniform(1.6, 2.2), a=rng.uniform(1.0, 2.0) * 1e17**b, b=b, d=1e15)
    compute = np.geomspace(1e15, 1e20, size)
    return truth, compute, truth.predict(compute) * np.exp(rng.normal(0, 0.002, size))


def test_fit_shape_writes_json_and_png(tmp_path, capsys, seed):
    rng = np.random.default_rng(seed)
    truth, compute, loss = shape_curve(rng)
    path = write_csv(tmp_path / "curve.csv", {"compute": compute, "loss": loss})
    assert main(["fit", path, "--law", "shape", "--out", str(tmp_path / "out"), "--n-boot", "30"]) == 0
    printed = capsys.readouterr().out
    assert "shape law" in printed and "95% CI" in printed and "converged" in printed
    saved = json.loads((tmp_path / "out" / "curve_shape.json").read_text())
    assert saved["data"]["csv"].endswith("curve.csv") and saved["fit_info"]["n_boot"] == 30
    law = ScalingLaw.from_dict(saved)
    assert_fits(law, truth, compute, loss)
    for name, (low, high) in law.intervals.items():
        assert low < high and f"{getattr(law, name):>12.6g}" in printed
    png = (tmp_path / "out" / "curve_shape.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000


def test_fit_overtraining_with_where_group_and_compute_column(tmp_path, capsys, seed):
    rng = np.random.default_rng(seed)
    truth = OvertrainingLaw(E=1.8, a=200.0, b=350.0, eta=0.14)
    N = np.repeat(np.geomspace(1e7, 4e8, 5), 3)
    D = N * np.tile([20.0, 80.0, 320.0], 5)
    loss = truth.predict(N, D) * np.exp(rng.normal(0, 0.001, N.size))
    # A second "dataset" of nonsense rows that --where must drop, and odd column names.
    path = write_csv(tmp_path / "runs.csv", {
        "dataset": ["mine"] * N.size + ["other"] * 3, "n params": [*N, 1, 1, 1],
        "flops": [*(6 * N * D), 1, 1, 1], "val loss": [*loss, 99, 99, 99]})
    args = ["fit", path, "--law", "overtraining", "--where", "dataset=mine", "--columns", "N=n params", "C=flops",
            "loss=val loss", "--n-boot", "0", "--out", str(tmp_path)]
    assert main(args) == 0
    saved = json.loads((tmp_path / "runs_overtraining.json").read_text())
    assert saved["data"]["columns"] == {"N": "n params", "C": "flops", "loss": "val loss"}
    law = ScalingLaw.from_dict(saved)
    assert law.eta == pytest.approx(truth.eta, abs=0.02) and law.E == pytest.approx(truth.E, rel=0.03)
    assert "E" in capsys.readouterr().out

    assert main(["fit", path, "--law", "overtraining", "--group", "dataset", "--columns", "N=n params", "C=flops",
                 "loss=val loss", "--n-boot", "0", "--out", str(tmp_path / "g")]) == 2  # "other" has 3 rows
    assert "3 data points cannot determine 4 parameters" in capsys.readouterr().err


def test_fit_groups_write_one_law_per_shape(tmp_path, seed):
    rng = np.random.default_rng(seed)
    (t1, c1, l1), (t2, c2, l2) = shape_curve(rng, 20), shape_curve(rng, 20)
    path = write_csv(tmp_path / "shapes.csv", {"patch": [16] * 20 + [32] * 20, "compute": [*c1, *c2],
                                               "loss": [*l1, *l2]})
    assert main(["fit", path, "--law", "shape", "--group", "patch", "--n-boot", "0", "--out", str(tmp_path)]) == 0
    for value, truth, compute, loss in (("16", t1, c1, l1), ("32", t2, c2, l2)):
        law = ScalingLaw.from_json((tmp_path / f"shapes_shape_{value}.json").read_text())
        assert_fits(law, truth, compute, loss)
        assert (tmp_path / f"shapes_shape_{value}.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("cells, args, message", [
    ({"compute": [1e15, 2e15, 3e15, 4e15, 5e15], "loss": [3, 2.9, "nan", 2.7, 2.6]}, [],
     "column 'loss' (for loss): row 3 holds 'nan'"),
    ({"compute": [1e15, 2e15, 3e15, 4e15, 5e15], "loss": [3, 2.9, -1, 2.7, 2.6]}, [], "row 3 holds '-1'"),
    ({"compute": [1e15, 2e15, 3e15, 4e15, 5e15], "loss": [3, 2.9, "x", 2.7, 2.6]}, [], "row 3 holds 'x', not a number"),
    ({"total_flops": [1e15, 2e15], "loss": [3, 2.9]}, [], "no column for compute"),
    ({"compute": [1e15, 2e15], "loss": [3, 2.9]}, [], "2 data points cannot determine 4 parameters"),
    ({"compute": [1e15, 2e15], "loss": [3, 2.9]}, ["--columns", "loss=val"], "column 'val' (for loss) is not in"),
    ({"compute": [1e15, 2e15], "loss": [3, 2.9]}, ["--columns", "lossval"], "expected ARG=COLUMN"),
    ({"compute": [1e15, 2e15], "loss": [3, 2.9]}, ["--columns", "N=compute"], "shape takes compute, loss"),
    ({"compute": [1e15, 2e15], "loss": [3, 2.9]}, ["--where", "loss"], "cannot parse 'loss'"),
    ({"compute": [1e15, 2e15], "loss": [3, 2.9]}, ["--where", "size=3"], "no column 'size'"),
    ({"compute": [1e15, 2e15], "loss": [3, 2.9]}, ["--where", "loss>5"], "no rows"),
])
def test_fit_reports_bad_data_and_arguments(tmp_path, capsys, cells, args, message):
    path = write_csv(tmp_path / "bad.csv", cells)
    assert main(["fit", path, "--law", "shape", "--n-boot", "0", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_where_conditions():
    table = {"model": ["d=96_l=8", "d=512_l=8", "d=96_l=8"], "mult": ["1.0", "16.0", "16.0"], "loss": ["5", "3", "4"]}
    pick = lambda *where: scaling_data.filter_rows(table, where)["loss"]  # noqa: E731
    assert pick("model=d=96_l=8") == ["5", "4"]  # only the first operator splits
    assert pick("mult=1") == ["5"]  # numbers compare as numbers
    assert pick("mult!=1,16") == []
    assert pick("model=d=512_l=8,d=96_l=8", "mult>=16") == ["3", "4"]
    assert pick("loss<4.5", "loss > 3") == ["4"]


def test_default_columns_and_compute_derived_tokens():
    table = {"Model Size": ["1e9", "2e9"], "Training FLOP": ["6e18", "2.4e19"], "loss": ["3.0", "2.8"]}
    columns = scaling_data.law_columns(table, "chinchilla")
    assert list(columns) == ["N", "D", "loss"]
    np.testing.assert_allclose(columns["D"], [1e9, 2e9])
    with pytest.raises(ValueError, match="law must be one of"):
        scaling_data.law_columns(table, "kaplan")
    with pytest.raises(ValueError, match="no column for D: .*--columns D=COLUMN .tokens. or C=COLUMN"):
        scaling_data.law_columns({"N": ["1"], "loss": ["2"]}, "overtraining")
