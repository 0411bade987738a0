"""kernels/depthwise_numba.py: the 3x3 stride-1 NCHW depthwise kernel, and where the depthwise
algorithm uses it, against torch's float64 correlation.

Forward with channel multipliers and padding of every size (none, asymmetric, beyond the
kernel); the input gradient (the kernel on dy with the filter rotated); float32 and float64;
gradcheck/gradgradcheck through ``algo="depthwise"``; torch's thread count left as it was.
"""
import importlib.util

import pytest
import torch

import corrmm
from corrmm.algorithms import depthwise
from corrmm.geometry import make_geometry

from tests.reference import DEVICE, assert_passes_match_reference, randn, seeded_generator

pytestmark = [pytest.mark.skipif(DEVICE.type != "cpu", reason="a CPU kernel"),
              pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")]

# (batch, channels, multiplier, (H, W), padding)
CASES = [
    (2, 3, 1, (7, 9), ((1, 1), (1, 1))),
    (1, 4, 2, (6, 5), ((0, 2), (1, 0))),    # multiplier 2, asymmetric: the input gradient takes the torch ops
    (2, 2, 1, (5, 8), ((2, 1), (0, 0))),    # padding 2 > k - 1 - low: the input gradient takes the torch ops
    (1, 5, 1, (3, 4), ((0, 0), (2, 2))),
    (1, 3, 3, (1, 11), ((1, 1), (1, 1))),
]


def _case_id(case):
    n, c, m, size, padding = case
    return f"n{n}c{c}m{m}-{size[0]}x{size[1]}-p{padding}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference(case, dtype):
    n, c, m, size, padding = case
    g = make_geometry((n, c, *size), (c * m, 1, 3, 3), padding, 1, 1, c)
    gen = seeded_generator("depthwise numba", case, dtype)
    x64, w64, dy64 = randn(g.input_shape, gen), randn(g.weight_shape, gen), randn(g.output_shape, gen)
    x, w, dy = x64.to(dtype), w64.to(dtype), dy64.to(dtype)
    assert depthwise.uses_numba("forward", x, g)
    expect_gi = m == 1 and all(low <= 2 for low, _ in padding)
    assert depthwise.uses_numba("grad_input", dy, g) == expect_gi
    ours = (depthwise.numba_forward(x, w, g), depthwise.numba_grad_input(w, dy, g) if expect_gi else None, None)
    assert_passes_match_reference(ours, (x64, w64, dy64), (x, w, dy), padding, (1, 1), (1, 1), c, dtype,
                                  "depthwise numba")
    kwargs = dict(border_mode=padding, num_groups=c, algo="depthwise")  # the algorithm, all three passes
    through_ops = (corrmm.corr2d(x, w, **kwargs), corrmm.corr2d_grad_input(w, dy, size, **kwargs),
                   corrmm.corr2d_grad_weight(x, dy, (3, 3), **kwargs))
    assert torch.equal(through_ops[0], ours[0])
    assert_passes_match_reference(through_ops, (x64, w64, dy64), (x, w, dy), padding, (1, 1), (1, 1), c, dtype,
                                  "depthwise via the op")


def test_where_the_kernel_runs():
    g = make_geometry((2, 8, 6, 6), (8, 1, 3, 3), 1, 1, 1, 8)
    x = torch.randn(g.input_shape)
    assert depthwise.uses_numba("forward", x, g) and depthwise.uses_numba("grad_input", x, g)
    assert not depthwise.uses_numba("grad_weight", x, g)
    assert not depthwise.uses_numba("forward", x.contiguous(memory_format=torch.channels_last), g)
    for other in (make_geometry((2, 8, 6, 6), (8, 1, 3, 3), 1, 2, 1, 8),      # strided
                  make_geometry((2, 8, 6, 6), (8, 1, 3, 3), 2, 1, 2, 8),      # dilated
                  make_geometry((2, 8, 6, 6), (8, 1, 5, 5), 2, 1, 1, 8)):     # 5x5
        assert not depthwise.uses_numba("forward", x, other)


def test_torch_thread_count_is_kept():
    before = torch.get_num_threads()
    g = make_geometry((2, 4, 5, 5), (4, 1, 3, 3), 1, 1, 1, 4)
    depthwise.numba_forward(torch.randn(g.input_shape), torch.randn(g.weight_shape), g)
    assert torch.get_num_threads() == before


def test_deterministic():
    g = make_geometry((2, 16, 9, 9), (16, 1, 3, 3), 1, 1, 1, 16)
    x, w = torch.randn(g.input_shape), torch.randn(g.weight_shape)
    assert torch.equal(depthwise.numba_forward(x, w, g), depthwise.numba_forward(x, w, g))


def test_gradcheck_and_gradgradcheck():
    gen = seeded_generator("depthwise numba gradcheck")
    x = randn((1, 2, 4, 5), gen).requires_grad_()
    w = randn((2, 1, 3, 3), gen).requires_grad_()
    fn = lambda x, w: corrmm.corr2d(x, w, border_mode=1, num_groups=2, algo="depthwise")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))
