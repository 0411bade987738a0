"""The public functions: Theano's correlation API on PyTorch tensors.

    corr{1,2,3}d(input, weight, ...)                          cross-correlation
    conv{1,2,3}d(input, weight, ..., filter_flip=True)        true convolution (kernel flipped)
    corr{1,2,3}d_grad_input(weight, grad_output, input_shape, ...)
    corr{1,2,3}d_grad_weight(input, grad_output, kernel_shape, ...)

Shapes: input ``(N, C, *spatial)``, weight ``(K, C // num_groups, *kernel)``,
output ``(N, K, *out)``. Every function takes the same keywords:
``border_mode="valid"`` ("valid", "full", "half", an int, one int per dimension
or one ``(low, high)`` pair per dimension), ``subsample=1``,
``filter_dilation=1``, ``num_groups=1`` and ``algo="auto"`` (see
:func:`corrmm.algorithms`). All are differentiable in every tensor argument,
to any order.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch

from . import ops
from .geometry import ConvGeometry, as_int, check_grad_output_shape, make_geometry
from .ops import check_algo, check_tensors

_KEYWORDS_DOC = """
    border_mode: "valid" | "full" | "half" | int | tuple of ints | tuple of (low, high) pairs.
    subsample: stride, an int or one per spatial dimension (>= 1).
    filter_dilation: an int or one per spatial dimension (>= 1).
    num_groups: divides both the input channels and the number of filters.
    algo: an algorithm name from ``corrmm.algorithms()`` or "auto"."""


_GEOMETRIES: Dict[tuple, ConvGeometry] = {}
_MAX_GEOMETRIES = 4096


def _frozen(value):
    """A hashable stand-in for an argument that keeps its type (so 2.0 and True never pass for 2 and 1)."""
    if isinstance(value, (list, tuple)):
        return type(value), tuple(_frozen(v) for v in value)
    if not isinstance(value, (int, float, str)):
        try:
            return int, as_int(value, "")  # np.int64(2) or a 0-d integer tensor: the key of 2
        except TypeError:
            pass
    return type(value), value


def _geometry(input_shape, weight_shape, border_mode, subsample, filter_dilation, num_groups) -> ConvGeometry:
    """``make_geometry``, remembered per argument signature: a repeated call skips the validation."""
    try:
        key = (tuple(input_shape), tuple(weight_shape), _frozen(border_mode), _frozen(subsample),
               _frozen(filter_dilation), _frozen(num_groups))
        geometry = _GEOMETRIES.get(key)
    except TypeError:  # an unhashable argument: validate every time (and let make_geometry say what is wrong)
        key = geometry = None
    if geometry is None:
        geometry = make_geometry(input_shape, weight_shape, border_mode, subsample, filter_dilation, num_groups)
        if key is not None:
            if len(_GEOMETRIES) >= _MAX_GEOMETRIES:
                _GEOMETRIES.clear()
            _GEOMETRIES[key] = geometry
    return geometry


def _op_args(g: ConvGeometry, algo: str):
    return list(g.pad_low), list(g.pad_high), list(g.stride), list(g.dilation), g.groups, algo


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled``, False on devices autocast does not know (meta)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # "unknown device type for autocast"
        return False


def _autocast(*tensors):
    """Under ``torch.autocast``, compute in the autocast dtype, as torch's convolutions do."""
    first = tensors[0]
    if not isinstance(first, torch.Tensor) or not autocast_enabled(first.device.type):
        return tensors
    dtype = torch.get_autocast_dtype(first.device.type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)


def _check_rank(name: str, ndim: int, **tensors: torch.Tensor) -> None:
    for arg, t in tensors.items():
        if t.dim() != ndim + 2:
            raise ValueError(f"{name}: {arg} must have {ndim + 2} dimensions (N, C, {ndim} spatial), "
                             f"got shape {tuple(t.shape)}")


def _spatial_shape(name: str, arg: str, shape: Sequence[int], full: Sequence[int], ndim: int):
    """Accept the spatial shape alone, or a full shape whose leading two entries must agree."""
    if isinstance(shape, str) or not hasattr(shape, "__iter__"):
        raise TypeError(f"{name}: {arg} must be a sequence of ints, got {shape!r}")
    shape = tuple(as_int(s, f"{arg}[{dim}]") for dim, s in enumerate(shape))
    if len(shape) == ndim + 2:
        if shape[:2] != tuple(full[:2]):
            raise ValueError(f"{name}: {arg} {shape} disagrees with the tensors, which imply {tuple(full[:2])} "
                             f"for its first two entries")
        return shape[2:]
    if len(shape) != ndim:
        raise ValueError(f"{name}: {arg} must have {ndim} entries (or {ndim + 2}), got {shape}")
    return shape


def _make_corr(ndim: int):
    name = f"corr{ndim}d"

    def corr(input, weight, border_mode="valid", subsample=1, filter_dilation=1, num_groups=1, algo="auto"):
        input, weight = _autocast(input, weight)
        check_tensors(name, input=input, weight=weight)
        _check_rank(name, ndim, input=input, weight=weight)
        check_algo(algo)
        g = _geometry(input.shape, weight.shape, border_mode, subsample, filter_dilation, num_groups)
        return ops.call_corr(input, weight, *_op_args(g, algo))

    corr.__doc__ = f"""Cross-correlation (what torch.nn.functional.conv{ndim}d computes), {ndim}-D.

    input: (N, C, *in); weight: (K, C // num_groups, *kernel).
    Returns (N, K, *out), out = (in + low + high - ((k - 1) * d + 1)) // subsample + 1,
    in the input's memory format.
{_KEYWORDS_DOC}
    """
    corr.__name__ = corr.__qualname__ = name
    return corr


def _make_conv(ndim: int, corr):
    name = f"conv{ndim}d"

    def conv(input, weight, border_mode="valid", subsample=1, filter_dilation=1, num_groups=1, algo="auto",
             filter_flip=True):
        check_tensors(name, input=input, weight=weight)
        _check_rank(name, ndim, input=input, weight=weight)
        if filter_flip:
            weight = weight.flip(list(range(2, 2 + ndim)))
        return corr(input, weight, border_mode, subsample, filter_dilation, num_groups, algo)

    conv.__doc__ = f"""Convolution, {ndim}-D: corr{ndim}d with the kernel flipped in every spatial dimension.

    input: (N, C, *in); weight: (K, C // num_groups, *kernel). Returns (N, K, *out).
{_KEYWORDS_DOC}
    filter_flip: flip the kernel first (default True, a true convolution); False gives corr{ndim}d.
    """
    conv.__name__ = conv.__qualname__ = name
    return conv


def _make_grad_input(ndim: int):
    name = f"corr{ndim}d_grad_input"

    def grad_input(weight, grad_output, input_shape, border_mode="valid", subsample=1, filter_dilation=1,
                   num_groups=1, algo="auto"):
        weight, grad_output = _autocast(weight, grad_output)
        check_tensors(name, weight=weight, grad_output=grad_output)
        _check_rank(name, ndim, weight=weight, grad_output=grad_output)
        check_algo(algo)
        full = (grad_output.shape[0], weight.shape[1] * num_groups if isinstance(num_groups, int) else -1)
        spatial = _spatial_shape(name, "input_shape", input_shape, full, ndim)
        g = _geometry((*full, *spatial), weight.shape, border_mode, subsample, filter_dilation, num_groups)
        check_grad_output_shape(g, grad_output.shape, "input_shape")
        return ops.call_corr_grad_input(weight, grad_output, list(spatial), *_op_args(g, algo))

    grad_input.__doc__ = f"""Gradient of corr{ndim}d with respect to its input.

    weight: (K, C // num_groups, *kernel); grad_output: (N, K, *out);
    input_shape: the input's spatial shape (or its full shape), which must give ``out``.
    Returns (N, C, *input_shape) in grad_output's memory format.
{_KEYWORDS_DOC}
    """
    grad_input.__name__ = grad_input.__qualname__ = name
    return grad_input


def _make_grad_weight(ndim: int):
    name = f"corr{ndim}d_grad_weight"

    def grad_weight(input, grad_output, kernel_shape, border_mode="valid", subsample=1, filter_dilation=1,
                    num_groups=1, algo="auto"):
        input, grad_output = _autocast(input, grad_output)
        check_tensors(name, input=input, grad_output=grad_output)
        _check_rank(name, ndim, input=input, grad_output=grad_output)
        check_algo(algo)
        if not isinstance(num_groups, int) or num_groups < 1 or input.shape[1] % num_groups:
            raise ValueError(f"{name}: num_groups={num_groups!r} must be an int >= 1 dividing the input "
                             f"channels ({input.shape[1]})")
        full = (grad_output.shape[1], input.shape[1] // num_groups)
        spatial = _spatial_shape(name, "kernel_shape", kernel_shape, full, ndim)
        g = _geometry(input.shape, (*full, *spatial), border_mode, subsample, filter_dilation, num_groups)
        check_grad_output_shape(g, grad_output.shape, "kernel_shape")
        return ops.call_corr_grad_weight(input, grad_output, list(spatial), *_op_args(g, algo))

    grad_weight.__doc__ = f"""Gradient of corr{ndim}d with respect to its weight.

    input: (N, C, *in); grad_output: (N, K, *out);
    kernel_shape: the kernel's spatial shape (or the weight's full shape), which must give ``out``.
    Returns (K, C // num_groups, *kernel_shape) in the input's memory format.
{_KEYWORDS_DOC}
    """
    grad_weight.__name__ = grad_weight.__qualname__ = name
    return grad_weight


corr1d, corr2d, corr3d = (_make_corr(n) for n in (1, 2, 3))
conv1d, conv2d, conv3d = (_make_conv(n, c) for n, c in zip((1, 2, 3), (corr1d, corr2d, corr3d)))
corr1d_grad_input, corr2d_grad_input, corr3d_grad_input = (_make_grad_input(n) for n in (1, 2, 3))
corr1d_grad_weight, corr2d_grad_weight, corr3d_grad_weight = (_make_grad_weight(n) for n in (1, 2, 3))

__all__ = [
    "corr1d", "corr2d", "corr3d", "conv1d", "conv2d", "conv3d",
    "corr1d_grad_input", "corr2d_grad_input", "corr3d_grad_input",
    "corr1d_grad_weight", "corr2d_grad_weight", "corr3d_grad_weight",
]
