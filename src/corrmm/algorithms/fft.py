"""fft: correlation as a GEMM per frequency (fbfft's idea); stride 1 and dilation 1 only.

One spatial dimension is written out below; every rule applies per dimension
and the transforms are ``rfftn`` over all spatial dimensions at once.

Notation. The input x has extent H and padding (low, high); Hp = H + low + high;
the kernel w has extent R; the output extent is P = Hp - R + 1. All transforms
have one common length L ≥ Hp, the next integer with no prime factor above 7
(cheap for cuFFT and pocketfft). ``x_L`` is x zero-extended to length L, and
indices are taken mod L.

Forward. y[p] = Σ_r x̃[p + r - low] · w[r] for p in [0, P), with x̃ the input
zero-extended to all integers. Place the kernel circularly at offset -low:

    w'[(r - low) mod L] = w[r]  (zero elsewhere),    so  y[p] = Σ_m x_L[(p + m) mod L] · w'[m].

This circular correlation equals the linear one for p in [0, P): the indices
read, j = p + r - low, span [-low, H + high) — Hp ≤ L consecutive integers, so
no two alias — and the padding indices land in [H, L), where x_L is zero
(negative j at j + L ≥ L - low ≥ H). So no padded copy of the input is made:
the padding lives in the kernel's offset. With the DFT, circular correlation is
a product with the conjugate:

    Y[f] = X_L[f] · conj(W'[f]),    y = irfft(Y)[0:P].

Channels, groups and the batch make it a complex GEMM per frequency f:
Y[f] (N × Kg) = X[f] (N × Cg) · conj(W'[f]) (Cg × Kg), per group, batched as
(G, F, N, Cg) · (G, F, Cg, Kg) where F is the number of rfft frequencies.

Input gradient. The forward map is exactly crop_P ∘ corr_L(·, w') ∘ extend_{H→L}.
Its adjoint is extend_{P→L} ∘ conv_L(·, w') ∘ crop_H, because
⟨corr_L(x, w'), ȳ⟩ = Σ_p Σ_m x[p + m] w'[m] ȳ[p] = Σ_j x[j] Σ_p ȳ[p] w'[j - p]
= ⟨x, conv_L(ȳ, w')⟩ (circular convolution). In frequency, no conjugate:

    dX[f] = dY_L[f] · W'[f],    dx = irfft(dX)[0:H];
    per frequency (G, F, N, Kg) · (G, F, Kg, Cg).

Weight gradient. The same pairing read for w':
⟨corr_L(x, w'), ȳ⟩ = Σ_m w'[m] Σ_p ȳ[p] x[p + m] = ⟨w', corr_L(x, ȳ_L)⟩, so the
gradient of w' is the circular correlation of x by ȳ, and w[r] = w'[(r - low) mod L]
gives dw[r] = c[(r - low) mod L] — a roll by +low, then the first R entries:

    C[f] = X_L[f] · conj(dY_L[f]),    dw = roll(irfft(C), low)[0:R];
    per frequency (G, F, Kg, N) · (G, F, N, Cg), summed over batch chunks in the
    frequency domain, so one inverse transform serves the whole batch.

Precision: float16/bfloat16 are computed in float32 (complex64) and cast back
(cuFFT's half transforms need power-of-two sizes, and half spectra lose too
much); float32 in complex64; float64 in complex128.

Non-finite values: a frequency-domain product spreads one NaN or Inf over the whole
output plane (every frequency mixes every position), so each pass runs im2col
instead when an operand holds one (:mod:`corrmm.algorithms.non_finite`).

Memory: the batch is processed in chunks whose spectra and transposed copies fit
the workspace cap (:func:`corrmm.config.workspace_limit`); the weight's spectrum
(K·Cg·F complex values) is computed once per call.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from .. import config
from ..geometry import ConvGeometry
from .base import Algorithm
from .non_finite import direct_when_non_finite
from .patches import batch_chunks


def fast_fft_size(n: int) -> int:
    """The smallest m >= n whose prime factors are all in {2, 3, 5, 7}."""
    m = max(1, n)
    while True:
        rest = m
        for p in (2, 3, 5, 7):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


def fft_sizes(geometry: ConvGeometry) -> Tuple[int, ...]:
    """Common transform lengths: at least the padded input extent in every dimension."""
    return tuple(fast_fft_size(n + low + high) for n, (low, high) in zip(geometry.in_size, geometry.padding))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _spatial_dims(ndim: int) -> Tuple[int, ...]:
    return tuple(range(2, 2 + ndim))


def _crop(t: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """The leading ``sizes`` entries of the trailing spatial dimensions (a view)."""
    lead = t.dim() - len(sizes)
    return t[(slice(None),) * lead + tuple(slice(0, n) for n in sizes)]


def _spectrum(t: torch.Tensor, lengths: Sequence[int], groups: int) -> torch.Tensor:
    """(n, G·M, *s) real -> (G, F, n, M) complex: its rfft, zero-extended to ``lengths``,
    laid out for a GEMM per frequency."""
    ndim = len(lengths)
    spec = torch.fft.rfftn(t.to(_compute_dtype(t.dtype)), s=tuple(lengths), dim=_spatial_dims(ndim))
    n, channels = spec.shape[:2]
    return spec.reshape(n, groups, channels // groups, -1).permute(1, 3, 0, 2)


def _inverse(spec: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """(G, F, n, M) complex -> (n, G·M, *lengths) real: the inverse of :func:`_spectrum`."""
    groups, _, n, m = spec.shape
    ndim = len(lengths)
    half = (*lengths[:-1], lengths[-1] // 2 + 1)
    spec = spec.permute(2, 0, 3, 1).reshape(n, groups * m, *half)
    return torch.fft.irfftn(spec, s=tuple(lengths), dim=_spatial_dims(ndim))


def _kernel_spectrum(weight: torch.Tensor, g: ConvGeometry, lengths: Sequence[int]) -> torch.Tensor:
    """W'[f] as (G, F, Kg, Cg): the kernel zero-extended to ``lengths`` and rolled by -low
    (w'[(r - low) mod L] = w[r]), which puts the input padding into the kernel."""
    ndim = g.ndim
    w = weight.to(_compute_dtype(weight.dtype))
    pads = []
    for k, length in zip(reversed(g.kernel), reversed(lengths)):
        pads += [0, length - k]
    w = F.pad(w, pads)
    if any(g.pad_low):
        w = torch.roll(w, shifts=[-low for low in g.pad_low], dims=_spatial_dims(ndim))
    spec = torch.fft.rfftn(w, dim=_spatial_dims(ndim))  # (K, Cg, *half)
    return spec.reshape(g.groups, g.filters_per_group, g.channels_per_group, -1).permute(0, 3, 1, 2)


def _bytes_per_image(g: ConvGeometry, lengths: Sequence[int], dtype: torch.dtype) -> int:
    """Workspace of one image: its real transform input/output, its spectra before and
    after the GEMM, and the transposed copies the GEMM and the inverse transform make."""
    real = torch.finfo(_compute_dtype(dtype)).bits // 8
    freqs = math.prod(lengths[:-1]) * (lengths[-1] // 2 + 1)
    channels = g.in_channels + g.out_channels
    return channels * (2 * freqs * 2 * real + math.prod(lengths) * real)


class FFT(Algorithm):
    name = "fft"

    def not_supported_reasons(self, geometry: ConvGeometry, pass_name: str, device: torch.device,
                              dtype: torch.dtype) -> List[str]:
        reasons = super().not_supported_reasons(geometry, pass_name, device, dtype)
        reasons += self.unit_step_reasons(geometry)
        return reasons

    @direct_when_non_finite
    def forward(self, input, weight, g: ConvGeometry):
        lengths = fft_sizes(g)
        # conj(W'[f]) as (G, F, Cg, Kg): the conjugate makes the product a correlation
        w_spec = _kernel_spectrum(weight, g, lengths).transpose(2, 3).conj().resolve_conj().contiguous()
        y = config.new_output(input, g.output_shape)
        for start, n in batch_chunks(g.batch, _bytes_per_image(g, lengths, input.dtype)):
            x_spec = _spectrum(input[start:start + n], lengths, g.groups)  # (G, F, n, Cg)
            y[start:start + n] = _crop(_inverse(torch.matmul(x_spec, w_spec), lengths), g.out_size)
        return y

    @direct_when_non_finite
    def grad_input(self, weight, grad_output, g: ConvGeometry):
        lengths = fft_sizes(g)
        w_spec = _kernel_spectrum(weight, g, lengths).contiguous()  # (G, F, Kg, Cg)
        dx = config.new_output(grad_output, g.input_shape)
        for start, n in batch_chunks(g.batch, _bytes_per_image(g, lengths, grad_output.dtype)):
            dy_spec = _spectrum(grad_output[start:start + n], lengths, g.groups)  # (G, F, n, Kg)
            dx[start:start + n] = _crop(_inverse(torch.matmul(dy_spec, w_spec), lengths), g.in_size)
        return dx

    @direct_when_non_finite
    def grad_weight(self, input, grad_output, g: ConvGeometry):
        lengths = fft_sizes(g)
        total = None
        for start, n in batch_chunks(g.batch, _bytes_per_image(g, lengths, input.dtype)):
            x_spec = _spectrum(input[start:start + n], lengths, g.groups)           # (G, F, n, Cg)
            dy_spec = _spectrum(grad_output[start:start + n], lengths, g.groups)    # (G, F, n, Kg)
            part = torch.matmul(dy_spec.transpose(2, 3).conj(), x_spec)             # (G, F, Kg, Cg)
            total = part if total is None else total.add_(part)
        # (G, F, Kg, Cg) -> (K, Cg, *L): the inverse of _spectrum with "batch" Kg and "channels" Cg
        dw = _inverse(total.permute(0, 1, 3, 2), lengths).transpose(0, 1)  # (Cg, K, *L) -> (K, Cg, *L)
        if any(g.pad_low):
            dw = torch.roll(dw, shifts=list(g.pad_low), dims=_spatial_dims(g.ndim))
        return _crop(dw, g.kernel).to(input.dtype)


ALGORITHM = FFT()
