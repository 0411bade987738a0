"""im2col's small-image CPU path (algorithms/columns_last.py) against torch's float64 correlation.

Both column layouts (channels-last from 16 channels per group, tap-major below), 1-D to 3-D,
groups, stride, dilation, asymmetric padding (including padding beyond the kernel, where the
stride-1 input gradient cannot be a forward pass and col2im adds tap by tap), odd sizes, both
memory formats, float32 and float64; gradcheck and gradgradcheck through the autograd path.
"""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import corrmm
from corrmm.algorithms import columns_last
from corrmm.geometry import make_geometry

from tests.reference import DEVICE, assert_passes_match_reference, randn, seeded_generator

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="a CPU path")

# (batch, channels, in_size, filters, kernel, padding per dimension, stride, dilation, groups)
CASES = [
    (3, 32, (7, 6), 20, (3, 3), ((1, 1), (1, 1)), (1, 1), (1, 1), 1),        # channels-last, stride 1: swapped
    (2, 32, (9, 8), 18, (3, 2), ((2, 0), (1, 3)), (2, 1), (1, 2), 2),        # channels-last, strided, groups
    (2, 36, (5, 7), 12, (3, 3), ((3, 1), (0, 2)), (1, 1), (1, 1), 2),        # padding beyond the kernel: tap adds
    (4, 16, (4, 4), 24, (1, 1), ((0, 0), (0, 0)), (1, 1), (1, 1), 1),        # 1x1
    (3, 1, (8, 8), 7, (3, 3), ((1, 1), (1, 1)), (1, 1), (1, 1), 1),          # tap-major (the demo's first layer)
    (2, 6, (9, 7), 9, (2, 3), ((0, 1), (2, 2)), (2, 3), (2, 1), 3),          # tap-major, strided, groups
    (2, 32, (11,), 16, (3,), ((1, 2),), (2,), (1,), 1),                      # 1-D
    (1, 4, (13,), 6, (5,), ((2, 2),), (1,), (2,), 2),
    (2, 16, (4, 3, 5), 8, (3, 2, 3), ((1, 1), (0, 1), (1, 0)), (1, 1, 2), (1, 1, 1), 1),  # 3-D
]


def _case_id(case):
    n, c, size, k, kernel, padding, stride, dilation, groups = case
    return f"{len(size)}d-c{c}-k{k}-{'x'.join(map(str, kernel))}-s{stride}-d{dilation}-g{groups}-p{padding}"


def _check(case, dtype, memory_format=None):
    n, c, size, k, kernel, padding, stride, dilation, groups = case
    g = make_geometry((n, c, *size), (k, c // groups, *kernel), padding, stride, dilation, groups)
    assert columns_last.serves(g, torch.device("cpu"), dtype)
    gen = seeded_generator("columns_last", case, dtype, memory_format)
    x64, w64, dy64 = randn(g.input_shape, gen), randn(g.weight_shape, gen), randn(g.output_shape, gen)
    x, w, dy = x64.to(dtype), w64.to(dtype), dy64.to(dtype)
    if memory_format is not None:
        x, dy = x.contiguous(memory_format=memory_format), dy.contiguous(memory_format=memory_format)
    nd = len(size)
    kwargs = dict(border_mode=padding, subsample=stride, filter_dilation=dilation, num_groups=groups, algo="im2col")
    ours = (getattr(corrmm, f"corr{nd}d")(x, w, **kwargs),
            getattr(corrmm, f"corr{nd}d_grad_input")(w, dy, size, **kwargs),
            getattr(corrmm, f"corr{nd}d_grad_weight")(x, dy, kernel, **kwargs))
    assert_passes_match_reference(ours, (x64, w64, dy64), (x.contiguous(), w, dy.contiguous()), [tuple(p) for p in padding],
                                  stride, dilation, groups, dtype, "columns_last")
    return ours


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference(case, dtype):
    _check(case, dtype)


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[5]], ids=_case_id)
def test_channels_last_inputs(case):
    ours = _check(case, torch.float32, torch.channels_last)
    assert ours[0].is_contiguous(memory_format=torch.channels_last)
    assert ours[1].is_contiguous(memory_format=torch.channels_last)


def test_both_input_gradient_forms_are_taken():
    swapped = make_geometry((2, 32, 6, 6), (16, 32, 3, 3), 1, 1, 1, 1)
    beyond = make_geometry((2, 32, 6, 6), (16, 32, 3, 3), ((3, 1), (1, 1)), 1, 1, 1)
    strided = make_geometry((2, 32, 6, 6), (16, 32, 3, 3), 1, 2, 1, 1)
    assert columns_last._swapped_geometry(swapped) is not None
    assert columns_last._swapped_geometry(beyond) is None
    assert columns_last._swapped_geometry(strided) is None


def test_serves_small_cpu_problems_only():
    cpu = torch.device("cpu")
    small = make_geometry((32, 32, 8, 8), (64, 32, 3, 3), 1, 2, 1, 1)
    assert columns_last.serves(small, cpu, torch.float32)
    assert not columns_last.serves(small, cpu, torch.bfloat16)
    assert not columns_last.serves(small, torch.device("cuda"), torch.float32)
    assert not columns_last.serves(make_geometry((2, 8, 56, 56), (8, 8, 3, 3), 1, 1, 1, 1), cpu, torch.float32)
    # C4's 7x7 layer: a small output, but a whole-batch column buffer of 100 MB
    assert not columns_last.serves(make_geometry((16, 128, 16, 16), (128, 128, 7, 7), 3, 1, 1, 1), cpu,
                                   torch.float32)


@pytest.mark.parametrize("case", [
    (1, 16, (4, 3), 3, (3, 2), ((1, 0), (1, 1)), (1, 1), (1, 1), 1),
    (2, 2, (5, 4), 2, (3, 3), ((1, 1), (0, 1)), (2, 1), (1, 1), 1),
], ids=_case_id)
def test_gradcheck_and_gradgradcheck(case):
    n, c, size, k, kernel, padding, stride, dilation, groups = case
    gen = seeded_generator("columns_last gradcheck", case)
    x = randn((n, c, *size), gen).requires_grad_()
    w = randn((k, c // groups, *kernel), gen).requires_grad_()
    kwargs = dict(border_mode=padding, subsample=stride, filter_dilation=dilation, num_groups=groups, algo="im2col")
    fn = lambda x, w: corrmm.corr2d(x, w, **kwargs)  # noqa: E731
    assert gradcheck(fn, (x, w))
    assert gradgradcheck(fn, (x, w))
