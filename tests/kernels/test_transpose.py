"""The layout transpose (NCHW <-> NHWC) against torch's own copy, exactly (it moves bits, no arithmetic).

Runs in Triton's interpreter on the CPU and natively with ``CORRMM_TEST_DEVICE=cuda``.
"""
import importlib.util
import os

import pytest
import torch

from tests.reference import DEVICE, seeded_generator

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None
    or (DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1"),
    reason="the transpose kernel needs Triton, and on the CPU its interpreter",
)

if importlib.util.find_spec("triton") is not None:
    from corrmm.kernels import transpose

SHAPES = [(2, 3, 17, 19), (1, 64, 9, 9), (3, 70, 5, 13), (2, 1, 4, 4), (1, 5, 1, 1), (4, 130, 3, 2)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_both_directions_match_torch(shape, dtype):
    gen = seeded_generator("transpose", shape, dtype)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
    nhwc = transpose.nchw_to_nhwc(x)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and nhwc.shape == x.shape
    assert torch.equal(nhwc, x)
    back = transpose.nhwc_to_nchw(nhwc)
    assert back.is_contiguous() and torch.equal(back, x)
    # a second call reuses the planned launch with fresh data
    y = torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
    assert torch.equal(transpose.nchw_to_nhwc(y), y)


def test_supported():
    assert not transpose.supported(torch.empty(2, 3, 4, device=DEVICE))
    assert not transpose.supported(torch.empty(0, 3, 4, 4, device=DEVICE))
    assert transpose.supported(torch.empty(1, 3, 4, 4, device=DEVICE))
