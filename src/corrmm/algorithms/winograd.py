"""winograd: minimal filtering F(m, 3) for 3-tap kernels, as batched GEMMs over transformed tiles.

For one dimension, F(m, 3) computes m outputs of a 3-tap correlation from an
input tile of ``a = m + 2`` elements with ``a`` multiplications instead of 3·m::

    y = Aᵀ [ (G g) ⊙ (Bᵀ d) ]        d: input tile (a), g: kernel (3), y: outputs (m)

The 2-D form nests it, ``Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A``, written here with
Kronecker products so each transform is one GEMM over all tiles at once. With
channels the element-wise product becomes a sum over input channels, so a
layer is a² independent GEMMs (one per transformed position ξ)::

    V[ξ]  (Cg × T)  = Bᵀ-transform of every input tile       (T: tiles of all images)
    U[ξ]  (Kg × Cg) = G-transform of every filter
    M[ξ]  (Kg × T)  = U[ξ] · V[ξ]                            (a² batched GEMMs, per group)
    Y               = Aᵀ-transform of M, tiles put back in place

The three passes:

* forward: as above, tiles of the padded input stepping by m (overlapping by 2).
* grad_input: the same algorithm on the output gradient, padded by ``2 - low`` /
  ``2 - high`` (the full correlation; negative amounts crop), with every filter
  flipped in space and its input/output channels exchanged.
* grad_weight: the transpose of the forward algorithm. The forward pass is linear
  in ``U``, and its adjoint is ``dU[ξ] = Ŷ[ξ] · V[ξ]ᵀ`` with ``Ŷ = A·dY·Aᵀ`` (each
  m-tile of the output gradient taken to a²), summed over all tiles by the GEMM;
  then ``dW = Gᵀ dU G``. Exact arithmetic gives the weight gradient exactly.

Tiles: F(2, 3) (a = 4, 2.25x fewer multiplications in 2-D) and F(4, 3) (a = 6,
4x fewer). The larger tile's transforms have larger coefficients, so its
rounding error is larger. Measured relative error (Frobenius norm, against
torch's float64 convolution; random normal data; 2-D: 64 channels and filters,
3x3, 28x28, batch 4, padding 1; 1-D: 64 channels, length 200):

    ====  ========  =====  =======  ==========  ===========  =====================
    dims  dtype     tile   forward  grad_input  grad_weight  torch (fwd/gin/gw)
    ====  ========  =====  =======  ==========  ===========  =====================
    2-D   float32   F(2)   2.7e-7   2.7e-7      4.3e-7       2.2e-7 (forward)
    2-D   float32   F(4)   1.7e-6   1.7e-6      2.1e-6
    2-D   float64   F(2)   9.3e-16  5.7e-16     2.4e-15      0 (it is the reference)
    2-D   float64   F(4)   3.2e-15  3.2e-15     5.6e-15
    1-D   float32   F(2)   2.0e-7   2.0e-7      3.3e-7       1.4e-7 / 1.4e-7 / 5.1e-7
    1-D   float32   F(4)   5.1e-7   5.1e-7      6.4e-7
    1-D   float16   F(4)   3.6e-4   3.6e-4      3.6e-4       3.6e-4 / 4.6e-4 / 4.4e-4
    1-D   bfloat16  F(4)   2.9e-3   2.9e-3      2.9e-3       2.9e-3 / 2.9e-3 / 2.9e-3
    ====  ========  =====  =======  ==========  ===========  =====================

The tests hold every algorithm to "at most twice torch's own error in the same
dtype plus 16 units of rounding" (float32: 2·2.2e-7 + 16·2^-24 = 1.4e-6 for the
2-D forward above). In 2-D float32, F(4, 3) exceeds that bound (1.7e-6; other
interpolation points, 0, ±1, 2, -1/2, bring it to 1.2e-6, still too close),
so ``winograd`` uses:

* F(4, 3) for float16 and bfloat16 (they compute in float32 and round once:
  the error is the final rounding's) and for 1-D float32 (5.1e-7 < 1.2e-6);
* F(2, 3) for 2-D float32 and for float64 (whose bound, 16 units of 2^-53,
  F(4) misses on any layer of realistic depth);
* F(2, 3) for any output shorter than 4 positions.

Limits: kernels of 3 taps in every dimension (3x3 in 2-D, 3 in 1-D), stride 1,
dilation 1; any padding and groups. 3-D problems are refused.
"""
from __future__ import annotations

import math
from fractions import Fraction as Q
from functools import lru_cache
from typing import List, Sequence, Tuple

import torch

from .. import config
from ..geometry import ConvGeometry
from . import blas
from .base import Algorithm
from .non_finite import direct_when_non_finite
from .patches import batch_chunks, pad_or_crop

TAPS = 3

# F(m, 3) matrices (Lavin & Gray's points 0, ±1, ±2 and infinity for m = 4), exact fractions
_TRANSFORMS = {
    2: dict(
        BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        G=[[1, 0, 0], [Q(1, 2), Q(1, 2), Q(1, 2)], [Q(1, 2), Q(-1, 2), Q(1, 2)], [0, 0, 1]],
        AT=[[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: dict(
        BT=[[4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1]],
        G=[[Q(1, 4), 0, 0],
           [Q(-1, 6), Q(-1, 6), Q(-1, 6)],
           [Q(-1, 6), Q(1, 6), Q(-1, 6)],
           [Q(1, 24), Q(1, 12), Q(1, 6)],
           [Q(1, 24), Q(-1, 12), Q(1, 6)],
           [0, 0, 1]],
        AT=[[1, 1, 1, 1, 1, 0],
            [0, 1, -1, 2, -2, 0],
            [0, 1, 1, 4, 4, 0],
            [0, 1, -1, 8, -8, 1]],
    ),
}
TILES = tuple(_TRANSFORMS)


def _kron(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    out = mats[0]
    for m in mats[1:]:
        out = torch.kron(out, m)
    return out


@lru_cache(maxsize=None)
def transforms(tile: int, ndim: int, dtype: torch.dtype, device: torch.device) -> Tuple[torch.Tensor, ...]:
    """(Bᵀ, G, Aᵀ) for F(tile, 3) in ``ndim`` dimensions: (a^nd × a^nd), (a^nd × 3^nd), (m^nd × a^nd),
    acting on tiles flattened in row-major order."""
    mats = []
    for name in ("BT", "G", "AT"):
        one_d = torch.tensor([[float(v) for v in row] for row in _TRANSFORMS[tile][name]], dtype=torch.float64)
        mats.append(_kron([one_d] * ndim).to(dtype=dtype, device=device))
    return tuple(mats)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """16-bit inputs are transformed and multiplied in float32 (the transforms' coefficients
    would cost them most of their mantissa); float32 and float64 compute in their own type."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def choose_tile(out_size: Sequence[int], dtype: torch.dtype) -> int:
    """The tile ``winograd`` uses: F(4, 3) where its rounding error stays within the tests'
    bound (16-bit types, which compute in float32 and round once; float32 in 1-D), F(2, 3)
    elsewhere (float32 and float64 in 2-D), and F(2, 3) for outputs shorter than 4."""
    if min(out_size) < 4:
        return 2
    if dtype in (torch.float16, torch.bfloat16):
        return 4
    if dtype == torch.float32 and len(out_size) == 1:
        return 4
    return 2


def _tile_counts(out_size: Sequence[int], tile: int) -> Tuple[int, ...]:
    return tuple(-(-p // tile) for p in out_size)


def _rows(tile: int, name: str) -> List[List[float]]:
    return [[float(v) for v in row] for row in _TRANSFORMS[tile][name]]


def _transform(mat: List[List[float]], src: torch.Tensor, ndim: int, out: torch.Tensor = None) -> torch.Tensor:
    """Apply the 1-D matrix ``mat`` along each of the ``ndim`` leading axes of ``src`` (separably).

    Each output row is a short linear combination of input rows (the matrices are sparse, mostly
    ±1), computed as a few element-wise ops over every tile at once: far cheaper than one dense
    GEMM by the Kronecker matrix, whose inner dimension would be tiny. ``out``, when given,
    receives the last axis's result (it may be a strided view)."""
    for axis in range(ndim):
        shape = list(src.shape)
        shape[axis] = len(mat)
        dst = out if axis == ndim - 1 and out is not None else src.new_empty(shape)
        for r, row in enumerate(mat):
            target = dst.select(axis, r)
            terms = [(c, src.select(axis, j)) for j, c in enumerate(row) if c != 0]
            (c0, first), rest = terms[0], terms[1:]
            if c0 == 1:
                target.copy_(first)
            else:
                torch.mul(first, c0, out=target)
            for c, term in rest:
                if c == 1:
                    target.add_(term)
                elif c == -1:
                    target.sub_(term)
                else:
                    target.add_(term, alpha=c)
        src = dst
    return src


def _padded_channels_last(x: torch.Tensor, padding) -> torch.Tensor:
    """x (N, C, *s) -> (N, *padded, C): zero-padded (negative amounts crop), channels innermost,
    so every tile transform below runs over contiguous channel vectors."""
    ndim = x.dim() - 2
    crop = [slice(None), slice(None)]
    for (low, high), n in zip(padding, x.shape[2:]):
        crop.append(slice(max(-low, 0), n - max(-high, 0)))
    x = x[tuple(crop)]
    sizes = [n + max(low, 0) + max(high, 0) for (low, high), n in zip(padding, x.shape[2:])]
    out = x.new_zeros(x.shape[0], *sizes, x.shape[1])
    inner = tuple(slice(max(low, 0), max(low, 0) + n) for (low, _), n in zip(padding, x.shape[2:]))
    out[(slice(None),) + inner + (slice(None),)] = x.movedim(1, -1)
    return out


def _input_transform(x: torch.Tensor, padding, out_size: Sequence[int], tile: int) -> torch.Tensor:
    """x (N, C, *s) -> V (a^nd, N·T, C): the Bᵀ-transform of every input tile (a = tile + 2,
    stepping by tile) of the padded image, padded at the high end to a whole number of tiles."""
    ndim = len(out_size)
    counts = _tile_counts(out_size, tile)
    # the padded extent is p + 2; the tiles need t·tile + 2 (the extra positions only feed
    # outputs past p, which are cropped, so they may hold anything)
    extended = [(low, high + t * tile - p) for (low, high), p, t in zip(padding, out_size, counts)]
    xp = _padded_channels_last(x, extended)
    a = tile + TAPS - 1
    for i in range(ndim):
        xp = xp.unfold(1 + i, a, tile)  # (N, *t, C, *a), a view
    tiles = xp.permute([2 + ndim + i for i in range(ndim)] + list(range(1 + ndim)) + [1 + ndim])
    v = _transform(_rows(tile, "BT"), tiles, ndim)  # (*a, N, *t, C)
    return v.view(a ** ndim, -1, x.shape[1])


def _output_transform(m: torch.Tensor, batch: int, out_size: Sequence[int], tile: int) -> torch.Tensor:
    """M (a^nd, N·T, K) -> Y (N, K, *out_size), channels_last: the Aᵀ-transform of every tile,
    put in place."""
    ndim = len(out_size)
    a = tile + TAPS - 1
    counts = _tile_counts(out_size, tile)
    channels = m.shape[-1]
    shape = [batch]
    for t in counts:
        shape += [t, tile]
    y = config.new_output(m, shape + [channels])  # (N, t0, m, t1, m, K)
    # its view as (*m, N, *t, K), the layout the transform produces
    target = y.permute([2 + 2 * i for i in range(ndim)] + [0] + [1 + 2 * i for i in range(ndim)] + [1 + 2 * ndim])
    _transform(_rows(tile, "AT"), m.view(*([a] * ndim), batch, *counts, channels), ndim, out=target)
    y = y.view(batch, *[t * tile for t in counts], channels)
    return y[(slice(None),) + tuple(slice(0, p) for p in out_size)].movedim(-1, 1)


def _output_gradient_transform(dy: torch.Tensor, tile: int) -> torch.Tensor:
    """dy (N, K, *P) -> Ŷ (a^nd, N·T, K): every m-tile of dy (zero-extended to whole tiles)
    taken to a^nd by A, the adjoint of the output transform."""
    ndim = dy.dim() - 2
    batch, channels = dy.shape[:2]
    counts = _tile_counts(dy.shape[2:], tile)
    dy = _padded_channels_last(dy, [(0, t * tile - p) for t, p in zip(counts, dy.shape[2:])])
    shape = [batch]
    for t in counts:
        shape += [t, tile]
    tiles = dy.view(shape + [channels]).permute(
        [2 + 2 * i for i in range(ndim)] + [0] + [1 + 2 * i for i in range(ndim)] + [1 + 2 * ndim])
    a_mat = [list(col) for col in zip(*_rows(tile, "AT"))]  # A = (Aᵀ)ᵀ: a rows of m
    a = tile + TAPS - 1
    return _transform(a_mat, tiles, ndim).view(a ** ndim, -1, channels)


def _filter_transform(w: torch.Tensor, tile: int, groups: int) -> torch.Tensor:
    """w (K, Cg, *3) -> U (a^nd, G, Kg, Cg)."""
    ndim = w.dim() - 2
    _, g_mat, _ = transforms(tile, ndim, w.dtype, w.device)
    k, cg = w.shape[:2]
    u = torch.matmul(g_mat, w.reshape(k * cg, -1).t())  # (a^nd, K·Cg)
    return u.view(-1, groups, k // groups, cg)


def _by_group(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(a^nd, rows, G·n) -> (a^nd, G, rows, n), a view."""
    return t.view(t.shape[0], t.shape[1], groups, -1).transpose(1, 2)


def _correlate(x: torch.Tensor, u: torch.Tensor, padding, out_size: Sequence[int], tile: int,
               out: torch.Tensor) -> None:
    """out (N, K, *out_size) = the stride-1 correlation of x (N, C, *s) with the transformed filters u."""
    batch, channels = x.shape[:2]
    a_nd, groups, kg, cg = u.shape
    per_image = a_nd * math.prod(_tile_counts(out_size, tile)) * 2 * (channels + groups * kg) * x.element_size()
    for start, n in batch_chunks(batch, per_image):
        v = _input_transform(x[start:start + n], padding, out_size, tile)     # (a^nd, n·T, C)
        m = blas.matmul(_by_group(v, groups), u.transpose(2, 3))              # (a^nd, G, n·T, Kg)
        m = m.transpose(1, 2).reshape(a_nd, -1, groups * kg)                   # (a^nd, n·T, K)
        out[start:start + n] = _output_transform(m, n, out_size, tile)


class Winograd(Algorithm):
    name = "winograd"

    def not_supported_reasons(self, geometry: ConvGeometry, pass_name: str, device: torch.device,
                              dtype: torch.dtype) -> List[str]:
        reasons = super().not_supported_reasons(geometry, pass_name, device, dtype)
        if geometry.ndim not in (1, 2):
            reasons.append(f"winograd serves 1-D and 2-D problems, got {geometry.ndim}-D")
        if any(k != TAPS for k in geometry.kernel):
            reasons.append(f"winograd needs a kernel of {TAPS} taps in every dimension, got {geometry.kernel}")
        reasons += self.unit_step_reasons(geometry)
        return reasons

    # a tile transform mixes neighbouring values (Inf - Inf = NaN): see algorithms.non_finite
    @direct_when_non_finite
    def forward(self, input, weight, g: ConvGeometry):
        dtype = compute_dtype(input.dtype)
        tile = choose_tile(g.out_size, input.dtype)
        u = _filter_transform(weight.to(dtype), tile, g.groups)
        y = config.new_output(input, g.output_shape, dtype=dtype)
        _correlate(input.to(dtype), u, g.padding, g.out_size, tile, y)
        return y

    @direct_when_non_finite
    def grad_input(self, weight, grad_output, g: ConvGeometry):
        dtype = compute_dtype(grad_output.dtype)
        tile = choose_tile(g.in_size, grad_output.dtype)
        ndim = g.ndim
        # (K, Cg, *3) -> (G, Kg, Cg, *3) -> (G, Cg, Kg, *3) flipped -> (C, Kg, *3)
        w = weight.to(dtype).unflatten(0, (g.groups, g.filters_per_group)).transpose(1, 2)
        w = w.flip(list(range(3, 3 + ndim))).reshape(g.in_channels, g.filters_per_group, *g.kernel)
        u = _filter_transform(w, tile, g.groups)
        full = [(TAPS - 1 - low, TAPS - 1 - high) for low, high in g.padding]
        dx = config.new_output(grad_output, g.input_shape, dtype=dtype)
        _correlate(grad_output.to(dtype), u, full, g.in_size, tile, dx)
        return dx

    @direct_when_non_finite
    def grad_weight(self, input, grad_output, g: ConvGeometry):
        dtype = compute_dtype(input.dtype)
        tile = choose_tile(g.out_size, input.dtype)
        a_nd = (tile + TAPS - 1) ** g.ndim
        _, g_mat, _ = transforms(tile, g.ndim, dtype, input.device)
        groups, kg, cg = g.groups, g.filters_per_group, g.channels_per_group
        tiles_per_image = math.prod(_tile_counts(g.out_size, tile))
        per_image = a_nd * tiles_per_image * 2 * (g.in_channels + g.out_channels) * input.element_size()
        du = None
        for start, n in batch_chunks(g.batch, per_image):
            v = _input_transform(input[start:start + n].to(dtype), g.padding, g.out_size, tile)  # (a, n·T, C)
            dy_hat = _output_gradient_transform(grad_output[start:start + n].to(dtype), tile)       # (a, n·T, K)
            # dU[ξ] = Ŷ[ξ]ᵀ · V[ξ], one GEMM per (ξ, group) over every tile of the chunk
            part = blas.matmul(_by_group(dy_hat, groups).transpose(2, 3), _by_group(v, groups))    # (a, G, Kg, Cg)
            du = part if du is None else du.add_(part)
        dw = torch.matmul(g_mat.t(), du.view(a_nd, -1))  # (3^nd, K·Cg)
        return dw.t().reshape(g.weight_shape)


ALGORITHM = Winograd()
