"""Tensor helpers shared by the column-buffer algorithms.

Canonical grouped layouts (``G`` groups, ``Cg = C / G``, ``Kg = K / G``):

    image  (N, G, Cg, *spatial)      an input, or a grad_output with Kg channels
    filter (G, Kg, Cg, *kernel)

Views only: nothing here copies unless it must (padding).
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence, Tuple

import torch
import torch.nn.functional as F

from .. import config


def group_image(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, C, *s) -> (N, G, C/G, *s), a view."""
    return x.unflatten(1, (groups, x.shape[1] // groups))


def group_filter(w: torch.Tensor, groups: int) -> torch.Tensor:
    """(K, Cg, *k) -> (G, K/G, Cg, *k), a view."""
    return w.unflatten(0, (groups, w.shape[0] // groups))


def pad_or_crop(x: torch.Tensor, padding: Sequence[Tuple[int, int]]) -> torch.Tensor:
    """Zero-pad (positive) or crop (negative) the trailing spatial dimensions."""
    ndim = len(padding)
    crop = [slice(None)] * (x.dim() - ndim)
    for low, high in padding:
        crop.append(slice(max(-low, 0), None if high >= 0 else high))
    if any(low < 0 or high < 0 for low, high in padding):
        x = x[tuple(crop)]
    pads = []
    for low, high in reversed(padding):
        pads += [max(low, 0), max(high, 0)]
    if any(pads):
        x = F.pad(x, pads)
    return x


def patches(x: torch.Tensor, padding, stride, dilation, kernel, out_size) -> torch.Tensor:
    """The im2col view of a padded image.

    ``x`` is ``(..., *spatial)``; the result is ``(..., *out_size, *kernel)`` with
    ``result[..., p, q, r, s] = x_padded[..., p * sh + r * dh, q * sw + s * dw]``.
    ``out_size`` may be smaller than the largest possible output (the swapped
    algorithm asks for exactly the extent it needs).
    """
    x = pad_or_crop(x, padding)
    ndim = len(kernel)
    first = x.dim() - ndim
    for i, (k, s, d, n_out) in enumerate(zip(kernel, stride, dilation, out_size)):
        span = (k - 1) * d + 1
        x = x.unfold(first + i, span, s)  # windows of the dilated span, appended last
        x = x.narrow(first + i, 0, n_out)
        if d > 1:
            x = x[..., ::d]
    # unfold appended the kernel dimensions in order after the output dimensions
    return x


def batch_chunks(batch: int, bytes_per_item: int) -> Iterator[Tuple[int, int]]:
    """(start, length) chunks of the batch whose column buffers fit the workspace cap."""
    per_chunk = max(1, config.workspace_limit() // max(1, bytes_per_item))
    for start in range(0, batch, per_chunk):
        yield start, min(per_chunk, batch - start)


def numel(sizes: Sequence[int]) -> int:
    return math.prod(sizes)
