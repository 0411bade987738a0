"""Implicit-GEMM weight gradient: dw = corr_grad_weight(x, dy), split-K with a deterministic sum.

Shapes (3-D; a 2-D problem runs with D = O = T = 1, a 1-D one also with H = 1), per group g of G:

    x  (N, C, D, H, W)       any strides
    dy (N, K, O, P, Q)       any strides
    dw (K, C/G, T, R, S)     in x's memory format: NCHW (NCDHW) or channels innermost

    dw[g·Kg + k, c, t, r, s] = Σ_{n, o, p, q} dy[n, g·Kg + k, o, p, q]
                                 · x[n, g·Cg + c, o·sd + t·dd - pd, p·sh + r·dh - ph, q·sw + s·dw - pw]

GEMM view (CUTLASS's "wgrad"), per group:

    M = Kg (filters)     N = Cg·T·R·S (the patch)     K = N·O·P·Q (every output pixel of the batch)

Each program owns one kernel tap (t, r, s) and a block of BLOCK_N channels (or,
with few channels per group, ``FLAT_N``: BLOCK_N consecutive entries of the
flattened patch), a block of BLOCK_M filters, and one split of the reduction.

**Stepping through the pixels.** The reduction index is the flat output pixel
``i = ((n·O + o)·P + p)·Q + q``. A block of BLOCK_K consecutive pixels starting at
``i0`` is ``i0 + k`` for ``k < BLOCK_K``; ``k``'s own mixed-radix digits (kn, ko,
kp, kq) are computed once, before the loop, and each step divides only the
scalar ``i0`` (once per program, not per element); a pixel's coordinates are then
the digit sums with at most one carry per digit (q + kq < 2Q, and so on). So
the loop does no vector division, and every pixel vector is a loop-invariant
vector plus scalars, which the compiler materialises in each load's own layout.

**Tile orientations** (``PIXELS_INNER``, see :func:`pixels_inner`; ``PLANES``, see :func:`reads_planes`):

* channels innermost (NHWC operands), the default: the A tile (filters x
  pixels) and the B tile (pixels x channels) are contiguous along M and N, so
  16-bit copies are 16-byte vectors and 16-bit wgmma reads the MN-major tiles
  as they are (TF32 wgmma does not: 32-bit operands then run far slower);
* pixels innermost (NCHW operands, the layout they usually come in, so no
  copy), for 32-bit operands with flattened columns: the A tile's rows and the
  B tile, loaded as (columns x pixels) and transposed in place (a view of
  shared memory, no data movement), are both K-major, the only order TF32
  wgmma reads. The copies are 4-byte elements, consecutive along a pixel row;
* planes (1x1, unit-stride, unpadded layers on NCHW operands, any dtype): a
  channel's pixels are one contiguous row of x and of dy, so both tiles are
  K-major rows of 16-byte vectors read in place, with no layout copy at all
  and no digit arithmetic (a block never straddles two images).

On an NCHW call the channels-innermost tiles need NHWC copies of x and dy;
:func:`nhwc_pair` makes both in one launch (and one allocation).

**Split-K.** M·N is one filter bank and K is huge, so the tiles alone rarely fill
the GPU: the K range is cut into ``splits`` equal chunks. Each split writes its
own fp32 partial (fp64 for float64) into a workspace, and a second kernel adds
the partials in split order, 0, 1, 2, ..., and casts: no atomics, so the result
is bit-for-bit the same on every run. With one split the GEMM kernel writes dw
directly in its dtype. :func:`choose_splits` picks the count from the waves of
programs over the SMs, the K steps per program, and the partial sums' traffic.

**The result's layout.** dw is allocated in the caller's memory format (x's:
NCHW unless x is channels_last), and each split's partial slice has dw's own
element order, so the sum is one flat pass that writes dw where the caller wants
it: no layout copy follows (the epilogue's stores take any strides).

Loop nest (one program = one BLOCK_M x BLOCK_N tile of one split of one group)::

    for split, m-tile, n-tile, g:                   # grid (split slowest: a split's tiles share dy, x in L2)
        acc = 0
        for i0 in range(split·k_per_split, min(next split, N·O·P·Q), BLOCK_K):
            (n, o, p, q) = digits(i0) + digits(k)   # scalar division, vector carries
            a = dy[n, m-tile, o, p, q]
            b = x[n, c-tile, o·sd + t·dd - pd, p·sh + r·dh - ph, q·sw + s·dw - pw]   # masked gather
            acc += a @ b
        partial[split, m-tile, n-tile] = acc        # or dw itself when splits == 1
    dw = Σ_split partial[split]                     # fixed order (split_sum_kernel)
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .. import config
from ..geometry import ConvGeometry
from ..memory_format import memory_format_of
from . import common, transpose
from .common import multiply_accumulate, widen

#: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); the K loop is long, so deep pipelines.
#: 16-bit operands step 64 pixels (16-byte vector copies); 32-bit ones 32 (pixels-inner tiles make one 4-byte copy and one
#: pointer per element: wider steps run out of registers)
_TILES_16BIT = [
    (128, 128, 64, 8, 3),
    (128, 128, 64, 8, 4),   # short per-program loops (small images, many splits): one more load in flight
    (128, 256, 64, 8, 3),
    (128, 128, 32, 4, 4),
    (64, 128, 64, 4, 4),
    (128, 64, 64, 4, 4),
    (64, 64, 64, 4, 4),
    (128, 32, 64, 4, 4),
    (64, 16, 64, 4, 4),
]
_TILES_32BIT = [
    (128, 128, 32, 8, 3),
    (64, 128, 32, 4, 4),
    (128, 64, 32, 4, 4),
    (64, 64, 32, 4, 4),
    (128, 32, 32, 4, 4),
    (64, 16, 32, 4, 4),
]
GRAD_WEIGHT_CONFIGS = common.make_configs(_TILES_16BIT + [t for t in _TILES_32BIT if t not in _TILES_16BIT])


def _tile(config) -> tuple:
    kw = config.kwargs
    return kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], config.num_warps, config.num_stages


def _prune(configs, named_args, **kwargs):
    """The tile list of the operands' element size, then corrmm's shared-memory and waste pruning."""
    own = set(_TILES_32BIT if named_args["x_ptr"].element_size() >= 4 else _TILES_16BIT)
    return common.prune_configs("x_ptr")([c for c in configs if _tile(c) in own] or configs, named_args, **kwargs)


#: the nominal tile of the split-K cost model (the tuned tile is not known before launch)
_MODEL_TILE = 128
#: the K step of the cost model
_MODEL_STEP = 64
#: a program's fixed cost (pipeline fill, epilogue) in K steps of the nominal tile
_PROGRAM_OVERHEAD_STEPS = 4
#: a split never gets fewer reduction steps than this (below it the partial traffic dominates)
_MIN_K_PER_SPLIT = 256
#: enough for a handful of tiles to fill 132 SMs (an 11x11 RGB layer has 3 tiles)
MAX_SPLITS = 128
#: tensor-core rate (flop/s, whole GPU) and memory bandwidth (bytes/s) of the cost model: an H100's
#: measured bf16 and TF32 GEMM ceilings and copy bandwidth (PERFORMANCE.md)
_RATE_16BIT, _RATE_32BIT, _BANDWIDTH = 796e12, 379e12, 3.0e12
#: the second launch (the fixed-order sum) costs about this much on top of its traffic
_SUM_LAUNCH_SECONDS = 4e-6


@triton.autotune(configs=GRAD_WEIGHT_CONFIGS,
                 key=["M_BUCKET", "N_BUCKET", "K_BUCKET", "FLAT_N", "PIXELS_INNER", "PLANES", "DEPTH",
                      "INPUT_PRECISION"],
                 prune_configs_by={"early_config_prune": _prune}, **common.TUNER_OPTIONS)
@triton.jit
def implicit_grad_weight_kernel(
    # pointers (dw_ptr: the output, or the fp32 partial workspace when split)
    x_ptr, dy_ptr, dw_ptr,
    # sizes
    N, D, H, W, O, P, Q, Cg, Kg, T, R, S,
    # geometry: stride, dilation, low padding
    conv_stride_d, conv_stride_h, conv_stride_w, dilation_d, dilation_h, dilation_w, pad_d, pad_h, pad_w,
    # split-K: reduction elements per split (a multiple of every BLOCK_K)
    k_per_split,
    # strides (elements)
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_dyn, stride_dyk, stride_dyo, stride_dyp, stride_dyq,
    stride_dwsplit, stride_dwk, stride_dwc, stride_dwt, stride_dwr, stride_dws,
    # autotuning keys only
    M_BUCKET, N_BUCKET, K_BUCKET,
    # meta-parameters
    FLAT_N: tl.constexpr, PIXELS_INNER: tl.constexpr, PLANES: tl.constexpr, DEPTH: tl.constexpr,
    WIDE_INDEX: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # ---- program id -> (split, m-tile, n-tile)
    pid = tl.program_id(0)
    group = tl.program_id(1)
    taps = T * R * S
    num_pid_m = tl.cdiv(Kg, BLOCK_M)
    if FLAT_N:
        num_pid_n = tl.cdiv(Cg * taps, BLOCK_N)
    else:
        channel_blocks = tl.cdiv(Cg, BLOCK_N)
        num_pid_n = taps * channel_blocks
    tiles = num_pid_m * num_pid_n
    split = pid // tiles
    pid_m = (pid % tiles) // num_pid_n
    pid_n = (pid % tiles) % num_pid_n

    # ---- rows: filters of this group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < Kg
    dy_rows = widen(group * Kg + offs_m, WIDE_INDEX) * stride_dyk

    # ---- columns: (t, r, s, c) of the patch; t, r and s are scalars unless FLAT_N
    if FLAT_N:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_valid = offs_n < Cg * taps
        c = offs_n % Cg
        tap = offs_n // Cg
    else:
        tap = pid_n // channel_blocks
        c = (pid_n - tap * channel_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_valid = c < Cg
    t = tap // (R * S)
    r = (tap // S) % R
    s = tap % S
    tap_d = t * dilation_d - pad_d
    tap_h = r * dilation_h - pad_h
    tap_w = s * dilation_w - pad_w
    x_cols = (widen(group * Cg + c, WIDE_INDEX) * stride_xc + widen(tap_d, WIDE_INDEX) * stride_xd
              + widen(tap_h, WIDE_INDEX) * stride_xh + widen(tap_w, WIDE_INDEX) * stride_xw)

    # ---- the pixel digits of k = 0 .. BLOCK_K-1 (vectors) and of the step BLOCK_K (scalars), computed once
    offs_k = tl.arange(0, BLOCK_K)
    kq = offs_k % Q
    kp = (offs_k // Q) % P
    step_q = BLOCK_K % Q
    step_p = (BLOCK_K // Q) % P
    if DEPTH:
        ko = (offs_k // Q // P) % O
        kn = offs_k // Q // P // O
        step_o = (BLOCK_K // Q // P) % O
        step_n = BLOCK_K // Q // P // O
    else:
        kn = offs_k // Q // P
        step_n = BLOCK_K // Q // P

    # ---- this split's range of the reduction over (n, o, p, q), and the digits of its first pixel
    plane = P * Q
    volume = widen(O * plane, WIDE_INDEX)
    k_start = widen(split, WIDE_INDEX) * k_per_split
    k_end = tl.minimum(k_start + k_per_split, N * volume)
    n0 = k_start // volume
    rest = (k_start - n0 * volume).to(tl.int32)
    o0 = rest // plane
    rest -= o0 * plane
    p0 = rest // Q
    q0 = rest - p0 * Q
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)

    # ---- K loop
    for i0 in range(k_start, k_end, BLOCK_K):
        if PLANES:
            # 1x1, unit stride, no padding, NCHW operands: both tiles are rows of (channel x pixel) planes,
            # and a block never leaves its image (the plane is a multiple of every BLOCK_K, and so is every split),
            # so each row is BLOCK_K consecutive elements: vector copies, K-major A and B, no masks along K
            image = i0 // volume
            pixel0 = i0 - image * volume  # the block's first pixel within its image
            pixels_dy = tl.max_contiguous(tl.multiple_of(image * stride_dyn + pixel0 + offs_k, BLOCK_K), BLOCK_K)
            pixels_x = tl.max_contiguous(tl.multiple_of(image * stride_xn + pixel0 + offs_k, BLOCK_K), BLOCK_K)
            a = tl.load(dy_ptr + dy_rows[:, None] + pixels_dy[None, :], mask=m_valid[:, None], other=0.0)
            b_t = tl.load(x_ptr + x_cols[:, None] + pixels_x[None, :], mask=n_valid[:, None], other=0.0)
            acc = multiply_accumulate(acc, a, tl.trans(b_t), INPUT_PRECISION, UPCAST)
        else:
            # each pixel's digits: the block's first pixel plus k's digits, one carry per digit
            q = q0 + kq
            carry = q >= Q
            q = tl.where(carry, q - Q, q)
            p = p0 + kp + carry.to(tl.int32)
            carry = p >= P
            p = tl.where(carry, p - P, p)
            if DEPTH:
                o = o0 + ko + carry.to(tl.int32)
                carry = o >= O
                o = tl.where(carry, o - O, o)
            n = n0 + kn + carry.to(tl.int32)
            k_valid = offs_k < k_end - i0

            # input position of tap 0 (the padding is folded into the tap offsets)
            h_in = p * conv_stride_h
            w_in = q * conv_stride_w
            pixel_dy = n * stride_dyn + p * stride_dyp + q * stride_dyq
            pixel_x = n * stride_xn + h_in * stride_xh + w_in * stride_xw
            if DEPTH:
                d_in = o * conv_stride_d
                pixel_dy += o * stride_dyo
                pixel_x += d_in * stride_xd
            else:
                d_in = h_in  # unused: a 2-D problem has one depth position
            a = tl.load(dy_ptr + dy_rows[:, None] + pixel_dy[None, :],
                        mask=m_valid[:, None] & k_valid[None, :], other=0.0)
            if PIXELS_INNER:
                # (channels x pixels), pixels along the rows: its transpose is a K-major B tile
                inside = _inside(tap_d, tap_h, tap_w, d_in, h_in, w_in, D, H, W, FLAT_N, DEPTH)
                if not FLAT_N:
                    inside = inside[None, :]
                inside = inside & k_valid[None, :]
                b_t = tl.load(x_ptr + x_cols[:, None] + pixel_x[None, :], mask=inside & n_valid[:, None], other=0.0)
                b = tl.trans(b_t)
            else:
                inside = _inside(d_in, h_in, w_in, tap_d, tap_h, tap_w, D, H, W, FLAT_N, DEPTH)
                if not FLAT_N:
                    inside = inside[:, None]
                inside = inside & k_valid[:, None]
                b = tl.load(x_ptr + pixel_x[:, None] + x_cols[None, :], mask=inside & n_valid[None, :], other=0.0)
            acc = multiply_accumulate(acc, a, b, INPUT_PRECISION, UPCAST)

            # the next block's first pixel: add the step's digits with carries (no division in the loop)
            q0 += step_q
            carry0 = (q0 >= Q).to(tl.int32)
            q0 -= carry0 * Q
            p0 += step_p + carry0
            carry0 = (p0 >= P).to(tl.int32)
            p0 -= carry0 * P
            if DEPTH:
                o0 += step_o + carry0
                carry0 = (o0 >= O).to(tl.int32)
                o0 -= carry0 * O
            n0 += step_n + carry0

    # ---- epilogue: dw[g·Kg + k, c, t, r, s], or this split's partial of it
    dw_rows = widen(split, WIDE_INDEX) * stride_dwsplit + widen(group * Kg + offs_m, WIDE_INDEX) * stride_dwk
    dw_cols = (widen(c, WIDE_INDEX) * stride_dwc + widen(t, WIDE_INDEX) * stride_dwt
               + widen(r, WIDE_INDEX) * stride_dwr + widen(s, WIDE_INDEX) * stride_dws)
    dw_ptrs = dw_ptr + dw_rows[:, None] + dw_cols[None, :]
    tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=m_valid[:, None] & n_valid[None, :])


@triton.jit
def _inside(rows_d, rows_h, rows_w, cols_d, cols_h, cols_w, D, H, W, FLAT_N: tl.constexpr, DEPTH: tl.constexpr):
    """Whether input position rows + cols lies inside the image: a (rows x cols) mask with FLAT_N,
    else a vector (one side's offsets are the tap's scalars). The depth test only for 3-D problems."""
    if FLAT_N:
        h = rows_h[:, None] + cols_h[None, :]
        w = rows_w[:, None] + cols_w[None, :]
    else:
        h = rows_h + cols_h
        w = rows_w + cols_w
    inside = (h >= 0) & (h < H) & (w >= 0) & (w < W)
    if DEPTH:
        if FLAT_N:
            d = rows_d[:, None] + cols_d[None, :]
        else:
            d = rows_d + cols_d
        inside = inside & (d >= 0) & (d < D)
    return inside


@triton.jit
def split_sum_kernel(
    # pointers: partial (splits, numel) and out (numel), both dense in the same element order
    partial_ptr, out_ptr,
    # sizes
    numel, splits,
    # meta-parameters
    WIDE_INDEX: tl.constexpr, BLOCK: tl.constexpr,
):
    """out = partial[0] + partial[1] + ... in that order, in the partials' precision, then cast."""
    offs = widen(tl.program_id(0), WIDE_INDEX) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    total = tl.load(partial_ptr + offs, mask=mask, other=0.0)
    for split in range(1, splits):
        total += tl.load(partial_ptr + widen(split, WIDE_INDEX) * numel + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)


def choose_splits(tiles: int, reduction: int, out_elements: int, out_element_size: int, device: torch.device,
                  operand_size: int = 2) -> int:
    """How many K chunks: minimise (GEMM time over whole waves) + (partial-sum time), in seconds.

    A nominal 128x128 tile takes ``ceil(K/splits / 64) + overhead`` steps of
    ``2·128²·64`` flop at one SM's share of the tensor-core rate (bf16 or TF32 by
    ``operand_size``); ``tiles·splits`` programs, one per SM, take
    ``ceil(tiles·splits / SMs)`` waves. Each split writes and then re-reads one
    fp32 partial of the output (``8·out`` bytes), and the sum is a second
    launch. Splits never shrink below ``_MIN_K_PER_SPLIT`` steps and their
    workspace stays under corrmm's workspace cap.
    """
    return _choose_splits(tiles, reduction, out_elements, out_element_size, operand_size,
                          common.sm_count(device), config.workspace_limit())


@functools.lru_cache(maxsize=1024)
def _choose_splits(tiles, reduction, out_elements, out_element_size, operand_size, sms, workspace_limit) -> int:
    partial_bytes = 4 * out_elements
    most = min(MAX_SPLITS, max(1, reduction // _MIN_K_PER_SPLIT), max(1, workspace_limit // partial_bytes))
    rate = (_RATE_16BIT if operand_size <= 2 else _RATE_32BIT) / sms
    step_seconds = 2.0 * _MODEL_TILE * _MODEL_TILE * _MODEL_STEP / rate
    best, best_cost = 1, None
    for splits in range(1, most + 1):
        waves = -(-tiles * splits // sms)
        steps = -(-reduction // (splits * _MODEL_STEP)) + _PROGRAM_OVERHEAD_STEPS
        cost = waves * steps * step_seconds
        if splits > 1:
            cost += (2 * splits * partial_bytes + out_elements * out_element_size) / _BANDWIDTH + _SUM_LAUNCH_SECONDS
        if best_cost is None or cost < best_cost * 0.98:  # a new split must win by 2%: fewer is simpler
            best, best_cost = splits, cost
    return best


def pixels_inner(dtype: torch.dtype, flat: bool) -> bool:
    """Whether tiles run along pixels (K-major, NCHW operands) rather than along channels.

    Only 32-bit operands with flattened columns (few channels per group, e.g. an
    RGB first layer): there TF32 wgmma reads the K-major tiles as they are, and
    4-byte elements are the narrowest an asynchronous copy moves, so a
    pixel-row gather pipelines (H100, Triton 3.6: L1 47 TFLOP/s against 30 for
    channels-innermost tiles, R1 15 against 12). With channel-block columns the
    pixels-inner kernel measured 2x-10x slower than channels-innermost tiles
    (L2 13 TFLOP/s against 34, L3 24 against 45), so those stay channels innermost.
    16-bit operands would need 2-byte copies; they read channels innermost
    (16-byte vectors), which 16-bit wgmma reads as MN-major tiles.
    """
    return flat and torch.empty((), dtype=dtype).element_size() == 4


def prepare_operands(x: torch.Tensor, dy: torch.Tensor, pixels: bool):
    """x and dy in the layout the tiles read best (see :func:`pixels_inner`); any strides under the interpreter."""
    if common.INTERPRET:
        return x, dy
    if pixels:
        return x.contiguous(), dy.contiguous()
    if x.dim() == 5:
        return (x.contiguous(memory_format=torch.channels_last_3d),
                dy.contiguous(memory_format=torch.channels_last_3d))
    if _both_nchw(x, dy):
        return nhwc_pair(x, dy)
    return transpose.as_nhwc(x), transpose.as_nhwc(dy)


def _both_nchw(x: torch.Tensor, dy: torch.Tensor) -> bool:
    return (x.is_contiguous() and dy.is_contiguous() and transpose.supported(x) and transpose.supported(dy)
            and x.shape[0] == dy.shape[0] and x.dtype == dy.dtype)


# ---- both operands to NHWC in one launch ----------------------------------------------------------
#
# An NCHW call needs x and dy channels-last. Two transposes are two launches, and on small layers a
# launch's host time (~10-20 µs through Triton's launcher) is a visible part of the whole call, so one
# kernel moves both: programs [0, x_tiles) move tiles of x, the rest tiles of dy (the same batch).

@triton.jit
def _transpose_tile(src_ptr, dst_ptr, tile, batch, ROWS, COLS, WIDE_INDEX: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """One BLOCK_R x BLOCK_C tile of image ``batch``: (ROWS, COLS) dense -> (COLS, ROWS) dense."""
    col_tiles = tl.cdiv(COLS, BLOCK_C)
    offs_r = (tile // col_tiles) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = (tile % col_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_r < ROWS)[:, None] & (offs_c < COLS)[None, :]
    base = widen(batch, WIDE_INDEX) * ROWS * COLS
    rows = widen(offs_r, WIDE_INDEX)
    cols = widen(offs_c, WIDE_INDEX)
    values = tl.load(src_ptr + base + rows[:, None] * COLS + cols[None, :], mask=mask)
    tl.store(dst_ptr + base + cols[None, :] * ROWS + rows[:, None], values, mask=mask)


@triton.jit
def nhwc_pair_kernel(
    x_ptr, x_out_ptr, dy_ptr, dy_out_ptr,
    C, HW, K, PQ, x_tiles,
    WIDE_INDEX: tl.constexpr,
    BLOCK_RX: tl.constexpr, BLOCK_CX: tl.constexpr, BLOCK_RY: tl.constexpr, BLOCK_CY: tl.constexpr,
):
    pid = tl.program_id(0)
    batch = tl.program_id(1)
    if pid < x_tiles:
        _transpose_tile(x_ptr, x_out_ptr, pid, batch, C, HW, WIDE_INDEX, BLOCK_RX, BLOCK_CX)
    else:
        _transpose_tile(dy_ptr, dy_out_ptr, pid - x_tiles, batch, K, PQ, WIDE_INDEX, BLOCK_RY, BLOCK_CY)


def nhwc_pair(x: torch.Tensor, dy: torch.Tensor):
    """Channels-last copies of two NCHW-contiguous tensors of one batch, in one launch (and one allocation:
    the two copies are views of one buffer, dy's starting on a 256-byte boundary)."""
    key = ("nhwc_pair", tuple(x.shape), tuple(dy.shape), x.dtype, x.device)
    return common.planned(key, lambda: _NhwcPair(x, dy))(x, dy)


def _nhwc_strides(shape) -> tuple:
    n, c, h, w = shape
    return c * h * w, 1, w * c, c


class _NhwcPair:
    def __init__(self, x: torch.Tensor, dy: torch.Tensor):
        self.x_shape, self.dy_shape = tuple(x.shape), tuple(dy.shape)
        self.x_strides, self.dy_strides = _nhwc_strides(x.shape), _nhwc_strides(dy.shape)
        self.dy_offset = common.cdiv(x.numel(), 128) * 128
        self.numel = self.dy_offset + dy.numel()
        self.launch = _nhwc_pair_launch(x, dy)

    def __call__(self, x: torch.Tensor, dy: torch.Tensor):
        buffer = torch.empty(self.numel, dtype=x.dtype, device=x.device)
        x_out = buffer.as_strided(self.x_shape, self.x_strides)
        dy_out = buffer.as_strided(self.dy_shape, self.dy_strides, self.dy_offset)
        self.launch(x, x_out, dy, dy_out)
        return x_out, dy_out


def _transpose_tile_shape(rows: int) -> tuple:
    """(BLOCK_R, BLOCK_C): 64 x 64, or fewer, longer rows for matrices of few rows (an RGB input: C = 3)."""
    block_r = min(64, max(8, common.bucket(rows)))
    return block_r, 4096 // block_r


def _nhwc_pair_launch(x: torch.Tensor, dy: torch.Tensor) -> common.KernelLaunch:
    n, c, hw, k, pq = x.shape[0], x.shape[1], math.prod(x.shape[2:]), dy.shape[1], math.prod(dy.shape[2:])
    (rx, cx), (ry, cy) = _transpose_tile_shape(c), _transpose_tile_shape(k)
    x_tiles = common.cdiv(c, rx) * common.cdiv(hw, cx)
    grid = (x_tiles + common.cdiv(k, ry) * common.cdiv(pq, cy), n)
    wide = common.needs_wide_index(x.numel() + rx * cx, dy.numel() + ry * cy)
    return common.KernelLaunch(nhwc_pair_kernel, grid, (c, hw, k, pq, x_tiles),
                               dict(WIDE_INDEX=wide, BLOCK_RX=rx, BLOCK_CX=cx, BLOCK_RY=ry, BLOCK_CY=cy))


#: a plane read (:func:`reads_planes`) needs images of a multiple of this many pixels, a multiple of
#: every BLOCK_K of the tile lists: blocks start at multiples of BLOCK_K (splits at multiples of 256),
#: so none then straddles two images (ResNet's 56² = 3136 = 49·64 qualifies)
PLANE_MULTIPLE = 64


def reads_planes(g: ConvGeometry, x: torch.Tensor, dy: torch.Tensor) -> bool:
    """Whether both operands are read straight from NCHW planes (``PLANES``), with no layout copy.

    For a 1x1, unit-stride, unpadded, undilated layer the weight gradient is
    ``dw[k, c] = Σ_n Σ_pixel dy[n, k, pixel] · x[n, c, pixel]``: in NCHW (NCDHW)
    tensors each channel's pixels are one contiguous row, so both tiles are
    K-major rows of 16-byte vectors (what TF32 wgmma needs, and no transposing
    copy of either operand; ResNet's 1x1 layers, e.g. R3: 103 MB of input). Taken
    when x is not channels-last (then the NHWC tiles read it as it is) and each
    image has a multiple of :data:`PLANE_MULTIPLE` pixels.
    """
    return (_plane_geometry(g) and weight_format(x) == torch.contiguous_format
            and weight_format(dy) == torch.contiguous_format)


@functools.lru_cache(maxsize=1024)
def _plane_geometry(g: ConvGeometry) -> bool:
    """1x1, unit stride and dilation, no padding, and images of a multiple of PLANE_MULTIPLE pixels."""
    plain = (all(k == 1 for k in g.kernel) and all(s == 1 for s in g.stride)
             and all(d == 1 for d in g.dilation) and all(p == (0, 0) for p in g.padding))
    return plain and math.prod(g.out_size) % PLANE_MULTIPLE == 0


def use_flat_columns(channels_per_group: int) -> bool:
    """Flatten (t, r, s, c) into the columns when a channel block would be mostly padding."""
    return channels_per_group % 16 != 0 and channels_per_group < 64


def grad_weight(x: torch.Tensor, dy: torch.Tensor, g: ConvGeometry, splits: int = None,
                flat: bool = None, pixels: bool = None, planes: bool = None) -> torch.Tensor:
    """dw (K, C/G, [T,] R, S) from x (N, C, [D,] H, W) and dy (N, K, [O,] P, Q); 2-D or 3-D geometry.

    The result is dense in x's memory format (:func:`weight_format`). ``splits``,
    ``flat``, ``pixels`` and ``planes`` override the split-K count, the column
    layout, the tile orientation and the plane read (tests; ``planes=True`` only
    where :func:`reads_planes` holds).
    """
    if g.ndim not in (2, 3) or x.dim() != g.ndim + 2 or dy.dim() != g.ndim + 2:
        raise ValueError(f"implicit grad_weight takes 2-D or 3-D problems (1-D as H = 1): geometry of "
                         f"{g.ndim} dims, x of {x.dim()} and dy of {dy.dim()} dims")
    out_format = weight_format(x)
    if planes is None:
        planes = reads_planes(g, x, dy)
    elif planes and not reads_planes(g, x.contiguous(), dy.contiguous()):
        raise ValueError("planes=True needs a 1x1, unit-stride, unpadded layer whose images have a multiple of "
                         f"{PLANE_MULTIPLE} pixels; got kernel {g.kernel}, stride {g.stride}, padding {g.padding}, "
                         f"output {g.out_size}")
    if planes:
        flat, pixels = False, False
        x, dy = x.contiguous(), dy.contiguous()
    else:
        if flat is None:
            flat = use_flat_columns(g.channels_per_group)
        if pixels is None:
            pixels = pixels_inner(x.dtype, flat)
        x, dy = prepare_operands(x, dy, pixels)
    key = ("grad_weight", g, x.stride(), dy.stride(), x.dtype, x.device, splits, flat, pixels, planes, out_format,
           common.dot_precision(x.dtype), config.workspace_limit())
    plan = common.planned(key, lambda: _GradWeightPlan(x, dy, g, splits, flat, pixels, out_format, planes))
    return plan(x, dy)


def _as_3d(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.unsqueeze(2) if ndim == 2 else t


def _geometry_3d(g: ConvGeometry):
    """(in_size, kernel, out_size, stride, dilation, pad_low), each with 3 entries (depth 1 for 2-D)."""
    if g.ndim == 3:
        return g.in_size, g.kernel, g.out_size, g.stride, g.dilation, g.pad_low
    return ((1, *g.in_size), (1, *g.kernel), (1, *g.out_size), (1, *g.stride), (1, *g.dilation),
            (0, *g.pad_low))


def _new_weight(x: torch.Tensor, shape, memory_format: torch.memory_format) -> torch.Tensor:
    """dw, dense in ``memory_format`` (NaN-filled when corrmm poisons outputs)."""
    out = torch.empty(tuple(shape), dtype=x.dtype, device=x.device, memory_format=memory_format)
    if config.poisoning():
        out.fill_(float("nan"))
    return out


def weight_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format dw is returned in: x's own (channels_last or channels_last_3d when x is stored
    that way, contiguous otherwise), so the caller gets the layout it would ask for without a copy."""
    return memory_format_of(x)


class _GradWeightPlan:
    """The two launches of one weight-gradient problem (GEMM with split-K, then the fixed-order sum)."""

    def __init__(self, x: torch.Tensor, dy: torch.Tensor, g: ConvGeometry, splits, flat, pixels,
                 out_format: torch.memory_format, planes: bool = False):
        (D, H, W), (T, R, S), (O, P, Q), stride, dilation, pad_low = _geometry_3d(g)
        N, Cg, Kg, G = g.batch, g.channels_per_group, g.filters_per_group, g.groups
        if flat is None:
            flat = use_flat_columns(Cg)
        self.ndim = g.ndim
        self.weight_shape = g.weight_shape
        self.out_format = out_format
        reduction = N * O * P * Q
        patch = Cg * T * R * S
        if splits is None:
            if flat:
                columns = common.cdiv(patch, _MODEL_TILE)
            else:  # one tap's channels per tile: a 64-channel layer has one 64-wide tile per tap
                columns = T * R * S * common.cdiv(Cg, min(_MODEL_TILE, max(16, common.bucket(Cg))))
            tiles = common.cdiv(Kg, _MODEL_TILE) * columns * G
            splits = choose_splits(tiles, reduction, g.out_channels * patch, x.element_size(), x.device,
                                   x.element_size())
        # a multiple of 256 is a multiple of every BLOCK_K, so only the last split has a ragged end
        k_per_split = common.cdiv(common.cdiv(reduction, splits), 256) * 256
        self.splits = splits = common.cdiv(reduction, k_per_split)
        self.workspace_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        dw_2d_or_3d = _new_weight(x, g.weight_shape, out_format)
        dw = _as_3d(dw_2d_or_3d, g.ndim)
        if splits > 1:
            partials = self._workspace(dw_2d_or_3d)
            target = partials.unsqueeze(3) if g.ndim == 2 else partials  # (splits, K, Cg, T, R, S)
        else:
            target = dw
        split_stride = target.stride(0) if splits > 1 else 0
        x3, dy3 = _as_3d(x, g.ndim), _as_3d(dy, g.ndim)
        pads = [0, 0] + [sum(p) for p in g.padding] + ([0] if g.ndim == 2 else [])
        wide = common.needs_wide_index(common.span(x3, pads), common.span(dy3), common.span(target),
                                       reduction + 256)

        def grid(meta):
            if flat:
                columns = common.cdiv(patch, meta["BLOCK_N"])
            else:
                columns = T * R * S * common.cdiv(Cg, meta["BLOCK_N"])
            return (splits * common.cdiv(Kg, meta["BLOCK_M"]) * columns, G)

        scalars = (
            N, D, H, W, O, P, Q, Cg, Kg, T, R, S,
            *stride, *dilation, *pad_low,
            k_per_split,
            *x3.stride(), *dy3.stride(), split_stride, *target.stride()[-5:],
            # N_BUCKET: a tile's columns span the whole patch when flat, one tap's channels otherwise
            common.bucket(Kg), common.bucket(patch if flat else Cg), common.bucket(k_per_split),
        )
        meta = dict(FLAT_N=flat, PIXELS_INNER=pixels, PLANES=planes, DEPTH=(D, O, T) != (1, 1, 1), WIDE_INDEX=wide,
                    INPUT_PRECISION=common.dot_precision(x.dtype),
                    UPCAST=common.upcast_operands(x.dtype), ACC_DTYPE=common.accumulator_dtype(x.dtype))
        self.gemm = common.KernelLaunch(implicit_grad_weight_kernel, grid, scalars, meta)
        if splits > 1:
            numel, block = dw.numel(), 1024
            self.split_sum = common.KernelLaunch(
                split_sum_kernel, (common.cdiv(numel, block),), (numel, splits),
                dict(WIDE_INDEX=common.needs_wide_index(target.numel() + block), BLOCK=block))

    def _workspace(self, dw: torch.Tensor) -> torch.Tensor:
        """(splits, K, Cg, [T,] R, S) partials, each split's slice dense in dw's own element order."""
        numel = dw.numel()
        partials = torch.empty(self.splits * numel, dtype=self.workspace_dtype, device=dw.device)
        return partials.as_strided((self.splits, *dw.shape), (numel, *dw.stride()))

    def __call__(self, x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        # the 2-D tensors go in as they are: the launch's scalars already hold their strides as 3-D
        # ones (depth 1), and a launch reads only the data pointers
        dw = _new_weight(x, self.weight_shape, self.out_format)
        if self.splits > 1:
            partials = self._workspace(dw)
            self.gemm(x, dy, partials)
            self.split_sum(partials, dw)
        else:
            self.gemm(x, dy, dw)
        return dw


_REFERENCE_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def grad_weight_reference(x: torch.Tensor, dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """The same gradient by torch's autograd in float64, cast back to x's dtype."""
    w = torch.zeros(g.weight_shape, dtype=torch.float64, device=x.device, requires_grad=True)
    pads = [p for low_high in reversed(g.padding) for p in low_high]
    y = _REFERENCE_CONV[g.ndim](F.pad(x.double(), pads), w, stride=g.stride, dilation=g.dilation, groups=g.groups)
    (dw,) = torch.autograd.grad(y, w, dy.double())
    return dw.to(x.dtype)
