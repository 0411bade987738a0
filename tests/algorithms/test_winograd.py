"""The winograd algorithm against torch's float64 correlation, all three passes, both tiles.

3-tap kernels (3x3 in 2-D, 3 in 1-D), stride 1, dilation 1; any padding (asymmetric, larger
than the kernel, so the input gradient's full padding goes negative), groups, odd and prime
sizes, outputs that are not a whole number of tiles. The tolerance is the suite's: our error
at most twice torch's own in the same dtype, plus a few units of rounding.
"""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import corrmm
from corrmm import config
from corrmm.algorithms import winograd

from tests.reference import (DTYPES, assert_every_pass_refuses, assert_passes_match_reference, randn,
                             reference_corr, reference_passes, rel_err, seeded_generator)

# (batch, channels, in_size, filters, groups, (low, high) per dimension)
CASES = [
    (2, 3, (11, 7), 4, 1, ((0, 0), (0, 0))),
    (3, 4, (13, 9), 6, 2, ((1, 2), (0, 3))),          # asymmetric padding, groups
    (2, 6, (17, 19), 6, 6, ((1, 1), (1, 1))),         # depthwise, prime sizes
    (1, 2, (5, 6), 3, 1, ((4, 3), (2, 5))),           # padding beyond the kernel: the full padding crops
    (2, 5, (3, 3), 2, 1, ((0, 0), (0, 0))),           # one output pixel
    (2, 3, (23,), 5, 1, ((4, 0),)),                   # 1-D
    (2, 4, (29,), 2, 2, ((0, 5),)),
]


def _case_id(case):
    n, c, size, k, groups, padding = case
    return f"{len(size)}d-n{n}c{c}x{'x'.join(map(str, size))}-k{k}-g{groups}-p{padding}"


def _check_case(case, dtype, memory_format=None):
    n, c, size, k, groups, padding = case
    kernel = (3,) * len(size)
    out = [h + lo + hi - 2 for h, (lo, hi) in zip(size, padding)]
    gen = seeded_generator("winograd", dtype, case, memory_format)
    x64, w64, dy64 = randn((n, c, *size), gen), randn((k, c // groups, *kernel), gen), randn((n, k, *out), gen)
    x, w, dy = x64.to(dtype), w64.to(dtype), dy64.to(dtype)
    if memory_format is not None:
        x, dy = x.contiguous(memory_format=memory_format), dy.contiguous(memory_format=memory_format)
    nd = len(size)
    kwargs = dict(border_mode=padding, num_groups=groups, algo="winograd")
    ours = (getattr(corrmm, f"corr{nd}d")(x, w, **kwargs),
            getattr(corrmm, f"corr{nd}d_grad_input")(w, dy, size, **kwargs),
            getattr(corrmm, f"corr{nd}d_grad_weight")(x, dy, kernel, **kwargs))
    unit = [1] * nd
    assert_passes_match_reference(ours, (x64, w64, dy64), (x, w, dy), padding, unit, unit, groups, dtype, "winograd")
    return ours


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference(case, dtype):
    _check_case(case, dtype)


@pytest.mark.parametrize("tile", winograd.TILES)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_each_tile_is_exact_in_float64(case, tile, monkeypatch):
    """Either tile, whatever the dtype rule would pick: the transforms are exact identities, so in
    float64 both agree with the reference to rounding (F(4)'s rounding is what the rule weighs)."""
    monkeypatch.setattr(winograd, "choose_tile", lambda out_size, dtype: tile)
    n, c, size, k, groups, padding = case
    nd = len(size)
    out = [h + lo + hi - 2 for h, (lo, hi) in zip(size, padding)]
    gen = seeded_generator("winograd tile", tile, case)
    x, w, dy = randn((n, c, *size), gen), randn((k, c // groups, 3, 3)[:2 + nd], gen), randn((n, k, *out), gen)
    kwargs = dict(border_mode=padding, num_groups=groups, algo="winograd")
    ours = (getattr(corrmm, f"corr{nd}d")(x, w, **kwargs),
            getattr(corrmm, f"corr{nd}d_grad_input")(w, dy, size, **kwargs),
            getattr(corrmm, f"corr{nd}d_grad_weight")(x, dy, w.shape[2:], **kwargs))
    refs = reference_passes(x, w, dy, padding, [1] * nd, [1] * nd, groups)
    for result, ref in zip(ours, refs):
        assert rel_err(result, ref) < 1e-13


def test_tile_rule():
    assert winograd.choose_tile((56, 56), torch.float32) == 2     # F(4x4)'s error exceeds the bound in fp32
    assert winograd.choose_tile((56, 56), torch.float64) == 2
    assert winograd.choose_tile((56,), torch.float32) == 4        # 1-D F(4): within the bound
    assert winograd.choose_tile((56, 56), torch.bfloat16) == 4    # computed in float32, rounded once
    assert winograd.choose_tile((56, 3), torch.float16) == 2      # too small for a 4-tile


def test_float32_tiles_stay_within_the_bound():
    """The rule's premise on a layer of realistic depth: F(2x2) in float32 within the suite's bound."""
    case = (2, 64, (20, 20), 32, 1, ((1, 1), (1, 1)))
    _check_case(case, torch.float32)


@pytest.mark.parametrize("case", [CASES[1], CASES[3]], ids=_case_id)
def test_channels_last(case):
    y, dx, dw = _check_case(case, torch.float32, memory_format=torch.channels_last)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert dx.is_contiguous(memory_format=torch.channels_last)


def test_batch_chunks_under_a_small_workspace():
    case = (5, 4, (9, 8), 4, 2, ((1, 1), (2, 0)))
    with config.workspace_limit_set_to(1):
        _check_case(case, torch.float64)


def test_non_contiguous_input():
    gen = seeded_generator("winograd non-contiguous")
    x64 = randn((2, 6, 15, 20), gen)[:, ::2, 1:, ::2]   # (2, 3, 14, 10), every stride odd
    w64 = randn((4, 3, 3, 3), gen)
    padding = ((2, 1), (0, 3))
    y = corrmm.corr2d(x64, w64, border_mode=padding, algo="winograd")
    torch.testing.assert_close(y, reference_corr(x64, w64, padding, (1, 1), (1, 1), 1))


@pytest.mark.parametrize("shape,w_shape,kw", [
    ((1, 4, 7, 6), (4, 2, 3, 3), dict(border_mode=((1, 2), (0, 1)), num_groups=2)),
    ((2, 2, 9), (3, 2, 3), dict(border_mode=(4,))),
])
def test_gradcheck(shape, w_shape, kw):
    gen = seeded_generator("winograd gradcheck", shape)
    nd = len(shape) - 2
    corr = getattr(corrmm, f"corr{nd}d")
    x, w = randn(shape, gen).requires_grad_(), randn(w_shape, gen).requires_grad_()
    dy = randn(corr(x, w, **kw).shape, gen).requires_grad_()
    functions = [
        (lambda x, w: corr(x, w, algo="winograd", **kw), (x, w)),
        (lambda w, dy: getattr(corrmm, f"corr{nd}d_grad_input")(w, dy, shape[2:], algo="winograd", **kw), (w, dy)),
        (lambda x, dy: getattr(corrmm, f"corr{nd}d_grad_weight")(x, dy, w_shape[2:], algo="winograd", **kw), (x, dy)),
    ]
    for fn, inputs in functions:
        assert gradcheck(fn, inputs, eps=1e-6, atol=1e-6)
        assert gradgradcheck(fn, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs,words", [
    (dict(subsample=2), "stride"),
    (dict(filter_dilation=(2, 1)), "dilation"),
])
def test_unsupported_geometry_is_a_value_error(kwargs, words):
    gen = seeded_generator("winograd unsupported", kwargs)
    x, w = randn((1, 2, 9, 9), gen), randn((3, 2, 3, 3), gen)
    y = corrmm.corr2d(x, w, algo="im2col", **kwargs)
    assert_every_pass_refuses("winograd", x, w, y, words, **kwargs)


def test_other_kernels_and_3d_are_refused():
    gen = seeded_generator("winograd kernels")
    x, w = randn((1, 2, 9, 9), gen), randn((3, 2, 5, 3), gen)
    assert_every_pass_refuses("winograd", x, w, corrmm.corr2d(x, w), "3 taps")
    x3, w3 = randn((1, 2, 5, 5, 5), gen), randn((3, 2, 3, 3, 3), gen)
    with pytest.raises(ValueError, match="winograd.*1-D and 2-D"):
        corrmm.corr3d(x3, w3, algo="winograd")


def test_every_output_element_written():
    with config.poison_outputs():
        for result in _check_case(CASES[1], torch.float32):
            assert not torch.isnan(result).any()
