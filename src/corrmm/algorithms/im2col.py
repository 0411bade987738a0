"""im2col: unfold patches into a column buffer, then one GEMM per group (caffe's method).

GEMM views, per group, for a chunk of ``n`` images (Cg·R·S is the patch length):

    forward      y[n]   (Kg × P·Q)    = W      (Kg × Cg·R·S) · col[n] (Cg·R·S × P·Q)    batched over n
    grad_input   col[n] (Cg·R·S × P·Q) = Wᵀ     (Cg·R·S × Kg) · dy[n]  (Kg × P·Q)        then col2im
    grad_weight  dW     (Kg × Cg·R·S) = dy     (Kg × n·P·Q)  · col    (n·P·Q × Cg·R·S)  one GEMM

The batch is processed in chunks whose column buffer fits the workspace cap
(:mod:`corrmm.config`). col2im is torch's own (``F.fold``) for 1-D and 2-D
problems; for 3-D it is a gather: every input element sums the column entries
that read it, found through a per-dimension index map, so no two threads ever
add into the same element (no atomics, deterministic).
"""
from __future__ import annotations

from typing import Iterator, Sequence, Tuple

import torch
import torch.nn.functional as F

from .. import config
from ..geometry import ConvGeometry
from . import blas, columns_last
from .base import Algorithm
from .patches import batch_chunks, group_filter, group_image, numel, pad_or_crop, patches


#: below this many output positions per image, the per-image GEMMs are too thin: the forward and
#: input-gradient passes multiply the whole chunk at once (one GEMM per group) instead
BATCHED_GEMM_BELOW = 1024


#: column panels on the CPU: an image whose column buffer exceeds this is built and consumed a few
#: output rows at a time, each panel staying in the L2 cache between its copy and its GEMM
PANEL_BYTES = 1 << 20


def _use_panels(x: torch.Tensor, patch_len: int, out_size) -> bool:
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and patch_len * numel(out_size) * x.element_size() > 2 * PANEL_BYTES)


def _panels(patch_len: int, out_size, element_size: int) -> Iterator[Tuple[int, int]]:
    """(first row, rows) of the panels along the first output dimension."""
    row = numel(out_size[1:])
    rows = max(1, min(out_size[0], PANEL_BYTES // max(1, patch_len * row * element_size)))
    for start in range(0, out_size[0], rows):
        yield start, min(rows, out_size[0] - start)


def _panel_source(x, padding, stride, dilation, kernel, out_size) -> torch.Tensor:
    """The column view (N, G, Cg, *k, *out) of x (N, G, Cg, *in): panels are copied out of it."""
    ndim = len(kernel)
    cols = patches(x, padding, stride, dilation, kernel, out_size)  # (N, G, Cg, *out, *k)
    return cols.permute(0, 1, 2, *range(3 + ndim, 3 + 2 * ndim), *range(3, 3 + ndim))


def _forward_panels(x, w_mat, y, padding, stride, dilation, kernel, out_size) -> None:
    """y (N, G, Kg, P·Q) = w_mat (G, Kg, L) · columns, one cache-sized panel of output rows at a time."""
    batch, groups, cg = x.shape[:3]
    ndim = len(kernel)
    source = _panel_source(x, padding, stride, dilation, kernel, out_size)
    patch_len, row = w_mat.shape[2], numel(out_size[1:])
    buffer = x.new_empty(groups, patch_len, PANEL_BYTES // x.element_size() // patch_len + row)
    for n in range(batch):
        for start, rows in _panels(patch_len, out_size, x.element_size()):
            panel = buffer[:, :, :rows * row]
            panel.view(groups, cg, *kernel, rows, *out_size[1:]).copy_(source[n].narrow(2 + ndim, start, rows))
            for gi in range(groups):
                blas.matmul(w_mat[gi], panel[gi], out=y[n, gi, :, start * row:(start + rows) * row])


def _grad_weight_panels(x, dy, padding, stride, dilation, kernel) -> torch.Tensor:
    """dW (G, Kg, L) = Σ over panels of dy_panel (Kg × rows·Q) · panelᵀ, accumulated in place."""
    batch, groups, cg = x.shape[:3]
    kg, out_size = dy.shape[2], dy.shape[3:]
    ndim = len(kernel)
    source = _panel_source(x, padding, stride, dilation, kernel, out_size)
    patch_len, row = cg * numel(kernel), numel(out_size[1:])
    dy_mat = dy.reshape(batch, groups, kg, -1)
    buffer = x.new_empty(groups, patch_len, PANEL_BYTES // x.element_size() // patch_len + row)
    dw = x.new_zeros(groups, kg, patch_len)
    for n in range(batch):
        for start, rows in _panels(patch_len, out_size, x.element_size()):
            panel = buffer[:, :, :rows * row]
            panel.view(groups, cg, *kernel, rows, *out_size[1:]).copy_(source[n].narrow(2 + ndim, start, rows))
            for gi in range(groups):
                blas.addmm_(dw[gi], dy_mat[n, gi, :, start * row:(start + rows) * row], panel[gi].t())
    return dw


#: from this many channels per group, the column buffer is gathered from a channels-last copy of
#: the image, so every copied run is Cg contiguous elements (not a kernel row of R or S)
CHANNELS_LAST_COLUMNS_FROM = 16


def channels_last_columns(x: torch.Tensor, padding, stride, dilation, kernel, out_size) -> torch.Tensor:
    """x (n, G, Cg, *in) -> (G, n·P·Q, R·S·Cg): the column buffer with the channel index fastest."""
    n, groups, cg = x.shape[:3]
    ndim = len(kernel)
    xl = pad_or_crop(x, padding).permute(0, *range(3, 3 + ndim), 1, 2).contiguous()  # (n, *padded, G, Cg)
    for i, (k, s, d, n_out) in enumerate(zip(kernel, stride, dilation, out_size)):
        xl = xl.unfold(1 + i, (k - 1) * d + 1, s).narrow(1 + i, 0, n_out)  # window appended last
        if d > 1:
            xl = xl[..., ::d]
    # (n, *out, G, Cg, *k) -> (G, n, *out, *k, Cg)
    order = [1 + ndim, 0, *range(1, 1 + ndim), *range(3 + ndim, 3 + 2 * ndim), 2 + ndim]
    return xl.permute(order).reshape(groups, -1, cg * numel(kernel))


def _kernel_last_channels(w: torch.Tensor) -> torch.Tensor:
    """w (G, Kg, Cg, *k) -> (G, R·S·Cg, Kg), matching :func:`channels_last_columns`."""
    groups, kg, cg = w.shape[:3]
    ndim = w.dim() - 3
    return w.permute(0, *range(3, 3 + ndim), 2, 1).reshape(groups, -1, kg)


# ---- grouped primitives (also the building blocks of the swapped algorithm) ----

def forward_grouped(x: torch.Tensor, w: torch.Tensor, padding, stride, dilation, out_size) -> torch.Tensor:
    """x (N, G, Cg, *in), w (G, Kg, Cg, *k) -> y (N, G, Kg, *out_size)."""
    batch, groups, cg = x.shape[:3]
    kernel = w.shape[3:]
    kg = w.shape[1]
    ndim = len(kernel)
    patch_len = cg * numel(kernel)
    w_mat = w.reshape(groups, kg, patch_len)
    y = config.new_output(x, (batch, groups, kg, numel(out_size)))
    if _use_panels(x, patch_len, out_size):
        _forward_panels(x, w_mat, y, padding, stride, dilation, kernel, out_size)
        return y.unflatten(3, tuple(out_size))
    whole_batch = numel(out_size) < BATCHED_GEMM_BELOW
    for start, n in batch_chunks(batch, groups * patch_len * numel(out_size) * x.element_size()):
        if whole_batch and cg >= CHANNELS_LAST_COLUMNS_FROM:
            cols = channels_last_columns(x[start:start + n], padding, stride, dilation, kernel, out_size)
            y_t = blas.matmul(cols, _kernel_last_channels(w))  # (G, n·P·Q, Kg)
            y[start:start + n] = y_t.view(groups, n, -1, kg).permute(1, 0, 3, 2)
            continue
        cols = patches(x[start:start + n], padding, stride, dilation, kernel, out_size)
        if whole_batch:
            # few output positions: one (Kg × Cg·R·S)·(Cg·R·S × n·P·Q) GEMM per group instead of n thin ones
            order = [1, 2, *range(3 + ndim, 3 + 2 * ndim), 0, *range(3, 3 + ndim)]
            cols = cols.permute(order).reshape(groups, patch_len, -1)
            y[start:start + n] = blas.matmul(w_mat, cols).view(groups, kg, n, -1).permute(2, 0, 1, 3)
            continue
        # (n, G, Cg, *out, *k) -> (n, G, Cg, *k, *out): the column buffer, copied once
        order = [0, 1, 2, *range(3 + ndim, 3 + 2 * ndim), *range(3, 3 + ndim)]
        cols = cols.permute(order).reshape(n, groups, patch_len, -1)
        blas.matmul(w_mat, cols, out=y[start:start + n])
    return y.unflatten(3, tuple(out_size))


def _col2im_index(in_size: int, out_size: int, kernel: int, low: int, stride: int, dilation: int,
                  device) -> torch.Tensor:
    """(in_size, kernel) map: the output position that input h reads through tap r, or ``out_size``
    (a zero slot) when no output position does."""
    h = torch.arange(in_size, device=device).unsqueeze(1) + low
    r = torch.arange(kernel, device=device).unsqueeze(0)
    t = h - r * dilation
    p = torch.div(t, stride, rounding_mode="floor")
    valid = (t >= 0) & (t % stride == 0) & (p < out_size)
    return torch.where(valid, p, torch.full_like(p, out_size))


def col2im(col: torch.Tensor, in_size: Sequence[int], padding, stride, dilation) -> torch.Tensor:
    """col (..., *k, *out) -> image (..., *in_size), summing every tap that reads each input element."""
    ndim = len(in_size)
    kernel = col.shape[col.dim() - 2 * ndim: col.dim() - ndim]
    out_size = col.shape[col.dim() - ndim:]
    lead = col.dim() - 2 * ndim
    col = F.pad(col, [0, 1] * ndim)  # a zero slot at the end of every output dimension
    # index tensors broadcast over (*in, *k): dims 0..ndim-1 are input positions, then taps
    index = [slice(None)] * lead
    tap_index, pos_index = [], []
    for i in range(ndim):
        shape_in = [1] * (2 * ndim)
        shape_in[i] = in_size[i]
        shape_in[ndim + i] = kernel[i]
        shape_tap = [1] * (2 * ndim)
        shape_tap[ndim + i] = kernel[i]
        m = _col2im_index(in_size[i], out_size[i], kernel[i], padding[i][0], stride[i], dilation[i], col.device)
        pos_index.append(m.reshape(shape_in))
        tap_index.append(torch.arange(kernel[i], device=col.device).reshape(shape_tap))
    gathered = col[tuple(index + tap_index + pos_index)]  # (..., *in, *k)
    return gathered.sum(dim=tuple(range(gathered.dim() - ndim, gathered.dim())))


def _col2im_fold(col: torch.Tensor, in_size: Sequence[int], padding, stride, dilation) -> torch.Tensor:
    """col (n, C, *k, *out) -> image (n, C, *in_size) for 1-D and 2-D problems through torch's own
    col2im (``F.fold``): the padded image is folded whole, then the padding cropped, so
    asymmetric padding needs nothing special. 1-D problems fold as 2-D ones of height 1."""
    ndim = len(in_size)
    n, channels = col.shape[:2]
    kernel = col.shape[2:2 + ndim]
    padded = [size + low + high for size, (low, high) in zip(in_size, padding)]
    if ndim == 1:
        kernel, padded, stride, dilation = (1, *kernel), (1, *padded), (1, *stride), (1, *dilation)
    image = F.fold(col.reshape(n, channels * numel(kernel), -1), tuple(padded), tuple(kernel),
                   dilation=tuple(dilation), stride=tuple(stride))
    if ndim == 1:
        image = image.squeeze(2)
    crop = tuple(slice(low, low + size) for size, (low, _) in zip(in_size, padding))
    return image[(slice(None), slice(None)) + crop]


def grad_input_grouped(w: torch.Tensor, dy: torch.Tensor, padding, stride, dilation, in_size) -> torch.Tensor:
    """w (G, Kg, Cg, *k), dy (N, G, Kg, *out) -> dx (N, G, Cg, *in_size)."""
    groups, kg, cg = w.shape[:3]
    kernel = w.shape[3:]
    batch = dy.shape[0]
    out_size = dy.shape[3:]
    ndim = len(kernel)
    patch_len = cg * numel(kernel)
    w_t = w.reshape(groups, kg, patch_len).transpose(1, 2)
    dx = config.new_output(dy, (batch, groups, cg, *in_size))
    fold = ndim <= 2 and all(low >= 0 and high >= 0 for low, high in padding)
    # the gather materialises (n, G, Cg, *in, *k) too: count the larger of the two buffers
    per_image = groups * patch_len * max(numel(out_size), numel(in_size)) * dy.element_size()
    for start, n in batch_chunks(batch, per_image):
        if numel(out_size) < BATCHED_GEMM_BELOW:  # one GEMM per group over the chunk's n·P·Q columns
            dy_mat = dy[start:start + n].reshape(n, groups, kg, -1).permute(1, 2, 0, 3).reshape(groups, kg, -1)
            col = blas.matmul(w_t, dy_mat).view(groups, patch_len, n, -1).permute(2, 0, 1, 3)
        else:
            col = blas.matmul(w_t, dy[start:start + n].reshape(n, groups, kg, -1))  # (n, G, Cg·R·S, P·Q)
        if fold:
            image = _col2im_fold(col.reshape(n, groups * cg, *kernel, *out_size), in_size, padding, stride, dilation)
            dx[start:start + n] = image.reshape(n, groups, cg, *in_size)
        else:
            col = col.reshape(n, groups, cg, *kernel, *out_size)
            dx[start:start + n] = col2im(col, in_size, padding, stride, dilation)
    return dx


def grad_weight_grouped(x: torch.Tensor, dy: torch.Tensor, padding, stride, dilation, kernel) -> torch.Tensor:
    """x (N, G, Cg, *in), dy (N, G, Kg, *out) -> dW (G, Kg, Cg, *kernel)."""
    batch, groups, cg = x.shape[:3]
    kg = dy.shape[2]
    out_size = dy.shape[3:]
    ndim = len(kernel)
    patch_len = cg * numel(kernel)
    if _use_panels(x, patch_len, out_size):
        return _grad_weight_panels(x, dy, padding, stride, dilation, kernel).reshape(groups, kg, cg, *kernel)
    total = None
    channels_last = cg >= CHANNELS_LAST_COLUMNS_FROM
    for start, n in batch_chunks(batch, groups * patch_len * numel(out_size) * x.element_size()):
        if channels_last:  # (G, n·P·Q, R·S·Cg)
            cols = channels_last_columns(x[start:start + n], padding, stride, dilation, kernel, out_size)
        else:
            cols = patches(x[start:start + n], padding, stride, dilation, kernel, out_size)
            # (n, G, Cg, *out, *k) -> (G, n, *out, Cg, *k) -> (G, n·P·Q, Cg·R·S)
            order = [1, 0, *range(3, 3 + ndim), 2, *range(3 + ndim, 3 + 2 * ndim)]
            cols = cols.permute(order).reshape(groups, -1, patch_len)
        dy_mat = dy[start:start + n].permute(1, 2, 0, *range(3, 3 + ndim)).reshape(groups, kg, -1)  # (G, Kg, n·P·Q)
        part = blas.matmul(dy_mat, cols)
        if total is None:
            total = part
        else:  # several chunks: accumulate in float32 (float64 stays float64)
            if total.dtype in (torch.float16, torch.bfloat16):
                total = total.float()
            total += part
    if channels_last:  # (G, Kg, *k, Cg) -> (G, Kg, Cg, *k)
        return total.to(x.dtype).view(groups, kg, *kernel, cg).permute(0, 1, 2 + ndim, *range(2, 2 + ndim))
    return total.to(x.dtype).reshape(groups, kg, cg, *kernel)


class Im2col(Algorithm):
    name = "im2col"

    def forward(self, input, weight, g: ConvGeometry):
        if columns_last.serves(g, input.device, input.dtype):
            return columns_last.forward(input, weight, g)
        y = forward_grouped(group_image(input, g.groups), group_filter(weight, g.groups),
                            g.padding, g.stride, g.dilation, g.out_size)
        return y.flatten(1, 2)

    def grad_input(self, weight, grad_output, g: ConvGeometry):
        if columns_last.serves(g, grad_output.device, grad_output.dtype):
            return columns_last.grad_input(weight, grad_output, g)
        dx = grad_input_grouped(group_filter(weight, g.groups), group_image(grad_output, g.groups),
                                g.padding, g.stride, g.dilation, g.in_size)
        return dx.flatten(1, 2)

    def grad_weight(self, input, grad_output, g: ConvGeometry):
        if columns_last.serves(g, input.device, input.dtype):
            return columns_last.grad_weight(input, grad_output, g)
        dw = grad_weight_grouped(group_image(input, g.groups), group_image(grad_output, g.groups),
                                 g.padding, g.stride, g.dilation, g.kernel)
        return dw.flatten(0, 1)


ALGORITHM = Im2col()
