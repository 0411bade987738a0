"""The three correlation ops, registered with ``torch.library``.

    corrmm::corr              (input, weight)        -> output
    corrmm::corr_grad_input   (weight, grad_output)  -> grad_input   (takes the input's spatial size)
    corrmm::corr_grad_weight  (input, grad_output)   -> grad_weight  (takes the kernel's spatial size)

Geometry arguments are explicit and per dimension: ``pad_low``, ``pad_high``,
``stride``, ``dilation`` (lists of ints), ``groups`` and ``algo`` (an algorithm
name or ``"auto"``). Each op has a fake (shape-only) implementation for
``torch.compile`` and an autograd formula written with the other two ops, as in
Theano, so derivatives compose to any order::

    y  = corr(x, w)            dx = corr_grad_input(w, dy)     dw = corr_grad_weight(x, dy)
    dx = corr_grad_input(w, dy):   d/dw = corr_grad_weight(g, dy)   d/d(dy) = corr(g, w)
    dw = corr_grad_weight(x, dy):  d/dx = corr_grad_input(g, dy)    d/d(dy) = corr(x, g)

(``g`` is the incoming gradient; each identity is ⟨g, A(u, v)⟩ read three ways.)
Each op is bilinear, so its forward-mode tangent is ``op(ta, b) + op(a, tb)``, and
each has a vmap rule that folds the vmapped dimension into the batch, the
channels or the groups: torch.func's transforms and forward-mode AD work to any
order (see "calling the ops" below for how calls are routed).

Results come back in the memory format of the op's first image argument
(input for corr and corr_grad_weight, grad_output for corr_grad_input):
channels_last in, channels_last out.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as forward_ad
from torch._C._functorch import TransformType, _unwrap_for_grad, _wrap_for_grad
from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter

from . import selection
from .algorithms import CHOOSERS, REGISTRY, Algorithm
from .algorithms.base import matmul_precision_like_convolution
from .geometry import ConvGeometry, check_grad_output_shape
from .layout import memory_format_of, to_memory_format

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---- validation (before anything runs) -------------------------------------------

def check_tensors(op: str, **tensors: torch.Tensor) -> None:
    """Every argument a floating tensor of one dtype on one device, all of one rank (3, 4 or 5)."""
    items = list(tensors.items())
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} has dtype {t.dtype}; expected one of float16, bfloat16, float32, float64")
    (first_name, first), *rest = items
    for name, t in rest:
        if t.dtype != first.dtype:
            raise TypeError(f"{op}: dtype mismatch: {first_name} is {first.dtype} but {name} is {t.dtype}")
        if t.device != first.device:
            raise ValueError(f"{op}: device mismatch: {first_name} is on {first.device} but {name} is on {t.device}")
        if t.dim() != first.dim():
            raise ValueError(f"{op}: {first_name} has {first.dim()} dimensions but {name} has {t.dim()}")
    if first.dim() not in (3, 4, 5):
        raise ValueError(f"{op}: expected tensors of 3, 4 or 5 dimensions (1, 2 or 3 spatial), got {first.dim()}")


def check_algo(algo: str) -> None:
    if algo not in REGISTRY and algo not in CHOOSERS:
        raise ValueError(f"unknown algo {algo!r}: expected one of {[*CHOOSERS, *REGISTRY]}")


def build_geometry(input_shape: Sequence[int], weight_shape: Sequence[int], pad_low, pad_high, stride, dilation,
                   groups: int) -> ConvGeometry:
    ndim = len(input_shape) - 2
    for name, values in (("pad_low", pad_low), ("pad_high", pad_high), ("stride", stride), ("dilation", dilation)):
        if len(values) != ndim:
            raise ValueError(f"{name} has {len(values)} entries, expected {ndim} (one per spatial dimension)")
    for dim, (low, high) in enumerate(zip(pad_low, pad_high)):
        if low < 0 or high < 0:
            raise ValueError(f"negative padding ({low}, {high}) in dimension {dim}")
    for name, values in (("stride", stride), ("dilation", dilation)):
        for dim, v in enumerate(values):
            if v < 1:
                raise ValueError(f"{name} must be >= 1 in every dimension, got {v} in dimension {dim}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if weight_shape[1] * groups != input_shape[1]:
        raise ValueError(
            f"channel mismatch: input has {input_shape[1]} channels, weight expects "
            f"{weight_shape[1]} per group x {groups} groups = {weight_shape[1] * groups}"
        )
    geometry = ConvGeometry(
        batch=input_shape[0], in_channels=input_shape[1], out_channels=weight_shape[0],
        in_size=tuple(input_shape[2:]), kernel=tuple(weight_shape[2:]),
        padding=tuple(zip(pad_low, pad_high)), stride=tuple(stride), dilation=tuple(dilation), groups=groups)
    return geometry.validate()


# ---- plans: each call signature validated and resolved once --------------------------------
#
# A plan holds what validation and algorithm choice derive from a call's signature
# (shapes, strides, dtypes, devices, geometry arguments, algo and the TF32 switch),
# so a repeated call, the usual case in a training loop or a benchmark, goes
# straight to the algorithm. A signature that fails validation raises and is not
# remembered.

@dataclass(frozen=True)
class Plan:
    pass_name: str
    geometry: ConvGeometry
    #: the algorithm that runs the pass; None for "tune", whose choice the tuner's own cache keeps
    algorithm: Optional[Algorithm]
    shape: Tuple[int, ...]
    memory_format: torch.memory_format
    #: float32 on CUDA: cuBLAS GEMMs must follow cudnn.allow_tf32 for the call
    follows_tf32_switch: bool

    def execute(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.geometry.is_empty:  # a zero batch, channel or filter count: nothing to multiply
            return a.new_zeros(self.shape).contiguous(memory_format=self.memory_format)
        algorithm = self.algorithm or selection.tuned(self.pass_name, self.geometry, a.device, a.dtype)
        if self.follows_tf32_switch:
            with matmul_precision_like_convolution(a):
                result = algorithm.run(self.pass_name, a, b, self.geometry)
        else:
            result = algorithm.run(self.pass_name, a, b, self.geometry)
        if result.dtype != a.dtype:
            result = result.to(a.dtype)
        return to_memory_format(result, self.memory_format)


class ShapeOnlyPlan(Plan):
    """The plan for meta tensors: the result's shape, dtype and memory format, with nothing computed."""

    def execute(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _empty(a, self.shape, self.memory_format)


_PLANS: Dict[tuple, Plan] = {}
_MAX_PLANS = 4096


def _signature(pass_name: str, a, b, size, pad_low, pad_high, stride, dilation, groups, algo):
    """The plan key of a call, or None when an argument is malformed (validation then says which)."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return None
    try:
        key = (pass_name, a.shape, a.stride(), a.dtype, a.device, b.shape, b.stride(), b.dtype, b.device,
               None if size is None else tuple(size), tuple(pad_low), tuple(pad_high), tuple(stride),
               tuple(dilation), groups, algo, torch.backends.cudnn.allow_tf32)
        hash(key)
    except (TypeError, RuntimeError):  # unhashable or non-strided arguments
        return None
    return key


def _plan(key, build) -> Plan:
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        plan = build()
        if key is not None:
            if len(_PLANS) >= _MAX_PLANS:
                _PLANS.clear()
            _PLANS[key] = plan
    return plan


def _make_plan(pass_name: str, a: torch.Tensor, geometry: ConvGeometry, algo: str, shape,
               memory_format) -> Plan:
    if a.device.type == "meta":
        return ShapeOnlyPlan(pass_name, geometry, None, tuple(shape), memory_format, False)
    algorithm = None
    if algo != "tune" and not geometry.is_empty:
        algorithm = selection.resolve(algo, pass_name, geometry, a.device, a.dtype)
    return Plan(pass_name, geometry, algorithm, tuple(shape), memory_format,
                a.device.type == "cuda" and a.dtype == torch.float32)


def _empty(like: torch.Tensor, shape, memory_format) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format)


# ---- the op bodies ------------------------------------------------------------------

def corr_impl(input, weight, pad_low, pad_high, stride, dilation, groups, algo) -> torch.Tensor:
    """corrmm::corr's body: validated once per signature, then the planned algorithm."""
    key = _signature("forward", input, weight, None, pad_low, pad_high, stride, dilation, groups, algo)
    plan = _plan(key, lambda: _corr_plan(input, weight, pad_low, pad_high, stride, dilation, groups, algo))
    return plan.execute(input, weight)


def _corr_plan(input, weight, pad_low, pad_high, stride, dilation, groups, algo) -> Plan:
    check_tensors("corr", input=input, weight=weight)
    check_algo(algo)
    g = build_geometry(input.shape, weight.shape, pad_low, pad_high, stride, dilation, groups)
    return _make_plan("forward", input, g, algo, g.output_shape, memory_format_of(input))


def corr_grad_input_impl(weight, grad_output, input_size, pad_low, pad_high, stride, dilation, groups,
                         algo) -> torch.Tensor:
    """corrmm::corr_grad_input's body."""
    key = _signature("grad_input", weight, grad_output, input_size, pad_low, pad_high, stride, dilation, groups,
                     algo)
    plan = _plan(key, lambda: _grad_input_plan(weight, grad_output, input_size, pad_low, pad_high, stride,
                                               dilation, groups, algo))
    return plan.execute(weight, grad_output)


def _grad_input_plan(weight, grad_output, input_size, pad_low, pad_high, stride, dilation, groups, algo) -> Plan:
    check_tensors("corr_grad_input", weight=weight, grad_output=grad_output)
    check_algo(algo)
    g = _grad_input_geometry(weight, grad_output, input_size, pad_low, pad_high, stride, dilation, groups)
    return _make_plan("grad_input", weight, g, algo, g.input_shape, memory_format_of(grad_output))


def _grad_input_geometry(weight, grad_output, input_size, pad_low, pad_high, stride, dilation, groups):
    if len(input_size) != grad_output.dim() - 2:
        raise ValueError(f"input_size {list(input_size)} must have {grad_output.dim() - 2} entries")
    input_shape = (grad_output.shape[0], weight.shape[1] * groups, *input_size)
    g = build_geometry(input_shape, weight.shape, pad_low, pad_high, stride, dilation, groups)
    check_grad_output_shape(g, grad_output.shape, "input_shape")
    return g


def corr_grad_weight_impl(input, grad_output, kernel_size, pad_low, pad_high, stride, dilation, groups,
                          algo) -> torch.Tensor:
    """corrmm::corr_grad_weight's body."""
    key = _signature("grad_weight", input, grad_output, kernel_size, pad_low, pad_high, stride, dilation, groups,
                     algo)
    plan = _plan(key, lambda: _grad_weight_plan(input, grad_output, kernel_size, pad_low, pad_high, stride,
                                                dilation, groups, algo))
    return plan.execute(input, grad_output)


def _grad_weight_plan(input, grad_output, kernel_size, pad_low, pad_high, stride, dilation, groups, algo) -> Plan:
    check_tensors("corr_grad_weight", input=input, grad_output=grad_output)
    check_algo(algo)
    g = _grad_weight_geometry(input, grad_output, kernel_size, pad_low, pad_high, stride, dilation, groups)
    return _make_plan("grad_weight", input, g, algo, g.weight_shape, memory_format_of(input))


def _grad_weight_geometry(input, grad_output, kernel_size, pad_low, pad_high, stride, dilation, groups):
    if len(kernel_size) != input.dim() - 2:
        raise ValueError(f"kernel_size {list(kernel_size)} must have {input.dim() - 2} entries")
    if groups < 1 or input.shape[1] % groups:
        raise ValueError(f"groups={groups} does not divide the input channels ({input.shape[1]})")
    weight_shape = (grad_output.shape[1], input.shape[1] // groups, *kernel_size)
    g = build_geometry(input.shape, weight_shape, pad_low, pad_high, stride, dilation, groups)
    check_grad_output_shape(g, grad_output.shape, "kernel_shape")
    return g


# ---- the registered ops ------------------------------------------------------------------

@torch.library.custom_op("corrmm::corr", mutates_args=())
def corr(input: torch.Tensor, weight: torch.Tensor, pad_low: List[int], pad_high: List[int], stride: List[int],
         dilation: List[int], groups: int, algo: str) -> torch.Tensor:
    return corr_impl(input, weight, pad_low, pad_high, stride, dilation, groups, algo)


@corr.register_fake
def _(input, weight, pad_low, pad_high, stride, dilation, groups, algo):
    check_tensors("corr", input=input, weight=weight)
    g = build_geometry(input.shape, weight.shape, pad_low, pad_high, stride, dilation, groups)
    return _empty(input, g.output_shape, memory_format_of(input))


@torch.library.custom_op("corrmm::corr_grad_input", mutates_args=())
def corr_grad_input(weight: torch.Tensor, grad_output: torch.Tensor, input_size: List[int], pad_low: List[int],
                    pad_high: List[int], stride: List[int], dilation: List[int], groups: int,
                    algo: str) -> torch.Tensor:
    return corr_grad_input_impl(weight, grad_output, input_size, pad_low, pad_high, stride, dilation, groups, algo)


@corr_grad_input.register_fake
def _(weight, grad_output, input_size, pad_low, pad_high, stride, dilation, groups, algo):
    check_tensors("corr_grad_input", weight=weight, grad_output=grad_output)
    g = _grad_input_geometry(weight, grad_output, input_size, pad_low, pad_high, stride, dilation, groups)
    return _empty(grad_output, g.input_shape, memory_format_of(grad_output))


@torch.library.custom_op("corrmm::corr_grad_weight", mutates_args=())
def corr_grad_weight(input: torch.Tensor, grad_output: torch.Tensor, kernel_size: List[int], pad_low: List[int],
                     pad_high: List[int], stride: List[int], dilation: List[int], groups: int,
                     algo: str) -> torch.Tensor:
    return corr_grad_weight_impl(input, grad_output, kernel_size, pad_low, pad_high, stride, dilation, groups,
                                 algo)


@corr_grad_weight.register_fake
def _(input, grad_output, kernel_size, pad_low, pad_high, stride, dilation, groups, algo):
    check_tensors("corr_grad_weight", input=input, grad_output=grad_output)
    g = _grad_weight_geometry(input, grad_output, kernel_size, pad_low, pad_high, stride, dilation, groups)
    return _empty(input, g.weight_shape, memory_format_of(input))


# ---- autograd: each op's gradient is written with the other two ------------------

def _save_geometry(ctx, pad_low, pad_high, stride, dilation, groups, algo):
    ctx.geometry_args = (list(pad_low), list(pad_high), list(stride), list(dilation), groups, algo)


def _save_operands(ctx, a: torch.Tensor, b: torch.Tensor) -> None:
    """Both operands, for backward (the gradients) and for forward-mode AD (the tangent)."""
    ctx.save_for_backward(a, b)
    ctx.save_for_forward(a, b)


def _corr_setup(ctx, inputs, output):
    input, weight, *rest = inputs
    _save_operands(ctx, input, weight)
    _save_geometry(ctx, *rest)


def _like(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The gradient laid out with its parameter's strides (what DDP's buckets and optimizers expect).

    Under torch.func transforms the gradient is an intermediate value (and may be
    batched where the parameter is not), so it is left as it is."""
    if grad.stride() == param.stride() or torch._C._are_functorch_transforms_active():
        return grad
    return torch.empty_like(param).copy_(grad)  # empty_like keeps a dense parameter's strides


def _corr_backward(ctx, grad):
    input, weight = ctx.saved_tensors
    args = ctx.geometry_args
    grad_in = grad_w = None
    if ctx.needs_input_grad[0]:
        grad_in = call_corr_grad_input(weight, grad, list(input.shape[2:]), *args)
    if ctx.needs_input_grad[1]:
        grad_w = _like(call_corr_grad_weight(input, grad, list(weight.shape[2:]), *args), weight)
    return grad_in, grad_w, None, None, None, None, None, None


def _grad_input_setup(ctx, inputs, output):
    weight, grad_output, input_size, *rest = inputs
    _save_operands(ctx, weight, grad_output)
    ctx.size = list(input_size)
    _save_geometry(ctx, *rest)


def _grad_input_backward(ctx, grad):
    weight, grad_output = ctx.saved_tensors
    args = ctx.geometry_args
    grad_w = grad_dy = None
    if ctx.needs_input_grad[0]:
        grad_w = call_corr_grad_weight(grad, grad_output, list(weight.shape[2:]), *args)
    if ctx.needs_input_grad[1]:
        grad_dy = call_corr(grad, weight, *args)
    return grad_w, grad_dy, None, None, None, None, None, None, None


def _grad_weight_setup(ctx, inputs, output):
    input, grad_output, kernel_size, *rest = inputs
    _save_operands(ctx, input, grad_output)
    ctx.size = list(kernel_size)
    _save_geometry(ctx, *rest)


def _grad_weight_backward(ctx, grad):
    input, grad_output = ctx.saved_tensors
    args = ctx.geometry_args
    grad_x = grad_dy = None
    if ctx.needs_input_grad[0]:
        grad_x = call_corr_grad_input(grad, grad_output, list(input.shape[2:]), *args)
    if ctx.needs_input_grad[1]:
        grad_dy = call_corr(input, grad, *args)
    return grad_x, grad_dy, None, None, None, None, None, None, None


corr.register_autograd(_corr_backward, setup_context=_corr_setup)
corr_grad_input.register_autograd(_grad_input_backward, setup_context=_grad_input_setup)
corr_grad_weight.register_autograd(_grad_weight_backward, setup_context=_grad_weight_setup)


# ---- forward-mode AD: each op is bilinear ----------------------------------------
#
# op(a + ta, b + tb) = op(a, b) + op(ta, b) + op(a, tb) + op(ta, tb), so the
# tangent of op(a, b) is op(ta, b) + op(a, tb), written with the same op (and
# therefore differentiable again, in either mode). No algorithm's internals are
# ever differentiated.

def _outside_compile(fn):
    """``torch.compiler.disable(fn)``, made on the first call (importing corrmm must not import dynamo)."""
    disabled = None

    @functools.wraps(fn)
    def call(*args):
        nonlocal disabled
        if disabled is None:
            try:
                disabled = torch.compiler.disable(fn, reason=_EAGER_ONLY)
            except TypeError:  # torch without disable(reason=...)
                disabled = torch.compiler.disable(fn)
        return disabled(*args)
    return call


# never compiled: a jvp rule reached from a graph-broken torch.compile region would
# otherwise call the registered ops, which drop tangents
@_outside_compile
def _sum_of_terms(call, a, b, t_a, t_b, *args):
    tangent = None
    if t_a is not None:
        tangent = call(t_a, b, *args)
    if t_b is not None:
        term = call(a, t_b, *args)
        tangent = term if tangent is None else tangent + term
    return tangent


def _bilinear_tangent(call, a, b, t_a, t_b, *args):
    """op(t_a, b) + op(a, t_b), computed so that every outer transform sees it.

    autograd calls a jvp rule with both gradient modes off, which under nested
    torch.func transforms (jvp of jvp, jacfwd of jacfwd, grad of jvp) would hide
    the tangent's computation from the transforms outside. Under torch.func.jvp the
    rule therefore runs as functorch runs a forward: one level down, gradients on.
    """
    if torch._C._are_functorch_transforms_active():
        interpreter = retrieve_current_functorch_interpreter()
        if interpreter.key() == TransformType.Jvp:
            level = interpreter.level()
            a, b, t_a, t_b = (None if t is None else _unwrap_for_grad(t, level) for t in (a, b, t_a, t_b))
            with torch.enable_grad(), forward_ad._set_fwd_grad_enabled(True), interpreter.lower():
                tangent = _sum_of_terms(call, a, b, t_a, t_b, *args)
            return _wrap_for_grad(tangent, level)
    return _sum_of_terms(call, a, b, t_a, t_b, *args)


def _corr_jvp(ctx, t_input, t_weight, *_):
    input, weight = ctx.saved_tensors
    return _bilinear_tangent(call_corr, input, weight, t_input, t_weight, *ctx.geometry_args)


def _grad_input_jvp(ctx, t_weight, t_grad_output, *_):
    weight, grad_output = ctx.saved_tensors
    return _bilinear_tangent(call_corr_grad_input, weight, grad_output, t_weight, t_grad_output, ctx.size,
                             *ctx.geometry_args)


def _grad_weight_jvp(ctx, t_input, t_grad_output, *_):
    input, grad_output = ctx.saved_tensors
    return _bilinear_tangent(call_corr_grad_weight, input, grad_output, t_input, t_grad_output, ctx.size,
                             *ctx.geometry_args)


_EAGER_ONLY = ("corrmm's functions and layers run under torch.func.grad/vjp/jvp/jacrev/jacfwd/hessian in eager "
               "mode only; apply torch.compile to the function without the transform, or the transform without "
               "torch.compile")


def _differentiating_transform_on_top() -> bool:
    """True under torch.func.grad or torch.func.jvp (the innermost transform), which read autograd formulas."""
    return (torch._C._are_functorch_transforms_active()
            and retrieve_current_functorch_interpreter().key() in (TransformType.Grad, TransformType.Jvp))


def _refuse_differentiating_transform(what: str) -> None:
    """The registered ops carry no forward-mode formula that functorch can read; never return a zero tangent."""
    if _differentiating_transform_on_top():
        raise NotImplementedError(
            f"{what} reached torch.func.grad/jvp directly or from inside torch.compile, where no tangent or "
            f"gradient can be formed; {_EAGER_ONLY}")


# ---- vmap: the vmapped dimension folded into the batch, the channels or the groups ------
#
# Under torch.vmap each op runs once on a reshaped problem, never once per vmapped
# entry. With B the vmapped size and g the groups:
#
#   only an image is vmapped (corr's input, corr_grad_input's grad_output): B joins
#       the batch, (B, N) -> B*N.
#   only a filter-like argument is vmapped (corr's weight, corr_grad_input's weight,
#       either argument of corr_grad_weight, whose batch is summed over): B joins
#       that argument's channels inside each group, (B, g, C/g) -> (g, B*C/g), and
#       the result's channels split back the same way.
#   both are vmapped: B joins the groups, (B, g) -> B*g groups, so each vmapped
#       entry is its own independent problem.
#
# The unvmapped argument is used as it is, never copied B times. This is what
# torch's own convolution batching rule does.

def _join(t: torch.Tensor, dim: int, groups: int) -> torch.Tensor:
    """(B, ..., D at ``dim`` + 1, ...) -> (..., g*B*(D/g) at ``dim``, ...): B inside each of ``groups`` groups."""
    t = t.unflatten(dim + 1, (groups, -1))   # (B, ..., g, D/g, ...)
    t = t.movedim(0, dim + 1)                # (..., g, B, D/g, ...)
    return t.flatten(dim, dim + 2)


def _split(t: torch.Tensor, dim: int, groups: int, batch: int) -> torch.Tensor:
    """The inverse of :func:`_join`: (..., g*B*(D/g) at ``dim``, ...) -> (B, ..., D, ...)."""
    t = t.unflatten(dim, (groups, batch, -1))  # (..., g, B, D/g, ...)
    t = t.movedim(dim + 1, 0)                  # (B, ..., g, D/g, ...)
    return t.flatten(dim + 1, dim + 2)


# Where B goes, per op. a_only, b_only: (dim of the vmapped argument that B joins,
# whether inside each group, dim of the result that B leaves, whether inside each
# group). both: (dim of the first argument, of the second, of the result), B
# joining the groups.
#                               a_only                b_only                both
_FOLDS = {"corr":             ((0, False, 0, False), (0, True, 1, True),   (1, 0, 1)),
          "corr_grad_input":  ((1, False, 1, True),  (0, False, 0, False), (0, 1, 1)),
          "corr_grad_weight": ((1, True, 1, False),  (1, True, 0, True),   (1, 1, 0))}


def _vmap_rule(op_name: str, call):
    """The batching rule of one op, which runs the folded problem with ``call``."""
    a_only, b_only, both = _FOLDS[op_name]
    sized = op_name != "corr"  # the gradient ops take the size of what they return

    def rule(info, in_dims, a, b, *args):
        a_dim, b_dim = in_dims[:2]
        size = list(args[:1]) if sized else []
        pad_low, pad_high, stride, dilation, groups, algo = args[1:] if sized else args
        geometry = (pad_low, pad_high, stride, dilation)
        batch = info.batch_size
        if a_dim is None and b_dim is None:
            return call(a, b, *args), None
        if a_dim is not None:
            a = a.movedim(a_dim, 0)
        if b_dim is not None:
            b = b.movedim(b_dim, 0)
        if b_dim is None or a_dim is None:
            join, grouped, out_dim, out_grouped = a_only if b_dim is None else b_only
            g = groups if grouped else 1
            if b_dim is None:
                a = _join(a, join, g)
            else:
                b = _join(b, join, g)
            out = call(a, b, *size, *geometry, groups, algo)
            return _split(out, out_dim, groups if out_grouped else 1, batch), 0
        a_join, b_join, out_dim = both
        out = call(_join(a, a_join, 1), _join(b, b_join, 1), *size, *geometry, batch * groups, algo)
        return _split(out, out_dim, 1, batch), 0

    return rule


# The registered ops' rules (torch.vmap over torch.ops.corrmm.*) call the ops themselves;
# the autograd.Functions' rules call them through the Functions, which other
# transforms below the vmap (grad, jvp) need.
def _registered_op_rule(op_name: str):
    """The registered op's rule: the op again, one level down, where grad and jvp would not see it."""
    rule = _vmap_rule(op_name, getattr(torch.ops.corrmm, op_name))

    def checked_rule(info, in_dims, *args):
        with retrieve_current_functorch_interpreter().lower():
            _refuse_differentiating_transform(f"torch.ops.corrmm.{op_name}")
        return rule(info, in_dims, *args)
    return checked_rule


for _name in _FOLDS:
    torch.library.register_vmap(f"corrmm::{_name}", _registered_op_rule(_name))


# ---- calling the ops: eager calls without the dispatcher, transforms through autograd.Functions ------
#
# Going through torch.library's dispatcher costs about 135 µs of host time per call
# (H100 machine, scripts/host_overhead.py), more than a small layer's whole GEMM. An
# eager call on plain tensors needs none of what it provides, so the public functions
# call the op bodies directly, through an autograd.Function with the same formulas
# when a gradient is needed.
#
# The same autograd.Functions carry what the registered ops cannot: a jvp rule
# (forward-mode AD) and the functorch protocol (setup_context, vmap), so they take
# every call made under torch.func transforms or torch.autograd.forward_ad. Their
# forward calls the op again one level down, so no algorithm is ever differentiated
# or vmapped from inside. Under torch.compile, torch.jit.trace, tensor subclasses
# (fake, functional) and dispatch or torch-function modes the registered op is
# called, so tracers record corrmm's three ops.

def _forward(op_name: str, body):
    """An autograd.Function's forward: the op one level down (no autograd here)."""
    def forward(a, b, *args):
        if needs_dispatcher(a, b):
            if torch._C._are_functorch_transforms_active():
                return _FUNCTIONS[op_name].apply(a, b, *args)  # the next transform down
            return getattr(torch.ops.corrmm, op_name)(a, b, *args)
        return body(a, b, *args)
    return forward


class _CorrFunction(torch.autograd.Function):
    forward = staticmethod(_forward("corr", corr_impl))
    setup_context = staticmethod(_corr_setup)
    backward = staticmethod(_corr_backward)
    jvp = staticmethod(_corr_jvp)
    vmap = staticmethod(_vmap_rule("corr", lambda *args: call_corr(*args)))


class _CorrGradInputFunction(torch.autograd.Function):
    forward = staticmethod(_forward("corr_grad_input", corr_grad_input_impl))
    setup_context = staticmethod(_grad_input_setup)
    backward = staticmethod(_grad_input_backward)
    jvp = staticmethod(_grad_input_jvp)
    vmap = staticmethod(_vmap_rule("corr_grad_input", lambda *args: call_corr_grad_input(*args)))


class _CorrGradWeightFunction(torch.autograd.Function):
    forward = staticmethod(_forward("corr_grad_weight", corr_grad_weight_impl))
    setup_context = staticmethod(_grad_weight_setup)
    backward = staticmethod(_grad_weight_backward)
    jvp = staticmethod(_grad_weight_jvp)
    vmap = staticmethod(_vmap_rule("corr_grad_weight", lambda *args: call_corr_grad_weight(*args)))


_FUNCTIONS = {"corr": _CorrFunction, "corr_grad_input": _CorrGradInputFunction,
              "corr_grad_weight": _CorrGradWeightFunction}


# The eager training path: plain tensors, no torch.func transform, no forward-mode AD. An
# autograd.Function with ``setup_context`` binds its arguments through inspect.signature on
# every apply (about 10 µs, more than a small layer's GEMM); these Functions, with the same
# backward formulas but the classic ``forward(ctx, ...)``, skip that. They carry no jvp or
# vmap rule, so ``_call`` uses them only where neither can be asked for.

def _eager_function(name: str, body, sized: bool, backward):
    def forward(ctx, a, b, *args):
        ctx.save_for_backward(a, b)
        if sized:
            ctx.size = list(args[0])
            args_geometry = args[1:]
        else:
            args_geometry = args
        pad_low, pad_high, stride, dilation, groups, algo = args_geometry
        ctx.geometry_args = (list(pad_low), list(pad_high), list(stride), list(dilation), groups, algo)
        return body(a, b, *args)

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward),
                                                   "backward": staticmethod(backward)})


_EAGER_FUNCTIONS = {
    _CorrFunction: _eager_function("_EagerCorrFunction", corr_impl, False, _corr_backward),
    _CorrGradInputFunction: _eager_function("_EagerCorrGradInputFunction", corr_grad_input_impl, True,
                                            _grad_input_backward),
    _CorrGradWeightFunction: _eager_function("_EagerCorrGradWeightFunction", corr_grad_weight_impl, True,
                                             _grad_weight_backward),
}

#: tensor types the op bodies take as they are (Parameter disables __torch_function__)
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def needs_dispatcher(a, b) -> bool:
    """True when the op bodies must not run directly (tracing, subclasses, modes, transforms)."""
    if torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None:
        return True
    if type(a) not in _PLAIN_TENSORS or type(b) not in _PLAIN_TENSORS:
        return True
    return bool(torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled()
                or torch._C._functorch.peek_interpreter_stack() is not None)


def _forward_ad_active() -> bool:
    """Inside ``torch.autograd.forward_ad.dual_level()`` with forward gradients on (they are off in a forward)."""
    return forward_ad._current_level >= 0 and torch._C._is_fwd_grad_enabled()


def _apply_eagerly(function, a, b, *args):
    """``function.apply`` outside torch.compile, for torch.func.grad/jvp met while compiling.

    torch.compile records the registered ops, which functorch's grad and jvp cannot
    see into (a jvp would get no tangent). Compilation stops here (a graph break;
    ``fullgraph=True`` makes it an error) and the call runs eagerly, through the
    autograd.Function, which they can."""
    return function.apply(a, b, *args)


_apply_eagerly = _outside_compile(_apply_eagerly)


def _call(op_name: str, body, function, a, b, *args) -> torch.Tensor:
    if needs_dispatcher(a, b):
        if torch.compiler.is_compiling():
            if _differentiating_transform_on_top():
                torch._dynamo.graph_break(msg=_EAGER_ONLY)  # loaded while compiling; fullgraph=True raises it
                return _apply_eagerly(function, a, b, *args)
        elif torch._C._are_functorch_transforms_active() or _forward_ad_active():
            return function.apply(a, b, *args)
        return getattr(torch.ops.corrmm, op_name)(a, b, *args)
    if forward_ad._current_level >= 0 and torch._C._is_fwd_grad_enabled():  # dual tensors: the jvp rule
        return function.apply(a, b, *args)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return _EAGER_FUNCTIONS[function].apply(a, b, *args)
    return body(a, b, *args)


def call_corr(input, weight, *args) -> torch.Tensor:
    """``torch.ops.corrmm.corr(input, weight, *args)``, skipping the dispatcher where nothing needs it."""
    return _call("corr", corr_impl, _CorrFunction, input, weight, *args)


def call_corr_grad_input(weight, grad_output, *args) -> torch.Tensor:
    """``torch.ops.corrmm.corr_grad_input(weight, grad_output, *args)``, likewise."""
    return _call("corr_grad_input", corr_grad_input_impl, _CorrGradInputFunction, weight, grad_output, *args)


def call_corr_grad_weight(input, grad_output, *args) -> torch.Tensor:
    """``torch.ops.corrmm.corr_grad_weight(input, grad_output, *args)``, likewise."""
    return _call("corr_grad_weight", corr_grad_weight_impl, _CorrGradWeightFunction, input, grad_output, *args)
