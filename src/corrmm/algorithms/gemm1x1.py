"""gemm1x1: a 1x1, stride-1, undilated, unpadded correlation is a plain GEMM.

With a kernel of one tap, output position p reads input position p only, so
every pass is a matrix product over channels with no patches and no column
buffer. The GEMM views use the tensors in place (S = H·W, or the product of the
spatial extents in 1-D and 3-D; G groups, Cg = C/G, Kg = K/G):

    NCHW (channels outermost, spatial positions contiguous), per group:
        forward      y[n]  (Kg × S)  = W   (Kg × Cg) · x[n]  (Cg × S)     batched over n
        grad_input   dx[n] (Cg × S)  = Wᵀ  (Cg × Kg) · dy[n] (Kg × S)     batched over n
        grad_weight  dW    (Kg × Cg) = Σₙ dy[n] (Kg × S) · x[n]ᵀ (S × Cg)  batched, summed over n

    channels_last (channels innermost), per group:
        forward      y  (N·S × Kg) = x  (N·S × Cg) · Wᵀ (Cg × Kg)
        grad_input   dx (N·S × Cg) = dy (N·S × Kg) · W  (Kg × Cg)
        grad_weight  dW (Kg × Cg)  = dyᵀ (Kg × N·S) · x (N·S × Cg)          one GEMM

In NCHW the weight gradient contracts over (n, s), which is not one matrix
dimension of an NCHW tensor; rather than copying both operands into a
(·, N·S) layout it takes one product per image and sums them, in float32 for
half types, over batch chunks whose (Kg × Cg) partial products fit the
workspace cap. Channels_last results come back channels_last (strided views of
an (N, *spatial, K) buffer), so the op layer has nothing to copy.

Copies: none of the images. With groups > 1 in NCHW the weight (K × Cg) is
broadcast over the batch by ``torch.matmul``; that is the only copy, of a
tensor much smaller than the images. An input that is neither NCHW- nor
channels_last-contiguous is made NCHW-contiguous first.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from .. import config
from ..geometry import ConvGeometry
from . import blas
from .base import Algorithm
from .patches import batch_chunks


def _rows(t: torch.Tensor) -> Optional[torch.Tensor]:
    """(N, C, *s) -> (N·S, C) as a view (channels innermost), or None when that is not a view."""
    channels_last = t.permute(0, *range(2, t.dim()), 1)
    try:
        return channels_last.view(-1, t.shape[1])
    except RuntimeError:
        return None


def _is_channels_last(t: torch.Tensor) -> bool:
    """Channels innermost and not plain contiguous (a tensor that is both, e.g. with one
    channel or one spatial position, takes the NCHW path, as the op layer's format rule does)."""
    return not t.is_contiguous() and _rows(t) is not None


def apply_channel_matrix(t: torch.Tensor, mat: torch.Tensor, groups: int) -> torch.Tensor:
    """out[n, g·Mo + i, s] = Σⱼ mat[g, i, j] · t[n, g·Mi + j, s].

    ``t`` is (N, G·Mi, *s), ``mat`` (G, Mo, Mi); returns (N, G·Mo, *s), channels_last
    when ``t`` is. The forward pass is this with ``mat = W``, the input gradient with
    ``mat = Wᵀ``.
    """
    batch, spatial = t.shape[0], t.shape[2:]
    mo, mi = mat.shape[1], mat.shape[2]
    if _is_channels_last(t):
        rows = _rows(t)  # (N·S, G·Mi)
        out = config.new_output(t, (batch, *spatial, groups * mo))
        out_rows = out.view(-1, groups * mo)
        if groups == 1:
            blas.matmul(rows, mat[0].t(), out=out_rows)
        else:  # batch over groups: (G, N·S, Mi) · (G, Mi, Mo), written straight into the strided output
            blas.matmul(rows.view(-1, groups, mi).transpose(0, 1), mat.transpose(1, 2),
                      out=out_rows.view(-1, groups, mo).transpose(0, 1))
        return out.permute(0, out.dim() - 1, *range(1, out.dim() - 1))
    cols = t.reshape(batch, groups * mi, -1)  # a view unless t is arbitrarily strided
    out = config.new_output(t, (batch, groups * mo, cols.shape[2]))
    if groups == 1:
        # an expanded (stride-0) weight: bmm reads it in place for every image
        blas.matmul(mat[0].expand(batch, mo, mi), cols, out=out)
    else:
        blas.matmul(mat, cols.view(batch, groups, mi, -1), out=out.view(batch, groups, mo, -1))
    return out.view(batch, groups * mo, *spatial)


def channel_correlation(x: torch.Tensor, dy: torch.Tensor, groups: int) -> torch.Tensor:
    """dW[g·Kg + k, c] = Σ_{n, s} dy[n, g·Kg + k, s] · x[n, g·Cg + c, s]; returns (G, Kg, Cg)."""
    batch, channels = x.shape[:2]
    filters = dy.shape[1]
    cg, kg = channels // groups, filters // groups
    x_rows, dy_rows = _rows(x), _rows(dy)
    if x_rows is not None and dy_rows is not None and (_is_channels_last(x) or _is_channels_last(dy)):
        # one GEMM over all N·S positions: (G, Kg, N·S) · (G, N·S, Cg)
        if groups == 1:
            return blas.matmul(dy_rows.t(), x_rows).unsqueeze(0)
        return blas.matmul(dy_rows.view(-1, groups, kg).permute(1, 2, 0), x_rows.view(-1, groups, cg).transpose(0, 1))
    x4 = x.reshape(batch, groups, cg, -1)
    dy4 = dy.reshape(batch, groups, kg, -1)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    total = None
    for start, n in batch_chunks(batch, groups * kg * cg * x.element_size()):
        part = blas.matmul(dy4[start:start + n], x4[start:start + n].transpose(-1, -2))  # (n, G, Kg, Cg)
        part = part.sum(0, dtype=acc_dtype)
        total = part if total is None else total.add_(part)
    return total


class Gemm1x1(Algorithm):
    name = "gemm1x1"

    def not_supported_reasons(self, geometry: ConvGeometry, pass_name: str, device: torch.device,
                              dtype: torch.dtype) -> List[str]:
        reasons = super().not_supported_reasons(geometry, pass_name, device, dtype)
        g = geometry
        if any(k != 1 for k in g.kernel):
            reasons.append(f"gemm1x1 needs a 1x1 kernel, got kernel {g.kernel}")
        reasons += self.unit_step_reasons(g)
        if any(low or high for low, high in g.padding):
            reasons.append(f"gemm1x1 needs no padding, got padding {g.padding}")
        return reasons

    def forward(self, input, weight, g: ConvGeometry):
        mat = weight.reshape(g.groups, g.filters_per_group, g.channels_per_group)  # (G, Kg, Cg)
        return apply_channel_matrix(input, mat, g.groups)

    def grad_input(self, weight, grad_output, g: ConvGeometry):
        mat = weight.reshape(g.groups, g.filters_per_group, g.channels_per_group).transpose(1, 2)  # (G, Cg, Kg)
        return apply_channel_matrix(grad_output, mat, g.groups)

    def grad_weight(self, input, grad_output, g: ConvGeometry):
        dw = channel_correlation(input, grad_output, g.groups)  # (G, Kg, Cg)
        return dw.to(input.dtype).reshape(g.weight_shape)


ALGORITHM = Gemm1x1()
