"""The gemm1x1 algorithm against torch's float64 correlation, all three passes, through the public functions.

1x1 kernels, stride 1, no padding; groups, 1/2/3-D, odd sizes, NCHW, channels_last
and arbitrarily strided inputs, every dtype.
"""
import pytest
import torch

import corrmm
from corrmm import config
from corrmm.algorithms import REGISTRY
from corrmm.geometry import make_geometry

from tests.reference import DTYPES, assert_every_pass_refuses, assert_passes_match_reference, randn, seeded_generator

# (batch, channels, in_size, filters, groups)
CASES = [
    (2, 5, (7, 9), 3, 1),
    (3, 6, (11, 5), 9, 3),
    (1, 4, (1, 1), 2, 2),          # a 1x1 image
    (2, 8, (13, 3), 8, 8),         # depthwise
    (4, 3, (17,), 7, 1),           # 1-D
    (2, 6, (5,), 4, 2),
    (2, 4, (3, 5, 7), 6, 2),       # 3-D
]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def _case_id(case):
    n, c, size, k, groups = case
    return f"{len(size)}d-n{n}c{c}x{'x'.join(map(str, size))}-k{k}-g{groups}"


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values stored NCHW, channels innermost, or as a view with gaps between elements."""
    if layout == "channels_last":
        return t.contiguous(memory_format={4: torch.channels_last, 5: torch.channels_last_3d}[t.dim()])
    if layout == "strided":  # channels stored outside the batch, and a gap after every element
        storage = t.new_zeros((t.shape[1], t.shape[0], *t.shape[2:-1], 2 * t.shape[-1]))
        view = storage.transpose(0, 1)[..., ::2]
        view.copy_(t)
        return view
    return t


def _check_case(case, dtype, layout="contiguous"):
    n, c, size, k, groups = case
    nd = len(size)
    gen = seeded_generator("gemm1x1", dtype, case, layout)
    x64, w64, dy64 = randn((n, c, *size), gen), randn((k, c // groups, *(1,) * nd), gen), randn((n, k, *size), gen)
    x, w, dy = _layout(x64.to(dtype), layout), w64.to(dtype), _layout(dy64.to(dtype), layout)
    corr = getattr(corrmm, f"corr{nd}d")
    grad_input = getattr(corrmm, f"corr{nd}d_grad_input")
    grad_weight = getattr(corrmm, f"corr{nd}d_grad_weight")
    kwargs = dict(num_groups=groups, algo="gemm1x1")
    ours = (corr(x, w, **kwargs), grad_input(w, dy, size, **kwargs), grad_weight(x, dy, (1,) * nd, **kwargs))
    unit = [1] * nd
    assert_passes_match_reference(ours, (x64, w64, dy64), (x, w, dy), [(0, 0)] * nd, unit, unit, groups, dtype,
                                  f"gemm1x1 {layout}")
    return ours


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference(case, dtype):
    _check_case(case, dtype)


@pytest.mark.parametrize("layout", LAYOUTS[1:])
@pytest.mark.parametrize("case", [c for c in CASES if len(c[2]) > 1], ids=_case_id)
def test_layouts(case, layout):
    _check_case(case, torch.float32, layout)


@pytest.mark.parametrize("groups", [1, 3])
def test_channels_last_is_computed_in_place(groups):
    """The channels_last path multiplies the (N·H·W × C) view of the input and writes an
    (N·H·W × K) buffer, so the algorithm itself hands back a channels_last tensor."""
    gen = seeded_generator("gemm1x1 in place", groups)
    x = randn((2, 6, 5, 7), gen).contiguous(memory_format=torch.channels_last)
    w = randn((9, 6 // groups, 1, 1), gen)
    g = make_geometry(x.shape, w.shape, num_groups=groups)
    y = REGISTRY["gemm1x1"].forward(x, w, g)
    assert y.is_contiguous(memory_format=torch.channels_last)
    dx = REGISTRY["gemm1x1"].grad_input(w, y, g)
    assert dx.is_contiguous(memory_format=torch.channels_last)
    x_nchw = x.contiguous()
    assert REGISTRY["gemm1x1"].forward(x_nchw, w, g).is_contiguous()


def test_weight_gradient_batch_chunks():
    """In NCHW the weight gradient sums per-image products over batch chunks; one image per
    chunk must give the same result."""
    case = (5, 6, (4, 7), 4, 2)
    with config.workspace_limit_set_to(1):
        _check_case(case, torch.float64)
        _check_case(case, torch.bfloat16)


def test_every_output_element_written():
    with config.poison_outputs():
        for layout in LAYOUTS:
            for result in _check_case(CASES[1], torch.float32, layout):
                assert not torch.isnan(result).any()


@pytest.mark.parametrize("weight_shape,kwargs,words", [
    ((3, 4, 3, 3), {}, "1x1 kernel"),
    ((3, 4, 1, 2), {}, "1x1 kernel"),
    ((3, 4, 1, 1), dict(subsample=(1, 2)), "stride"),
    ((3, 4, 1, 1), dict(filter_dilation=2), "dilation"),
    ((3, 4, 1, 1), dict(border_mode=1), "padding"),
    ((3, 4, 1, 1), dict(border_mode=((0, 1), (0, 0))), "padding"),
])
def test_unsupported_geometry_is_a_value_error(weight_shape, kwargs, words):
    gen = seeded_generator("gemm1x1 unsupported", weight_shape, kwargs)
    x, w = randn((2, 4, 6, 5), gen), randn(weight_shape, gen)
    y = corrmm.corr2d(x, w, algo="im2col", **kwargs)
    assert_every_pass_refuses("gemm1x1", x, w, y, words, **kwargs)
