"""pos_embed layouts the pos-embed ops accept (timm's flat (1, P + Gh*Gw, D) and NHWC
(1, Gh, Gw, D)), ambiguity errors, and the interpolation= keyword with mode= as its
deprecated alias. Oracle: F.interpolate per grid in float64, prefix entries added by hand."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import adaptkern as ak


def packed(grids, num_prefix_tokens, dim):
    lengths = [num_prefix_tokens + h * w for h, w in grids]
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32)
    tokens = torch.randn(int(cu[-1]), dim, dtype=torch.float64)
    return tokens, torch.tensor(grids, dtype=torch.int32), cu


def oracle(tokens, grid, prefix_pos, grids, num_prefix_tokens, interpolation="bicubic"):
    """tokens + per sequence: prefix_pos (or nothing) on the prefix, F.interpolate(grid) on the patches."""
    out, start = [], 0
    for h, w in grids:
        seq = tokens[start:start + num_prefix_tokens + h * w]
        pos = F.interpolate(grid.permute(2, 0, 1)[None], size=(h, w), mode=interpolation, antialias=True,
                            align_corners=False)[0].permute(1, 2, 0).reshape(h * w, -1)
        prefix = seq[:num_prefix_tokens] + (prefix_pos if prefix_pos is not None else 0)
        out.append(torch.cat([prefix, seq[num_prefix_tokens:] + pos]))
        start += num_prefix_tokens + h * w
    return torch.cat(out)


GRIDS = [(3, 5), (1, 1), (7, 4), (2, 9)]


@pytest.mark.parametrize("num_prefix_tokens", [1, 4])
@pytest.mark.parametrize("base", [(6, 6), (5, 3)])
def test_timm_flat_layout_with_prefix_entries(num_prefix_tokens, base):
    """timm's default (no_embed_class=False): the prefix entries go onto every sequence's
    prefix tokens, the grid is resampled; square grids need no base_grid."""
    dim = 6
    flat = torch.randn(1, num_prefix_tokens + base[0] * base[1], dim, dtype=torch.float64, requires_grad=True)
    tokens, grid_sizes, cu = packed(GRIDS, num_prefix_tokens, dim)
    base_grid = None if base[0] == base[1] else base
    out = ak.add_interp_pos_embed(tokens, flat, grid_sizes, cu, num_prefix_tokens=num_prefix_tokens,
                                  base_grid=base_grid)
    grid = flat[0, num_prefix_tokens:].reshape(*base, dim)
    expected = oracle(tokens, grid, flat[0, :num_prefix_tokens], GRIDS, num_prefix_tokens)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    cotangent = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, flat, cotangent)
    (grad_expected,) = torch.autograd.grad(expected, flat, cotangent)
    torch.testing.assert_close(grad, grad_expected, rtol=1e-12, atol=1e-12)
    # interp_pos_embed reads the same layout and returns the grid part alone
    alone = ak.interp_pos_embed(flat, grid_sizes, num_prefix_tokens=num_prefix_tokens, base_grid=base_grid)
    ref = oracle(torch.zeros(sum(h * w for h, w in GRIDS), dim, dtype=torch.float64), grid, None, GRIDS, 0)
    torch.testing.assert_close(alone, ref, rtol=1e-12, atol=1e-12)


def test_timm_vit_b_layout_is_no_longer_a_one_row_grid():
    """The trap of the issue: timm's (1, 1 + 14*14, D) was read as a 1x197 grid."""
    flat = torch.randn(1, 197, 4, dtype=torch.float64)
    tokens, grid_sizes, cu = packed([(14, 14), (10, 12)], 1, 4)
    out = ak.add_interp_pos_embed(tokens, flat, grid_sizes, cu, num_prefix_tokens=1)
    expected = oracle(tokens, flat[0, 1:].reshape(14, 14, 4), flat[0, :1], [(14, 14), (10, 12)], 1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_no_embed_class_and_nhwc_layouts():
    """no_embed_class=True: (1, Gh*Gw, D), prefix tokens get nothing; NHWC (1, Gh, Gw, D)."""
    dim, base = 5, (4, 4)
    grid = torch.randn(*base, dim, dtype=torch.float64)
    tokens, grid_sizes, cu = packed(GRIDS, 2, dim)
    expected = oracle(tokens, grid, None, GRIDS, 2)
    for layout in (grid.reshape(1, 16, dim), grid[None]):
        out = ak.add_interp_pos_embed(tokens, layout, grid_sizes, cu, num_prefix_tokens=2)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    out = ak.add_interp_pos_embed(tokens, grid.reshape(1, 16, dim), grid_sizes, cu, num_prefix_tokens=2,
                                  base_grid=base)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_one_row_grid_still_reads_as_a_grid():
    """(1, Gw, D) with no square grid in the count stays a one-row grid; base_grid=(1, Gw) says so explicitly."""
    pos = torch.randn(1, 6, 3, dtype=torch.float64)
    grids = torch.tensor([[2, 3]], dtype=torch.int32)
    expected = F.interpolate(pos.permute(2, 0, 1)[None], size=(2, 3), mode="bicubic", antialias=True,
                             align_corners=False)[0].permute(1, 2, 0).reshape(6, 3)
    torch.testing.assert_close(ak.interp_pos_embed(pos, grids), expected)
    square = torch.randn(1, 4, 3, dtype=torch.float64)
    expected = F.interpolate(square.permute(2, 0, 1)[None], size=(2, 3), mode="bicubic", antialias=True,
                             align_corners=False)[0].permute(1, 2, 0).reshape(6, 3)
    torch.testing.assert_close(ak.interp_pos_embed(square, grids, base_grid=(1, 4)), expected)


def test_ambiguous_or_inconsistent_layouts_raise():
    grids = torch.tensor([[2, 2]], dtype=torch.int32)
    with pytest.raises(ValueError, match="either with 9 prefix entries.*pass base_grid"):
        ak.interp_pos_embed(torch.randn(1, 25, 3), grids, num_prefix_tokens=9)
    with pytest.raises(ValueError, match="leaves 3 prefix entries"):
        ak.interp_pos_embed(torch.randn(1, 19, 3), grids, num_prefix_tokens=1, base_grid=(4, 4))
    with pytest.raises(ValueError, match=r"base_grid=\(3, 3\) does not match pos_embed's grid \(4, 4\)"):
        ak.interp_pos_embed(torch.randn(1, 4, 4, 3), grids, base_grid=(3, 3))
    with pytest.raises(ValueError, match="base_grid must be a pair"):
        ak.interp_pos_embed(torch.randn(1, 16, 3), grids, base_grid=4)


def test_interpolation_keyword_and_deprecated_mode_alias():
    pos = torch.randn(5, 4, 3, dtype=torch.float64)
    grids = torch.tensor([[3, 7]], dtype=torch.int32)
    new = ak.interp_pos_embed(pos, grids, interpolation="bilinear", antialias=False)
    with pytest.warns(DeprecationWarning, match="mode= is deprecated"):
        old = ak.interp_pos_embed(pos, grids, mode="bilinear", antialias=False)
    torch.testing.assert_close(new, old, rtol=0, atol=0)
    assert not torch.allclose(new, ak.interp_pos_embed(pos, grids, antialias=False))  # the default is bicubic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(TypeError, match="only interpolation="):
            ak.interp_pos_embed(pos, grids, interpolation="bilinear", mode="bicubic")
    module = ak.nn.InterpPosEmbed((5, 4), 3, interpolation="bilinear")
    assert module.interpolation == "bilinear" and "interpolation='bilinear'" in repr(module)
    count = ak.flops.interp_pos_embed_flops([(3, 7)], (5, 4), 3, interpolation="bilinear", antialias=False)
    with pytest.warns(DeprecationWarning, match="interp_pos_embed_flops: mode= is deprecated"):
        assert ak.flops.interp_pos_embed_flops([(3, 7)], (5, 4), 3, mode="bilinear", antialias=False) == count
    assert count != ak.flops.interp_pos_embed_flops([(3, 7)], (5, 4), 3, antialias=False)  # bicubic: more taps


def test_one_row_module_grid_is_never_read_as_timm_layout():
    """InterpPosEmbed((1, 5), ..., num_prefix_tokens=1) holds a (1, 5, D) grid, which alone
    could read as timm's (1, 1 + 2*2, D): the module names its grid."""
    module = ak.nn.InterpPosEmbed((1, 5), 3, num_prefix_tokens=1).double()
    tokens, grid_sizes, cu = packed([(2, 3), (1, 1)], 1, 3)
    expected = oracle(tokens, module.pos_embed.detach(), None, [(2, 3), (1, 1)], 1)
    torch.testing.assert_close(module(tokens, grid_sizes, cu), expected, rtol=1e-12, atol=1e-12)
