"""corrmm under torch's transforms, against torch's own convolution under the same transform (float64).

Forward-mode AD (torch.func.jvp and torch.autograd.forward_ad), torch.func.grad/vjp/jacrev,
vmap with a real batching rule (the fallback is switched off, so a missing rule raises),
second order (forward over reverse) and torch.jit.trace/script of converted models.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Tuple

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

import corrmm
from corrmm.algorithms import REGISTRY
from corrmm.geometry import make_geometry

from .reference import reference_corr, seeded_generator

aten = torch.ops.aten

# torch deprecates its own TorchScript entry points (and scripts its forward-AD decompositions on first use)
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")


@dataclass(frozen=True)
class Case:
    """One 2-D geometry: shapes, (low, high) padding per dimension, stride, dilation, groups."""
    input: Tuple[int, ...]
    weight: Tuple[int, ...]
    padding: Tuple[Tuple[int, int], ...] = ((0, 0), (0, 0))
    stride: Tuple[int, ...] = (1, 1)
    dilation: Tuple[int, ...] = (1, 1)
    groups: int = 1

    @property
    def kw(self):
        return dict(border_mode=self.padding, subsample=self.stride, filter_dilation=self.dilation,
                    num_groups=self.groups)

    @property
    def output(self):
        out = []
        for size, (low, high), k, s, d in zip(self.input[2:], self.padding, self.weight[2:], self.stride,
                                              self.dilation):
            out.append((size + low + high - (k - 1) * d - 1) // s + 1)
        return (self.input[0], self.weight[0], *out)


GENERAL = Case((2, 4, 7, 6), (6, 2, 3, 2), ((1, 0), (2, 1)), (2, 1), (1, 2), 2)
#: the geometry each algorithm is tested on (the specialised ones on a case they serve)
CASES = {
    "im2col": GENERAL,
    "swapped": GENERAL,
    "auto": GENERAL,
    "fft": Case((2, 4, 6, 5), (6, 2, 3, 2), ((1, 1), (0, 1)), groups=2),
    "gemm1x1": Case((2, 4, 5, 4), (6, 2, 1, 1), groups=2),
    "implicit": Case((1, 2, 4, 4), (2, 2, 2, 2), ((1, 0), (0, 1))),  # Triton's interpreter on the CPU: tiny
}


def _serves_on_the_cpu(algo: str, case: Case) -> bool:
    """These tests run on the CPU; implicit does only under Triton's interpreter (not on a GPU machine)."""
    g = make_geometry(case.input, case.weight, case.padding, case.stride, case.dilation, case.groups)
    return not REGISTRY[algo].not_supported_reasons(g, "forward", torch.device("cpu"), torch.float64)


CASES = {algo: case for algo, case in CASES.items() if algo not in REGISTRY or _serves_on_the_cpu(algo, case)}


# ---- the three ops, ours and torch's ----------------------------------------------------------

def ours(op: str, case: Case, algo: str = "auto"):
    """The op as a function of its two tensors, through corrmm's public functions."""
    if op == "corr":
        return lambda x, w: corrmm.corr2d(x, w, algo=algo, **case.kw)
    if op == "grad_input":
        return lambda w, dy: corrmm.corr2d_grad_input(w, dy, case.input[2:], algo=algo, **case.kw)
    return lambda x, dy: corrmm.corr2d_grad_weight(x, dy, case.weight[2:], algo=algo, **case.kw)


def _padded_shape(case: Case):
    return (*case.input[:2], *(s + low + high for s, (low, high) in zip(case.input[2:], case.padding)))


def _pad(x, case: Case):
    return F.pad(x, [p for pair in reversed(case.padding) for p in pair])


def theirs(op: str, case: Case):
    """torch's own: F.conv2d, and aten.convolution_backward's two gradients (on the padded input)."""
    common = (list(case.stride), [0, 0], list(case.dilation), False, [0, 0], case.groups)
    if op == "corr":
        return lambda x, w: reference_corr(x, w, case.padding, case.stride, case.dilation, case.groups)
    if op == "grad_input":
        def grad_input(w, dy):
            padded = w.new_zeros(_padded_shape(case))
            g = aten.convolution_backward(dy, padded, w, None, *common, [True, False, False])[0]
            for dim, (size, (low, _)) in enumerate(zip(case.input[2:], case.padding)):
                g = g.narrow(2 + dim, low, size)
            return g
        return grad_input

    def grad_weight(x, dy):
        w = x.new_zeros(case.weight)
        return aten.convolution_backward(dy, _pad(x, case), w, None, *common, [False, True, False])[1]
    return grad_weight


def operand_shapes(op: str, case: Case):
    return {"corr": (case.input, case.weight), "grad_input": (case.weight, case.output),
            "grad_weight": (case.input, case.output)}[op]


def randoms(key, *shapes):
    g = seeded_generator(*key)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def assert_close(a, b):
    assert a is not None and b is not None
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


OPS = ["corr", "grad_input", "grad_weight"]
WRT = {"first": (True, False), "second": (False, True), "both": (True, True)}


def _partial(f, primals, tangents, which):
    """f restricted to the tangent-carrying arguments, for torch.func.jvp."""
    chosen = [i for i, keep in enumerate(which) if keep]

    def g(*args):
        full = list(primals)
        for i, a in zip(chosen, args):
            full[i] = a
        return f(*full)
    return g, tuple(primals[i] for i in chosen), tuple(tangents[i] for i in chosen)


# ---- forward-mode AD --------------------------------------------------------------------------

@pytest.mark.parametrize("algo", list(CASES))
@pytest.mark.parametrize("op", OPS)
def test_func_jvp_matches_torch(op, algo):
    case = CASES[algo]
    a, b, ta, tb = randoms(("jvp", op, algo), *operand_shapes(op, case), *operand_shapes(op, case))
    for name, which in WRT.items():
        f, primals, tangents = _partial(ours(op, case, algo), (a, b), (ta, tb), which)
        r, rprimals, rtangents = _partial(theirs(op, case), (a, b), (ta, tb), which)
        out, tangent = torch.func.jvp(f, primals, tangents)
        ref_out, ref_tangent = torch.func.jvp(r, rprimals, rtangents)
        assert_close(out, ref_out)
        assert_close(tangent, ref_tangent)
        assert tangent.abs().max() > 0, name


def _forward_ad(f, primals, tangents):
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) if t is not None else p for p, t in zip(primals, tangents)]
        out = fwAD.unpack_dual(f(*duals))
        return out.primal, out.tangent


@pytest.mark.parametrize("op", OPS)
def test_forward_ad_matches_torch_for_every_algorithm(op):
    for algo, case in CASES.items():
        a, b, ta, tb = randoms(("fwad", op, algo), *operand_shapes(op, case), *operand_shapes(op, case))
        for which in WRT.values():
            tangents = [t if keep else None for t, keep in zip((ta, tb), which)]
            out, tangent = _forward_ad(ours(op, case, algo), (a, b), tangents)
            ref_out, ref_tangent = _forward_ad(theirs(op, case), (a, b), tangents)
            assert_close(out, ref_out)
            assert_close(tangent, ref_tangent)


def test_forward_ad_with_requires_grad_operands():
    """Dual tensors that also require grad go through both modes at once."""
    case = GENERAL
    x, w, tx = randoms("fwad-rg", case.input, case.weight, case.input)
    x.requires_grad_()
    out, tangent = _forward_ad(ours("corr", case, "im2col"), (x, w), (tx, None))
    _, ref_tangent = _forward_ad(theirs("corr", case), (x, w), (tx, None))
    assert_close(tangent, ref_tangent)
    assert out.requires_grad


# ---- vmap ---------------------------------------------------------------------------------

@contextlib.contextmanager
def no_vmap_fallback():
    """Without torch's per-entry fallback, an op with no batching rule raises."""
    torch._C._functorch._set_vmap_fallback_enabled(False)
    try:
        yield
    finally:
        torch._C._functorch._set_vmap_fallback_enabled(True)


VMAP_CASES = {"strided-grouped": GENERAL,
              "plain": Case((2, 3, 6, 5), (4, 3, 3, 3), ((1, 1), (1, 1)))}


@pytest.mark.parametrize("case", list(VMAP_CASES), ids=str)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("in_dims", [(0, None), (None, 0), (0, 0), (2, 1)], ids=str)
def test_vmap_matches_torch(op, case, in_dims):
    case = VMAP_CASES[case]
    batch = 3
    shapes = []
    for shape, dim in zip(operand_shapes(op, case), in_dims):
        if dim is not None:
            shape = (*shape[:dim], batch, *shape[dim:])
        shapes.append(shape)
    a, b = randoms(("vmap", op, in_dims, case), *shapes)
    with no_vmap_fallback():
        got = torch.vmap(ours(op, case, "im2col"), in_dims=in_dims)(a, b)
    expected = torch.vmap(theirs(op, case), in_dims=in_dims)(a, b)
    assert_close(got, expected)


def test_vmap_of_the_registered_op_has_a_rule():
    x, w = randoms("vmap-op", (3, 2, 4, 6, 6), (5, 4, 3, 3))
    args = ([1, 1], [1, 1], [1, 1], [1, 1], 1, "swapped")
    with no_vmap_fallback():
        got = torch.vmap(lambda x: torch.ops.corrmm.corr(x, w, *args))(x)
    expected = torch.vmap(lambda x: F.conv2d(x, w, padding=1))(x)
    assert_close(got, expected)


def test_nested_vmap_over_input_and_weight():
    x, w = randoms("vmap2", (2, 3, 1, 2, 5, 5), (3, 4, 2, 3, 3))  # vmap over w's 3 outside, x's 2 inside

    def f(ours_or_theirs):
        conv = (lambda x, w: corrmm.corr2d(x, w, border_mode=1)) if ours_or_theirs else \
            (lambda x, w: F.conv2d(x, w, padding=1))
        return torch.vmap(torch.vmap(conv, in_dims=(0, None)), in_dims=(1, 0))
    with no_vmap_fallback():
        got = f(True)(x, w)
    assert_close(got, f(False)(x, w))


# ---- torch.func.grad / vjp / jacrev ------------------------------------------------------------

@pytest.mark.parametrize("algo", ["im2col", "swapped", "auto"])
@pytest.mark.parametrize("op", OPS)
def test_grad_vjp_jacrev_match_torch(op, algo):
    case = Case((1, 2, 4, 3), (2, 1, 2, 2), ((1, 0), (0, 1)), (2, 1), (1, 1), 2)  # jacrev: small
    a, b, ct = randoms(("grad", op, algo), *operand_shapes(op, case), case.input if op == "grad_input" else
                       case.weight if op == "grad_weight" else case.output)
    f, r = ours(op, case, algo), theirs(op, case)

    def loss(fn):
        return lambda a, b: (fn(a, b) ** 2 * ct).sum()
    for got, expected in zip(torch.func.grad(loss(f), argnums=(0, 1))(a, b),
                             torch.func.grad(loss(r), argnums=(0, 1))(a, b)):
        assert_close(got, expected)
    out, vjp_fn = torch.func.vjp(f, a, b)
    ref_out, ref_vjp_fn = torch.func.vjp(r, a, b)
    assert_close(out, ref_out)
    for got, expected in zip(vjp_fn(ct), ref_vjp_fn(ct)):
        assert_close(got, expected)
    for got, expected in zip(torch.func.jacrev(f, argnums=(0, 1))(a, b), torch.func.jacrev(r, argnums=(0, 1))(a, b)):
        assert_close(got, expected)


def test_per_sample_gradients_vmap_of_grad():
    """vmap(grad(loss)) over the batch: the classic per-sample gradient, weight unbatched."""
    case = GENERAL
    x, w = randoms("per-sample", case.input, case.weight)

    def loss(conv):
        return lambda w, x: (conv(x.unsqueeze(0), w) ** 2).sum()
    ours_corr = ours("corr", case, "im2col")
    with no_vmap_fallback():
        got = torch.vmap(torch.func.grad(loss(ours_corr)), in_dims=(None, 0))(w, x)
    expected = torch.vmap(torch.func.grad(loss(theirs("corr", case))), in_dims=(None, 0))(w, x)
    assert got.shape == (case.input[0], *case.weight)
    assert_close(got, expected)


# ---- second order ---------------------------------------------------------------------------

@pytest.mark.parametrize("algo", ["im2col", "swapped", "fft", "auto"])
def test_hessian_vector_products_match_torch(algo):
    """Forward over reverse, torch.func.jvp(torch.func.grad(f)), with respect to both arguments."""
    case = CASES[algo]
    x, w, tx, tw, c = randoms(("hvp", algo), case.input, case.weight, case.input, case.weight, case.output)

    def loss(conv):
        return lambda x, w: (torch.tanh(conv(x, w)) * c).sum()  # tanh: a non-zero Hessian in x and w alone
    def hvp(conv):
        return torch.func.jvp(torch.func.grad(loss(conv), argnums=(0, 1)), (x, w), (tx, tw))[1]
    for a, b in zip(hvp(ours("corr", case, algo)), hvp(theirs("corr", case))):
        assert_close(a, b)


def test_jvp_of_vjp_and_eager_forward_over_reverse_match_torch():
    case = GENERAL
    x, w, tx, tw, ct = randoms("jvp-vjp", case.input, case.weight, case.input, case.weight, case.output)

    def vjp_of(conv):
        return lambda x, w: torch.func.vjp(conv, x, w)[1](ct)
    got = torch.func.jvp(vjp_of(ours("corr", case, "im2col")), (x, w), (tx, tw))[1]
    expected = torch.func.jvp(vjp_of(theirs("corr", case)), (x, w), (tx, tw))[1]
    for a, b in zip(got, expected):
        assert_close(a, b)

    def eager(conv):  # autograd.grad with create_graph on dual tensors
        with fwAD.dual_level():
            xd, wd = fwAD.make_dual(x.clone().requires_grad_(), tx), fwAD.make_dual(w.clone().requires_grad_(), tw)
            grads = torch.autograd.grad((torch.sin(conv(xd, wd)) * ct).sum(), (xd, wd), create_graph=True)
            return [fwAD.unpack_dual(g).tangent for g in grads]
    for a, b in zip(eager(ours("corr", case, "auto")), eager(theirs("corr", case))):
        assert_close(a, b)


# ---- the layer --------------------------------------------------------------------------------

def test_conv2d_layer_with_bias_under_jvp_forward_ad_and_vmap():
    torch.manual_seed(0)
    layer = corrmm.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, dtype=torch.float64)
    params = dict(layer.named_parameters())
    x, tx = randoms("layer", (2, 4, 7, 7), (2, 4, 7, 7))
    tangents = {name: torch.randn_like(p) for name, p in params.items()}

    def ours_fn(x, params):
        return torch.func.functional_call(layer, params, (x,))

    def theirs_fn(x, params):
        return F.conv2d(x, params["weight"], params["bias"], stride=2, padding=1, groups=2)

    got = torch.func.jvp(ours_fn, (x, params), (tx, tangents))
    expected = torch.func.jvp(theirs_fn, (x, params), (tx, tangents))
    assert_close(got[0], expected[0])
    assert_close(got[1], expected[1])
    no_bias_tangent = {"weight": tangents["weight"], "bias": torch.zeros_like(tangents["bias"])}
    assert (torch.func.jvp(ours_fn, (x, params), (tx, no_bias_tangent))[1]).abs().max() > 0

    with fwAD.dual_level():
        dual_params = {name: fwAD.make_dual(p.detach(), tangents[name]) for name, p in params.items()}
        y = fwAD.unpack_dual(ours_fn(fwAD.make_dual(x, tx), dual_params)).tangent
    assert_close(y, expected[1])

    with no_vmap_fallback():
        got = torch.vmap(layer)(x.unsqueeze(1))  # vmap over single-image batches
    assert_close(got.squeeze(1), theirs_fn(x, params))
    grads = torch.func.grad(lambda p: ours_fn(x, p).square().sum())(params)
    ref = torch.func.grad(lambda p: theirs_fn(x, p).square().sum())(params)
    for name in params:
        assert_close(grads[name], ref[name])


# ---- TorchScript ------------------------------------------------------------------------------

def _converted_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 2, 3, padding="same", padding_mode="reflect"))
    return corrmm.convert(model)


def test_jit_trace_records_the_corrmm_op_and_runs_like_eager():
    model = _converted_model()
    x = torch.randn(2, 3, 8, 8)
    traced = torch.jit.trace(model, x)
    assert "corrmm::corr" in str(traced.inlined_graph)
    for shape in ((2, 3, 8, 8), (1, 3, 5, 9)):  # the recorded op is shape-generic
        x = torch.randn(shape)
        torch.testing.assert_close(traced(x), model(x))


def test_jit_script_refuses_in_one_sentence_and_the_alternative_it_names_works():
    model = _converted_model()
    with pytest.raises(RuntimeError) as info:
        torch.jit.script(model)
    message = str(info.value)
    assert "torch.compile" in message and "torch.export" in message
    assert len(message) < 300 and "\n" not in message.strip()
    x = torch.randn(2, 3, 8, 8)
    exported = torch.export.export(model, (x,))
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.corrmm.corr.default) == 2
    torch.testing.assert_close(exported.module()(x), model(x))


def test_nested_forward_mode_matches_torch():
    """jvp of jvp, grad of jvp, jacfwd of jacfwd: the inner tangent stays visible to the outer transform."""
    case = GENERAL
    x, w, u, v = randoms("nested", case.input, case.weight, case.input, case.weight)
    x, u = x[:1], u[:1]

    def results(conv):
        def jvp_jvp():
            inner = lambda w: torch.func.jvp(lambda x: conv(x, w), (x,), (u,))[1]  # noqa: E731
            return torch.func.jvp(inner, (w,), (v,))[1]

        def grad_jvp():
            inner = lambda w: torch.func.jvp(lambda x: torch.sin(conv(x, w)), (x,), (u,))[1]  # noqa: E731
            return torch.func.grad(lambda w: inner(w).sum())(w)
        hessian = torch.func.jacfwd(torch.func.jacfwd(lambda x: torch.tanh(conv(x, w)).sum()))(x)
        return jvp_jvp(), grad_jvp(), hessian
    for got, expected in zip(results(ours("corr", case, "im2col")), results(theirs("corr", case))):
        assert_close(got, expected)
        assert expected.abs().max() > 0


@pytest.mark.usefixtures("fresh_dynamo")
def test_transforms_inside_torch_compile_are_right_or_refused():
    """vmap compiles to one graph; grad and jvp leave the compiled region (right results, or an error
    with fullgraph=True), never a silently zero tangent."""
    case = GENERAL
    x, w, u = randoms("compiled", case.input, case.weight, case.input)
    def per_image(conv):
        return torch.vmap(lambda image: conv(image[None], w)[0])
    transforms = {
        "vmap": per_image,
        "grad": lambda conv: torch.func.grad(lambda x: conv(x, w).square().sum()),
        "jvp": lambda conv: lambda x: torch.func.jvp(lambda x: conv(x, w), (x,), (u,))[1],
        "jvp-vmap": lambda conv: lambda x: torch.func.jvp(per_image(conv), (x,), (u,))[1],
    }
    for name, transform in transforms.items():
        expected = transform(theirs("corr", case))(x)
        for fullgraph in (False, True):
            torch._dynamo.reset()
            compiled = torch.compile(transform(ours("corr", case)), backend="aot_eager", fullgraph=fullgraph)
            if fullgraph and name != "vmap":
                with pytest.raises(Exception, match="eager mode only"):
                    compiled(x)
            else:
                assert_close(compiled(x), expected)
