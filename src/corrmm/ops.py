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

Results come back in the memory format of the op's first image argument
(input for corr and corr_grad_weight, grad_output for corr_grad_input):
channels_last in, channels_last out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

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


def _corr_setup(ctx, inputs, output):
    input, weight, *rest = inputs
    ctx.save_for_backward(input, weight)
    _save_geometry(ctx, *rest)


def _like(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The gradient laid out with its parameter's strides (what DDP's buckets and optimizers expect)."""
    if grad.stride() == param.stride():
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
    weight, grad_output, _input_size, *rest = inputs
    ctx.save_for_backward(weight, grad_output)
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
    input, grad_output, _kernel_size, *rest = inputs
    ctx.save_for_backward(input, grad_output)
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


# ---- eager calls without the dispatcher ----------------------------------------------
#
# Going through torch.library's dispatcher costs about 135 µs of host time per call
# (H100 machine, scripts/host_overhead.py), more than a small layer's whole GEMM. An
# eager call on plain tensors needs none of what it provides, so the public functions
# call the op bodies directly, through an autograd.Function with the same formulas
# when a gradient is needed. Anything the dispatcher must see goes through the
# registered op: torch.compile and FX tracing, tensor subclasses (fake, functional),
# dispatch or torch-function modes and functorch transforms.

class _CorrFunction(torch.autograd.Function):
    forward = staticmethod(corr_impl)
    setup_context = staticmethod(_corr_setup)
    backward = staticmethod(_corr_backward)


class _CorrGradInputFunction(torch.autograd.Function):
    forward = staticmethod(corr_grad_input_impl)
    setup_context = staticmethod(_grad_input_setup)
    backward = staticmethod(_grad_input_backward)


class _CorrGradWeightFunction(torch.autograd.Function):
    forward = staticmethod(corr_grad_weight_impl)
    setup_context = staticmethod(_grad_weight_setup)
    backward = staticmethod(_grad_weight_backward)


#: tensor types the op bodies take as they are (Parameter disables __torch_function__)
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def needs_dispatcher(a, b) -> bool:
    """True when the call must go through the registered op (tracing, subclasses, modes, transforms)."""
    if torch.compiler.is_compiling():
        return True
    if type(a) not in _PLAIN_TENSORS or type(b) not in _PLAIN_TENSORS:
        return True
    return bool(torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled()
                or torch._C._functorch.peek_interpreter_stack() is not None)


def _differentiating(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)


def _call(op_name: str, body, function, a, b, *args) -> torch.Tensor:
    if needs_dispatcher(a, b):
        return getattr(torch.ops.corrmm, op_name)(a, b, *args)
    if _differentiating(a, b):
        return function.apply(a, b, *args)
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
