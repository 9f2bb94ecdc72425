"""Bad and extreme input, as an adversarial user gives it (issue 13): every public function
answers a ValueError / TypeError naming the argument and the rule, every CLI flag exits 2
with one line, corrupt files name themselves and say what to do, and edge cases (NaN in a
pos-embed cell, empty grids, embed_dim 0, meta tensors) behave as the documented oracle."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import adaptkern as ak
from adaptkern import cli, scaling
from adaptkern.reference import interp_pos_embed as reference
from adaptkern.scaling import ShapeLaw

BACKENDS = ["reference", "triton"]


# ----------------------------------------------------------------------------- packing

@pytest.mark.parametrize("as_tensor", [False, True])
def test_cu_seqlens_from_lengths_rejects_negative_and_int32_overflow(as_tensor):
    make = (lambda v: torch.tensor(v, dtype=torch.int64)) if as_tensor else list
    with pytest.raises(ValueError, match=r"lengths\[1\] must be >= 0, got -1"):
        ak.cu_seqlens_from_lengths(make([3, -1, 2]))
    for lengths in ([2**31 - 1, 5], [2**40]):
        with pytest.raises(ValueError, match=r"lengths sum to \d+, more than int32 cu_seqlens can hold"):
            ak.cu_seqlens_from_lengths(make(lengths))
    assert ak.cu_seqlens_from_lengths(make([2**31 - 2, 1, 0])).tolist() == [0, 2**31 - 2, 2**31 - 1, 2**31 - 1]


def test_cu_seqlens_from_lengths_rejects_non_integer_lengths():
    with pytest.raises(TypeError, match="lengths must be integers"):
        ak.cu_seqlens_from_lengths(torch.tensor([True, False]))
    with pytest.raises(TypeError, match="lengths must be a list of ints or a 1-D integer tensor, got int"):
        ak.cu_seqlens_from_lengths(5)
    with pytest.raises(TypeError, match=r"lengths\[0\] must be an int, got float"):
        ak.cu_seqlens_from_lengths([2.5])


# ----------------------------------------------------------------------------- patch embedding

def test_flexi_patch_embed_on_meta_tensors():
    images = torch.empty(2, 3, 32, 48, device="meta")
    weight, bias = torch.empty(8, 3, 16, 16, device="meta"), torch.empty(8, device="meta")
    for patch in (16, 8):
        out = ak.flexi_patch_embed(images, weight, bias, patch)
        assert out.device.type == "meta" and out.shape == (2, (32 // patch) * (48 // patch), 8)
    packed = ak.flexi_patch_embed_packed([images[0], images[1, :, :16]], weight, bias, 8)
    assert packed.tokens.shape == (4 * 6 + 2 * 6, 8) and packed.tokens.device.type == "meta"
    assert packed.cu_seqlens.device.type == "meta" and packed.grid_sizes.device.type == "meta"


@pytest.mark.parametrize("backend", BACKENDS)
def test_embed_dim_zero_gives_empty_tokens_on_every_backend(backend):
    images = torch.randn(2, 3, 16, 24, requires_grad=True)
    weight, bias = torch.randn(0, 3, 8, 8, requires_grad=True), torch.randn(0, requires_grad=True)
    for patch in (8, 4):  # 4: through the PI-resize of the (empty) weight
        out = ak.flexi_patch_embed(images, weight, bias, patch, backend=backend)
        assert out.shape == (2, (16 // patch) * (24 // patch), 0)  # (F.conv2d refuses 0 output channels)
        out.sum().backward()
        assert torch.equal(images.grad, torch.zeros_like(images)) and weight.grad.shape == weight.shape
        packed = ak.flexi_patch_embed_packed([images[0], images[1, :, :8]], weight, bias, patch, backend=backend)
        assert packed.tokens.shape == (packed.cu_seqlens[-1].item(), 0)


# ----------------------------------------------------------------------------- pos-embed interpolation

def _oracle_blocks(pos, grids, **opts):
    """float64 F.interpolate per non-empty grid, packed (an empty grid has no rows)."""
    grid = pos.double().permute(2, 0, 1)[None]
    blocks = [F.interpolate(grid, size=(h, w), **opts)[0].permute(1, 2, 0).reshape(h * w, -1)
              for h, w in grids if h * w]
    return torch.cat(blocks) if blocks else pos.new_zeros((0, pos.shape[2]), dtype=torch.float64)


def _reads(in_size, out_size, index, **opts):
    """Outputs of a 1-D resize whose taps read input ``index`` (any weight)."""
    taps, _, count = reference.axis_taps(in_size, out_size, dtype=torch.float64, **opts)
    used = torch.arange(taps.shape[1]) < count[:, None]
    return ((taps == index) & used).any(1)


@pytest.mark.parametrize("mode,antialias,align_corners",
                         list(itertools.product(["bilinear", "bicubic"], [False, True], [False, True])))
def test_reference_confines_a_nan_cell_as_f_interpolate_does(mode, antialias, align_corners):
    # A NaN in one cell must reach every output that weighs that cell (F.interpolate of a
    # one-hot grid is nonzero there) and no output F.interpolate keeps finite: the
    # reference must not spread it through zero weights as a dense resize matrix does.
    # Excused: outputs whose taps read the cell with weight exactly 0, which F.interpolate
    # evaluates or not depending on the last bit of its source position.
    opts = dict(mode=mode, antialias=antialias, align_corners=align_corners)
    for _ in range(12):
        base_h, base_w, h, w = torch.randint(2, 12, (4,)).tolist()
        row, col = torch.randint(base_h, ()).item(), torch.randint(base_w, ()).item()
        pos = torch.randn(base_h, base_w, 3, dtype=torch.float64)
        pos[row, col, 1] = math.nan
        onehot = torch.zeros(base_h, base_w, 1, dtype=torch.float64)
        onehot[row, col] = 1.0
        weighs = (_oracle_blocks(onehot, [(h, w)], **opts) != 0)[:, 0]
        excused = (_reads(base_h, h, row, **opts)[:, None] & _reads(base_w, w, col, **opts)[None, :]).flatten()
        want = _oracle_blocks(pos, [(h, w)], **opts)
        got = ak.interp_pos_embed(pos, torch.tensor([[h, w]], dtype=torch.int32), backend="reference",
                                  interpolation=mode, antialias=antialias, align_corners=align_corners)
        case = (base_h, base_w, h, w, row, col)
        assert torch.equal(got[:, 1].isnan() & weighs, weighs), case  # (downsampling may skip the cell)
        assert not (got[:, 1].isnan() & ~want[:, 1].isnan() & ~(excused & ~weighs)).any(), case
        assert not got[:, [0, 2]].isnan().any(), case
        finite = want.isfinite() & got.isfinite()
        torch.testing.assert_close(got[finite], want[finite], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_zero_size_image_flows_from_patch_embed_to_pos_embed(backend, seed):
    # flexi_patch_embed_packed gives a zero-size image the grid (0, w); the pos-embed ops
    # take the same rule (a grid with a 0 has no patch tokens), forward and backward.
    weight = torch.randn(6, 3, 4, 4)
    # (no grid of width 1: torch 2.13's CPU antialias resize of a height over one column is wrong)
    images = [torch.randn(3, 8, 12), torch.randn(3, 0, 12), torch.randn(3, 4, 0), torch.randn(3, 12, 8)]
    packed = ak.flexi_patch_embed_packed(images, weight, None, 4, backend=backend)
    assert packed.grid_sizes.tolist() == [[2, 3], [0, 3], [1, 0], [3, 2]]
    pos = torch.randn(5, 6, 6, requires_grad=True)
    out = ak.add_interp_pos_embed(packed.tokens, pos, packed.grid_sizes, packed.cu_seqlens, backend=backend)
    grad = torch.randn_like(out)
    out.backward(grad)
    oracle_pos = pos.detach().double().requires_grad_()
    want = _oracle_blocks(oracle_pos, packed.grid_sizes.tolist(), mode="bicubic", antialias=True)
    want.backward(grad.double())
    torch.testing.assert_close(out.double(), packed.tokens.double() + want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pos.grad.double(), oracle_pos.grad, rtol=1e-5, atol=1e-5)
    alone = ak.interp_pos_embed(pos.detach(), packed.grid_sizes, backend=backend)
    torch.testing.assert_close(alone.double(), want.detach(), rtol=1e-5, atol=1e-5)
    assert ak.flops.interp_pos_embed_flops([(0, 3), (1, 0)], (5, 6), 6) == 0
    with pytest.raises(ValueError, match=r"grid_sizes\[1\] = \(-1, 3\).*>= 0"):
        ak.interp_pos_embed(pos, torch.tensor([[2, 3], [-1, 3]], dtype=torch.int32), backend=backend)


# ----------------------------------------------------------------------------- FLOP accounting

def test_attention_flops_rejects_fractional_lengths_and_a_non_bool_causal():
    with pytest.raises(TypeError, match=r"cu_seqlens_q\[1\] must be an int, got float"):
        ak.flops.attention_flops([0, 2.7], [0, 3], 1, 8)
    with pytest.raises(TypeError, match="causal must be a bool, got str"):
        ak.flops.attention_flops([0, 4], [0, 4], 1, 8, causal="no")
    with pytest.raises(TypeError, match="cu_seqlens_k must be a 1-D integer tensor or a list of ints, got str"):
        ak.flops.attention_flops([0, 4], "04", 1, 8)
    # numpy integers are integers: 4 queries x 4 keys, causal = 10 pairs
    assert ak.flops.attention_flops(np.array([0, 4]), [np.int64(0), np.int64(4)], 1, 8, causal=True) == 4 * 8 * 10


# ----------------------------------------------------------------------------- scaling laws

def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scaling.ConvergenceWarning)
        return fn(*args, **kwargs)


def test_every_fit_rejects_a_predictor_with_too_few_values(seed):
    rng = np.random.default_rng(seed)
    loss = np.sort(rng.uniform(2.5, 4.0, 8))[::-1]
    D = np.geomspace(1e9, 1e11, 8)
    with pytest.raises(ValueError, match=r"^fit_overtraining: N takes 1 distinct value .*at least 2 distinct N"):
        _quiet(scaling.fit_overtraining, np.full(8, 1e8), D, loss)
    with pytest.raises(ValueError, match=r"^fit_overtraining: D takes 1 distinct value"):
        _quiet(scaling.fit_overtraining, np.geomspace(1e7, 1e9, 8), np.full(8, 1e10), loss)
    with pytest.raises(ValueError, match=r"^fit_chinchilla: N takes 2 distinct values .*at least 3 distinct N"):
        _quiet(scaling.fit_chinchilla, np.tile([1e7, 1e8], 4), D, loss, init_grid={"a": [5.0]}, progress=False)
    with pytest.raises(ValueError, match=r"^fit_chinchilla: D takes 1 distinct value"):
        _quiet(scaling.fit_chinchilla, np.geomspace(1e7, 1e9, 8), np.full(8, 1e10), loss, progress=False)
    with pytest.raises(ValueError, match=r"^fit_shape_law: compute takes 1 distinct value .*at least 4 distinct"):
        _quiet(scaling.fit_shape_law, np.full(8, 1e15), loss)
    with pytest.raises(ValueError, match=r"^fit_shape_law: compute takes 2 distinct values .*at least 3 distinct"):
        _quiet(scaling.fit_shape_law, np.tile([1e15, 1e16], 4), loss, d=0.0)
    with pytest.raises(ValueError, match=r"^fit_downstream: loss takes 1 distinct value .*at least 3 distinct"):
        _quiet(scaling.fit_downstream, np.full(8, 3.0), rng.uniform(0.3, 0.7, 8))


def test_fit_chinchilla_checks_the_init_grid(seed):
    rng = np.random.default_rng(seed)
    N, D = 10 ** rng.uniform(7, 10, 12), 10 ** rng.uniform(8, 11, 12)
    loss = 1.7 + 400 / N**0.34 + 410 / D**0.28
    for values, match in (([math.nan], r"init_grid\['a'\] must be finite"), ([], r"init_grid\['a'\] must hold at "
                                                                                    "least one start value"),
                          ([1.0, math.inf], r"init_grid\['a'\] must be finite")):
        with pytest.raises(ValueError, match=match):
            scaling.fit_chinchilla(N, D, loss, init_grid={"a": values}, progress=False)
    with pytest.raises(TypeError, match="init_grid must be a dict"):
        scaling.fit_chinchilla(N, D, loss, init_grid=[("a", [1.0])], progress=False)


# ----------------------------------------------------------------------------- schedule

@pytest.mark.parametrize("bad", [dict(a=math.nan), dict(a=-5.0), dict(b=-0.3), dict(b=math.inf), dict(d=-1.0),
                                 dict(c=-0.5)])
def test_optimal_schedule_rejects_a_law_with_nan_or_negative_parameters(bad):
    good = ShapeLaw(c=1.0, a=10.0, b=0.3, d=1.0)
    broken = ShapeLaw(**{**good.params, **bad})
    (name, value), = bad.items()
    with pytest.raises(ValueError, match=rf"laws\['broken'\]\.{name} must be"):
        ak.schedule.optimal_schedule({"good": good, "broken": broken}, 1.5, start_loss=10.0)


def test_optimal_schedule_rejects_a_duck_law_that_returns_nan():
    class NanLaw:
        c = 1.0

        def predict(self, C):
            return 1.0 + 10.0 * (np.asarray(C) + 1.0) ** -0.3

        def inverse(self, L):
            return np.full(np.shape(L), math.nan)

        d_inverse = inverse

    good = ShapeLaw(c=1.0, a=10.0, b=0.3, d=1.0)
    with pytest.raises(ValueError, match=r"laws\['nan'\]\.\w+\(.*\) is NaN"):
        ak.schedule.optimal_schedule({"good": good, "nan": NanLaw()}, 1.5, start_loss=10.0)


# ----------------------------------------------------------------------------- command line

def _cli_error(capsys, argv):
    """Run the CLI; return its one stderr line after asserting exit status 2."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def no_training(monkeypatch):
    """Make any training that a bad flag let through fail at once (instead of running)."""
    import adaptkern.train
    import adaptkern.train.demo

    def refuse(*args, **kwargs):
        raise AssertionError("a bad flag reached training")

    monkeypatch.setattr(adaptkern.train.demo, "run_demo", refuse)
    monkeypatch.setattr(adaptkern.train, "train_run", refuse)


@pytest.mark.parametrize("argv,flag,rule", [
    (["--budget", "inf"], "--budget", "finite number > 0"),
    (["--budget=-1e9"], "--budget", "finite number > 0"),
    (["--target-loss", "nan"], "--target-loss", "finite number > 0"),
    (["--batch-size", "0"], "--batch-size", "integer >= 1"),
    (["--tokens-per-batch", "-4"], "--tokens-per-batch", "integer >= 1"),
    (["--evals", "1"], "--evals", "integer >= 2"),
    (["--threads", "0"], "--threads", "integer >= 1"),
    (["--seed", "-1"], "--seed", "integer >= 0"),
    (["--device", "bogus"], "--device", "cpu, cuda or cuda:N"),
    (["--device", "cuda:99"], "--device", "cuda"),
])
@pytest.mark.parametrize("command", ["demo", "train"])
def test_run_flags_exit_2_with_one_line(capsys, no_training, command, argv, flag, rule, tmp_path):
    extra = ["--shape", "p8"] if command == "train" else []
    err = _cli_error(capsys, [command, "--out", str(tmp_path), *extra, *argv])
    assert flag in err and rule in err


@pytest.mark.parametrize("schedule,rule", [("p16:-5,p8", "finite number > 0"), ("p16:nan,p8", "finite number > 0"),
                                           ("p16:inf,p8", "finite number > 0"), ("p16:lots,p8", "not a number"),
                                           (":1e9,p8", "names no shape")])
def test_train_schedule_with_bad_flops_exits_2(capsys, no_training, schedule, rule, tmp_path):
    err = _cli_error(capsys, ["train", "--out", str(tmp_path), "--schedule", schedule])
    assert "--schedule" in err and rule in err


@pytest.mark.parametrize("argv,flag", [(["--n-boot", "-1"], "--n-boot"), (["--confidence", "nan"], "--confidence"),
                                       (["--confidence", "1"], "--confidence"), (["--seed", "x"], "--seed")])
def test_fit_flags_exit_2_with_one_line(capsys, tmp_path, argv, flag):
    data = tmp_path / "runs.csv"
    data.write_text("compute,loss\n1e15,4\n1e16,3\n1e17,2.5\n1e18,2.2\n")
    assert flag in _cli_error(capsys, ["fit", str(data), "--law", "shape", "--out", str(tmp_path), *argv])


@pytest.mark.parametrize("row,fields", [("1e16", 1), ("1e16,3,7", 3)])
def test_fit_names_a_csv_row_with_a_missing_or_extra_field(capsys, tmp_path, row, fields):
    data = tmp_path / "runs.csv"
    data.write_text(f"compute,loss\n1e15,4\n{row}\n1e17,2.5\n1e18,2.2\n1e19,2.1\n")
    err = _cli_error(capsys, ["fit", str(data), "--law", "shape", "--n-boot", "0", "--out", str(tmp_path)])
    assert f"{data} line 3 has {fields} fields but the header has 2" in err


@pytest.mark.parametrize("argv,flag", [(["--patch-sizes", "0"], "--patch-sizes"),
                                       (["--batch-size", "0"], "--batch-size"),
                                       (["--context-lengths", "-8"], "--context-lengths")])
def test_flops_flags_exit_2_with_one_line(capsys, argv, flag):
    assert flag in _cli_error(capsys, ["flops", *argv])


# ----------------------------------------------------------------------------- corrupt files

def _tiny_vit_task():
    from adaptkern.train import SyntheticGlyphs, VisionTask

    return VisionTask(SyntheticGlyphs(seed=0, image_size=16, num_eval=8), batch_size=4, eval_batch_size=8,
                      model=dict(dim=16, depth=1, num_heads=2, base_patch_size=4, pos_grid=(4, 4)))


@pytest.mark.parametrize("damage", ["empty", "truncated", "not_a_dict"])
def test_a_corrupt_checkpoint_names_the_file_and_what_to_do(tmp_path, damage):
    from adaptkern.train import checkpoint

    path = tmp_path / checkpoint.CHECKPOINT
    torch.save({"format": "adaptkern.train.checkpoint/1", "model": {"w": torch.randn(256)}}, path)
    content = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(content[: len(content) // 2])
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match=rf"^{path}.*(truncated or corrupt|not an adaptkern training checkpoint).*") \
            as error:
        checkpoint.load(tmp_path, identity={})
    assert damage == "not_a_dict" or "delete it" in str(error.value)


@pytest.mark.parametrize("content", ['{"shape": "p8", "iden', "", "[1, 2]"])
def test_a_corrupt_sweep_record_names_the_file_under_resume(tmp_path, content):
    from adaptkern.train import RunConfig
    from adaptkern.train.sweep import run_sweep

    (tmp_path / "p8.json").write_text(content)
    config = RunConfig(budget=10**9, n_evals=0, progress=False)
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'p8.json'} is not a readable record of the finished sweep "
                                         r"run p8 .*delete it and rerun with --resume"):
        run_sweep(_tiny_vit_task(), ["p8"], config, tmp_path, resume=True)


def test_a_corrupt_ledger_names_the_file(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text('{"phases": {')
    with pytest.raises(ValueError, match=rf"FlopLedger.load: {path} is not a readable ledger"):
        ak.flops.FlopLedger.load(path)


# ----------------------------------------------------------------------------- found beyond the list

def test_fits_name_a_bad_bootstrap_seed_before_fitting():
    compute, loss = np.geomspace(1e14, 1e18, 8), 2 + 5 * np.geomspace(1, 1e4, 8) ** -0.3
    with pytest.raises(TypeError, match=r"^fit_shape_law: seed must be None or an int >= 0, got 'x'"):
        scaling.fit_shape_law(compute, loss, n_boot=2, seed="x")
    with pytest.raises(ValueError, match=r"^fit_downstream: seed must be None or an int >= 0, got -1"):
        scaling.fit_downstream(loss, loss / 10, n_boot=2, seed=-1)


def test_optimal_schedule_bounds_grid_size():
    laws = {"a": ShapeLaw(c=1.0, a=10.0, b=0.3, d=1.0), "b": ShapeLaw(c=0.5, a=20.0, b=0.25, d=10.0)}
    with pytest.raises(ValueError, match=r"grid_size must be an int in \[16, 1048576\], got 1000000000"):
        ak.schedule.optimal_schedule(laws, 1.5, grid_size=10**9)  # (it used to try to allocate the grid)


def test_attention_flops_head_counts_are_typed():
    with pytest.raises(TypeError, match="num_heads must be an int, got float"):
        ak.flops.attention_flops([0, 4], [0, 4], 1.5, 8)
    with pytest.raises(ValueError, match="head_dim must be >= 0, got -8"):
        ak.flops.attention_flops([0, 4], [0, 4], 1, -8)


def test_models_check_their_sizes():
    with pytest.raises(ValueError, match="PackedViT: depth must be >= 0, got -1"):
        ak.models.PackedViT(num_classes=10, dim=16, num_heads=2, depth=-1)
    with pytest.raises(TypeError, match="PackedViT: num_classes must be an int, got float"):
        ak.models.PackedViT(num_classes=10.0, dim=16, num_heads=2)
    with pytest.raises(ValueError, match="PackedLM: vocab_size must be >= 1, got 0"):
        ak.models.PackedLM(vocab_size=0, dim=16, num_heads=2, depth=1)


def test_shape_schedule_rejects_nan_and_negative_ends():
    from adaptkern.train import ShapeSchedule

    for end in (math.nan, -5.0):
        with pytest.raises(ValueError, match="compute_end values must be numbers >= 0"):
            ShapeSchedule((("p16", end), ("p8", math.inf)))


@pytest.mark.parametrize("call,name", [
    (lambda q, cu: ak.varlen_attention(q, q, q, cu, cu, 3, 3, return_lse=1), "return_lse"),
    (lambda q, cu: ak.varlen_attention(q, q, q, cu, cu, 3, 3, causal=1), "causal"),
    (lambda q, cu: ak.flash_attn_varlen_func(q, q, q, cu, cu, 3, 3, deterministic="yes"), "deterministic"),
    (lambda q, cu: ak.flash_attn_varlen_func(q, q, q, cu, cu, 3, 3, return_attn_probs=1), "return_attn_probs"),
    (lambda q, cu: ak.varlen_attn(q, q, q, cu, cu, 3, 3, enable_gqa=1), "enable_gqa"),
    (lambda q, cu: ak.unpack(q, cu, as_list=1), "as_list"),
])
def test_flags_must_be_bools_not_truthy_values(call, name):
    q, cu = torch.randn(5, 2, 8), torch.tensor([0, 3, 5], dtype=torch.int32)
    with pytest.raises(TypeError, match=rf"{name} must be a bool, got (int|str)"):
        call(q, cu)


def test_count_step_and_num_params_check_their_flags():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(TypeError, match="compute must be a bool, got int"):
        ak.flops.count_step(model, lambda m: m(torch.randn(1, 3)).sum(), compute=0)
    with pytest.raises(TypeError, match="embedding must be a bool, got str"):
        ak.flops.num_params(model, embedding="no")
    with pytest.raises(TypeError, match="model must be an nn.Module, got str"):
        ak.flops.num_params("model")


@pytest.mark.parametrize("field,value,error,rule", [
    ("budget", 0, ValueError, "budget must be >= 1, got 0"),
    ("budget", 1e9, TypeError, "budget must be an int, got float"),
    ("lr", math.nan, ValueError, "lr must be finite"),
    ("lr", {"p8": -1e-3}, ValueError, r"lr\['p8'\] must be > 0"),
    ("lr", "fast", TypeError, "lr must be a number, got str"),
    ("warmup_steps", -1, ValueError, "warmup_steps must be >= 0"),
    ("grad_clip", -1.0, ValueError, "grad_clip must be >= 0"),
    ("first_eval_fraction", 0.0, ValueError, "first_eval_fraction must be > 0"),
    ("first_eval_fraction", 2.0, ValueError, "first_eval_fraction must be <= 1"),
    ("eval_points", (1e9, math.inf), ValueError, "eval_points must be finite"),
    ("dense_ratio", 1.0, ValueError, "dense_ratio must be > 1"),
    ("cross_eval_after", 1.5, ValueError, "cross_eval_after must be <= 1"),
    ("smooth_steps", 0, ValueError, "smooth_steps must be >= 1"),
    ("stop_at_loss", math.nan, ValueError, "stop_at_loss must be finite"),
    ("max_steps", 2.5, TypeError, "max_steps must be an int"),
    ("checkpoint_every", 0, ValueError, "checkpoint_every must be >= 1"),
    ("seed", True, TypeError, "seed must be an int, got bool"),
])
def test_run_config_names_a_bad_field(field, value, error, rule):
    from adaptkern.train import RunConfig

    RunConfig(budget=10**9, grad_clip=None, stop_at_loss=None, max_steps=None)  # the optional ones may be None
    with pytest.raises(error, match=f"^RunConfig: {rule}"):
        RunConfig(**{"budget": 10**9, field: value})


@pytest.mark.parametrize("jobs", [1, 2])
def test_demo_with_a_budget_of_one_step_stops_at_the_first_run(capsys, tmp_path, jobs):
    err = _cli_error(capsys, ["demo", "--fast", "--budget", "1", "--no-progress", "--out", str(tmp_path),
                              "--jobs", str(jobs)])
    assert "--budget 1 gives tune" in err and "raise --budget" in err
    # no sweep ran before the error: the first run that ended stopped it, with at most the
    # runs then in flight beside it (six are in the first tuning round)
    assert 1 <= len(list((tmp_path / "tune").iterdir())) <= jobs
