"""The fft algorithm against torch's float64 correlation, all three passes, through the public functions.

Stride 1 and dilation 1 only; any padding (asymmetric included), groups, 1/2/3-D,
odd and prime sizes, every dtype. The tolerance is the suite's: our error at most
twice torch's own in the same dtype, plus a few units of rounding.
"""
import pytest
import torch

import corrmm
from corrmm import config
from corrmm.algorithms.fft import fast_fft_size

from tests.reference import (DEVICE, DTYPES, assert_every_pass_refuses, assert_passes_match_reference, randn,
                             reference_corr, seeded_generator)

# (batch, channels, in_size, filters, kernel, groups, (low, high) per dimension)
CASES = [
    (2, 3, (11, 7), 4, (3, 5), 1, ((0, 0), (0, 0))),
    (3, 4, (13, 9), 6, (4, 3), 2, ((1, 2), (0, 3))),          # asymmetric, even kernel, groups
    (1, 2, (5, 6), 3, (7, 8), 1, ((6, 6), (7, 7))),           # full mode, kernel larger than the image
    (2, 6, (17, 19), 6, (5, 5), 6, ((2, 2), (2, 2))),         # depthwise, prime sizes
    (2, 3, (23,), 5, (9,), 1, ((4, 0),)),                      # 1-D, low padding only
    (2, 4, (29,), 2, (6,), 2, ((0, 5),)),                      # 1-D, high padding only
    (2, 2, (5, 6, 7), 3, (2, 3, 4), 1, ((1, 0), (0, 2), (3, 3))),  # 3-D
    (1, 4, (4, 3, 5), 2, (3, 1, 2), 2, ((0, 0), (1, 1), (0, 1))),
]


def _case_id(case):
    n, c, size, k, kernel, groups, padding = case
    return f"{len(size)}d-n{n}c{c}x{'x'.join(map(str, size))}-k{k}r{'x'.join(map(str, kernel))}-g{groups}-p{padding}"


def _functions(ndim):
    return (getattr(corrmm, f"corr{ndim}d"), getattr(corrmm, f"corr{ndim}d_grad_input"),
            getattr(corrmm, f"corr{ndim}d_grad_weight"))


def _check_case(case, dtype, memory_format=None, algo="fft"):
    n, c, size, k, kernel, groups, padding = case
    out = [h + lo + hi - r + 1 for h, (lo, hi), r in zip(size, padding, kernel)]
    gen = seeded_generator("fft", dtype, case, memory_format)
    x64, w64, dy64 = randn((n, c, *size), gen), randn((k, c // groups, *kernel), gen), randn((n, k, *out), gen)
    x, w, dy = x64.to(dtype), w64.to(dtype), dy64.to(dtype)
    if memory_format is not None:
        x, dy = x.contiguous(memory_format=memory_format), dy.contiguous(memory_format=memory_format)
    corr, grad_input, grad_weight = _functions(len(size))
    kwargs = dict(border_mode=padding, num_groups=groups, algo=algo)
    ours = (corr(x, w, **kwargs), grad_input(w, dy, size, **kwargs), grad_weight(x, dy, kernel, **kwargs))
    unit = [1] * len(size)
    assert_passes_match_reference(ours, (x64, w64, dy64), (x, w, dy), padding, unit, unit, groups, dtype, "fft")
    return ours


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference(case, dtype):
    _check_case(case, dtype)


@pytest.mark.parametrize("case", [CASES[1], CASES[6]], ids=_case_id)
def test_channels_last(case):
    fmt = torch.channels_last if len(case[2]) == 2 else torch.channels_last_3d
    y, dx, dw = _check_case(case, torch.float32, memory_format=fmt)
    assert y.is_contiguous(memory_format=fmt) and dx.is_contiguous(memory_format=fmt)


def test_non_contiguous_input():
    gen = seeded_generator("fft non-contiguous")
    x64 = randn((2, 6, 15, 20), gen)[:, ::2, 1:, ::2]   # (2, 3, 14, 10), every stride odd
    w64 = randn((4, 3, 3, 4), gen)
    padding = ((2, 1), (0, 3))
    y = corrmm.corr2d(x64, w64, border_mode=padding, algo="fft")
    ref = reference_corr(x64, w64, padding, (1, 1), (1, 1), 1)
    torch.testing.assert_close(y, ref)


def test_batch_chunks_under_a_small_workspace():
    """A workspace cap of one byte forces one image per chunk; the weight gradient then sums
    chunks in the frequency domain. Results must not change."""
    case = (5, 4, (9, 8), 4, (3, 3), 2, ((1, 1), (2, 0)))
    with config.workspace_limit_set_to(1):
        _check_case(case, torch.float64)
        _check_case(case, torch.float32)


def test_every_output_element_written():
    with config.poison_outputs():
        for result in _check_case(CASES[1], torch.float32):
            assert not torch.isnan(result).any()


def test_conv2d_flips_the_kernel():
    gen = seeded_generator("fft conv2d")
    x, w = randn((2, 3, 10, 9), gen), randn((4, 3, 3, 2), gen)
    ours = corrmm.conv2d(x, w, border_mode="full", algo="fft")
    ref = reference_corr(x, w.flip(2, 3), ((2, 2), (1, 1)), (1, 1), (1, 1), 1)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("kwargs,words", [
    (dict(subsample=2), "stride"),
    (dict(subsample=(1, 3)), "stride"),
    (dict(filter_dilation=(2, 1)), "dilation"),
])
def test_unsupported_geometry_is_a_value_error(kwargs, words):
    gen = seeded_generator("fft unsupported", kwargs)
    x, w = randn((1, 2, 9, 9), gen), randn((3, 2, 3, 3), gen)
    y = corrmm.corr2d(x, w, algo="im2col", **kwargs)
    assert_every_pass_refuses("fft", x, w, y, words, **kwargs)


def _is_7_smooth(m):
    for p in (2, 3, 5, 7):
        while m % p == 0:
            m //= p
    return m == 1


def test_fft_sizes_are_the_next_7_smooth_integer():
    for n in range(1, 400):
        m = fast_fft_size(n)
        assert m >= n and _is_7_smooth(m)
        assert not any(_is_7_smooth(j) for j in range(n, m))


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the empty-batch path is device independent")
def test_empty_batch():
    x, w = torch.zeros(0, 3, 8, 8), torch.ones(2, 3, 3, 3)
    assert corrmm.corr2d(x, w, algo="fft").shape == (0, 2, 6, 6)
    assert corrmm.corr2d_grad_weight(x, torch.zeros(0, 2, 6, 6), (3, 3), algo="fft").abs().sum() == 0
