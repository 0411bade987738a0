"""swapped: each pass computed by another pass's GEMM on batch/channel-transposed tensors.

Output position p of a correlation reads input position ``p * s + r * d - low``
through tap r. The expression is symmetric in (p, s) and (r, d), so the roles of
"output positions" and "kernel taps" can trade places, with stride and dilation
exchanged, while batch and channels trade places too:

    forward      y[n, k, p]  = Σ_{c, r} x[n, c, p·s + r·d] · w[k, c, r]
                 is the weight gradient of a problem whose batch is c, whose
                 channels are n, whose "grad_output" is w (spatial extent R) and
                 whose "kernel" is P:  y = grad_weight(xᵀ, wᵀ)ᵀ  (stride d, dilation s).
    grad_weight  dw[k, c, r] = Σ_{n, p} x[n, c, p·s + r·d] · dy[n, k, p]
                 is the forward pass of that problem: dw = forward(xᵀ, dyᵀ)ᵀ.
    grad_input   dx = forward(dy, flipped wᵀ) with padding (k - 1)·d - low: the
                 "full" correlation of the output gradient (the exchange Theano
                 made between full-mode correlation and its input gradient);
                 with stride > 1 the output gradient gets s - 1 zeros between
                 its elements first.

Why it pays: im2col's forward multiplies image by image, each product
``(Kg × Cg·R·S)·(Cg·R·S × P·Q)`` thin when P·Q is small; the swapped forward is
one ``(Kg × Cg·R·S)·(Cg·R·S × N·P·Q)`` product over the whole batch. For the
input gradient the column buffer is built from dy (N·K·R·S·H·W elements)
instead of im2col's (N·C·R·S·P·Q) and needs no col2im.
"""
from __future__ import annotations

import torch

from ..geometry import ConvGeometry
from .base import Algorithm
from .im2col import forward_grouped, grad_weight_grouped
from .patches import group_filter, group_image


def _spatial(start: int, ndim: int):
    return list(range(start, start + ndim))


def insert_zeros(t: torch.Tensor, stride, ndim: int) -> torch.Tensor:
    """Spread the trailing ``ndim`` dimensions by ``stride``, zeros in between."""
    if all(s == 1 for s in stride):
        return t
    lead = t.shape[:t.dim() - ndim]
    size = [(n - 1) * s + 1 for n, s in zip(t.shape[t.dim() - ndim:], stride)]
    out = t.new_zeros((*lead, *size))
    out[(Ellipsis, *[slice(None, None, s) for s in stride])] = t
    return out


class Swapped(Algorithm):
    name = "swapped"

    def forward(self, input, weight, g: ConvGeometry):
        nd = g.ndim
        x = group_image(input, g.groups).permute(2, 1, 0, *_spatial(3, nd))   # (Cg, G, N, *in)
        w = group_filter(weight, g.groups).permute(2, 0, 1, *_spatial(3, nd))  # (Cg, G, Kg, *k)
        y = grad_weight_grouped(x, w, g.padding, g.dilation, g.stride, g.out_size)  # (G, Kg, N, *out)
        return y.permute(2, 0, 1, *_spatial(3, nd)).flatten(1, 2)

    def grad_weight(self, input, grad_output, g: ConvGeometry):
        nd = g.ndim
        x = group_image(input, g.groups).permute(2, 1, 0, *_spatial(3, nd))        # (Cg, G, N, *in)
        dy = group_image(grad_output, g.groups).permute(1, 2, 0, *_spatial(3, nd))  # (G, Kg, N, *out)
        dw = forward_grouped(x, dy, g.padding, g.dilation, g.stride, g.kernel)    # (Cg, G, Kg, *k)
        return dw.permute(1, 2, 0, *_spatial(3, nd)).flatten(0, 1)

    def grad_input(self, weight, grad_output, g: ConvGeometry):
        nd = g.ndim
        dy = insert_zeros(grad_output, g.stride, nd)
        w = group_filter(weight, g.groups).flip(_spatial(3, nd)).transpose(1, 2)  # (G, Cg, Kg, *k)
        padding = []
        for i in range(nd):
            reach = (g.kernel[i] - 1) * g.dilation[i]
            low = reach - g.padding[i][0]
            # the last input position reads up to dy index in_size - 1 + low_orig
            high = g.in_size[i] - 1 + g.padding[i][0] - (dy.shape[2 + i] - 1)
            padding.append((low, high))
        dx = forward_grouped(group_image(dy, g.groups), w, padding, (1,) * nd, g.dilation, g.in_size)
        return dx.flatten(1, 2)


ALGORITHM = Swapped()
