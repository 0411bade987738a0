"""Theano's convolution functions on PyTensor variables.

    conv{1,2,3}d(input, filters, input_shape=None, filter_shape=None, border_mode="valid",
                 subsample=1, filter_flip=True, filter_dilation=1, num_groups=1)
    conv{1,2,3}d_grad_wrt_inputs(output_grad, filters, input_shape, filter_shape=None, ...)
    conv{1,2,3}d_grad_wrt_weights(input, output_grad, filter_shape, input_shape=None, ...)

Layouts: input ``(N, C, *spatial)``, filters ``(K, C // num_groups, *kernel)``,
output ``(N, K, *out)``. ``filter_flip=True`` (the default) is a true
convolution, False a cross-correlation. ``input_shape``/``filter_shape`` are
optional hints (full shapes; ``None`` for an unknown entry) that give the graph
static shapes and are checked when the function runs; for the gradient
functions the shape of the result is required (its spatial entries may be
symbolic).
"""
from __future__ import annotations

import numpy as np

from .ops import CorrMM, CorrMM_gradInputs, CorrMM_gradWeights


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _hint(shape):
    """The int entries of a possibly symbolic shape, None where symbolic."""
    if shape is None:
        return None
    return tuple(int(s) if _is_int(s) else None for s in shape)


def _full_shape(shape, ndim: int, name: str):
    try:
        entries = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of {ndim + 2} entries (N, C, {ndim} spatial), got {shape!r}") \
            from None
    if len(entries) != ndim + 2:
        raise ValueError(f"{name} must have {ndim + 2} entries (N, C, {ndim} spatial), got {shape!r}")
    return entries


def _spatial(entries, name: str):
    if any(s is None for s in entries[2:]):
        raise ValueError(f"{name}: the spatial entries must be known (ints or symbolic scalars), got {entries!r}")
    return list(entries[2:])


def _make(ndim: int):
    one = (1,) * ndim

    def conv(input, filters, input_shape=None, filter_shape=None, border_mode="valid", subsample=one,
             filter_flip=True, filter_dilation=one, num_groups=1):
        op = CorrMM(ndim, border_mode, subsample, filter_dilation, num_groups, filter_flip,
                    _hint(input_shape and _full_shape(input_shape, ndim, "input_shape")),
                    _hint(filter_shape and _full_shape(filter_shape, ndim, "filter_shape")))
        return op(input, filters)

    def grad_wrt_inputs(output_grad, filters, input_shape, filter_shape=None, border_mode="valid",
                        subsample=one, filter_flip=True, filter_dilation=one, num_groups=1):
        entries = _full_shape(input_shape, ndim, "input_shape")
        op = CorrMM_gradInputs(ndim, border_mode, subsample, filter_dilation, num_groups, filter_flip,
                               _hint(entries), _hint(filter_shape and _full_shape(filter_shape, ndim, "filter_shape")))
        return op(filters, output_grad, _spatial(entries, "input_shape"))

    def grad_wrt_weights(input, output_grad, filter_shape, input_shape=None, border_mode="valid", subsample=one,
                         filter_flip=True, filter_dilation=one, num_groups=1):
        entries = _full_shape(filter_shape, ndim, "filter_shape")
        op = CorrMM_gradWeights(ndim, border_mode, subsample, filter_dilation, num_groups, filter_flip,
                                _hint(input_shape and _full_shape(input_shape, ndim, "input_shape")), _hint(entries))
        return op(input, output_grad, _spatial(entries, "filter_shape"))

    conv.__name__ = conv.__qualname__ = f"conv{ndim}d"
    conv.__doc__ = f"""{ndim}-D convolution (``filter_flip=True``) or correlation of ``input`` with ``filters``.

    input: (N, C, {ndim} spatial); filters: (K, C // num_groups, {ndim} kernel). Returns (N, K, {ndim} out).
    border_mode: "valid", "full", "half", an int, {ndim} ints, or {ndim} (low, high) pairs.
    subsample, filter_dilation: an int or {ndim} ints. input_shape/filter_shape: optional full-shape hints.
    """
    grad_wrt_inputs.__name__ = grad_wrt_inputs.__qualname__ = f"conv{ndim}d_grad_wrt_inputs"
    grad_wrt_inputs.__doc__ = f"""Gradient of conv{ndim}d with respect to its input.

    output_grad: (N, K, {ndim} out); filters: (K, C // num_groups, {ndim} kernel);
    input_shape: the input's full shape (its spatial entries ints or symbolic scalars). Returns (N, C, ...).
    """
    grad_wrt_weights.__name__ = grad_wrt_weights.__qualname__ = f"conv{ndim}d_grad_wrt_weights"
    grad_wrt_weights.__doc__ = f"""Gradient of conv{ndim}d with respect to its filters.

    input: (N, C, {ndim} spatial); output_grad: (N, K, {ndim} out);
    filter_shape: the filters' full shape (spatial entries ints or symbolic scalars). Returns (K, C // g, ...).
    """
    return conv, grad_wrt_inputs, grad_wrt_weights


conv1d, conv1d_grad_wrt_inputs, conv1d_grad_wrt_weights = _make(1)
conv2d, conv2d_grad_wrt_inputs, conv2d_grad_wrt_weights = _make(2)
conv3d, conv3d_grad_wrt_inputs, conv3d_grad_wrt_weights = _make(3)
