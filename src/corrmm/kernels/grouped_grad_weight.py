"""Weight gradient of grouped convolutions with small groups: packed groups, split-K, a fixed-order sum.

Shapes as in :mod:`corrmm.kernels.implicit_grad_weight` (3-D; 2-D runs with D = O = T = 1):

    x  (N, C, D, H, W)    dy (N, K, O, P, Q)    dw (K, C/G, T, R, S), allocated channels innermost

    dw[g·Kg + k, c, t, r, s] = Σ_{n, o, p, q} dy[n, g·Kg + k, o, p, q]
                                 · x[n, g·Cg + c, o·sd + t·dd - pd, p·sh + r·dh - ph, q·sw + s·dw - pw]

Why a kernel of its own: per group the GEMM is M = Kg filters by N = Cg·T·R·S
patch entries over K = N·O·P·Q pixels. ResNeXt's 32 groups of 8 give M = 8 and
N = 72: the dense kernel's 64- and 128-row tiles are then 8x to 16x padding,
each program reads 8 channels (16 bytes of bf16) per pixel, and the launch is
32 tiny GEMMs.

**Packed groups.** A program takes GP consecutive groups (``common.group_pack``)
as one GEMM of KB = GP·Kg filters (rows) by CB = GP·Cg channels per tap
(columns, flattened with the tap: column j is channel j % CB of tap j // CB;
a column tile whose width divides CB lies in one tap, which then is a scalar
and the image-bounds mask a per-pixel vector). The product of a (KB x pixels) dy tile and a (pixels x columns) x tile holds
every filter-channel pair of the GP groups; only the diagonal blocks, where
filter and channel belong to the same group, are dw, and only they are stored.
The off-diagonal products are GP - 1 wasted multiplications per useful one, on
tensor cores that these layers leave mostly idle; in exchange each pixel's
GP·Cg channels are one contiguous read and the rows fill a tile. The operands
need no masking for the packing: every loaded value is a real input.

**Split-K.** Few tiles (G / GP blocks x a few column tiles), a long reduction:
the pixels are cut into equal splits, enough for several programs per SM. Each
split writes an fp32 partial (fp64 for float64) and
:func:`corrmm.kernels.implicit_grad_weight.split_sum_kernel` adds them in split
order: no atomics, the same bits on every run.

Loop nest (one program = one column tile of one block of GP groups and one split)::

    for split, column tile, group block:                # grid
        acc = 0                                         # (BLOCK_M >= KB) x BLOCK_N, fp32
        for pixel block in split:                       # digits (n, o, p, q) stepped with carries
            a = dy[n, block·KB : block·KB + KB, o, p, q]                      # (KB x pixels)
            b = x[n, block·CB + c(j), o·sd + t(j)·dd - pd, ...]  for j in tile  # masked gather
            acc += a @ b
        partial[split, diagonal blocks of acc] = acc    # or dw itself with one split
    dw = Σ_split partial[split]                         # fixed order
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import config
from ..geometry import ConvGeometry
from . import common, transpose
from .common import multiply_accumulate, widen
from .implicit_grad_weight import split_sum_kernel

#: (BLOCK_N, BLOCK_K, num_warps, num_stages); BLOCK_M is the packed filter count's power of two,
#: fixed by the host. Wide column tiles read each dy tile for more taps; tiles whose width divides CB
#: hold one tap each, with a cheaper mask (see the kernel)
_TILES = [
    (64, 64, 4, 4),
    (32, 128, 4, 3),
    (32, 32, 4, 4),
    (128, 64, 4, 3),
    (256, 64, 8, 3),
    (32, 64, 4, 4),
    (64, 128, 4, 3),
    (128, 32, 4, 4),
]

#: the packed width (GP·max(Cg, Kg)) this kernel aims for: rows of one 32-filter tile
PACK_WIDTH = 32
#: groups of at most this many filters take this kernel (above it the dense kernel's tiles fill). H100,
#: bf16, batch 64, NCHW inputs (PERFORMANCE.md, "v8"): groups of 16 (512 ch, 14²) 0.090 ms here against
#: the dense kernel's 0.131; groups of 32 (1024 ch, 7²) 0.105 against 0.060
MAX_FILTERS_PER_GROUP = 16
#: programs per SM the split count aims for (short programs, several per SM to hide the gathers' latency)
_PROGRAMS_PER_SM = 4
#: the nominal column tile of the split count (the tuned one is not known before launch)
_MODEL_BLOCK_N = 128
#: a split never gets fewer pixels than this
_MIN_PIXELS_PER_SPLIT = 1024
#: the most splits (fp32 partials of the whole dw each)
MAX_SPLITS = 256


def _configs():
    if common.INTERPRET:
        tiles = [(16, 16, 4, 1)]  # the tests' small shapes span several column tiles and pixel blocks
    elif not common.AUTOTUNE:
        tiles = _TILES[:1]
    else:
        tiles = _TILES
    return [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s) for n, k, w, s in tiles]


def _prune(configs, named_args, **kwargs):
    """Drop column tiles wider than twice the packed patch, and 32-bit tiles that overflow shared memory."""
    columns, element = named_args["N_BUCKET"], named_args["x_ptr"].element_size()
    block_m = kwargs.get("BLOCK_M", named_args.get("BLOCK_M", 32))
    kept = [c for c in configs
            if c.kwargs["BLOCK_N"] <= max(columns, 32)
            and max(c.num_stages, 1) * (block_m + c.kwargs["BLOCK_N"]) * c.kwargs["BLOCK_K"] * element
            <= 200 * 1024]
    return kept or configs[:1]


@triton.autotune(configs=_configs(), key=["N_BUCKET", "K_BUCKET", "BLOCK_M", "CB", "DEPTH", "INPUT_PRECISION"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def grouped_grad_weight_kernel(
    # pointers (dw_ptr: the output, or the fp32 partial workspace when split)
    x_ptr, dy_ptr, dw_ptr,
    # sizes
    N, D, H, W, O, P, Q, Cg, Kg, T, R, S,
    # geometry: stride, dilation, low padding
    conv_stride_d, conv_stride_h, conv_stride_w, dilation_d, dilation_h, dilation_w, pad_d, pad_h, pad_w,
    # split-K: pixels per split (a multiple of every BLOCK_K)
    k_per_split,
    # strides (elements)
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_dyn, stride_dyk, stride_dyo, stride_dyp, stride_dyq,
    stride_dwsplit, stride_dwk, stride_dwc, stride_dwt, stride_dwr, stride_dws,
    # autotuning keys only
    N_BUCKET, K_BUCKET,
    # meta-parameters: CB and KB the channels and filters of one block of GP groups
    CB: tl.constexpr, KB: tl.constexpr, DEPTH: tl.constexpr, WIDE_INDEX: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # ---- program id -> (split, column tile); the group block on the grid's second axis
    pid = tl.program_id(0)
    block = tl.program_id(1)
    taps = T * R * S
    num_pid_n = tl.cdiv(taps * CB, BLOCK_N)
    split = pid // num_pid_n
    pid_n = pid % num_pid_n

    # ---- rows: the block's KB filters
    offs_m = tl.arange(0, BLOCK_M)
    m_valid = offs_m < KB
    dy_rows = widen(block * KB + offs_m, WIDE_INDEX) * stride_dyk

    # ---- columns: (tap, channel) flattened, channel fastest. When BLOCK_N divides CB a tile lies
    # within one tap: the tap is a scalar and the image-bounds mask a per-pixel vector; otherwise
    # every column has its own tap and the mask is 2-D
    ONE_TAP: tl.constexpr = CB % BLOCK_N == 0
    if ONE_TAP:
        # the block start as a multiple of BLOCK_N, so the compiler sees aligned, vectorisable columns
        tap = pid_n // (CB // BLOCK_N)
        c = (pid_n % (CB // BLOCK_N)) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_valid = c < CB
    else:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_valid = offs_n < taps * CB
        c = offs_n % CB
        tap = offs_n // CB
    t = tap // (R * S)
    r = (tap // S) % R
    s = tap % S
    tap_d = t * dilation_d - pad_d
    tap_h = r * dilation_h - pad_h
    tap_w = s * dilation_w - pad_w
    x_cols = (widen(block * CB + c, WIDE_INDEX) * stride_xc
              + widen(tap_h, WIDE_INDEX) * stride_xh + widen(tap_w, WIDE_INDEX) * stride_xw)
    if DEPTH:  # (2-D: no depth term, so the columns' alignment does not hang on the unit depth's stride)
        x_cols += widen(tap_d, WIDE_INDEX) * stride_xd

    # ---- pixel digits of k = 0 .. BLOCK_K-1 (vectors) and of the step BLOCK_K (scalars), once
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

    # ---- this split's pixels and the digits of its first one
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

    for i0 in range(k_start, k_end, BLOCK_K):
        # each pixel: the block's first pixel plus k's digits, at most one carry per digit
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

        h_in = p * conv_stride_h
        w_in = q * conv_stride_w
        pixel_dy = n * stride_dyn + p * stride_dyp + q * stride_dyq
        pixel_x = n * stride_xn + h_in * stride_xh + w_in * stride_xw
        if ONE_TAP:
            h = h_in + tap_h
            w = w_in + tap_w
        else:
            h = h_in[:, None] + tap_h[None, :]
            w = w_in[:, None] + tap_w[None, :]
        inside = (h >= 0) & (h < H) & (w >= 0) & (w < W)
        if DEPTH:
            d_in = o * conv_stride_d
            pixel_dy += o * stride_dyo
            pixel_x += d_in * stride_xd
            if ONE_TAP:
                d = d_in + tap_d
            else:
                d = d_in[:, None] + tap_d[None, :]
            inside = inside & (d >= 0) & (d < D)
        if ONE_TAP:
            inside = inside & k_valid
            inside = inside[:, None]
        else:
            inside = inside & k_valid[:, None]
        a = tl.load(dy_ptr + dy_rows[:, None] + pixel_dy[None, :],
                    mask=m_valid[:, None] & k_valid[None, :], other=0.0)
        b = tl.load(x_ptr + pixel_x[:, None] + x_cols[None, :], mask=inside & n_valid[None, :], other=0.0)
        acc = multiply_accumulate(acc, a, b, INPUT_PRECISION, UPCAST)

        # the next block's first pixel: the step's digits added with carries
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

    # ---- epilogue: the diagonal blocks only (filter and channel of the same group)
    same_group = (offs_m // Kg)[:, None] == (c // Cg)[None, :]
    dw_rows = widen(split, WIDE_INDEX) * stride_dwsplit + widen(block * KB + offs_m, WIDE_INDEX) * stride_dwk
    dw_cols = (widen(c % Cg, WIDE_INDEX) * stride_dwc + widen(t, WIDE_INDEX) * stride_dwt
               + widen(r, WIDE_INDEX) * stride_dwr + widen(s, WIDE_INDEX) * stride_dws)
    tl.store(dw_ptr + dw_rows[:, None] + dw_cols[None, :], acc.to(dw_ptr.dtype.element_ty),
             mask=same_group & m_valid[:, None] & n_valid[None, :])


# ---- host side ----------------------------------------------------------------------------

def applies(g: ConvGeometry) -> bool:
    """Whether this kernel serves the layer's weight gradient: several groups of at most 16 filters each
    (depthwise layers included, when ``algo="implicit"`` is asked for: 32 channels per program)."""
    return g.groups > 1 and g.filters_per_group <= MAX_FILTERS_PER_GROUP and g.ndim in (2, 3)


def pack_for(g: ConvGeometry) -> int:
    """Groups per program (GP): a power of two dividing the group count, GP·max(Cg, Kg) <= 32."""
    return common.group_pack(g.groups, g.channels_per_group, g.filters_per_group, PACK_WIDTH)


def choose_splits(blocks: int, columns: int, reduction: int, out_elements: int, device: torch.device) -> int:
    """Pixel splits: enough for about ``_PROGRAMS_PER_SM`` programs per SM over the nominal tiles,
    none shorter than ``_MIN_PIXELS_PER_SPLIT`` pixels, the partials within corrmm's workspace cap."""
    tiles = blocks * common.cdiv(columns, _MODEL_BLOCK_N)
    wanted = common.cdiv(_PROGRAMS_PER_SM * common.sm_count(device), tiles)
    most = min(MAX_SPLITS, max(1, reduction // _MIN_PIXELS_PER_SPLIT),
               max(1, config.workspace_limit() // (4 * out_elements)))
    return max(1, min(wanted, most))


def prepare_operands(x: torch.Tensor, dy: torch.Tensor):
    """x and dy with channels innermost (a pixel's packed channels and filters are contiguous);
    any strides under the interpreter."""
    if common.INTERPRET:
        return x, dy
    if x.dim() == 5:
        return (x.contiguous(memory_format=torch.channels_last_3d),
                dy.contiguous(memory_format=torch.channels_last_3d))
    return transpose.as_nhwc(x), transpose.as_nhwc(dy)


def grad_weight(x: torch.Tensor, dy: torch.Tensor, g: ConvGeometry, splits: int = None,
                pack: int = None) -> torch.Tensor:
    """dw (K, C/G, [T,] R, S) from x (N, C, [D,] H, W) and dy (N, K, [O,] P, Q); 2-D or 3-D geometry.

    The result is dense with channels innermost. ``splits`` and ``pack`` override the
    split count and the groups per program (tests, benchmarks); ``pack`` must divide the groups.
    """
    if g.ndim not in (2, 3) or x.dim() != g.ndim + 2 or dy.dim() != g.ndim + 2:
        raise ValueError(f"grouped grad_weight takes 2-D or 3-D problems (1-D as H = 1): geometry of "
                         f"{g.ndim} dims, x of {x.dim()} and dy of {dy.dim()} dims")
    if pack is None:
        pack = pack_for(g)
    if pack < 1 or g.groups % pack:
        raise ValueError(f"pack={pack} must be a positive divisor of groups={g.groups}")
    x, dy = prepare_operands(x, dy)
    key = ("grouped_grad_weight", g, x.stride(), dy.stride(), x.dtype, x.device, splits, pack,
           common.dot_precision(x.dtype), config.workspace_limit())
    plan = common.planned(key, lambda: _Plan(x, dy, g, splits, pack))
    return plan(x, dy)


def _as_3d(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.unsqueeze(2) if ndim == 2 else t


def _new_weight(x: torch.Tensor, shape) -> torch.Tensor:
    """dw, dense with channels innermost (NaN-filled when corrmm poisons outputs)."""
    if len(shape) == 4:
        return common.new_nhwc(x, shape)
    out = torch.empty(tuple(shape), dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)
    if config.poisoning():
        out.fill_(float("nan"))
    return out


class _Plan:
    """The launches of one problem: the packed GEMM with split-K, then (split) the fixed-order sum."""

    def __init__(self, x: torch.Tensor, dy: torch.Tensor, g: ConvGeometry, splits, pack: int):
        (D, H, W), (T, R, S), (O, P, Q) = common.as_3d(g.in_size), common.as_3d(g.kernel), common.as_3d(g.out_size)
        stride, dilation = common.as_3d(g.stride), common.as_3d(g.dilation)
        pad_low = common.as_3d(g.pad_low, fill=0)
        N, Cg, Kg, G = g.batch, g.channels_per_group, g.filters_per_group, g.groups
        CB, KB = pack * Cg, pack * Kg
        self.ndim, self.weight_shape = g.ndim, g.weight_shape
        reduction = N * O * P * Q
        columns = CB * T * R * S
        if splits is None:
            splits = choose_splits(G // pack, columns, reduction, g.out_channels * Cg * T * R * S, x.device)
        # a multiple of 256 pixels is a multiple of every BLOCK_K: only the last split is ragged
        k_per_split = common.cdiv(common.cdiv(reduction, splits), 256) * 256
        self.splits = splits = common.cdiv(reduction, k_per_split)
        self.workspace_shape = (splits, g.out_channels, T, R, S, Cg)
        self.workspace_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        dw = _as_3d(_new_weight(x, g.weight_shape), g.ndim)
        target = self._workspace(x) if splits > 1 else dw
        x3, dy3 = _as_3d(x, g.ndim), _as_3d(dy, g.ndim)
        pads = [0, 0] + [sum(p) for p in common.as_3d(g.padding, fill=(0, 0))]
        wide = common.needs_wide_index(common.span(x3, pads), common.span(dy3), common.span(target),
                                       reduction + 256)

        def grid(meta):
            return (splits * common.cdiv(columns, meta["BLOCK_N"]), G // pack)

        scalars = (
            N, D, H, W, O, P, Q, Cg, Kg, T, R, S,
            *stride, *dilation, *pad_low,
            k_per_split,
            *x3.stride(), *dy3.stride(), target.stride(0) if splits > 1 else 0, *target.stride()[-5:],
            common.bucket(columns), common.bucket(k_per_split),
        )
        meta = dict(CB=CB, KB=KB, DEPTH=(D, O, T) != (1, 1, 1), WIDE_INDEX=wide,
                    INPUT_PRECISION=common.dot_precision(x.dtype), UPCAST=common.upcast_operands(x.dtype),
                    ACC_DTYPE=common.accumulator_dtype(x.dtype), BLOCK_M=max(16, common.bucket(KB)))
        self.gemm = common.KernelLaunch(grouped_grad_weight_kernel, grid, scalars, meta)
        if splits > 1:
            numel, block = dw.numel(), 1024
            self.split_sum = common.KernelLaunch(
                split_sum_kernel, (common.cdiv(numel, block),), (numel, splits),
                dict(WIDE_INDEX=common.needs_wide_index(target.numel() + block), BLOCK=block))

    def _workspace(self, like: torch.Tensor) -> torch.Tensor:
        # (splits, K, T, R, S, Cg) in memory: each split's slice dense in dw's own element order
        partials = torch.empty(self.workspace_shape, dtype=self.workspace_dtype, device=like.device)
        return partials.permute(0, 1, 5, 2, 3, 4)

    def __call__(self, x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        dw = _new_weight(x, self.weight_shape)
        dw3 = _as_3d(dw, self.ndim)
        x3, dy3 = _as_3d(x, self.ndim), _as_3d(dy, self.ndim)
        if self.splits > 1:
            partials = self._workspace(x)
            self.gemm(x3, dy3, partials)
            self.split_sum(partials, dw3)
        else:
            self.gemm(x3, dy3, dw3)
        return dw
