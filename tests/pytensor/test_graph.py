"""The ops as graph citizens: props, type checks at build, run-time checks, shapes, gradients, R-op."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

pytensor = pytest.importorskip("pytensor")
import pytensor.tensor as pt  # noqa: E402
from pytensor.gradient import verify_grad  # noqa: E402

from corrmm.pytensor import (Corr1dMM, Corr3dMM, CorrMM, CorrMM_gradInputs, CorrMM_gradWeights,  # noqa: E402
                             conv1d, conv2d, conv2d_grad_wrt_inputs, conv2d_grad_wrt_weights, conv3d)

from .numpy_reference import Case, reference, rng  # noqa: E402

#: the Python linker: compiles fast, runs the same body as every CPU backend (a Mode object: verify_grad
#: swaps the string "FAST_COMPILE" for the default mode)
PY = pytensor.compile.mode.get_mode("FAST_COMPILE")


def test_props_equality_hash_and_aliases():
    a = CorrMM(2, "half", (2, 1), 1, 1, True)
    b = CorrMM(ndim=2, border_mode="half", subsample=(2, 1), filter_flip=True)
    assert a == b and hash(a) == hash(b)
    assert a != CorrMM(2, "half", (2, 1))
    assert CorrMM(2, 1) == CorrMM(2, (1, 1)) == CorrMM(2, ((1, 1), (1, 1)))  # pads normalised
    assert Corr3dMM(border_mode="full") == CorrMM(3, "full")
    assert Corr1dMM().ndim == 1
    assert a.family(CorrMM_gradInputs)._props_dict() == a._props_dict()
    assert "conv" in str(a) and "half" in str(a)


@pytest.mark.parametrize("build, error, match", [
    (lambda: CorrMM(2)(pt.tensor3("x"), pt.tensor4("w")), TypeError, "must have 4 dimensions"),
    (lambda: CorrMM(2)(pt.tensor4("x", dtype="int32"), pt.tensor4("w")), TypeError, "int32"),
    (lambda: CorrMM(2)(pt.tensor4("x", dtype="float32"), pt.tensor4("w")), TypeError, "dtype mismatch"),
    (lambda: CorrMM(2)(pt.tensor4("x", shape=(2, 3, 5, 5)), pt.tensor4("w", shape=(4, 2, 3, 3))), ValueError,
     "channel mismatch"),
    (lambda: CorrMM(2)(pt.tensor4("x", shape=(2, 3, None, None)), pt.tensor4("w", shape=(4, 2, 3, 3))),
     ValueError, "channel mismatch"),
    (lambda: CorrMM(2)(pt.tensor4("x", shape=(2, 3, 2, 2)), pt.tensor4("w", shape=(4, 3, 3, 3))), ValueError,
     "smaller than the dilated kernel"),
    (lambda: CorrMM(2, num_groups=2)(pt.tensor4("x", shape=(2, 4, 5, 5)), pt.tensor4("w", shape=(3, 2, 3, 3))),
     ValueError, "does not divide"),
    (lambda: CorrMM(2, border_mode="same"), ValueError, "unknown border_mode"),
    (lambda: CorrMM(2, border_mode=(-1, 0)), ValueError, "negative padding"),
    (lambda: CorrMM(2, subsample=0), ValueError, "subsample must be >= 1"),
    (lambda: CorrMM(4), ValueError, "ndim must be 1, 2 or 3"),
    (lambda: CorrMM(2, num_groups=0), ValueError, "num_groups"),
    (lambda: conv2d(pt.tensor4("x"), pt.tensor4("w"), input_shape=(2, 3, 5)), ValueError, "4 entries"),
    (lambda: conv2d(pt.tensor4("x", shape=(2, 3, 5, 5)), pt.tensor4("w"), input_shape=(2, 4, 5, 5)), ValueError,
     "disagrees with the variable's static shape"),
    (lambda: CorrMM_gradInputs(2, subsample=2)(pt.tensor4("w"), pt.tensor4("dy")), ValueError,
     "shape .* is required"),
    (lambda: CorrMM_gradInputs(2)(pt.tensor4("w"), pt.tensor4("dy"), (5, 5, 5)), ValueError, "2 entries"),
    (lambda: CorrMM_gradInputs(2)(pt.tensor4("w", shape=(4, 3, 3, 3)), pt.tensor4("dy", shape=(2, 4, 3, 3)),
                                  (9, 9)), ValueError, "impossible input_shape"),
    (lambda: CorrMM_gradWeights(2, border_mode="half")(pt.tensor4("x"), pt.tensor4("dy")), ValueError,
     "shape .* is required"),
    (lambda: CorrMM_gradWeights(2)(pt.tensor4("x"), pt.tensor4("dy"), pt.dvector("s")), TypeError,
     "int vector"),
])
def test_bad_graphs_are_refused_at_build(build, error, match):
    with pytest.raises(error, match=match):
        build()


def _xw(image, kernel, dtype="float64"):
    r = rng(image, kernel)
    return r.standard_normal(image).astype(dtype), r.standard_normal(kernel).astype(dtype)


def test_bad_values_are_refused_at_run_time():
    x, w = pt.tensor4("x"), pt.tensor4("w")
    f = pytensor.function([x, w], conv2d(x, w, input_shape=(2, 3, None, None)), mode=PY)
    f(*_xw((2, 3, 6, 6), (4, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"input_shape given when the graph was built, \(2, 3, None, None\)"):
        f(*_xw((2, 5, 6, 6), (4, 5, 3, 3)))
    with pytest.raises(ValueError, match="channel mismatch"):
        f(*_xw((2, 3, 6, 6), (4, 2, 3, 3)))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        f(*_xw((2, 3, 2, 6), (4, 3, 3, 3)))
    dy = pt.tensor4("dy")
    g = pytensor.function([w, dy], CorrMM_gradInputs(2, subsample=2)(w, dy, (9, 9)), mode=PY)
    r = rng("gi")
    g(r.standard_normal((4, 3, 3, 3)), r.standard_normal((2, 4, 4, 4)))
    with pytest.raises(ValueError, match=r"impossible input_shape.*input size in \[11, 12\] would produce 5"):
        g(r.standard_normal((4, 3, 3, 3)), r.standard_normal((2, 4, 5, 4)))


def test_conv_functions_match_the_reference():
    """Theano's functions, with every keyword, hints included, in the default (Numba) mode."""
    case = Case((2, 4, 9, 8), (6, 2, 3, 2), "half", (2, 1), (1, 2), 2, flip=True)
    g = case.geometry
    x, w, dy = pt.tensor4("x"), pt.tensor4("w"), pt.tensor4("dy")
    kw = dict(border_mode=case.border_mode, subsample=case.subsample, filter_dilation=case.dilation,
              num_groups=case.groups)
    outputs = [conv2d(x, w, input_shape=g.input_shape, filter_shape=(None, 2, 3, 2), **kw),
               conv2d_grad_wrt_inputs(dy, w, input_shape=(None, None, x.shape[2], 8), **kw),
               conv2d_grad_wrt_weights(x, dy, filter_shape=g.weight_shape, **kw)]
    assert outputs[0].type.shape == (2, None, *g.out_size)  # the filter count was not given
    assert outputs[2].type.shape == g.weight_shape
    r = rng(repr(case))
    values = [r.standard_normal(s) for s in (g.input_shape, g.weight_shape, g.output_shape)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no object-mode fallback warning, nothing else
        f = pytensor.function([x, w, dy], outputs, on_unused_input="ignore")
        results = f(*values)
    for out, ref in zip(results, reference(case, *values)):
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("conv, image, kernel", [(conv1d, (2, 3, 7), (4, 3, 2)), (conv3d, (1, 2, 4, 5, 3),
                                                                                    (3, 2, 2, 3, 1))])
def test_1d_and_3d_functions(conv, image, kernel):
    ndim = len(image) - 2
    x, w = pt.TensorType("float64", shape=(None,) * (ndim + 2))(), pt.TensorType("float64", (None,) * (ndim + 2))()
    case = Case(image, kernel, "full", 1, 1, 1, flip=True)
    values = _xw(image, kernel)
    out = pytensor.function([x, w], conv(x, w, border_mode="full"), mode=PY)(*values)
    np.testing.assert_allclose(out, reference(case, *values, np.zeros(case.geometry.output_shape))[0], atol=1e-12)


@pytest.mark.parametrize("op", [CorrMM(2, "half", (2, 1)), CorrMM(2, (1, 2), 1, (2, 1), 2, True)])
def test_infer_shape_without_running_the_op(op):
    x, w = pt.tensor4("x"), pt.tensor4("w")
    y = op(x, w)
    gi = op.family(CorrMM_gradInputs)(w, y, x.shape[2:])
    gw = op.family(CorrMM_gradWeights)(x, y, w.shape[2:])
    f = pytensor.function([x, w], [y.shape, gi.shape, gw.shape], mode=PY)
    assert not any(isinstance(n.op, (CorrMM, CorrMM_gradInputs, CorrMM_gradWeights))
                   for n in f.maker.fgraph.apply_nodes), "shapes should come from infer_shape"
    xv, wv = _xw((3, 4, 9, 7), (6, 4 // op.num_groups, 3, 2))
    y_run = pytensor.function([x, w], [y, gi, gw], mode=PY)(xv, wv)
    assert [tuple(s) for s in f(xv, wv)] == [a.shape for a in y_run]


# ---- gradients: verify_grad on the three ops and on their gradients (second order) ----------------

# small: the finite differences evaluate the graph once per input element
GRAD_CASES = [Case((2, 4, 4, 3), (4, 2, 3, 2), "half", (2, 1), (1, 1), 2, flip=True),
              Case((1, 2, 6), (3, 2, 2), ((1, 0),), 2, 2, 1, flip=False),
              Case((1, 1, 3, 3, 2), (2, 1, 2, 2, 1), "full", 1, 1, 1, flip=True)]


@pytest.mark.parametrize("case", GRAD_CASES, ids=repr)
def test_verify_grad_first_and_second_order(case):
    g = case.geometry
    props = dict(ndim=case.ndim, border_mode=case.border_mode, subsample=case.subsample,
                 filter_dilation=case.dilation, num_groups=case.groups, filter_flip=case.flip)
    forward, grad_input, grad_weight = CorrMM(**props), CorrMM_gradInputs(**props), CorrMM_gradWeights(**props)
    r = rng("verify", repr(case))
    x, w, dy = (r.standard_normal(s) for s in (g.input_shape, g.weight_shape, g.output_shape))
    # first order, each op in each of its tensor arguments
    verify_grad(forward, [x, w], rng=r, mode=PY)
    verify_grad(lambda w_, dy_: grad_input(w_, dy_, g.in_size), [w, dy], rng=r, mode=PY)
    verify_grad(lambda x_, dy_: grad_weight(x_, dy_, g.kernel), [x, dy], rng=r, mode=PY)

    # second order: the gradient of a non-linear function of the op, differentiated again
    def grad_of_forward(x_, w_):
        return pytensor.grad((forward(x_, w_) ** 2).sum(), [x_, w_])[0]

    def grad_of_grad_input(w_, dy_):
        return pytensor.grad((grad_input(w_, dy_, g.in_size) ** 2).sum(), w_)

    def grad_of_grad_weight(x_, dy_):
        return pytensor.grad((grad_weight(x_, dy_, g.kernel) ** 2).sum(), dy_)

    verify_grad(grad_of_forward, [x, w], rng=r, mode=PY)
    verify_grad(grad_of_grad_input, [w, dy], rng=r, mode=PY)
    verify_grad(grad_of_grad_weight, [x, dy], rng=r, mode=PY)


def test_pushforward_matches_the_bilinear_rule():
    """R-op (pushforward) of each op: op(da, b) + op(a, db), against the numpy reference."""
    case = Case((2, 2, 6, 5), (3, 2, 2, 3), 1, (2, 1), 1, 1, flip=True)
    g = case.geometry
    props = dict(ndim=2, border_mode=1, subsample=(2, 1), filter_flip=True)
    x, w, dy, tx, tw, tdy = (pt.tensor4(n) for n in ("x", "w", "dy", "tx", "tw", "tdy"))
    outs = [CorrMM(**props)(x, w), CorrMM_gradInputs(**props)(w, dy, g.in_size),
            CorrMM_gradWeights(**props)(x, dy, g.kernel)]
    ours = dict(use_op_pushforward=True)  # the ops' own pushforward, not one built from pullbacks
    rops = [pytensor.gradient.pushforward(outs[0], [x, w], [tx, tw], **ours),
            pytensor.gradient.pushforward(outs[1], [w, dy], [tw, tdy], **ours),
            pytensor.gradient.pushforward(outs[2], [x, dy], [tx, tdy], **ours)]
    r = rng("rop")
    values = [r.standard_normal(s) for s in (g.input_shape, g.weight_shape, g.output_shape) * 2]
    got = pytensor.function([x, w, dy, tx, tw, tdy], rops, mode=PY)(*values)
    xv, wv, dyv, txv, twv, tdyv = values
    a, b = reference(case, txv, wv, tdyv), reference(case, xv, twv, dyv)
    expected = [a[0] + b[0], reference(case, xv, twv, dyv)[1] + reference(case, xv, wv, tdyv)[1],
                reference(case, txv, wv, dyv)[2] + reference(case, xv, wv, tdyv)[2]]
    for out, ref in zip(got, expected):
        np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["JAX", "PYTORCH"])
def test_gradients_with_shapes_known_only_at_run_time(backend):
    """pytensor.grad's shape inputs are x.shape[2:], not constants: JAX gets them as a tuple of ints (a
    JAX-only rewrite), PyTorch reads them from the result's static shape or at run time."""
    if backend == "JAX":
        pytest.importorskip("jax", reason="jax is optional (pip install jax)")
    x, w = pt.tensor4("x"), pt.tensor4("w")
    y = conv2d(x, w, border_mode="half", subsample=(2, 1))
    grads = pytensor.grad((y ** 2).sum(), [x, w])
    values = _xw((2, 3, 7, 6), (4, 3, 3, 2))
    with warnings.catch_warnings():
        # torch's own deprecation notice, and PyTensor's PYTORCH linker handing torch read-only constants
        warnings.filterwarnings("ignore", message="`torch.jit.script_method` is deprecated")
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        got = pytensor.function([x, w], grads, mode=backend)(*values)
    expected = pytensor.function([x, w], grads, mode=PY)(*values)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_numpy_to_torch_hand_off_shares_memory():
    from corrmm.pytensor.runtime import as_torch

    a = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    strided = a[:, :, ::2]
    read_only = a.copy()
    read_only.flags.writeable = False
    for array in (a, strided, read_only):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tensor = as_torch(array)
        assert np.shares_memory(tensor.numpy(), array) and tensor.shape == array.shape
    flipped = a[:, :, ::-1]  # torch has no negative strides: the one case that copies
    np.testing.assert_array_equal(as_torch(flipped).numpy(), flipped)
