"""Implicit-GEMM forward correlation: y = corr(x, w), the patches built in registers.

Shapes (2-D; 1-D problems arrive as H = 1 views), per group g of G:

    x  (N, C, H, W)      any strides (NHWC on a GPU, see common.as_nhwc)
    w  (K, C/G, R, S)    any strides
    y  (N, K, P, Q)      allocated in x's memory format (common.new_output): no copy afterwards

    y[n, g·Kg + k, p, q] = Σ_{c < Cg, r < R, s < S} x[n, g·Cg + c, p·sh + r·dh - ph, q·sw + s·dw - pw]
                                                    · w[g·Kg + k, c, r, s]

GEMM view (CUTLASS's "fprop"), per group:

    M = N·P·Q  (output pixels, rows)     N = Kg (filters, columns)     K = Cg·R·S (the patch)

    A[m, (r, s, c)] = x at pixel m shifted by tap (r, s), channel c  (zero outside the image)
    B[(r, s, c), k] = w[k, c, r, s]

Positions outside [0, H) x [0, W) are the zero padding, so pad_high needs no
argument: it only sets P and Q. Ordering the reduction (r, s, c) with c
innermost makes each K step one kernel tap: its A tile is BLOCK_M pixels x
BLOCK_K consecutive channels (contiguous in NHWC), its mask depends on the row
only, and the tap offset is one scalar added to a pointer tile.

When Cg is small (Cg = 3 for an RGB first layer) a channel block would be
mostly padding, so FLAT_K instead walks the flattened (r, s, c) index BLOCK_K at
a time: every column of the tile has its own (r, s, c), and the mask is 2-D.

Loop nest (one program = one BLOCK_M x BLOCK_N tile of one group)::

    for m-tile, n-tile, g:                                  # grid
        acc = 0
        for (r, s, c0) in taps x channel blocks:            # one K step each (FLAT_K: k0 in range(0, Cg·R·S, BLOCK_K))
            a = x[n(m), c0:c0+BK, p(m)·sh + r·dh - ph, q(m)·sw + s·dw - pw]   # masked gather
            b = w[n-tile, c0:c0+BK, r, s]
            acc += a @ b                                    # fp32 (fp64 for float64)
        y[m-tile, n-tile] = acc
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..geometry import ConvGeometry
from . import common, transpose
from .common import multiply_accumulate, widen

#: square and wide tiles for the usual layers, narrow ones (BLOCK_N 16/32) for few filters;
#: common.prune_configs keeps those that fit
FORWARD_CONFIGS = common.make_configs(common.DIRECT_TILES)


@triton.autotune(configs=FORWARD_CONFIGS, key=["M_BUCKET", "N_BUCKET", "K_BUCKET", "FLAT_K", "INPUT_PRECISION"],
                 prune_configs_by={"early_config_prune": common.prune_configs("x_ptr")})
@triton.jit
def implicit_forward_kernel(
    # pointers
    x_ptr, w_ptr, y_ptr,
    # sizes
    N, H, W, P, Q, Cg, Kg, R, S,
    # geometry: stride, dilation, low padding
    conv_stride_h, conv_stride_w, dilation_h, dilation_w, pad_h, pad_w,
    # strides (elements)
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wk, stride_wc, stride_wr, stride_ws,
    stride_yn, stride_yk, stride_yp, stride_yq,
    # autotuning keys only (power-of-two buckets of the GEMM sizes)
    M_BUCKET, N_BUCKET, K_BUCKET,
    # meta-parameters
    FLAT_K: tl.constexpr, WIDE_INDEX: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # ---- program id -> tile: n-tiles of one m-tile run back to back, so its input patch is read from L2
    pid = tl.program_id(0)
    group = tl.program_id(1)
    num_pid_n = tl.cdiv(Kg, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n

    # ---- rows: output pixels m -> (n, p, q) and the top-left input position they read
    offs_m = widen(pid_m, WIDE_INDEX) * BLOCK_M + tl.arange(0, BLOCK_M)
    plane = widen(P, WIDE_INDEX) * Q
    m_valid = offs_m < N * plane
    n = offs_m // plane
    pq = offs_m % plane
    p = pq // Q
    q = pq % Q
    h_top = p * conv_stride_h - pad_h
    w_left = q * conv_stride_w - pad_w
    x_rows = n * stride_xn + h_top * stride_xh + w_left * stride_xw + widen(group * Cg, WIDE_INDEX) * stride_xc

    # ---- columns: filters of this group
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < Kg
    w_cols = widen(group * Kg + offs_n, WIDE_INDEX) * stride_wk

    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)

    # ---- K loop
    if FLAT_K:
        # the flattened patch index kk -> (r, s, c), c fastest; every column its own tap
        patch_len = R * S * Cg
        for k0 in range(0, patch_len, BLOCK_K):
            kk = k0 + offs_k
            k_valid = kk < patch_len
            c = kk % Cg
            rs = kk // Cg
            r = rs // S
            s = rs % S
            h = h_top[:, None] + (r * dilation_h)[None, :]
            w = w_left[:, None] + (s * dilation_w)[None, :]
            inside = (h >= 0) & (h < H) & (w >= 0) & (w < W)
            tap_offset = widen(r * dilation_h, WIDE_INDEX) * stride_xh + widen(s * dilation_w, WIDE_INDEX) * stride_xw
            a_ptrs = x_ptr + x_rows[:, None] + (tap_offset + widen(c, WIDE_INDEX) * stride_xc)[None, :]
            a = tl.load(a_ptrs, mask=inside & m_valid[:, None] & k_valid[None, :], other=0.0)
            w_taps = widen(c, WIDE_INDEX) * stride_wc + widen(r, WIDE_INDEX) * stride_wr + widen(s, WIDE_INDEX) * stride_ws
            b_ptrs = w_ptr + w_taps[:, None] + w_cols[None, :]
            b = tl.load(b_ptrs, mask=k_valid[:, None] & n_valid[None, :], other=0.0)
            acc = multiply_accumulate(acc, a, b, INPUT_PRECISION, UPCAST)
    else:
        # one kernel tap (r, s) and one block of channels per step; a single flat loop so
        # Triton software-pipelines all R·S·ceil(Cg/BLOCK_K) steps, not just the channel loop
        channel_blocks = tl.cdiv(Cg, BLOCK_K)
        for step in range(0, R * S * channel_blocks):
            rs = step // channel_blocks
            c = (step - rs * channel_blocks) * BLOCK_K + offs_k
            r = rs // S
            s = rs - r * S
            h = h_top + r * dilation_h
            w = w_left + s * dilation_w
            row_valid = m_valid & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            c_valid = c < Cg
            tap_offset = widen(r * dilation_h, WIDE_INDEX) * stride_xh + widen(s * dilation_w, WIDE_INDEX) * stride_xw
            a_ptrs = x_ptr + (x_rows + tap_offset)[:, None] + (widen(c, WIDE_INDEX) * stride_xc)[None, :]
            a = tl.load(a_ptrs, mask=row_valid[:, None] & c_valid[None, :], other=0.0)
            w_taps = widen(r, WIDE_INDEX) * stride_wr + widen(s, WIDE_INDEX) * stride_ws + widen(c, WIDE_INDEX) * stride_wc
            b_ptrs = w_ptr + w_taps[:, None] + w_cols[None, :]
            b = tl.load(b_ptrs, mask=c_valid[:, None] & n_valid[None, :], other=0.0)
            acc = multiply_accumulate(acc, a, b, INPUT_PRECISION, UPCAST)

    # ---- epilogue: y[n, g·Kg + k, p, q]
    y_rows = n * stride_yn + p * stride_yp + q * stride_yq
    y_cols = widen(group * Kg + offs_n, WIDE_INDEX) * stride_yk
    y_ptrs = y_ptr + y_rows[:, None] + y_cols[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_valid[:, None] & n_valid[None, :])


def prepare_operands(x: torch.Tensor, w: torch.Tensor):
    """x and w with channels innermost: the A tile's rows and the B tile's columns are then K-major."""
    return transpose.as_nhwc(x), transpose.as_nhwc(w)


def use_flat_reduction(channels_per_group: int) -> bool:
    """Flatten (r, s, c) when a channel block would be mostly padding (few channels, not a multiple of 16)."""
    return channels_per_group % 16 != 0 and channels_per_group < 64


def forward(x: torch.Tensor, w: torch.Tensor, g: ConvGeometry, flat: bool = None) -> torch.Tensor:
    """y (N, K, P, Q) = corr(x (N, C, H, W), w (K, C/G, R, S)); 2-D geometry; result in x's memory format.

    ``flat`` forces the flattened-patch reduction on or off (tests); by default it
    is chosen from the channels per group (:func:`use_flat_reduction`).
    """
    assert g.ndim == 2 and x.dim() == 4 and w.dim() == 4, "implicit kernels take 2-D problems (1-D as H = 1)"
    y = common.new_output(x, g.output_shape)
    x, w = prepare_operands(x, w)
    key = ("forward", g, x.stride(), w.stride(), y.stride(), x.dtype, x.device, flat,
           common.dot_precision(x.dtype))
    launch = common.planned(key, lambda: _launch(x, w, y, g, flat))
    launch(x, w, y)
    return y


def _launch(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, g: ConvGeometry, flat) -> common.KernelLaunch:
    """The kernel's arguments for this problem, derived once."""
    (H, W), (R, S), (P, Q) = g.in_size, g.kernel, g.out_size
    N, Cg, Kg, G = g.batch, g.channels_per_group, g.filters_per_group, g.groups
    if flat is None:
        flat = use_flat_reduction(Cg)
    pads = [0, 0, sum(g.padding[0]), sum(g.padding[1])]
    M = N * P * Q
    wide = common.needs_wide_index(common.span(x, pads), common.span(w), common.span(y), M + 256)

    def grid(meta):
        return (common.cdiv(M, meta["BLOCK_M"]) * common.cdiv(Kg, meta["BLOCK_N"]), G)

    scalars = (
        N, H, W, P, Q, Cg, Kg, R, S,
        g.stride[0], g.stride[1], g.dilation[0], g.dilation[1], g.pad_low[0], g.pad_low[1],
        *x.stride(), *w.stride(), *y.stride(),
        common.bucket(M), common.bucket(Kg), common.bucket(Cg * R * S),
    )
    meta = dict(FLAT_K=flat, WIDE_INDEX=wide, INPUT_PRECISION=common.dot_precision(x.dtype),
                UPCAST=common.upcast_operands(x.dtype), ACC_DTYPE=common.accumulator_dtype(x.dtype))
    return common.KernelLaunch(implicit_forward_kernel, grid, scalars, meta)


def forward_reference(x: torch.Tensor, w: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """The same correlation by torch in float64 (explicit asymmetric padding), cast back to x's dtype."""
    pads = [p for low_high in reversed(g.padding) for p in low_high]
    y = F.conv2d(F.pad(x.double(), pads), w.double(), stride=g.stride, dilation=g.dilation, groups=g.groups)
    return y.to(x.dtype)
