"""Derivatives of every public function, to second order, in float64 (gradcheck, gradgradcheck).

Each op's gradient is written with the other two ops, so a second derivative
exercises all three ops and their autograd formulas together.
"""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import corrmm

from tests.reference import INTERPRETED, randn, refused, seeded_generator

# (input shape, weight shape, keywords): strided, dilated, grouped, asymmetric padding, 1/2/3-D
GEOMETRIES = [
    ((1, 4, 5, 4), (4, 2, 3, 2), dict(border_mode=((1, 2), (0, 1)), subsample=(2, 1), filter_dilation=(1, 2), num_groups=2)),
    ((1, 2, 4, 3), (2, 2, 2, 3), dict(border_mode="full", subsample=(1, 2))),
    ((1, 2, 5, 4), (2, 2, 3, 3), dict(border_mode="half", subsample=(3, 2))),
    ((2, 2, 9), (4, 1, 3), dict(border_mode=1, subsample=2, num_groups=2)),
    ((1, 2, 4, 3, 5), (2, 2, 2, 1, 2), dict(border_mode=(1, 0, 1), filter_dilation=(1, 1, 2))),
]


def _algos():
    return [a for a in ["auto", *corrmm.algorithms()] if a not in INTERPRETED]


def _supported(algo_name, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
        return True
    except ValueError as err:
        if not refused(algo_name, err):
            raise
        return False


@pytest.mark.parametrize("algo", _algos())
@pytest.mark.parametrize("index", range(len(GEOMETRIES)))
def test_gradcheck_all_functions(algo, index):
    in_shape, w_shape, kw = GEOMETRIES[index]
    nd = len(in_shape) - 2
    corr = getattr(corrmm, f"corr{nd}d")
    grad_input = getattr(corrmm, f"corr{nd}d_grad_input")
    grad_weight = getattr(corrmm, f"corr{nd}d_grad_weight")
    gen = seeded_generator("gradcheck", algo, index)
    x = randn(in_shape, gen).requires_grad_()
    w = randn(w_shape, gen).requires_grad_()
    if not _supported(algo, corr, x.detach(), w.detach(), algo=algo, **kw):
        return
    dy = randn(corr(x, w, **kw).shape, gen).requires_grad_()
    in_size, kernel = in_shape[2:], w_shape[2:]
    functions = [
        (lambda x, w: corr(x, w, algo=algo, **kw), (x, w)),
        (lambda w, dy: grad_input(w, dy, in_size, algo=algo, **kw), (w, dy)),
        (lambda x, dy: grad_weight(x, dy, kernel, algo=algo, **kw), (x, dy)),
    ]
    for fn, inputs in functions:
        assert gradcheck(fn, inputs, eps=1e-6, atol=1e-6)
        assert gradgradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_conv_flips_and_is_differentiable():
    gen = seeded_generator("conv-flip")
    x = randn((2, 3, 6, 7), gen).requires_grad_()
    w = randn((4, 3, 3, 2), gen).requires_grad_()
    y = corrmm.conv2d(x, w, border_mode="half")
    assert torch.allclose(y, corrmm.corr2d(x, w.flip(2, 3), border_mode="half"))
    assert torch.equal(corrmm.conv2d(x, w, filter_flip=False), corrmm.corr2d(x, w))
    assert gradgradcheck(lambda x, w: corrmm.conv2d(x, w, subsample=2), (x, w))


def test_eager_calls_record_the_light_autograd_functions():
    """A plain eager call with gradients records the Functions without setup_context (no argument binding
    per call); their backward is the same formula: first and second derivatives match torch's."""
    gen = seeded_generator("eager functions")
    x = randn((2, 3, 6, 5), gen).requires_grad_()
    w = randn((4, 3, 3, 3), gen).requires_grad_()
    y = corrmm.corr2d(x, w, border_mode=1, algo="im2col")
    assert type(y.grad_fn).__name__.startswith("_EagerCorrFunction")
    dy = randn(y.shape, gen)
    gx, gw = torch.autograd.grad(y, (x, w), dy, create_graph=True)
    ref = torch.nn.functional.conv2d(x, w, padding=1)
    rx, rw = torch.autograd.grad(ref, (x, w), dy, create_graph=True)
    assert torch.allclose(gx, rx) and torch.allclose(gw, rw)
    second = torch.autograd.grad((gx.square().sum() + gw.square().sum()), (x, w))
    ref_second = torch.autograd.grad((rx.square().sum() + rw.square().sum()), (x, w))
    assert all(torch.allclose(a, b) for a, b in zip(second, ref_second))
