"""Implicit-GEMM weight gradient: dw = corr_grad_weight(x, dy), split-K with a deterministic sum.

Shapes (2-D; 1-D problems arrive as H = 1 views), per group g of G:

    x  (N, C, H, W)      any strides (NHWC on a GPU)
    dy (N, K, P, Q)      any strides (NHWC on a GPU)
    dw (K, C/G, R, S)    allocated (K, R, S, C/G) in memory: channels innermost

    dw[g·Kg + k, c, r, s] = Σ_{n, p, q} dy[n, g·Kg + k, p, q] · x[n, g·Cg + c, p·sh + r·dh - ph, q·sw + s·dw - pw]

GEMM view (CUTLASS's "wgrad"), per group:

    M = Kg (filters)     N = Cg·R·S (the patch)     K = N·P·Q (every output pixel of the batch)

    A[k, (n, p, q)] = dy[n, k, p, q]
    B[(n, p, q), (r, s, c)] = x at pixel (n, p, q) shifted by tap (r, s), channel c (zero outside)

M·N is small (one filter bank) and K is huge (the batch times the image), so
the tiles alone rarely fill the GPU: the K range is cut into ``splits`` equal
chunks (split-K). Each split writes its own fp32 partial (fp64 for float64)
into a workspace, and a second kernel adds the partials in split order,
0, 1, 2, ..., and casts: no atomics, so the result is bit-for-bit the same on
every run. With one split the GEMM kernel writes dw directly in its dtype.
:func:`choose_splits` picks the count from a two-term cost model (waves of tiles
over the SMs; bytes of the partial sums).

Columns: each N tile is one kernel tap (r, s) and BLOCK_N consecutive channels,
so the B gather is BLOCK_K pixels x contiguous channels (NHWC) and its mask
depends on the pixel only; with few channels per group (FLAT_N) a tile instead
covers BLOCK_N consecutive (r, s, c) of the flattened patch.

Loop nest (one program = one BLOCK_M x BLOCK_N tile of one split of one group)::

    for split, m-tile, n-tile, g:                           # grid (split slowest: a split's tiles share dy, x in L2)
        acc = 0
        for t0 in range(split·k_per_split, min(next split, N·P·Q), BLOCK_K):
            (n, p, q) = unravel(t0 : t0+BK)
            a = dy[n, m-tile, p, q]
            b = x[n, c-tile, p·sh + r·dh - ph, q·sw + s·dw - pw]   # masked gather
            acc += a @ b
        partial[split, m-tile, n-tile] = acc                # or dw itself when splits == 1
    dw = Σ_split partial[split]                             # fixed order (split_sum_kernel)
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .. import config
from ..geometry import ConvGeometry
from . import common, transpose
from .common import multiply_accumulate, widen

#: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); the K loop is long, so deep pipelines
GRAD_WEIGHT_CONFIGS = common.make_configs([
    (128, 128, 64, 8, 3),
    (128, 256, 64, 8, 3),
    (128, 128, 32, 4, 4),
    (64, 128, 64, 4, 4),
    (128, 64, 64, 4, 4),
    (64, 64, 64, 4, 4),
    (128, 32, 64, 4, 4),
    (64, 16, 64, 4, 4),
])

#: the nominal tile of the split-K cost model (the tuned tile is not known before launch)
_MODEL_TILE = 128
#: a split never gets fewer reduction steps than this (below it the partial traffic dominates)
_MIN_K_PER_SPLIT = 256
#: enough for a handful of tiles to fill 132 SMs (an 11x11 RGB layer has 3 tiles)
MAX_SPLITS = 128
#: arithmetic intensity (flop per byte of DRAM traffic) at which an H100 is balanced in bf16
_FLOP_PER_BYTE = 250.0


@triton.autotune(configs=GRAD_WEIGHT_CONFIGS, key=["M_BUCKET", "N_BUCKET", "K_BUCKET", "FLAT_N", "INPUT_PRECISION"],
                 prune_configs_by={"early_config_prune": common.prune_configs("x_ptr")})
@triton.jit
def implicit_grad_weight_kernel(
    # pointers (dw_ptr: the output, or the fp32 partial workspace when split)
    x_ptr, dy_ptr, dw_ptr,
    # sizes
    N, H, W, P, Q, Cg, Kg, R, S,
    # geometry: stride, dilation, low padding
    conv_stride_h, conv_stride_w, dilation_h, dilation_w, pad_h, pad_w,
    # split-K: reduction elements per split (a multiple of every BLOCK_K)
    k_per_split,
    # strides (elements)
    stride_xn, stride_xc, stride_xh, stride_xw,
    stride_dyn, stride_dyk, stride_dyp, stride_dyq,
    stride_dwsplit, stride_dwk, stride_dwc, stride_dwr, stride_dws,
    # autotuning keys only
    M_BUCKET, N_BUCKET, K_BUCKET,
    # meta-parameters
    FLAT_N: tl.constexpr, WIDE_INDEX: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # ---- program id -> (split, m-tile, n-tile)
    pid = tl.program_id(0)
    group = tl.program_id(1)
    num_pid_m = tl.cdiv(Kg, BLOCK_M)
    if FLAT_N:
        num_pid_n = tl.cdiv(Cg * R * S, BLOCK_N)
    else:
        channel_blocks = tl.cdiv(Cg, BLOCK_N)
        num_pid_n = R * S * channel_blocks
    tiles = num_pid_m * num_pid_n
    split = pid // tiles
    pid_m = (pid % tiles) // num_pid_n
    pid_n = (pid % tiles) % num_pid_n

    # ---- rows: filters of this group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < Kg
    dy_rows = widen(group * Kg + offs_m, WIDE_INDEX) * stride_dyk

    # ---- columns: (r, s, c) of the patch; r and s are scalars unless FLAT_N
    if FLAT_N:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_valid = offs_n < Cg * R * S
        c = offs_n % Cg
        r = (offs_n // Cg) // S
        s = (offs_n // Cg) % S
    else:
        rs = pid_n // channel_blocks
        c = (pid_n - rs * channel_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_valid = c < Cg
        r = rs // S
        s = rs - r * S
    tap_h = r * dilation_h
    tap_w = s * dilation_w
    x_cols = (widen(group * Cg + c, WIDE_INDEX) * stride_xc + widen(tap_h, WIDE_INDEX) * stride_xh
              + widen(tap_w, WIDE_INDEX) * stride_xw)

    # ---- this split's range of the reduction over (n, p, q)
    plane = widen(P, WIDE_INDEX) * Q
    k_start = widen(split, WIDE_INDEX) * k_per_split
    k_end = tl.minimum(k_start + k_per_split, N * plane)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)

    # ---- K loop
    for k0 in range(k_start, k_end, BLOCK_K):
        t = k0 + offs_k
        t_valid = t < k_end
        n = t // plane
        p = (t % plane) // Q
        q = (t % plane) % Q
        a_ptrs = dy_ptr + dy_rows[:, None] + (n * stride_dyn + p * stride_dyp + q * stride_dyq)[None, :]
        a = tl.load(a_ptrs, mask=m_valid[:, None] & t_valid[None, :], other=0.0)
        h_top = p * conv_stride_h - pad_h
        w_left = q * conv_stride_w - pad_w
        x_rows = n * stride_xn + h_top * stride_xh + w_left * stride_xw
        if FLAT_N:
            h = h_top[:, None] + tap_h[None, :]
            w = w_left[:, None] + tap_w[None, :]
            inside = (h >= 0) & (h < H) & (w >= 0) & (w < W) & t_valid[:, None]
        else:
            h = h_top + tap_h
            w = w_left + tap_w
            inside = ((h >= 0) & (h < H) & (w >= 0) & (w < W) & t_valid)[:, None]
        b_ptrs = x_ptr + x_rows[:, None] + x_cols[None, :]
        b = tl.load(b_ptrs, mask=inside & n_valid[None, :], other=0.0)
        acc = multiply_accumulate(acc, a, b, INPUT_PRECISION, UPCAST)

    # ---- epilogue: dw[g·Kg + k, c, r, s], or this split's partial of it
    dw_rows = widen(split, WIDE_INDEX) * stride_dwsplit + widen(group * Kg + offs_m, WIDE_INDEX) * stride_dwk
    dw_cols = widen(c, WIDE_INDEX) * stride_dwc + widen(r, WIDE_INDEX) * stride_dwr + widen(s, WIDE_INDEX) * stride_dws
    dw_ptrs = dw_ptr + dw_rows[:, None] + dw_cols[None, :]
    tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=m_valid[:, None] & n_valid[None, :])


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


def choose_splits(tiles: int, reduction: int, out_elements: int, out_element_size: int, device: torch.device) -> int:
    """How many K chunks: minimise (GEMM time over whole waves) + (partial-sum traffic).

    Both terms in units of one flop at the whole GPU's peak rate. A nominal
    128x128 tile over its share of K costs ``2·128²·K/splits`` flop on one of the
    ``SMs`` multiprocessors (``SMs`` times that in whole-GPU units), one program
    per SM, so ``tiles·splits`` programs take ``ceil(tiles·splits / SMs)`` waves.
    Each split writes and then re-reads one fp32 partial of the output
    (``8·out`` bytes), converted to flop at the GPU's balance point. Splits never
    shrink below ``_MIN_K_PER_SPLIT`` steps and their workspace stays under
    corrmm's workspace cap.
    """
    return _choose_splits(tiles, reduction, out_elements, out_element_size, common.sm_count(device),
                          config.workspace_limit())


@functools.lru_cache(maxsize=1024)
def _choose_splits(tiles, reduction, out_elements, out_element_size, sms, workspace_limit) -> int:
    partial_bytes = 4 * out_elements
    most = min(MAX_SPLITS, max(1, reduction // _MIN_K_PER_SPLIT), max(1, workspace_limit // partial_bytes))
    best, best_cost = 1, None
    for splits in range(1, most + 1):
        waves = -(-tiles * splits // sms)
        gemm = waves * 2.0 * _MODEL_TILE * _MODEL_TILE * reduction * sms / splits
        traffic = 0.0 if splits == 1 else (2 * splits * partial_bytes + out_elements * out_element_size)
        cost = gemm + traffic * _FLOP_PER_BYTE
        if best_cost is None or cost < best_cost * 0.98:  # a new split must win by 2%: fewer is simpler
            best, best_cost = splits, cost
    return best


def prepare_operands(x: torch.Tensor, dy: torch.Tensor):
    """x and dy with channels innermost: the B tile's columns and the A tile's rows contiguous.

    Here K is the pixel index (n, p, q), which no NHWC operand holds contiguously,
    so both tiles are MN-major: 16-bit wgmma reads them as they are, TF32 wgmma
    (K-major only) does not, and float32 runs far below the other passes (L3 on an
    H100: 47 TFLOP/s). Laying dy, or dy and x, out batch-innermost, (C, N, H, W)
    in memory, measured slower still (29 and 35 TFLOP/s), so NHWC stays.
    """
    return transpose.as_nhwc(x), transpose.as_nhwc(dy)


def use_flat_columns(channels_per_group: int) -> bool:
    """Flatten (r, s, c) into the columns when a channel block would be mostly padding."""
    return channels_per_group % 16 != 0 and channels_per_group < 64


def grad_weight(x: torch.Tensor, dy: torch.Tensor, g: ConvGeometry, splits: int = None,
                flat: bool = None) -> torch.Tensor:
    """dw (K, C/G, R, S) from x (N, C, H, W) and dy (N, K, P, Q); 2-D geometry.

    The result is dense with channels innermost (channels_last). ``splits`` and
    ``flat`` override the split-K count and the column layout (tests).
    """
    assert g.ndim == 2 and x.dim() == 4 and dy.dim() == 4, "implicit kernels take 2-D problems (1-D as H = 1)"
    x, dy = prepare_operands(x, dy)
    key = ("grad_weight", g, x.stride(), dy.stride(), x.dtype, x.device, splits, flat,
           common.dot_precision(x.dtype), config.workspace_limit())
    plan = common.planned(key, lambda: _GradWeightPlan(x, dy, g, splits, flat))
    return plan(x, dy)


class _GradWeightPlan:
    """The two launches of one weight-gradient problem (GEMM with split-K, then the fixed-order sum)."""

    def __init__(self, x: torch.Tensor, dy: torch.Tensor, g: ConvGeometry, splits, flat):
        (H, W), (R, S), (P, Q) = g.in_size, g.kernel, g.out_size
        N, Cg, Kg, G = g.batch, g.channels_per_group, g.filters_per_group, g.groups
        if flat is None:
            flat = use_flat_columns(Cg)
        self.weight_shape = g.weight_shape
        dw = common.new_nhwc(x, g.weight_shape)
        reduction = N * P * Q
        patch = Cg * R * S
        if splits is None:
            tiles = common.cdiv(Kg, _MODEL_TILE) * common.cdiv(patch, _MODEL_TILE) * G
            splits = choose_splits(tiles, reduction, dw.numel(), dw.element_size(), x.device)
        # a multiple of 256 is a multiple of every BLOCK_K, so only the last split has a ragged end
        k_per_split = common.cdiv(common.cdiv(reduction, splits), 256) * 256
        self.splits = splits = common.cdiv(reduction, k_per_split)
        # (splits, K, R, S, Cg) in memory: each split's slice dense in dw's own element order
        self.workspace_shape = (splits, g.out_channels, R, S, Cg)
        self.workspace_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        target = self._workspace(x) if splits > 1 else dw
        split_stride = target.stride(0) if splits > 1 else 0
        pads = [0, 0, sum(g.padding[0]), sum(g.padding[1])]
        wide = common.needs_wide_index(common.span(x, pads), common.span(dy), common.span(target), reduction + 256)

        def grid(meta):
            if flat:
                columns = common.cdiv(patch, meta["BLOCK_N"])
            else:
                columns = R * S * common.cdiv(Cg, meta["BLOCK_N"])
            return (splits * common.cdiv(Kg, meta["BLOCK_M"]) * columns, G)

        scalars = (
            N, H, W, P, Q, Cg, Kg, R, S,
            g.stride[0], g.stride[1], g.dilation[0], g.dilation[1], g.pad_low[0], g.pad_low[1],
            k_per_split,
            *x.stride(), *dy.stride(), split_stride, *target.stride()[-4:],
            # N_BUCKET: a tile's columns span the whole patch when flat, one tap's channels otherwise
            common.bucket(Kg), common.bucket(patch if flat else Cg), common.bucket(k_per_split),
        )
        meta = dict(FLAT_N=flat, WIDE_INDEX=wide, INPUT_PRECISION=common.dot_precision(x.dtype),
                    UPCAST=common.upcast_operands(x.dtype), ACC_DTYPE=common.accumulator_dtype(x.dtype))
        self.gemm = common.KernelLaunch(implicit_grad_weight_kernel, grid, scalars, meta)
        if splits > 1:
            numel, block = dw.numel(), 1024
            self.split_sum = common.KernelLaunch(
                split_sum_kernel, (common.cdiv(numel, block),), (numel, splits),
                dict(WIDE_INDEX=common.needs_wide_index(target.numel() + block), BLOCK=block))

    def _workspace(self, like: torch.Tensor) -> torch.Tensor:
        partials = torch.empty(self.workspace_shape, dtype=self.workspace_dtype, device=like.device)
        return partials.permute(0, 1, 4, 2, 3)

    def __call__(self, x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        dw = common.new_nhwc(x, self.weight_shape)
        if self.splits > 1:
            partials = self._workspace(x)
            self.gemm(x, dy, partials)
            self.split_sum(partials, dw)
        else:
            self.gemm(x, dy, dw)
        return dw


def grad_weight_reference(x: torch.Tensor, dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """The same gradient by torch's autograd in float64, cast back to x's dtype."""
    w = torch.zeros(g.weight_shape, dtype=torch.float64, device=x.device, requires_grad=True)
    pads = [p for low_high in reversed(g.padding) for p in low_high]
    y = F.conv2d(F.pad(x.double(), pads), w, stride=g.stride, dilation=g.dilation, groups=g.groups)
    (dw,) = torch.autograd.grad(y, w, dy.double())
    return dw.to(x.dtype)
