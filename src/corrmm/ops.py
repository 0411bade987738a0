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

import contextlib
from typing import List, Sequence

import torch

from . import selection
from .algorithms import CHOOSERS, REGISTRY
from .geometry import ConvGeometry, check_grad_output_shape

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


# ---- helpers --------------------------------------------------------------------

def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """channels_last(_3d) when ``t`` is stored that way (and not also plain contiguous)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


@contextlib.contextmanager
def matmul_precision_like_convolution(t: torch.Tensor):
    """float32 GEMMs use TF32 exactly when torch's convolutions would (cuDNN's TF32 switch)."""
    if t.device.type != "cuda" or t.dtype != torch.float32:
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _run(pass_name: str, a: torch.Tensor, b: torch.Tensor, geometry: ConvGeometry, algo: str,
         shape: Sequence[int], memory_format: torch.memory_format) -> torch.Tensor:
    if geometry.is_empty:  # a zero batch, channel or filter count: nothing to multiply
        return a.new_zeros(shape).contiguous(memory_format=memory_format)
    algorithm = selection.resolve(algo, pass_name, geometry, a.device, a.dtype)
    with matmul_precision_like_convolution(a):
        result = algorithm.run(pass_name, a, b, geometry)
    return result.to(dtype=a.dtype).contiguous(memory_format=memory_format)


def _empty(like: torch.Tensor, shape, memory_format) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format)


# ---- corr ---------------------------------------------------------------------

@torch.library.custom_op("corrmm::corr", mutates_args=())
def corr(input: torch.Tensor, weight: torch.Tensor, pad_low: List[int], pad_high: List[int], stride: List[int],
         dilation: List[int], groups: int, algo: str) -> torch.Tensor:
    check_tensors("corr", input=input, weight=weight)
    check_algo(algo)
    g = build_geometry(input.shape, weight.shape, pad_low, pad_high, stride, dilation, groups)
    return _run("forward", input, weight, g, algo, g.output_shape, memory_format_of(input))


@corr.register_fake
def _(input, weight, pad_low, pad_high, stride, dilation, groups, algo):
    check_tensors("corr", input=input, weight=weight)
    g = build_geometry(input.shape, weight.shape, pad_low, pad_high, stride, dilation, groups)
    return _empty(input, g.output_shape, memory_format_of(input))


# ---- corr_grad_input ---------------------------------------------------------------

@torch.library.custom_op("corrmm::corr_grad_input", mutates_args=())
def corr_grad_input(weight: torch.Tensor, grad_output: torch.Tensor, input_size: List[int], pad_low: List[int],
                    pad_high: List[int], stride: List[int], dilation: List[int], groups: int,
                    algo: str) -> torch.Tensor:
    check_tensors("corr_grad_input", weight=weight, grad_output=grad_output)
    check_algo(algo)
    g = _grad_input_geometry(weight, grad_output, input_size, pad_low, pad_high, stride, dilation, groups)
    return _run("grad_input", weight, grad_output, g, algo, g.input_shape, memory_format_of(grad_output))


def _grad_input_geometry(weight, grad_output, input_size, pad_low, pad_high, stride, dilation, groups):
    if len(input_size) != grad_output.dim() - 2:
        raise ValueError(f"input_size {list(input_size)} must have {grad_output.dim() - 2} entries")
    input_shape = (grad_output.shape[0], weight.shape[1] * groups, *input_size)
    g = build_geometry(input_shape, weight.shape, pad_low, pad_high, stride, dilation, groups)
    check_grad_output_shape(g, grad_output.shape, "input_shape")
    return g


@corr_grad_input.register_fake
def _(weight, grad_output, input_size, pad_low, pad_high, stride, dilation, groups, algo):
    check_tensors("corr_grad_input", weight=weight, grad_output=grad_output)
    g = _grad_input_geometry(weight, grad_output, input_size, pad_low, pad_high, stride, dilation, groups)
    return _empty(grad_output, g.input_shape, memory_format_of(grad_output))


# ---- corr_grad_weight --------------------------------------------------------------

@torch.library.custom_op("corrmm::corr_grad_weight", mutates_args=())
def corr_grad_weight(input: torch.Tensor, grad_output: torch.Tensor, kernel_size: List[int], pad_low: List[int],
                     pad_high: List[int], stride: List[int], dilation: List[int], groups: int,
                     algo: str) -> torch.Tensor:
    check_tensors("corr_grad_weight", input=input, grad_output=grad_output)
    check_algo(algo)
    g = _grad_weight_geometry(input, grad_output, kernel_size, pad_low, pad_high, stride, dilation, groups)
    return _run("grad_weight", input, grad_output, g, algo, g.weight_shape, memory_format_of(input))


def _grad_weight_geometry(input, grad_output, kernel_size, pad_low, pad_high, stride, dilation, groups):
    if len(kernel_size) != input.dim() - 2:
        raise ValueError(f"kernel_size {list(kernel_size)} must have {input.dim() - 2} entries")
    if groups < 1 or input.shape[1] % groups:
        raise ValueError(f"groups={groups} does not divide the input channels ({input.shape[1]})")
    weight_shape = (grad_output.shape[1], input.shape[1] // groups, *kernel_size)
    g = build_geometry(input.shape, weight_shape, pad_low, pad_high, stride, dilation, groups)
    check_grad_output_shape(g, grad_output.shape, "kernel_shape")
    return g


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
        grad_in = torch.ops.corrmm.corr_grad_input(weight, grad, list(input.shape[2:]), *args)
    if ctx.needs_input_grad[1]:
        grad_w = _like(torch.ops.corrmm.corr_grad_weight(input, grad, list(weight.shape[2:]), *args), weight)
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
        grad_w = torch.ops.corrmm.corr_grad_weight(grad, grad_output, list(weight.shape[2:]), *args)
    if ctx.needs_input_grad[1]:
        grad_dy = torch.ops.corrmm.corr(grad, weight, *args)
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
        grad_x = torch.ops.corrmm.corr_grad_input(grad, grad_output, list(input.shape[2:]), *args)
    if ctx.needs_input_grad[1]:
        grad_dy = torch.ops.corrmm.corr(input, grad, *args)
    return grad_x, grad_dy, None, None, None, None, None, None, None


corr.register_autograd(_corr_backward, setup_context=_corr_setup)
corr_grad_input.register_autograd(_grad_input_backward, setup_context=_grad_input_setup)
corr_grad_weight.register_autograd(_grad_weight_backward, setup_context=_grad_weight_setup)
