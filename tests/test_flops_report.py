"""ak.flops.flops_report and `adaptkern flops`: the report's arithmetic against direct counts
of whole batches (uniform, packed mixed, padded), 6*N*D against a hand parameter count, the
JSON, the plot and the CLI's errors."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from adaptkern.cli import main
from adaptkern.flops import count_step, flops_report, format_report, plot_report
from adaptkern.flops.report import MODELS, build_model

CFG = dict(kind="vit", in_chans=3, num_classes=5, dim=32, depth=2, num_heads=2, mlp_ratio=2.0, base_patch_size=8,
           pos_grid=(4, 4), image_size=32, shapes=(8,))
LM_CFG = dict(kind="lm", vocab_size=40, dim=32, depth=1, num_heads=2, mlp_ratio=4.0, shapes=(8,))


def _vit_step(model, images, patch):
    labels = torch.zeros(len(images), dtype=torch.long)
    return count_step(model, lambda: F.cross_entropy(model(images, patch), labels), compute=False)


def test_per_step_mixed_and_padded_equal_direct_counts():
    """The report composes batches from one-sample counts; counting the whole batches
    directly gives the same integers, per phase and layer type."""
    report = flops_report(CFG, patch_sizes=[4, 8], batch_size=3, resolutions=[16, "8x24", 32])
    model = build_model(CFG)
    for shape in report.shapes:
        patch = int(shape.label[1:].split("@")[0])
        assert shape.batch(3) == _vit_step(model, torch.zeros(3, 3, 32, 32), patch)
    for mixed in report.mixed:
        patch = int(mixed.label[1:].split(" ")[0])
        images = [torch.zeros(3, 16, 16), torch.zeros(3, 8, 24), torch.zeros(3, 32, 32)]
        assert mixed.exact == _vit_step(model, images, patch)
        assert mixed.padded == _vit_step(model, torch.zeros(3, 3, 32, 32), patch)  # pad to the largest H and W
        assert mixed.tokens == sum((h // patch) * (w // patch) for h, w in [(16, 16), (8, 24), (32, 32)])
        assert mixed.padded.total > mixed.exact.total


def test_lm_mixed_lengths_padded_to_longest():
    report = flops_report(LM_CFG, context_lengths=[8, 16], mixed_lengths=[3, 16, 7], batch_size=4)
    (mixed,) = report.mixed
    assert mixed.samples == ["ctx3", "ctx16", "ctx7", "ctx3"]
    assert mixed.padded == 4 * next(s.sample for s in report.shapes if s.label == "ctx16")
    model = build_model(LM_CFG)
    lengths = [3, 16, 7, 3]
    tokens = torch.zeros(sum(lengths), dtype=torch.long)
    cu = torch.tensor([0, 3, 19, 26, 29], dtype=torch.int32)
    direct = count_step(model, lambda: F.cross_entropy(model(tokens, cu, 16), tokens), compute=False)
    assert mixed.exact == direct
    causal_pairs = sum(n * (n + 1) // 2 for n in lengths)
    assert mixed.exact.by_layer()["attention"] == LM_CFG["depth"] * (4 + 10) * LM_CFG["dim"] * causal_pairs


def _hand_params(cfg, embedding):
    d, hidden = cfg["dim"], int(cfg["dim"] * cfg["mlp_ratio"])
    block = (3 * d * d + 3 * d) + (d * d + d) + 2 * 2 * d + (d * hidden + hidden) + (hidden * d + d)
    out = cfg["num_classes"] if cfg["kind"] == "vit" else cfg["vocab_size"]
    body = cfg["depth"] * block + 2 * d + d * out + (out if cfg["kind"] == "vit" else 0)
    if not embedding:
        return body
    if cfg["kind"] == "vit":
        p, (gh, gw) = cfg["base_patch_size"], cfg["pos_grid"]
        return body + d * cfg["in_chans"] * p * p + d + gh * gw * d
    return body + cfg["vocab_size"] * d


@pytest.mark.parametrize("cfg", [CFG, LM_CFG], ids=["vit", "lm"])
def test_six_nd_uses_non_embedding_params(cfg):
    report = flops_report(cfg)
    assert report.params_non_embedding == _hand_params(cfg, embedding=False)
    assert report.params == _hand_params(cfg, embedding=True)
    data = report.to_dict()
    for shape, row in zip(report.shapes, data["shapes"]):
        assert row["six_nd_per_sample"] == 6 * report.params_non_embedding * shape.tokens
        assert row["exact_over_six_nd"] == shape.sample.total / row["six_nd_per_sample"]
        # 6ND is exact for the linear layers' weights: 2 (fwd) + 4 (bwd) FLOPs per weight per token.
        d, hidden = cfg["dim"], int(cfg["dim"] * cfg["mlp_ratio"])
        weights = cfg["depth"] * (4 * d * d + 2 * d * hidden)
        linear = shape.sample.by_layer()
        assert linear["attn_linear"] + linear["mlp"] == 6 * weights * shape.tokens


def test_six_nd_sanity_for_vit_b():
    """ViT-B/16 at 224: the linear layers dominate, so exact / 6ND is a little above 1
    (attention adds ~5%), and the forward pass is the well-known ~17.6 GMACs."""
    report = flops_report("vit-b", patch_sizes=[16])
    (shape,) = report.shapes
    assert shape.tokens == 196
    assert 1.0 < shape.sample.total / report.six_nd(shape.tokens) < 1.1
    assert 17.4e9 < shape.sample.forward / 2 < 17.8e9


def test_cli_json_text_plot_and_errors(tmp_path, capsys):
    plot = tmp_path / "flops.png"
    assert main(["flops", "--model", "vit-demo", "--patch-sizes", "8", "16", "--json", "--plot", str(plot)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format"] == "adaptkern.flops.report" and data["model"] == "vit-demo"
    assert [s["shape"] for s in data["shapes"]] == ["p8@32x32", "p16@32x32"]
    for row in data["shapes"]:
        per_sample = row["per_sample"]
        assert per_sample["total"] == {lay: per_sample["forward"][lay] + per_sample["backward"][lay]
                                       for lay in data["layer_types"]}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["flops", "--model", "lm-demo", "--context-lengths", "16", "--mixed-lengths", "4", "16",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "ctx16" in text and "padded to ctx16" in text and "6*N*D" in text

    assert main(["flops", "--model", "vit-demo", "--patch-sizes", "5"]) == 2
    assert "patch_sizes" in capsys.readouterr().err
    assert main(["flops", "--model", "vit-demo", "--context-lengths", "8"]) == 2
    assert "context_lengths" in capsys.readouterr().err
    assert main(["flops", "--model", "vit-demo", "--resolutions", "3x"]) == 2
    assert "224x160" in capsys.readouterr().err


def test_cli_size_errors_name_the_option_and_out_is_written_whole(tmp_path, capsys):
    assert main(["flops", "--model", "vit-demo", "--image-size", "32x"]) == 2
    assert "--image-size: expected a size like 224 or 224x160, got '32x'" in capsys.readouterr().err
    assert main(["flops", "--model", "vit-demo", "--resolutions", "32", "3x"]) == 2
    assert "--resolutions: expected a size" in capsys.readouterr().err
    out = tmp_path / "report" / "flops.json"
    assert main(["flops", "--model", "vit-demo", "--patch-sizes", "8", "--no-progress", "--out", str(out)]) == 0
    assert f"wrote JSON: {out}" in capsys.readouterr().out
    assert json.loads(out.read_text())["model"] == "vit-demo" and os.listdir(out.parent) == ["flops.json"]


def test_report_text_and_plot(tmp_path):
    report = flops_report("vit-demo", resolutions=[16, 32], batch_size=2)
    text = format_report(report)
    for needle in ("per sample", "per step (batch 2)", "exact/6ND", "padded/exact", "p4 mixed"):
        assert needle in text
    assert plot_report(report, tmp_path / "r.png") and (tmp_path / "r.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="batch_size"):
        flops_report("vit-demo", batch_size=0)
    with pytest.raises(ValueError, match="model"):
        flops_report("vit-xxl")
    assert set(MODELS) >= {"vit-ti", "vit-s", "vit-b", "vit-l", "vit-demo", "lm-demo"}


def test_packed_patch_embed_backward_skips_image_gradient():
    model = build_model(CFG)
    batch = _vit_step(model, torch.zeros(1, 3, 16, 16), 8).by_layer("backward")["patch_embed"]
    listed = _vit_step(model, [torch.zeros(3, 16, 16)], 8).by_layer("backward")["patch_embed"]
    assert listed == batch
