"""Graph rewrites for the CorrMM ops, registered in PyTensor's rewrite database.

canonicalize (every mode that runs "fast_run" or "fast_compile"):

- ``corrmm_flip_kernel``: an op whose kernel is an explicit spatial flip
  (``w[:, :, ::-1, ::-1]``, Theano's way of writing a convolution) takes the
  unflipped kernel and toggles ``filter_flip`` — both flips disappear;
- ``corrmm_flip_weight_gradient``: the flip of a ``CorrMM_gradWeights`` result
  is the same op with ``filter_flip`` toggled;
- ``corrmm_signal_convolve``: ``pytensor.tensor.signal.convolve1d/convolve2d``
  broadcast over an image axis, a filter axis and a channel axis and summed
  over the channels (a multi-channel convolution written with single-channel
  ones), optionally windowed in its spatial axes, becomes one ``CorrMM`` when
  the static shapes show at least ``SIGNAL_MIN_PAIRS`` image/kernel pairs (an
  unknown batch counts as one image; below that, scipy's loop is as fast). In
  "valid" mode the spatial sizes must be static too (scipy swaps the arguments
  when the kernel is larger). Exclude it by name to keep the signal graph
  (``mode.excluding("corrmm_signal_convolve")``). The gradient graphs PyTensor
  derives from such a convolution materialise the broadcast cotangent and lose
  the static spatial sizes, so they keep their signal convolutions.

specialize ("fast_run"):

- ``corrmm_transposed_weight_gradient``: Theano-era code computed the weight
  gradient as a valid correlation of the batch/channel-transposed image and
  output gradient, transposed back; that chain becomes ``CorrMM_gradWeights``;
- ``corrmm_full_transposed_kernel``: a full-mode correlation or convolution of
  an output gradient with a batch/channel-transposed kernel is the input
  gradient of the valid forward pass; it becomes ``CorrMM_gradInputs``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

import pytensor.tensor as pt
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.rewriting.basic import node_rewriter
from pytensor.tensor.basic import get_underlying_scalar_constant_value
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.exceptions import NotScalarConstantError
from pytensor.tensor.elemwise import DimShuffle
from pytensor.tensor.math import Sum
from pytensor.tensor.rewriting.basic import register_canonicalize, register_specialize
from pytensor.tensor.signal.conv import Convolve1d, Convolve2d
from pytensor.tensor.subtensor import Subtensor, get_idx_list

from .ops import BaseCorrMM, CorrMM, CorrMM_gradInputs, CorrMM_gradWeights

#: fewest (image, kernel) pairs for which one CorrMM beats the Blockwise scipy loop: 1.7-3.9x at 4 pairs over
#: 2 channels, 1.0-1.2x below (README, "PyTensor")
SIGNAL_MIN_PAIRS = 4


# ---- pattern helpers ------------------------------------------------------------------------

def _constant_value(value):
    if value is None:
        return None
    if isinstance(value, Constant):
        return int(value.data)
    if isinstance(value, Variable):
        return "symbolic"
    return int(value)


def spatial_flip_of(var: Variable, ndim: int) -> Optional[Variable]:
    """``x`` when ``var`` is ``x[:, :, ::-1, ...]`` (every spatial axis reversed, the leading two untouched)."""
    node = var.owner
    if node is None or not isinstance(node.op, Subtensor) or var.type.ndim != ndim + 2:
        return None
    entries = get_idx_list(node.inputs, node.op.idx_list)
    if len(entries) != ndim + 2:
        return None
    for axis, entry in enumerate(entries):
        if not isinstance(entry, slice) or entry.start is not None or entry.stop is not None:
            return None
        step = _constant_value(entry.step)
        if step != (-1 if axis >= 2 else None) and not (axis < 2 and step == 1):
            return None
    return node.inputs[0]


def transposed_of(var: Variable, ndim: int) -> Optional[Variable]:
    """``x`` when ``var`` is ``x.dimshuffle(1, 0, 2, ...)`` (the two leading axes swapped)."""
    node = var.owner
    if node is None or not isinstance(node.op, DimShuffle):
        return None
    if tuple(node.op.new_order) != (1, 0, *range(2, ndim + 2)):
        return None
    return node.inputs[0]


def _toggled(op: BaseCorrMM, cls=None, **changes) -> BaseCorrMM:
    props = op._props_dict()
    props["filter_flip"] = not op.filter_flip
    props.update(changes)
    return (cls or type(op))(**props)


def _plain(op: BaseCorrMM, border_mode="valid") -> bool:
    one = (1,) * op.ndim
    return op.border_mode == border_mode and op.subsample == one and op.num_groups == 1


def _spatial_vector(values):
    return pt.stack([pt.cast(v, "int64") for v in values])


# ---- canonicalize ------------------------------------------------------------------------------

@register_canonicalize
@node_rewriter([CorrMM, CorrMM_gradInputs])
def corrmm_flip_kernel(fgraph, node):
    op = node.op
    position = 1 if isinstance(op, CorrMM) else 0
    unflipped = spatial_flip_of(node.inputs[position], op.ndim)
    if unflipped is None:
        return None
    inputs = list(node.inputs)
    inputs[position] = unflipped
    return [_toggled(op)(*inputs)]


@register_canonicalize
@node_rewriter([Subtensor])
def corrmm_flip_weight_gradient(fgraph, node):
    source = node.inputs[0]
    if source.owner is None or not isinstance(source.owner.op, CorrMM_gradWeights):
        return None
    op = source.owner.op
    if spatial_flip_of(node.outputs[0], op.ndim) is None:
        return None
    return [_toggled(op)(*source.owner.inputs)]


# ---- specialize ----------------------------------------------------------------------------------

@register_specialize
@node_rewriter([DimShuffle])
def corrmm_transposed_weight_gradient(fgraph, node):
    source = node.inputs[0]
    if source.owner is None or not isinstance(source.owner.op, CorrMM):
        return None
    op = source.owner.op
    if op.filter_flip or not _plain(op) or transposed_of(node.outputs[0], op.ndim) is None:
        return None
    image = transposed_of(source.owner.inputs[0], op.ndim)
    topgrad = transposed_of(source.owner.inputs[1], op.ndim)
    if image is None or topgrad is None:
        return None
    # corr(x^T, dy^T)[c, k] = sum_n x[n, c] * dy[n, k] = grad_weight(x, dy)[k, c], dilation included
    kernel = op._out_spatial([image.shape[2 + i] for i in range(op.ndim)],
                             [topgrad.shape[2 + i] for i in range(op.ndim)])
    grad = CorrMM_gradWeights(op.ndim, "valid", 1, op.filter_dilation, 1, False)
    return [grad(image, topgrad, _spatial_vector(kernel))]


@register_specialize
@node_rewriter([CorrMM])
def corrmm_full_transposed_kernel(fgraph, node):
    op = node.op
    if not _plain(op, "full"):
        return None
    topgrad, kernel_t = node.inputs
    kern = transposed_of(kernel_t, op.ndim)
    if kern is None:
        return None
    # full conv(dy, W^T) over k is dx of the valid correlation with W; full corr(dy, W^T) is dx of the valid conv
    image = [topgrad.shape[2 + i] + (kern.shape[2 + i] - 1) * d for i, d in enumerate(op.filter_dilation)]
    grad = CorrMM_gradInputs(op.ndim, "valid", 1, op.filter_dilation, 1, not op.filter_flip)
    return [grad(kern, topgrad, _spatial_vector(image))]


def _signal_axes(in1, in2, batch_ndim: int):
    """(image axis, filter axis, channel axis) of a broadcast signal convolution's batch axes, or None.

    The image axis is broadcast in the kernels (size 1 in ``in2``), the filter
    axis in the images, the channel axis in neither; an axis of size 1 on both
    sides takes whichever role is left.
    """
    if batch_ndim != 3:
        return None
    roles = {}
    either = []
    for axis in range(3):
        one1, one2 = in1.type.shape[axis] == 1, in2.type.shape[axis] == 1
        role = {(False, True): "image", (True, False): "filter", (False, False): "channel"}.get((one1, one2))
        if role is None:
            either.append(axis)
        elif role in roles:
            return None
        else:
            roles[role] = axis
    for role in ("image", "filter", "channel"):
        if role not in roles:
            roles[role] = either.pop(0)
    return roles["image"], roles["filter"], roles["channel"]


def _constant_flag(var) -> Optional[bool]:
    """The value of a constant boolean, which Blockwise hands on expanded to the batch axes (or folded)."""
    if isinstance(var, Constant):
        data = np.asarray(var.data)
        return bool(data.flat[0]) if data.size and (data == data.flat[0]).all() else None
    try:
        return bool(get_underlying_scalar_constant_value(var))
    except NotScalarConstantError:
        return None


def _spatial_window(node, batch_ndim: int):
    """The spatial slices of a Subtensor that keeps every batch axis whole, else None."""
    entries = get_idx_list(node.inputs, node.op.idx_list)
    for entry in entries[:batch_ndim]:
        if not (isinstance(entry, slice) and entry.start is None and entry.stop is None
                and _constant_value(entry.step) in (None, 1)):
            return None
    return tuple(entries[batch_ndim:])


@register_canonicalize
@node_rewriter([Sum])
def corrmm_signal_convolve(fgraph, node):
    source = node.inputs[0]
    window = None
    if source.owner is not None and isinstance(source.owner.op, Subtensor):  # Sum(conv[..., window])
        window_node, source = source.owner, source.owner.inputs[0]
    else:
        window_node = None
    if source.owner is None or not isinstance(source.owner.op, Blockwise):
        return None
    core = source.owner.op.core_op
    if not isinstance(core, (Convolve1d, Convolve2d)) or len(source.owner.inputs) != 3:
        return None
    in1, in2, full_mode = source.owner.inputs
    full = _constant_flag(full_mode)
    if full is None:
        return None
    if in1.type.dtype != in2.type.dtype:
        return None
    if in1.type.dtype not in ("float32", "float64") or in1.type.ndim != in2.type.ndim:
        return None
    ndim = core.ndim
    batch_ndim = in1.type.ndim - ndim
    if window_node is not None:
        window = _spatial_window(window_node, batch_ndim)
        if window is None:
            return None
    axes = _signal_axes(in1, in2, batch_ndim)
    if axes is None or node.op.axis is None or tuple(node.op.axis) != (axes[2],):
        return None
    image_axis, filter_axis, channel_axis = axes
    filters, channels = in2.type.shape[filter_axis], in1.type.shape[channel_axis]
    if filters is None or channels is None:
        return None
    images = in1.type.shape[image_axis]  # unknown: a batch, counted as one image
    if filters * channels * (images or 1) < SIGNAL_MIN_PAIRS:
        return None
    spatial1, spatial2 = in1.type.shape[3:], in2.type.shape[3:]
    if not full and not all(n is not None and k is not None and k <= n for n, k in zip(spatial1, spatial2)):
        return None  # scipy's valid mode swaps the arguments when the kernel is larger: only static sizes say
    spatial = list(range(3, 3 + ndim))
    image = in1.dimshuffle(image_axis, channel_axis, *spatial)
    filters = in2.dimshuffle(filter_axis, channel_axis, *spatial)
    out = CorrMM(ndim, "full" if full else "valid", filter_flip=True)(image, filters)  # (N, K, *out)
    kept = [a for a in (0, 1, 2) if a != channel_axis]  # the Sum's remaining batch axes, in order
    order = [0 if a == image_axis else 1 for a in kept]
    result = out.dimshuffle(*order, *range(2, 2 + ndim))
    if window:
        result = result[(slice(None), slice(None)) + window]
    if result.type.dtype != node.outputs[0].type.dtype:
        return None
    return [result]
