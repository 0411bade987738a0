"""Every bad input of DESIGN 1 gets its ValueError/TypeError, naming the offending values,
before anything runs."""
import numpy as np
import pytest
import torch

import corrmm

X = torch.randn(2, 4, 8, 8)
W = torch.randn(6, 4, 3, 3)


@pytest.mark.parametrize("call,error,message", [
    (lambda: corrmm.corr2d(X[0], W), ValueError, "input has 3 dimensions but weight has 4"),
    (lambda: corrmm.corr2d(X, W[0]), ValueError, "dimensions"),
    (lambda: corrmm.corr1d(X, W), ValueError, "must have 3 dimensions"),
    (lambda: corrmm.corr2d(X, torch.randn(6, 3, 3, 3)), ValueError, "channel mismatch: input has 4 channels"),
    (lambda: corrmm.corr2d(X, torch.randn(6, 2, 3, 3), num_groups=3), ValueError, "num_groups=3"),
    (lambda: corrmm.corr2d(X, torch.randn(5, 2, 3, 3), num_groups=2), ValueError, r"output channels \(5\)"),
    (lambda: corrmm.corr2d(X, W, num_groups=0), ValueError, "num_groups"),
    (lambda: corrmm.corr2d(X, W.double()), TypeError, "dtype mismatch"),
    (lambda: corrmm.corr2d(X.int(), W.int()), TypeError, "torch.int32"),
    (lambda: corrmm.corr2d(X.long(), W), TypeError, "torch.int64"),
    (lambda: corrmm.corr2d(X, W.to("meta")), ValueError, "device mismatch"),
    (lambda: corrmm.corr2d(X.numpy(), W), TypeError, "torch.Tensor"),
    (lambda: corrmm.corr2d(X, W, border_mode="same"), ValueError, "unknown border_mode 'same'"),
    (lambda: corrmm.corr2d(X, W, border_mode=-1), ValueError, r"negative padding \(-1, -1\)"),
    (lambda: corrmm.corr2d(X, W, border_mode=((0, -2), (1, 1))), ValueError, r"negative padding \(0, -2\) in dimension 0"),
    (lambda: corrmm.corr2d(X, W, border_mode=(1, 2, 3)), ValueError, "3 entries, expected 2"),
    (lambda: corrmm.corr2d(X, W, border_mode=((1, 2, 3), 1)), ValueError, "pair"),
    (lambda: corrmm.corr2d(X, W, subsample=0), ValueError, "subsample must be >= 1"),
    (lambda: corrmm.corr2d(X, W, subsample=(1, 2, 1)), ValueError, "subsample"),
    (lambda: corrmm.corr2d(X, W, filter_dilation=(1, 0)), ValueError, "got 0 in dimension 1"),
    (lambda: corrmm.corr2d(X, W, subsample=1.5), TypeError, "subsample"),
    (lambda: corrmm.corr2d(X, torch.randn(6, 4, 9, 3)), ValueError, r"dimension 0: the padded input \(8 \+ 0 \+ 0 = 8\)"),
    (lambda: corrmm.corr2d(X, W, filter_dilation=4), ValueError, "smaller than the dilated kernel"),
    (lambda: corrmm.corr2d(X, W, algo="cudnn"), ValueError, "unknown algo 'cudnn'"),
    (lambda: corrmm.corr2d_grad_input(W, torch.randn(2, 6, 6, 6), (8, 9)), ValueError, "impossible input_shape: in dimension 1"),
    (lambda: corrmm.corr2d_grad_input(W, torch.randn(2, 6, 6, 6), (8,)), ValueError, "input_shape must have 2 entries"),
    (lambda: corrmm.corr2d_grad_input(W, torch.randn(2, 6, 6, 6), (3, 5, 8, 8)), ValueError, "disagrees"),
    (lambda: corrmm.corr2d_grad_input(W, torch.randn(2, 5, 6, 6), (8, 8)), ValueError, "grad_output has batch/channels"),
    (lambda: corrmm.corr2d_grad_weight(X, torch.randn(2, 6, 6, 6), (3, 4)), ValueError, "impossible kernel_shape"),
    (lambda: corrmm.corr2d_grad_weight(X, torch.randn(3, 6, 6, 6), (3, 3)), ValueError, "grad_output has batch/channels"),
    (lambda: corrmm.corr2d_grad_weight(X, torch.randn(2, 6, 6, 6), (3, 3), num_groups=3), ValueError, "num_groups=3"),
    (lambda: corrmm.corr2d_grad_weight(X, torch.randn(2, 6, 6, 6).half(), (3, 3)), TypeError, "dtype mismatch"),
    (lambda: torch.ops.corrmm.corr(X, W, [0, 0], [0, -1], [1, 1], [1, 1], 1, "auto"), ValueError, "negative padding"),
    (lambda: torch.ops.corrmm.corr(X, W, [0], [0], [1], [1], 1, "auto"), ValueError, "pad_low has 1 entries"),
    (lambda: torch.ops.corrmm.corr(X, W, [0, 0], [0, 0], [1, 1], [1, 1], 1, "nope"), ValueError, "unknown algo"),
])
def test_bad_input_is_rejected_with_a_clear_message(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_algorithms_lists_the_registry():
    names = corrmm.algorithms()
    assert "im2col" in names and "swapped" in names and "auto" not in names
    for name in names:
        assert corrmm.algorithms()  # a fresh list each call
    names.append("mutated")
    assert "mutated" not in corrmm.algorithms()


# ---- numbers: integral numpy/torch scalars count as ints, anything fractional is refused ----

INTEGRAL = [np.int64(2), np.int32(2), torch.tensor(2), torch.tensor(2, dtype=torch.int32)]


@pytest.mark.parametrize("two", INTEGRAL, ids=lambda v: f"{type(v).__name__}-{v.dtype}")
def test_integral_scalars_are_accepted_wherever_an_int_is(two):
    x, w = torch.randn(2, 4, 9, 9, dtype=torch.float64), torch.randn(6, 2, 3, 3, dtype=torch.float64)
    expected = corrmm.corr2d(x, w, border_mode=2, subsample=2, filter_dilation=2, num_groups=2)
    for kwargs in (dict(border_mode=two, subsample=two, filter_dilation=two, num_groups=two),
                   dict(border_mode=((two, 2), (2, two)), subsample=(two, 2), filter_dilation=(2, two), num_groups=2)):
        torch.testing.assert_close(corrmm.corr2d(x, w, **kwargs), expected, rtol=0, atol=0)
    dy = torch.randn_like(expected)
    kw = dict(border_mode=2, subsample=2, filter_dilation=2, num_groups=2)
    torch.testing.assert_close(corrmm.corr2d_grad_input(w, dy, (9, two * 4 + 1), **kw),
                               corrmm.corr2d_grad_input(w, dy, (9, 9), **kw), rtol=0, atol=0)
    torch.testing.assert_close(corrmm.corr2d_grad_weight(x, dy, (two + 1, 3), **kw),
                               corrmm.corr2d_grad_weight(x, dy, (3, 3), **kw), rtol=0, atol=0)


@pytest.mark.parametrize("call, message", [
    (lambda: corrmm.corr2d(X, W, subsample=2.0), r"subsample must be an integer, got 2.0 \(float\)"),
    (lambda: corrmm.corr2d(X, W, subsample=(1, 8.7)), r"subsample\[1\] must be an integer, got 8.7"),
    (lambda: corrmm.corr2d(X, W, filter_dilation=np.float64(1.0)), "filter_dilation must be an integer"),
    (lambda: corrmm.corr2d(X, W, num_groups=1.0), "num_groups must be an integer, got 1.0"),
    (lambda: corrmm.corr2d(X, W, num_groups=torch.tensor(1.0)), "num_groups must be an integer"),
    (lambda: corrmm.corr2d(X, W, subsample=torch.tensor(True)), "subsample must be an integer"),
    (lambda: corrmm.corr2d(X, W, border_mode=1.5), "border_mode must be one of"),
    (lambda: corrmm.corr2d(X, W, border_mode=((0.5, 1), 1)), r"border_mode\[0\]\[0\] must be an integer"),
    (lambda: corrmm.corr2d(X, W, border_mode=(1, 1.0)), r"border_mode\[1\] must be an integer"),
    (lambda: corrmm.corr2d_grad_input(W, torch.randn(2, 6, 6, 6), (8.7, 8)), r"input_shape\[0\] must be an integer, got 8.7"),
    (lambda: corrmm.corr2d_grad_input(W, torch.randn(2, 6, 6, 6), (8, 8.0)), r"input_shape\[1\] must be an integer"),
    (lambda: corrmm.corr2d_grad_weight(X, torch.randn(2, 6, 6, 6), (3.0, 3)), r"kernel_shape\[0\] must be an integer"),
    (lambda: corrmm.corr2d_grad_weight(X, torch.randn(2, 6, 6, 6), "33"), "kernel_shape must be a sequence of ints"),
])
def test_non_integral_numbers_are_refused_naming_the_argument(call, message):
    with pytest.raises(TypeError, match=message):
        call()
