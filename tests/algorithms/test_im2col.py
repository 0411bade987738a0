"""im2col's CPU paths that the reference grid's small shapes do not reach: cache-sized column
panels (forced here by a tiny panel size), the whole-chunk GEMM for small outputs, columns
gathered from a channels-last copy (16+ channels per group) and torch's fold as col2im, against torch's float64 correlation in all three passes."""
import pytest
import torch

import corrmm
from corrmm.algorithms import im2col

from tests.reference import DEVICE, assert_passes_match_reference, randn, seeded_generator

# (input shape, weight shape, (low, high) per dimension, stride, dilation, groups)
CASES = [
    ((2, 4, 13, 11), (6, 4, 3, 3), ((1, 1), (1, 1)), (1, 1), (1, 1), 1),
    ((2, 6, 17, 9), (4, 3, 5, 2), ((2, 0), (1, 3)), (2, 1), (1, 2), 2),
    ((3, 3, 23), (5, 3, 4), ((3, 1),), (2,), (1,), 1),
    ((1, 4, 7, 6, 9), (4, 2, 3, 2, 3), ((1, 1), (0, 1), (2, 0)), (1, 2, 1), (1, 1, 2), 2),
    # 16+ channels per group: columns gathered from a channels-last copy
    ((2, 32, 9, 7), (8, 16, 3, 2), ((1, 0), (2, 2)), (2, 1), (1, 2), 2),
    ((2, 16, 11), (4, 16, 3), ((1, 1),), (1,), (2,), 1),
]


def _check(case, dtype):
    x_shape, w_shape, padding, stride, dilation, groups = case
    nd = len(x_shape) - 2
    gen = seeded_generator("im2col paths", case, dtype)
    x64, w64 = randn(x_shape, gen), randn(w_shape, gen)
    y64 = getattr(corrmm, f"corr{nd}d")(x64, w64, border_mode=padding, subsample=stride, filter_dilation=dilation,
                                        num_groups=groups, algo="swapped")
    dy64 = randn(y64.shape, gen)
    x, w, dy = x64.to(dtype), w64.to(dtype), dy64.to(dtype)
    kw = dict(border_mode=padding, subsample=stride, filter_dilation=dilation, num_groups=groups, algo="im2col")
    ours = (getattr(corrmm, f"corr{nd}d")(x, w, **kw),
            getattr(corrmm, f"corr{nd}d_grad_input")(w, dy, x_shape[2:], **kw),
            getattr(corrmm, f"corr{nd}d_grad_weight")(x, dy, w_shape[2:], **kw))
    assert_passes_match_reference(ours, (x64, w64, dy64), (x, w, dy), padding, stride, dilation, groups, dtype,
                                  "im2col")


@pytest.mark.skipif(DEVICE.type != "cpu", reason="panels are the CPU path")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_panels(case, dtype, monkeypatch):
    monkeypatch.setattr(im2col, "PANEL_BYTES", 64)  # a panel of one output row
    calls = []
    original = im2col._panels
    monkeypatch.setattr(im2col, "_panels", lambda *a: calls.append(a) or original(*a))
    _check(case, dtype)
    assert calls, "the panel path did not run"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("whole_batch_below", [0, 10**9])
def test_per_image_and_whole_chunk_gemms(case, dtype, whole_batch_below, monkeypatch):
    monkeypatch.setattr(im2col, "BATCHED_GEMM_BELOW", whole_batch_below)
    _check(case, dtype)
