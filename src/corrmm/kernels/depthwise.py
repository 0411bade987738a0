"""Direct depthwise correlation: every output channel reads one input channel, no GEMM.

Depthwise means groups = C: filter k = c·M + m (channel multiplier M >= 1, K = C·M)
reads input channel c = k // M only. Shapes (2-D; 1-D problems arrive as H = 1 views):

    x   (N, C, H, W)      any strides (NHWC on a GPU, see transpose.as_nhwc)
    w   (K, 1, R, S)      any strides
    y   (N, K, P, Q)      allocated channels_last (the op layer restores the caller's layout)

    y[n, k, p, q] = Σ_{r < R, s < S} x[n, k // M, p·sh + r·dh - ph, q·sw + s·dw - pw] · w[k, 0, r, s]

Each pass is R·S multiply-adds per element, so all three are memory-bound: the
kernels read each operand about once and keep the taps' re-reads in L1/L2. A
program owns a tile of BLOCK_PIX pixels x BLOCK_C channels; in NHWC the channel
direction is contiguous, so every load of the tile is a row of 16-byte vectors.
Accumulation is fp32 (fp64 for float64).

Loop nests (one program each)::

    forward      for pixel-tile (n, p, q), channel-tile k:             # grid
                     acc = 0
                     for r, s in taps:                                 # masked gather, zero outside
                         acc += x[n, k // M, p·sh + r·dh - ph, q·sw + s·dw - pw] · w[k, r, s]
                     y[n, k, p, q] = acc

    grad_input   for pixel-tile (n, h, w), channel-tile c:             # gather form, no atomics
                     acc = 0
                     for m < M, r, s in taps:                          # the rotated kernel
                         p·sh = h + ph - r·dh,  q·sw = w + pw - s·dw   # a tap counts only where both divide
                         acc += dy[n, c·M + m, p, q] · w[c·M + m, r, s]
                     dx[n, c, h, w] = acc

    grad_weight  for chunk of pixels, channel-tile k:                  # grid
                     for r, s in taps:
                         acc = 0
                         for pixel-tile (n, p, q) in chunk:            # the chunk stays in L1/L2 across taps
                             acc += x[n, k // M, p·sh + r·dh - ph, q·sw + s·dw - pw] · dy[n, k, p, q]
                         partial[chunk, (r, s), k] = Σ_pixels acc
                 dw[k, (r, s)] = Σ_chunk partial[chunk, (r, s), k]     # fixed order: deterministic

Strided input gradients use masks rather than phases: with stride 2 a tap
contributes to one pixel in two per direction, and the masked lanes cost
issue slots, not bytes. Offsets are 32-bit unless a tensor spans 2**31
elements (common.needs_wide_index).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .. import config
from ..geometry import ConvGeometry
from . import common, transpose
from .common import widen

#: (BLOCK_PIX, BLOCK_C, num_warps) tried by the forward and grad-input kernels: 16 elements per
#: thread (about 95 registers on sm_90: 32 elements need 125-160, and the kernels want many warps
#: per SM more than large tiles); 64 channels are a 128-byte row in 16-bit types; 16 channels only
#: for few-channel layers
_TILES = [(32, 64, 4), (64, 64, 8), (16, 128, 4), (64, 32, 4), (128, 16, 4)]
#: grad-weight: pixel tile and warps. One warp per program: the per-tap sum over the tile's pixels
#: then stays inside the warp (register adds and shuffles, no shared memory or barrier), and many
#: small programs per SM hide the loads' latency
_GW_BLOCK_PIX, _GW_WARPS = 32, 1
#: grad-weight: programs wanted per SM, and the most pixels one chunk reduces
_GW_PROGRAMS_PER_SM = 16
_GW_MAX_CHUNK_PIXELS = 4096
#: grad-weight, "taps" method (:func:`grad_weight_tiles`): the most taps it holds (8x8 kernels), its
#: warps, the fp32 accumulator elements per thread it aims for, and programs wanted per SM
_TAPS_MAX, _TAPS_WARPS, _TAPS_ELEMENTS_PER_THREAD, _TAPS_PROGRAMS_PER_SM = 64, 4, 32, 8
#: the largest kernel (taps) for which the "taps" method reads NCHW-contiguous operands as they are
#: (pixels then the tiles' contiguous side, 2-byte loads) instead of transposing both to NHWC first.
#: H100, bf16, batch 64 (PERFORMANCE.md, "v8"): reading NCHW took DW1 (3x3, 144 ch, 56²) 0.331 ms
#: against 0.506 with the transposes, DW2 (stride 2) 0.113 against 0.223; at 7x7 (CX1, 96 ch) the
#: 2-byte loads lose, 1.54 ms against 0.72. Channels-last operands never need the transposes.
_TAPS_READ_NCHW_MAX_TAPS = 9
#: the chunk-sum kernel's tile: (chunks, taps·filters) summed per step
_SUM_BLOCK_CHUNKS, _SUM_BLOCK = 32, 128


def _configs():
    if common.INTERPRET:
        tiles = [(16, 8, 1)]  # small enough that the tests' shapes span several programs
    elif not common.AUTOTUNE:
        tiles = _TILES[:1]
    else:
        tiles = _TILES
    return [triton.Config({"BLOCK_PIX": p, "BLOCK_C": c}, num_warps=w) for p, c, w in tiles]


def _prune(configs, named_args, **kwargs):
    """Drop channel tiles wider than the channel count's power of two (mostly masked lanes), and the
    16-channel tile where channels are many (it only pays where wider tiles would be masked)."""
    channels = named_args["C_BUCKET"]
    kept = [c for c in configs
            if c.kwargs["BLOCK_C"] <= max(channels, 16) and (c.kwargs["BLOCK_C"] > 16 or channels <= 32)]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_C"])]


# ---- forward ----------------------------------------------------------------------------

@triton.autotune(configs=_configs(), key=["PIX_BUCKET", "C_BUCKET", "MULTIPLIER_ONE"],
                 prune_configs_by={"early_config_prune": _prune}, **common.TUNER_OPTIONS)
@triton.jit
def depthwise_forward_kernel(
    # pointers
    x_ptr, w_ptr, y_ptr,
    # sizes (K = C·M output channels, M the channel multiplier)
    N, H, W, P, Q, K, M,
    # geometry: stride, dilation, low padding
    conv_stride_h, conv_stride_w, dilation_h, dilation_w, pad_h, pad_w,
    # strides (elements)
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_wk, stride_wr, stride_ws,
    stride_yn, stride_yk, stride_yp, stride_yq,
    # kernel extent
    R, S,
    # autotuning keys only
    PIX_BUCKET, C_BUCKET, MULTIPLIER_ONE,
    # meta-parameters
    WIDE_INDEX: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_PIX: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # ---- program id -> tile: channel tiles of one pixel tile run back to back
    pid_pix = tl.program_id(0)
    pid_c = tl.program_id(1)

    # ---- rows: output pixels (n, p, q) and the top-left input position each reads
    offs_m = widen(pid_pix, WIDE_INDEX) * BLOCK_PIX + tl.arange(0, BLOCK_PIX)
    plane = widen(P, WIDE_INDEX) * Q
    m_valid = offs_m < N * plane
    n = offs_m // plane
    pq = offs_m % plane
    p = pq // Q
    q = pq % Q
    h_top = p * conv_stride_h - pad_h
    w_left = q * conv_stride_w - pad_w
    x_rows = n * stride_xn + h_top * stride_xh + w_left * stride_xw

    # ---- columns: output channels k and the input channel k // M each reads
    offs_k = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    k_valid = offs_k < K
    x_cols = widen(offs_k // M, WIDE_INDEX) * stride_xc
    w_taps = w_ptr + widen(offs_k, WIDE_INDEX) * stride_wk

    acc = tl.zeros((BLOCK_PIX, BLOCK_C), dtype=ACC_DTYPE)
    # run-time tap loops: unrolled, the compiler hoists every tap's loads and runs out of
    # registers (186 at 3x3, spills at 7x7); one tap in flight per warp and many warps per SM
    # hide the latency instead
    for r in range(R):
        h = h_top + r * dilation_h
        row_valid = m_valid & (h >= 0) & (h < H)
        x_row = x_rows + widen(r * dilation_h, WIDE_INDEX) * stride_xh
        for s in range(S):
            w_ = w_left + s * dilation_w
            valid = row_valid & (w_ >= 0) & (w_ < W)
            xv = tl.load(x_ptr + (x_row + widen(s * dilation_w, WIDE_INDEX) * stride_xw)[:, None] + x_cols[None, :],
                         mask=valid[:, None] & k_valid[None, :], other=0.0)
            wv = tl.load(w_taps + r * stride_wr + s * stride_ws, mask=k_valid, other=0.0)
            acc += xv.to(ACC_DTYPE) * wv.to(ACC_DTYPE)[None, :]

    # ---- epilogue
    y_rows = n * stride_yn + p * stride_yp + q * stride_yq
    y_ptrs = y_ptr + y_rows[:, None] + (widen(offs_k, WIDE_INDEX) * stride_yk)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_valid[:, None] & k_valid[None, :])


# ---- grad_input -------------------------------------------------------------------------

@triton.autotune(configs=_configs(), key=["PIX_BUCKET", "C_BUCKET", "MULTIPLIER_ONE", "STRIDE_BUCKET"],
                 prune_configs_by={"early_config_prune": _prune}, **common.TUNER_OPTIONS)
@triton.jit
def depthwise_grad_input_kernel(
    # pointers
    w_ptr, dy_ptr, dx_ptr,
    # sizes (C input channels, M the channel multiplier)
    N, H, W, P, Q, C, M,
    # geometry: stride, dilation, low padding
    conv_stride_h, conv_stride_w, dilation_h, dilation_w, pad_h, pad_w,
    # strides (elements)
    stride_wk, stride_wr, stride_ws,
    stride_dyn, stride_dyk, stride_dyp, stride_dyq,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    # kernel extent
    R, S,
    # autotuning keys only
    PIX_BUCKET, C_BUCKET, MULTIPLIER_ONE, STRIDE_BUCKET,
    # meta-parameters
    WIDE_INDEX: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_PIX: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_pix = tl.program_id(0)
    pid_c = tl.program_id(1)

    # ---- rows: input pixels (n, h, w); tap (r, s) reads output pixel ((h + ph - r·dh) / sh, ...)
    offs_m = widen(pid_pix, WIDE_INDEX) * BLOCK_PIX + tl.arange(0, BLOCK_PIX)
    plane = widen(H, WIDE_INDEX) * W
    m_valid = offs_m < N * plane
    n = offs_m // plane
    hw = offs_m % plane
    h = hw // W
    w_ = hw % W
    dy_batch = n * stride_dyn

    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_valid = offs_c < C

    acc = tl.zeros((BLOCK_PIX, BLOCK_C), dtype=ACC_DTYPE)
    for m in range(M):
        k = widen(offs_c * M + m, WIDE_INDEX)
        dy_cols = k * stride_dyk
        w_taps = w_ptr + k * stride_wk
        for r in range(R):  # run-time loops, as in the forward kernel
            th = h + pad_h - r * dilation_h
            p = th // conv_stride_h
            row_valid = m_valid & (th >= 0) & (p * conv_stride_h == th) & (p < P)
            for s in range(S):
                tw = w_ + pad_w - s * dilation_w
                q = tw // conv_stride_w
                valid = row_valid & (tw >= 0) & (q * conv_stride_w == tw) & (q < Q)
                dy_rows = dy_batch + p * stride_dyp + q * stride_dyq
                dyv = tl.load(dy_ptr + dy_rows[:, None] + dy_cols[None, :],
                              mask=valid[:, None] & c_valid[None, :], other=0.0)
                wv = tl.load(w_taps + r * stride_wr + s * stride_ws, mask=c_valid, other=0.0)
                acc += dyv.to(ACC_DTYPE) * wv.to(ACC_DTYPE)[None, :]

    dx_rows = n * stride_dxn + h * stride_dxh + w_ * stride_dxw
    dx_ptrs = dx_ptr + dx_rows[:, None] + (widen(offs_c, WIDE_INDEX) * stride_dxc)[None, :]
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=m_valid[:, None] & c_valid[None, :])


# ---- grad_weight ------------------------------------------------------------------------

def _grad_weight_configs():
    if common.INTERPRET:
        return [triton.Config({"BLOCK_PIX": 8, "BLOCK_C": 8})]
    return [triton.Config({"BLOCK_PIX": _GW_BLOCK_PIX, "BLOCK_C": c}, num_warps=_GW_WARPS) for c in (16, 32)]


def _grad_weight_block_c(K: int) -> int:
    """The weight gradient's channel tile: 32 channels (16 for 16 or fewer), a 32x32 tile per warp."""
    return 8 if common.INTERPRET else min(32, max(16, common.bucket(K)))


def _keep_channel_tile(configs, named_args, **kwargs):
    """The one config whose channel tile the host chose (:func:`_grad_weight_block_c`): nothing to tune."""
    return [c for c in configs if c.kwargs["BLOCK_C"] == named_args["C_TILE"]] or configs[:1]


@triton.autotune(configs=_grad_weight_configs(), key=["C_TILE"],
                 prune_configs_by={"early_config_prune": _keep_channel_tile}, **common.TUNER_OPTIONS)
@triton.jit
def depthwise_grad_weight_kernel(
    # pointers (partial: (chunks, R·S, K) in the accumulator's dtype)
    x_ptr, dy_ptr, partial_ptr,
    # sizes
    N, H, W, P, Q, K, M, CHUNK_PIXELS,
    # geometry: stride, dilation, low padding
    conv_stride_h, conv_stride_w, dilation_h, dilation_w, pad_h, pad_w,
    # strides (elements)
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_dyn, stride_dyk, stride_dyp, stride_dyq,
    # kernel extent
    R, S,
    # the channel tile the host chose (selects the config)
    C_TILE,
    # meta-parameters
    WIDE_INDEX: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_PIX: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    chunk = tl.program_id(1)

    offs_k = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    k_valid = offs_k < K
    x_cols = widen(offs_k // M, WIDE_INDEX) * stride_xc
    dy_cols = widen(offs_k, WIDE_INDEX) * stride_dyk

    plane = widen(P, WIDE_INDEX) * Q
    total = N * plane
    chunk_start = widen(chunk, WIDE_INDEX) * CHUNK_PIXELS
    partial_row = partial_ptr + widen(chunk, WIDE_INDEX) * (R * S) * K + offs_k

    for r in range(R):
        for s in range(S):
            acc = tl.zeros((BLOCK_PIX, BLOCK_C), dtype=ACC_DTYPE)
            for start in range(0, CHUNK_PIXELS, BLOCK_PIX):
                offs_m = chunk_start + start + tl.arange(0, BLOCK_PIX)
                m_valid = offs_m < total
                n = offs_m // plane
                pq = offs_m % plane
                p = pq // Q
                q = pq % Q
                h = p * conv_stride_h - pad_h + r * dilation_h
                w_ = q * conv_stride_w - pad_w + s * dilation_w
                inside = m_valid & (h >= 0) & (h < H) & (w_ >= 0) & (w_ < W)
                x_rows = n * stride_xn + h * stride_xh + w_ * stride_xw
                xv = tl.load(x_ptr + x_rows[:, None] + x_cols[None, :],
                             mask=inside[:, None] & k_valid[None, :], other=0.0)
                dy_rows = n * stride_dyn + p * stride_dyp + q * stride_dyq
                dyv = tl.load(dy_ptr + dy_rows[:, None] + dy_cols[None, :],
                              mask=m_valid[:, None] & k_valid[None, :], other=0.0)
                acc += xv.to(ACC_DTYPE) * dyv.to(ACC_DTYPE)
            tl.store(partial_row + (r * S + s) * K, tl.sum(acc, axis=0), mask=k_valid)


@triton.jit
def depthwise_chunk_sum_kernel(
    # pointers: partial (chunks, T, K) contiguous, dw (K, T) contiguous (T = R·S taps)
    partial_ptr, dw_ptr,
    # sizes
    CHUNKS, T, K,
    # meta-parameters
    WIDE_INDEX: tl.constexpr, BLOCK_CHUNKS: tl.constexpr, BLOCK: tl.constexpr,
):
    """dw[k, t] = Σ_chunk partial[chunk, t, k], chunks in a fixed order, cast to dw's dtype."""
    offs = widen(tl.program_id(0), WIDE_INDEX) * BLOCK + tl.arange(0, BLOCK)  # t·K + k
    valid = offs < T * K
    offs_chunk = tl.arange(0, BLOCK_CHUNKS)
    acc = tl.zeros((BLOCK,), dtype=partial_ptr.dtype.element_ty)
    for c0 in range(0, CHUNKS, BLOCK_CHUNKS):
        chunk = widen(c0 + offs_chunk, WIDE_INDEX)
        tile = tl.load(partial_ptr + (chunk * T * K)[:, None] + offs[None, :],
                       mask=(chunk < CHUNKS)[:, None] & valid[None, :], other=0.0)
        acc += tl.sum(tile, axis=0)
    t = offs // K
    k = offs % K
    tl.store(dw_ptr + k * T + t, acc.to(dw_ptr.dtype.element_ty), mask=valid)


@triton.jit
def depthwise_grad_weight_taps_kernel(
    # pointers (partial: (chunks, R·S, K) in the accumulator's dtype)
    x_ptr, dy_ptr, partial_ptr,
    # sizes; a chunk is CHUNK_ROWS output rows (n, p)
    N, H, W, P, Q, K, M, CHUNK_ROWS,
    # geometry: stride, dilation, low padding
    conv_stride_h, conv_stride_w, dilation_h, dilation_w, pad_h, pad_w,
    # strides (elements)
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_dyn, stride_dyk, stride_dyp, stride_dyq,
    # kernel extent
    R, S,
    # meta-parameters: TAPS is R·S's power of two
    WIDE_INDEX: tl.constexpr, ACC_DTYPE: tl.constexpr, TAPS: tl.constexpr,
    BLOCK_PIX: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Every tap at once: each dy tile is loaded once, and the taps' x tiles, which overlap, come from L1.

    A step is BLOCK_PIX consecutive pixels of one output row, so the row (n, p) is a
    scalar and only the column q is a vector: no division in the loop.
    """
    pid_c = tl.program_id(0)
    chunk = tl.program_id(1)

    offs_k = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    k_valid = offs_k < K
    x_cols = widen(offs_k // M, WIDE_INDEX) * stride_xc
    dy_cols = widen(offs_k, WIDE_INDEX) * stride_dyk

    # ---- the taps along the first axis of a (taps x pixels x channels) tile
    taps = tl.arange(0, TAPS)
    tap_valid = taps < R * S
    tap_h = (taps // S) * dilation_h
    tap_w = (taps % S) * dilation_w
    x_taps = widen(tap_h, WIDE_INDEX) * stride_xh + widen(tap_w, WIDE_INDEX) * stride_xw
    offs_q = tl.arange(0, BLOCK_PIX)

    row_start = chunk * CHUNK_ROWS
    rows = tl.minimum(CHUNK_ROWS, N * P - row_start)
    column_blocks = tl.cdiv(Q, BLOCK_PIX)
    # the step's row (n, p) and column block, advanced by scalar carries (no division in the loop)
    n = row_start // P
    p = row_start - n * P
    column_block = 0
    acc = tl.zeros((TAPS, BLOCK_PIX, BLOCK_C), dtype=ACC_DTYPE)
    # one flat loop over (row, column block), so the compiler pipelines all of it
    for _ in range(0, rows * column_blocks):
        q = column_block * BLOCK_PIX + offs_q
        q_valid = q < Q
        # dy broadcast over the taps by a zero tap stride: loaded in the x tile's own layout (the
        # warp's repeated addresses are one transaction), not converted through shared memory
        dy_pixels = (widen(n, WIDE_INDEX) * stride_dyn + p * stride_dyp) + q * stride_dyq
        dyv = tl.load(dy_ptr + (taps * 0)[:, None, None] + dy_pixels[None, :, None] + dy_cols[None, None, :],
                      mask=q_valid[None, :, None] & k_valid[None, None, :], other=0.0)
        h_top = p * conv_stride_h - pad_h
        w_left = q * conv_stride_w - pad_w
        h = h_top + tap_h
        w_ = w_left[None, :] + tap_w[:, None]
        inside = (tap_valid & (h >= 0) & (h < H))[:, None] & (w_ >= 0) & (w_ < W) & q_valid[None, :]
        x_row = x_ptr + (widen(n, WIDE_INDEX) * stride_xn + h_top * stride_xh)
        x_pixels = x_taps[:, None] + (w_left * stride_xw)[None, :]
        xv = tl.load(x_row + x_pixels[:, :, None] + x_cols[None, None, :],
                     mask=inside[:, :, None] & k_valid[None, None, :], other=0.0)
        acc += xv.to(ACC_DTYPE) * dyv.to(ACC_DTYPE)
        column_block += 1
        wrap = column_block == column_blocks
        column_block = tl.where(wrap, 0, column_block)
        p += wrap.to(tl.int32)
        wrap = p == P
        p = tl.where(wrap, 0, p)
        n += wrap.to(tl.int32)
    per_tap = tl.sum(acc, axis=1)
    partial = partial_ptr + widen(chunk, WIDE_INDEX) * (R * S) * K
    tl.store(partial + (taps * K)[:, None] + offs_k[None, :], per_tap, mask=tap_valid[:, None] & k_valid[None, :])


# ---- wrappers ---------------------------------------------------------------------------

def _check(g: ConvGeometry) -> int:
    """The channel multiplier M of a depthwise 2-D geometry."""
    assert g.ndim == 2, "depthwise kernels take 2-D problems (1-D as H = 1)"
    assert g.groups == g.in_channels and g.channels_per_group == 1, "depthwise: groups must equal channels"
    return g.filters_per_group


def _wide(*tensors_and_pads) -> bool:
    return common.needs_wide_index(*(common.span(t, pads) for t, pads in tensors_and_pads))


def forward(x: torch.Tensor, w: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """y (N, K, P, Q) = depthwise corr(x (N, C, H, W), w (K, 1, R, S)); 2-D geometry; y channels_last."""
    M = _check(g)
    x = transpose.as_nhwc(x)
    y = common.new_nhwc(x, g.output_shape)
    key = ("dw_forward", g, x.stride(), w.stride(), y.stride(), x.dtype, x.device)
    launch = common.planned(key, lambda: _forward_launch(x, w, y, g, M))
    launch(x, w, y)
    return y


def _forward_launch(x, w, y, g: ConvGeometry, M: int) -> common.KernelLaunch:
    (H, W), (R, S), (P, Q) = g.in_size, g.kernel, g.out_size
    K = g.out_channels
    pixels = g.batch * P * Q
    pads = [0, 0, sum(g.padding[0]) + R * g.dilation[0], sum(g.padding[1]) + S * g.dilation[1]]
    wide = _wide((x, pads), (w, [0] * 4), (y, [0] * 4)) or common.needs_wide_index(pixels + 1024)

    def grid(meta):
        return (common.cdiv(pixels, meta["BLOCK_PIX"]), common.cdiv(K, meta["BLOCK_C"]))

    scalars = (g.batch, H, W, P, Q, K, M, g.stride[0], g.stride[1], g.dilation[0], g.dilation[1],
               g.pad_low[0], g.pad_low[1], *x.stride(), w.stride(0), w.stride(2), w.stride(3), *y.stride(), R, S,
               common.bucket(pixels), common.bucket(K), int(M == 1))
    meta = dict(WIDE_INDEX=wide, ACC_DTYPE=common.accumulator_dtype(x.dtype))
    return common.KernelLaunch(depthwise_forward_kernel, grid, scalars, meta)


def grad_input(w: torch.Tensor, dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """dx (N, C, H, W) = depthwise corr_grad_input(w (K, 1, R, S), dy (N, K, P, Q)); dx channels_last."""
    M = _check(g)
    dy = transpose.as_nhwc(dy)
    dx = common.new_nhwc(dy, g.input_shape)
    key = ("dw_grad_input", g, w.stride(), dy.stride(), dx.stride(), dy.dtype, dy.device)
    launch = common.planned(key, lambda: _grad_input_launch(w, dy, dx, g, M))
    launch(w, dy, dx)
    return dx


def _grad_input_launch(w, dy, dx, g: ConvGeometry, M: int) -> common.KernelLaunch:
    (H, W), (R, S), (P, Q) = g.in_size, g.kernel, g.out_size
    C = g.in_channels
    pixels = g.batch * H * W
    # dy is indexed at (h + ph - r·dh) / sh for masked lanes too: allow the whole padded range
    pads = [0, 0, sum(g.padding[0]) + R * g.dilation[0], sum(g.padding[1]) + S * g.dilation[1]]
    wide = _wide((dy, pads), (w, [0] * 4), (dx, [0] * 4)) or common.needs_wide_index(pixels + 1024)

    def grid(meta):
        return (common.cdiv(pixels, meta["BLOCK_PIX"]), common.cdiv(C, meta["BLOCK_C"]))

    scalars = (g.batch, H, W, P, Q, C, M, g.stride[0], g.stride[1], g.dilation[0], g.dilation[1],
               g.pad_low[0], g.pad_low[1], w.stride(0), w.stride(2), w.stride(3), *dy.stride(), *dx.stride(), R, S,
               common.bucket(pixels), common.bucket(C), int(M == 1), common.bucket(g.stride[0] * g.stride[1]))
    meta = dict(WIDE_INDEX=wide, ACC_DTYPE=common.accumulator_dtype(dy.dtype))
    return common.KernelLaunch(depthwise_grad_input_kernel, grid, scalars, meta)


def grad_weight_method(g: ConvGeometry) -> str:
    """"taps" (every tap of a pixel tile at once) up to 8x8 kernels, else "chunks" (one tap at a time)."""
    return "taps" if g.kernel[0] * g.kernel[1] <= _TAPS_MAX else "chunks"


def grad_weight_tiles(g: ConvGeometry, device: torch.device, method: str = None, pixels_inner: bool = False):
    """(BLOCK_PIX, BLOCK_C, chunk size, chunks) of the weight gradient.

    A chunk is what one program reduces for every tap: output rows for "taps",
    pixels for "chunks".

    * "taps": a (taps x BLOCK_PIX x BLOCK_C) fp32 accumulator of about 32
      elements per thread, channels the wide side when channels are innermost
      (NHWC: 32 channels are 64 contiguous bytes of bf16), pixels of a row when
      they are (NCHW, read without a transpose); chunks of whole output rows for
      about eight programs per SM.
    * "chunks": one-warp programs of 32 pixels x 32 channels, chunks for about
      sixteen per SM, no smaller than 4·R·S pixels (the partial sums, R·S·K fp32
      per chunk, then stay under about half the operands' bytes in 16-bit types).
    """
    method = method or grad_weight_method(g)
    K = g.out_channels
    taps = g.kernel[0] * g.kernel[1]
    pixels = g.batch * g.out_size[0] * g.out_size[1]
    if method == "taps":
        tap_block = common.bucket(taps)
        Q, rows = g.out_size[1], g.batch * g.out_size[0]
        if common.INTERPRET:
            block_pix, block_c, chunk = 4, 4, 2  # several chunks, column blocks and channel tiles on small shapes
        else:
            elements = _TAPS_ELEMENTS_PER_THREAD * 32 * _TAPS_WARPS
            if pixels_inner:
                block_c = min(common.bucket(K), max(1, elements // (tap_block * 32)))
            else:
                block_c = min(32, common.bucket(K))
            block_pix = min(common.bucket(Q), max(1, elements // (tap_block * block_c)))
            wanted_chunks = common.cdiv(_TAPS_PROGRAMS_PER_SM * common.sm_count(device), common.cdiv(K, block_c))
            chunk = common.cdiv(rows, wanted_chunks)
        return block_pix, block_c, chunk, common.cdiv(rows, chunk)
    block_c = _grad_weight_block_c(K)
    if common.INTERPRET:
        block_pix, chunk = 8, 16  # several chunks and channel tiles on the tests' small shapes
    else:
        block_pix = _GW_BLOCK_PIX
        wanted_chunks = common.cdiv(_GW_PROGRAMS_PER_SM * common.sm_count(device), common.cdiv(K, block_c))
        chunk = min(_GW_MAX_CHUNK_PIXELS, max(common.cdiv(pixels, wanted_chunks), 4 * taps))
        chunk = common.cdiv(chunk, block_pix) * block_pix
    return block_pix, block_c, chunk, common.cdiv(pixels, chunk)


def grad_weight(x: torch.Tensor, dy: torch.Tensor, g: ConvGeometry, method: str = None,
                nchw: bool = None) -> torch.Tensor:
    """dw (K, 1, R, S) = depthwise corr_grad_weight(x (N, C, H, W), dy (N, K, P, Q)), summed deterministically.

    ``method`` ("taps" or "chunks", see :func:`grad_weight_tiles`) and ``nchw``
    (read NCHW-contiguous operands as they are instead of transposing them)
    override the defaults (tests, benchmarks).
    """
    M = _check(g)
    method = method or grad_weight_method(g)
    if method not in ("taps", "chunks"):
        raise ValueError(f"depthwise grad_weight method must be 'taps' or 'chunks', not {method!r}")
    if nchw is None:
        nchw = (method == "taps" and math.prod(g.kernel) <= _TAPS_READ_NCHW_MAX_TAPS
                and x.is_contiguous() and dy.is_contiguous())
    if not nchw:
        x, dy = transpose.as_nhwc(x), transpose.as_nhwc(dy)
    (H, W), (R, S), (P, Q) = g.in_size, g.kernel, g.out_size
    K = g.out_channels
    pixels_inner = x.stride(1) != 1 and dy.stride(1) != 1
    block_pix, block_c, chunk, chunks = grad_weight_tiles(g, x.device, method, pixels_inner)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    partial = torch.empty((chunks, R * S, K), dtype=acc_dtype, device=x.device)
    dw = torch.empty((K, 1, R, S), dtype=x.dtype, device=x.device)
    if config.poisoning():
        dw.fill_(float("nan"))
    pads = [0, 0, sum(g.padding[0]) + R * g.dilation[0], sum(g.padding[1]) + S * g.dilation[1]]
    wide = (_wide((x, pads), (dy, [0, 0, 0, block_pix + chunk]), (partial, [0, 0, 0]))
            or common.needs_wide_index(chunks * chunk + block_pix))
    key = ("dw_grad_weight", g, x.stride(), dy.stride(), x.dtype, x.device, method)

    def build():
        scalars = (g.batch, H, W, P, Q, K, M, chunk, g.stride[0], g.stride[1], g.dilation[0], g.dilation[1],
                   g.pad_low[0], g.pad_low[1], *x.stride(), *dy.stride(), R, S)
        meta = dict(WIDE_INDEX=wide, ACC_DTYPE=common.accumulator_dtype(x.dtype))
        grid = (common.cdiv(K, block_c), chunks)
        if method == "taps":
            meta.update(TAPS=common.bucket(R * S), BLOCK_PIX=block_pix, BLOCK_C=block_c)
            # Triton's default of 4 warps (_TAPS_WARPS): a launch option here would cost the direct launch
            partials = common.KernelLaunch(depthwise_grad_weight_taps_kernel, grid, scalars, meta)
        else:
            partials = common.KernelLaunch(depthwise_grad_weight_kernel, grid, scalars + (block_c,), meta)
        # the partials summed over chunks in a fixed order (no atomics): the same bits on every run
        total = common.KernelLaunch(depthwise_chunk_sum_kernel, (common.cdiv(R * S * K, _SUM_BLOCK),),
                                    (chunks, R * S, K),
                                    dict(WIDE_INDEX=wide, BLOCK_CHUNKS=_SUM_BLOCK_CHUNKS, BLOCK=_SUM_BLOCK))
        return partials, total

    partials, total = common.planned(key, build)
    partials(x, dy, partial)
    total(partial, dw)
    return dw


# ---- references (pure torch, float64) -----------------------------------------------------

def _pads(g: ConvGeometry):
    return [p for low_high in reversed(g.padding) for p in low_high]


def forward_reference(x: torch.Tensor, w: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    y = F.conv2d(F.pad(x.double(), _pads(g)), w.double(), stride=g.stride, dilation=g.dilation, groups=g.groups)
    return y.to(x.dtype)


def grad_input_reference(w: torch.Tensor, dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    x = torch.zeros(g.input_shape, dtype=torch.float64, device=dy.device, requires_grad=True)
    y = F.conv2d(F.pad(x, _pads(g)), w.double(), stride=g.stride, dilation=g.dilation, groups=g.groups)
    return torch.autograd.grad(y, x, dy.double())[0].to(dy.dtype)


def grad_weight_reference(x: torch.Tensor, dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    w = torch.zeros(g.weight_shape, dtype=torch.float64, device=x.device, requires_grad=True)
    y = F.conv2d(F.pad(x.double(), _pads(g)), w, stride=g.stride, dilation=g.dilation, groups=g.groups)
    return torch.autograd.grad(y, w, dy.double())[0].to(x.dtype)
