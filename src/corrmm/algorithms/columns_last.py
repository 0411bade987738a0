"""im2col on the CPU for small images: channels-last column buffers over the whole batch.

Small layers (a few hundred output positions per image, the digits demo's 8x8
and 4x4 maps) are dominated by fixed costs, so every pass is written as the
fewest full-tensor copies around one GEMM per group through
:func:`corrmm.algorithms.blas.matmul` (oneDNN's in float32):

    padded   (N, *padded, C)            the image, zero-padded and channels-last (one fill, one copy)
    columns  (N·P·Q, G, R·S·Cg)         gathered from ``padded`` through one strided view (one copy)
    W        (G, Kg, R·S·Cg)            the filter with the channel index fastest (a small copy)

    forward      y  (N·P·Q, G, Kg)      = columns_g · W_gᵀ
    grad_weight  dW (G, Kg, R·S·Cg)     = dy_g (Kg × N·P·Q) · columns_g
    grad_input   dcol (N·P·Q, G, R·S·Cg) = dy_g (N·P·Q × Kg) · W_g, then col2im: one in-place add
                                          per tap into the padded channels-last image

Every copied run is ``Cg`` contiguous elements; the col2im adds write disjoint
elements within a tap and run tap after tap, so the result is deterministic.
Results come back as channels-last strided views (the op layer lays them out as
the caller's tensors are).
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Sequence, Tuple

import torch

from .. import config
from ..geometry import ConvGeometry
from . import blas

#: images with fewer output positions than this take this path on the CPU (im2col's whole-batch GEMMs)
SMALL_OUTPUT = 1024

#: from this many channels per group the columns are channels-last (runs of Cg contiguous elements);
#: with fewer, tap-major from the NCHW image (runs of an output row), which copies long runs instead
CHANNELS_LAST_FROM = 16


#: the whole batch's column buffer must fit in this many bytes (float32)
MAX_COLUMN_BYTES = 32 << 20


def serves(g: ConvGeometry, device: torch.device, dtype: torch.dtype) -> bool:
    """True for CPU float32/64 problems with small outputs, no negative padding and a column buffer
    (the larger of the forward's and the stride-1 input gradient's) of at most MAX_COLUMN_BYTES and
    within the workspace limit (:func:`corrmm.set_workspace_limit`)."""
    if not (device.type == "cpu" and dtype in (torch.float32, torch.float64)
            and math.prod(g.out_size) < SMALL_OUTPUT
            and all(low >= 0 and high >= 0 for low, high in g.padding)):
        return False
    patch = math.prod(g.kernel) * max(g.in_channels, g.out_channels)
    positions = g.batch * max(math.prod(g.out_size), math.prod(g.in_size))
    # the outputs here come whole from GEMMs (nothing for config.new_output's poisoning to reveal), but a
    # malformed CORRMM_POISON is reported at first use as on every other path
    config.poisoning()
    return patch * positions * 4 <= min(MAX_COLUMN_BYTES, config.workspace_limit())


def _padded_size(g: ConvGeometry) -> Tuple[int, ...]:
    return tuple(size + low + high for size, (low, high) in zip(g.in_size, g.padding))


def _interior(g: ConvGeometry):
    """The index of the unpadded image inside an (N, *padded, C) buffer."""
    return (slice(None), *(slice(low, low + size) for size, (low, _) in zip(g.in_size, g.padding)))


def padded_channels_last(x: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """x (N, C, *in) -> (N, *padded, C), contiguous, zeros in the padding."""
    x_last = x.movedim(1, -1)
    if not any(low or high for low, high in g.padding):
        return x_last.contiguous()
    padded = x.new_zeros(x.shape[0], *_padded_size(g), x.shape[1])
    padded[_interior(g)] = x_last
    return padded


@functools.lru_cache(maxsize=1024)
def _window_layout(g: ConvGeometry) -> Tuple[tuple, tuple]:
    """Shape and strides of the windows view of a contiguous (N, *padded, C) buffer."""
    padded = _padded_size(g)
    spatial = [g.in_channels * math.prod(padded[i + 1:]) for i in range(g.ndim)]
    cg = g.channels_per_group
    shape = (g.batch, *g.out_size, g.groups, *g.kernel, cg)
    strides = (g.in_channels * math.prod(padded), *(st * s for st, s in zip(spatial, g.stride)), cg,
               *(st * d for st, d in zip(spatial, g.dilation)), 1)
    return shape, strides


def _windows(padded: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """The strided view (N, *out, G, *kernel, Cg) of ``padded`` (N, *padded, C), contiguous:
    window[n, p, g, r, c] = padded[n, p·stride + r·dilation, g·Cg + c]."""
    shape, strides = _window_layout(g)
    return padded.as_strided(shape, strides, padded.storage_offset())


def columns(x: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """x (N, C, *in) -> (N·P·Q, G, R·S·Cg), the column buffer with the channel index fastest."""
    windows = _windows(padded_channels_last(x, g), g)
    return windows.reshape(-1, g.groups, math.prod(g.kernel) * g.channels_per_group)


def filter_rows(w: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """w (K, Cg, *kernel) -> (G, Kg, R·S·Cg), matching :func:`columns`."""
    return w.movedim(1, -1).reshape(g.groups, g.filters_per_group, -1)


def _rows_last(t: torch.Tensor, groups: int) -> torch.Tensor:
    """t (N, C, *s) -> (N·S, G, C/G): channels-last rows (a view when t is channels-last)."""
    return t.movedim(1, -1).reshape(-1, groups, t.shape[1] // groups)


def _as_image(rows: torch.Tensor, batch: int, size: Sequence[int]) -> torch.Tensor:
    """(N·S, ..., C-ish) rows -> the (N, C, *size) channels-last strided view."""
    return rows.reshape(batch, *size, -1).movedim(-1, 1)


def forward(x: torch.Tensor, w: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    if g.channels_per_group < CHANNELS_LAST_FROM:
        return _forward_tap_major(x, w, g)
    return _forward_rows(x, filter_rows(w, g), g)


def _forward_rows(x: torch.Tensor, w_rows: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """The forward pass with the filter already laid out by :func:`filter_rows`."""
    cols = columns(x, g)
    if g.groups == 1:
        y = blas.matmul(cols[:, 0], w_rows[0].t())
    else:
        y = x.new_empty(cols.shape[0], g.groups, g.filters_per_group)
        blas.matmul(cols.transpose(0, 1), w_rows.transpose(1, 2), out=y.transpose(0, 1))
    return _as_image(y, g.batch, g.out_size)


def grad_weight(x: torch.Tensor, dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    if g.channels_per_group < CHANNELS_LAST_FROM:
        return _grad_weight_tap_major(x, dy, g)
    cols = columns(x, g)
    # (K, N·P·Q): the GEMM's reduction runs along contiguous memory in both operands' rows
    dy_rows = dy.transpose(0, 1).reshape(g.groups, g.filters_per_group, -1)
    dw = blas.matmul(dy_rows, cols.transpose(0, 1))  # (G, Kg, R·S·Cg)
    return dw.view(g.out_channels, *g.kernel, g.channels_per_group).movedim(-1, 1)


def grad_input(w: torch.Tensor, dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    if g.channels_per_group < CHANNELS_LAST_FROM:
        return _grad_input_tap_major(w, dy, g)
    swapped = _swapped_geometry(g)
    if swapped is not None:
        return _forward_rows(dy, _rotated_filter_rows(w, g), swapped)
    w_rows = filter_rows(w, g)                        # (G, Kg, R·S·Cg)
    dy_rows = _rows_last(dy, g.groups)                # (N·P·Q, G, Kg)
    if g.groups == 1:
        dcol = blas.matmul(dy_rows[:, 0], w_rows[0])  # (N·P·Q, R·S·Cg)
    else:
        dcol = dy.new_empty(dy_rows.shape[0], g.groups, w_rows.shape[2])
        blas.matmul(dy_rows.transpose(0, 1), w_rows, out=dcol.transpose(0, 1))
    dcol = dcol.view(g.batch, *g.out_size, g.groups, *g.kernel, g.channels_per_group)
    padded = dy.new_zeros(g.batch, *_padded_size(g), g.in_channels)
    windows = _windows(padded, g)  # (N, *out, G, *kernel, Cg), a view of ``padded``
    lead = (slice(None),) * (2 + g.ndim)
    for tap in itertools.product(*(range(k) for k in g.kernel)):
        windows[lead + tap].add_(dcol[lead + tap])
    return padded[_interior(g)].movedim(-1, 1)


# ---- the input gradient at unit stride: a forward correlation of dy with the rotated filter ----

def _swapped_geometry(g: ConvGeometry):
    """The forward problem whose output is this stride-1 problem's input gradient, or None.

    dx = corr(dy, w rotated 180° with K and C exchanged per group), padded by
    d·(k - 1) - low before and d·(k - 1) - high after: no col2im, one column buffer of
    the size of the forward pass's. None when strided or when that padding would be negative.
    """
    if any(s != 1 for s in g.stride):
        return None
    padding = tuple((d * (k - 1) - low, d * (k - 1) - high) for k, d, (low, high)
                    in zip(g.kernel, g.dilation, g.padding))
    if any(low < 0 or high < 0 for low, high in padding):
        return None
    return ConvGeometry(batch=g.batch, in_channels=g.out_channels, out_channels=g.in_channels,
                        in_size=tuple(g.out_size), kernel=tuple(g.kernel), padding=padding, stride=tuple(g.stride),
                        dilation=tuple(g.dilation), groups=g.groups)


def _rotated_filter_rows(w: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """w (K, Cg, *kernel) -> (G, Cg, R·S·Kg): per group, channels and filters exchanged, taps reversed."""
    grouped = w.view(g.groups, g.filters_per_group, g.channels_per_group, *g.kernel)
    rotated = grouped.flip(list(range(3, 3 + g.ndim)))
    # (G, Kg, Cg, *k) -> (G, Cg, *k, Kg)
    return rotated.permute(0, 2, *range(3, 3 + g.ndim), 1).reshape(g.groups, g.channels_per_group, -1)


# ---- few channels per group: tap-major columns (G, Cg·R·S, N·P·Q) from the NCHW image ----

def _tap_major_columns(x: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """x (N, C, *in) -> (G, Cg·R·S, N·P·Q)."""
    ndim = g.ndim
    padded = x
    if any(low or high for low, high in g.padding):
        padded = x.new_zeros(x.shape[0], x.shape[1], *_padded_size(g))
        padded[(slice(None), slice(None), *_interior(g)[1:])] = x
    padded = padded.contiguous()
    spatial = padded.stride()[2:]
    cg = g.channels_per_group
    shape = (g.groups, cg, *g.kernel, padded.shape[0], *g.out_size)
    strides = (cg * padded.stride(1), padded.stride(1), *(st * d for st, d in zip(spatial, g.dilation)),
               padded.stride(0), *(st * s for st, s in zip(spatial, g.stride)))
    windows = padded.as_strided(shape, strides, padded.storage_offset())
    return windows.reshape(g.groups, cg * math.prod(g.kernel), -1)


def _filters_by_group(w: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    return w.reshape(g.groups, g.filters_per_group, -1)  # (G, Kg, Cg·R·S)


def _by_filter(t: torch.Tensor, g: ConvGeometry, size: Sequence[int]) -> torch.Tensor:
    """(G, M, N·S) -> the (N, G·M, *size) view."""
    return t.view(t.shape[0] * t.shape[1], g.batch, *size).transpose(0, 1)


def _forward_tap_major(x: torch.Tensor, w: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    y = blas.matmul(_filters_by_group(w, g), _tap_major_columns(x, g))  # (G, Kg, N·P·Q)
    return _by_filter(y, g, g.out_size)


def _filter_major_grad(dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """dy (N, K, *out) -> (G, Kg, N·P·Q) (one copy)."""
    return dy.transpose(0, 1).reshape(g.groups, g.filters_per_group, -1)


def _grad_weight_tap_major(x: torch.Tensor, dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    dw = blas.matmul(_filter_major_grad(dy, g), _tap_major_columns(x, g).transpose(1, 2))  # (G, Kg, Cg·R·S)
    return dw.view(g.weight_shape)


def _grad_input_tap_major(w: torch.Tensor, dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    dcol = blas.matmul(_filters_by_group(w, g).transpose(1, 2), _filter_major_grad(dy, g))  # (G, Cg·R·S, N·P·Q)
    ndim = g.ndim
    # (G, Cg, *k, N, *out) -> (*k, N, G, Cg, *out): a tap's slice lines up with the image's windows
    dcol = dcol.view(g.groups, g.channels_per_group, *g.kernel, g.batch, *g.out_size)
    dcol = dcol.permute(*range(2, 2 + ndim), 2 + ndim, 0, 1, *range(3 + ndim, 3 + 2 * ndim))
    padded = dy.new_zeros(g.batch, g.in_channels, *_padded_size(g))
    spatial = padded.stride()[2:]
    for tap in itertools.product(*(range(k) for k in g.kernel)):
        offset = sum(t * d * st for t, d, st in zip(tap, g.dilation, spatial))
        window = padded.as_strided((g.batch, g.groups, g.channels_per_group, *g.out_size),
                                   (padded.stride(0), g.channels_per_group * padded.stride(1), padded.stride(1),
                                    *(st * s for st, s in zip(spatial, g.stride))), offset)
        window.add_(dcol[tap])
    return padded[(slice(None), slice(None), *_interior(g)[1:])]
