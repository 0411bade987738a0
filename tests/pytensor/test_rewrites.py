"""The rewrites: each fires on its pattern (checked in the compiled graph), leaves the result unchanged
(checked against the same graph compiled with the rewrite excluded), and stays off where it must."""
from __future__ import annotations

import numpy as np
import pytest

pytensor = pytest.importorskip("pytensor")
import pytensor.tensor as pt  # noqa: E402
from pytensor.compile.mode import Mode  # noqa: E402
from pytensor.tensor.blockwise import Blockwise  # noqa: E402
from pytensor.tensor.subtensor import Subtensor  # noqa: E402
from pytensor.tensor.signal import convolve1d, convolve2d  # noqa: E402

from corrmm.pytensor import CorrMM, CorrMM_gradInputs, CorrMM_gradWeights, conv1d, conv2d  # noqa: E402

from .numpy_reference import rng  # noqa: E402

#: PyTensor's full rewrite pipeline on the Python linker (compiles in milliseconds)
FAST_RUN_PY = Mode(linker="py", optimizer="fast_run")
OURS = (CorrMM, CorrMM_gradInputs, CorrMM_gradWeights)


def _compile(inputs, outputs, excluding=None):
    mode = FAST_RUN_PY.excluding(excluding) if excluding else FAST_RUN_PY
    return pytensor.function(inputs, outputs, mode=mode)


def _ops(function):
    return [node.op for node in function.maker.fgraph.toposort()]


def _values(*variables, dtype="float64"):
    r = rng(*(str(v.type) for v in variables))
    return [r.standard_normal(v.type.shape).astype(dtype) for v in variables]


def _same_result(inputs, output, rewrite, values, rtol=1e-12):
    with_rewrite, without = _compile(inputs, output), _compile(inputs, output, excluding=rewrite)
    got, expected = with_rewrite(*values), without(*values)
    for a, b in zip(got, expected) if isinstance(output, list) else [(got, expected)]:
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)
    return with_rewrite, without


def test_explicit_kernel_flip_cancels():
    x, w = pt.tensor4("x", shape=(2, 3, 7, 6)), pt.tensor4("w", shape=(4, 3, 3, 2))
    dy = pt.tensor4("dy", shape=(2, 4, 5, 5))
    flipped = w[:, :, ::-1, ::-1]
    outputs = [conv2d(x, flipped, border_mode="valid"),  # Theano's conv2d(filter_flip=True) of a flipped kernel
               CorrMM_gradInputs(2)(flipped, dy, (7, 6)),
               CorrMM_gradWeights(2)(x, dy, (3, 2))[:, :, ::-1, ::-1]]
    f, _ = _same_result([x, w, dy], outputs, "corrmm_flip_kernel", _values(x, w, dy))
    _same_result([x, w, dy], outputs, "corrmm_flip_weight_gradient", _values(x, w, dy))
    ops = _ops(f)
    assert not any(isinstance(op, Subtensor) for op in ops), ops
    flips = {type(op).__name__: op.filter_flip for op in ops if isinstance(op, OURS)}
    assert flips == {"CorrMM": False, "CorrMM_gradInputs": True, "CorrMM_gradWeights": True}


def test_flip_of_only_some_axes_is_left_alone():
    x, w = pt.tensor4("x", shape=(2, 3, 7, 6)), pt.tensor4("w", shape=(4, 3, 3, 2))
    f = _compile([x, w], conv2d(x, w[:, :, ::-1, :]))
    assert any(isinstance(op, Subtensor) for op in _ops(f))


def test_transposed_chains_become_gradient_ops():
    """Theano-era hand-written gradients: corr of transposed tensors, and a full conv with a transposed kernel."""
    x, w = pt.tensor4("x", shape=(3, 2, 7, 6)), pt.tensor4("w", shape=(4, 2, 3, 2))
    dy = pt.tensor4("dy", shape=(3, 4, 5, 5))
    weight_grad = conv2d(x.dimshuffle(1, 0, 2, 3), dy.dimshuffle(1, 0, 2, 3), filter_flip=False,
                         filter_dilation=(1, 1)).dimshuffle(1, 0, 2, 3)
    input_grad = conv2d(dy, w.dimshuffle(1, 0, 2, 3), border_mode="full")
    values = _values(x, w, dy)
    f, _ = _same_result([x, w, dy], [weight_grad, input_grad], "corrmm_transposed_weight_gradient", values)
    _same_result([x, w, dy], [weight_grad, input_grad], "corrmm_full_transposed_kernel", values)
    ops = [op for op in _ops(f) if isinstance(op, OURS)]
    assert sorted(type(op).__name__ for op in ops) == ["CorrMM_gradInputs", "CorrMM_gradWeights"], ops
    # and they are the gradients of the valid correlation
    grads = pytensor.grad(None, [x, w], known_grads={conv2d(x, w, filter_flip=False): dy})
    np.testing.assert_allclose(f(*values)[0], _compile([x, w, dy], grads[1])(*values), rtol=1e-12)
    np.testing.assert_allclose(f(*values)[1], _compile([x, w, dy], grads[0])(*values), rtol=1e-12)


@pytest.mark.parametrize("mode", ["full", "valid"])
def test_signal_convolve2d_over_channels_becomes_corrmm(mode):
    x = pt.tensor4("x", shape=(None, 5, 9, 8), dtype="float32")
    w = pt.tensor4("w", shape=(6, 5, 3, 2), dtype="float32")
    out = convolve2d(x[:, None], w[None], mode=mode).sum(axis=2)  # (N, K, ...): a multi-channel convolution
    xv, wv = (v.astype("float32") for v in _values(pt.tensor4(shape=(4, 5, 9, 8)), w))
    f, baseline = _same_result([x, w], out, "corrmm_signal_convolve", [xv, wv], rtol=1e-5)
    assert [type(op).__name__ for op in _ops(f) if isinstance(op, OURS)] == ["CorrMM"]
    assert not any(isinstance(op, Blockwise) for op in _ops(f))
    assert any(isinstance(op, Blockwise) for op in _ops(baseline))
    # corrmm.pytensor.conv2d computes the same thing directly
    direct = pytensor.function([x, w], conv2d(x, w, border_mode=mode), mode=FAST_RUN_PY)
    np.testing.assert_allclose(f(xv, wv), direct(xv, wv), rtol=1e-5, atol=1e-5)


def test_signal_convolve1d_with_axes_in_another_order():
    x = pt.tensor3("x", shape=(3, 4, 11))
    w = pt.tensor3("w", shape=(2, 4, 3))
    out = convolve1d(w[:, None], x[None], mode="full").sum(axis=2)  # kernels first: (K, N, ...)
    f, _ = _same_result([x, w], out, "corrmm_signal_convolve", _values(x, w))
    assert any(isinstance(op, CorrMM) for op in _ops(f))
    direct = pytensor.function([x, w], conv1d(x, w, border_mode="full").dimshuffle(1, 0, 2), mode=FAST_RUN_PY)
    np.testing.assert_allclose(f(*_values(x, w)), direct(*_values(x, w)), rtol=1e-12)


@pytest.mark.parametrize("x_shape, w_shape, mode, why", [
    ((1, 1, 9, 8), (1, 1, 3, 2), "full", "one image, one filter, one channel: scipy is as fast"),
    ((2, 3, 4, 4), (2, 3, 5, 5), "valid", "kernel larger than the image: scipy swaps the arguments"),
    ((2, 3, None, None), (2, 3, 3, 3), "valid", "unknown image size in valid mode"),
])
def test_signal_rewrite_stays_off(x_shape, w_shape, mode, why):
    x, w = pt.tensor4("x", shape=x_shape), pt.tensor4("w", shape=w_shape)
    f = _compile([x, w], convolve2d(x[:, None], w[None], mode=mode).sum(axis=2))
    assert not any(isinstance(op, CorrMM) for op in _ops(f)), why
