"""Implicit-GEMM input gradient: dx = corr_grad_input(w, dy), no zero insertion, no col2im.

Shapes, written 2-D below; 3-D problems add a depth axis (D, kernel depth T, output
depth O) that is split into phases exactly like h, and a 2-D problem compiles
without it; 1-D problems arrive as H = 1 views. Per group g of G:

    dy (N, K, [O,] P, Q)      any strides (NHWC / NDHWC on a GPU)
    w  (K, C/G, [T,] R, S)    any strides
    dx (N, C, [D,] H, W)      allocated in dy's memory format (common.new_output): no copy afterwards

    dx[n, g·Cg + c, h, w] = Σ_{k, r, s : p, q integral and in range} dy[n, g·Kg + k, p, q] · w[g·Kg + k, c, r, s]
        with p = (h + ph - r·dh) / sh,  q = (w + pw - s·dw) / sw

GEMM view (CUTLASS's "dgrad"), per group: M = N·H·W (input pixels), N = Cg, K = Kg·R·S.

Strided problems split into sh·sw sub-problems (CUTLASS's strided dgrad).
Input row h is reached through tap r only when ``h + ph - r·dh`` is a multiple
of sh, i.e. when ``r·dh ≡ (h + ph) (mod sh)``: the residue ``phase_h = (h + ph) mod sh``
decides which taps contribute. Grouping the rows by phase makes the tap set
uniform within a sub-problem: with gg = gcd(sh, dh), the taps are
``r = r0, r0 + sh/gg, r0 + 2·sh/gg, ...`` (r0 the one solution in [0, sh/gg)),
and a phase not divisible by gg has no taps at all (its rows get zeros). So
every sub-problem is a dense GEMM over exactly the taps that contribute:
M = N·ceil(H/sh)·ceil(W/sw), K = Kg·ceil(R·gg/sh)·ceil(S·gg/sw), no multiply by an
inserted zero. Within a sub-problem, row h = h_first + i·sh reads
``p = (h + ph)//sh - (r·dh - phase_h)//sh``: a per-row base minus a per-tap
shift, both exact non-negative divisions (Triton's integer division truncates
on the GPU and floors in the interpreter; the kernels never divide a negative).

Each tile further runs only the taps through which at least one of its rows
reads inside dy (:func:`tap_window`): for a tall kernel over a short output (a
spectrogram layer whose 128-row kernel covers the whole input height) a tile of
one image row has one tap row in 128 that contributes.

Groups are packed as in the forward pass (PACKED: GP groups per program,
block-diagonal weight tile; see :mod:`.implicit_forward`).

Loop nest (one program = one BLOCK_M x BLOCK_N tile of one sub-problem of one group block)::

    for m-tile, n-tile, (g, phase_h, phase_w):             # grid
        acc = 0
        for (r, s) in the tile's contributing taps, k0 in filter blocks:   # one K step each
            a = dy[n(m), k0:k0+BK, p(m, r), q(m, s)]        # masked: p, q inside the output
            b = w[k0:k0+BK, c-tile, r, s]
            acc += a @ b
        dx[m-tile (rows of this phase), c-tile] = acc       # every dx element written once
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..geometry import ConvGeometry
from . import common, transpose
from .common import multiply_accumulate, widen

#: the forward pass's tiles (the narrow ones serve the input gradient of an RGB layer, N = C = 3, and packed groups)
GRAD_INPUT_CONFIGS = common.make_configs(common.DIRECT_TILES + common.NARROW_TILES)


@triton.jit
def tap_window(first, taps, tap_step, dilation, conv_stride, phase, base_min, base_max, out_len):
    """(j0, count): the tap indices j0 <= j < j0 + count of a phase (tap = first + j·tap_step) through
    which some row of the tile reads inside the output, [0, out_len).

    A row whose base position is ``base`` reads ``base - shift(j)``, where
    ``shift(j) = (first·dilation - phase)/stride + j·(tap_step·dilation/stride)``
    (exact: first·dilation >= phase and ≡ phase modulo the stride). Every division
    below has a non-negative numerator (Triton truncates on the GPU, floors in the
    interpreter); those of the branch tl.where discards do not matter.
    """
    shift0 = (first * dilation - phase) // conv_stride
    unit = tap_step * dilation // conv_stride
    low = base_min - out_len + 1 - shift0  # shift(j) must be > base_min - out_len
    j0 = tl.where(low > 0, (low + unit - 1) // unit, 0)
    high = base_max - shift0  # and <= base_max
    j_end = tl.minimum(tl.where(high >= 0, high // unit + 1, 0), taps)
    j0 = tl.minimum(j0, j_end)
    return j0, j_end - j0


@triton.jit
def first_tap(kernel_len, tap_step, dilation, conv_stride, phase):
    """The one tap t < tap_step with t·dilation ≡ phase (mod stride), or kernel_len + tap_step if none;
    and the number of taps first, first + tap_step, ... below kernel_len."""
    first = kernel_len + tap_step
    for i in range(0, tap_step):
        first = tl.where((i * dilation + conv_stride - phase) % conv_stride == 0, i, first)
    taps = tl.where(first < kernel_len, (kernel_len - first + tap_step - 1) // tap_step, 0)
    return first, taps


@triton.autotune(configs=GRAD_INPUT_CONFIGS,
                 key=["M_BUCKET", "N_BUCKET", "K_BUCKET", "PACKED", "VOLUMETRIC", "INPUT_PRECISION"],
                 prune_configs_by={"early_config_prune": common.prune_configs("dy_ptr")}, **common.TUNER_OPTIONS)
@triton.jit
def implicit_grad_input_kernel(
    # pointers
    dy_ptr, w_ptr, dx_ptr,
    # sizes; CB and KB are the channels and filters of one program's block of groups (Cg and Kg unpacked)
    N, D, H, W, O, P, Q, Cg, Kg, T, R, S, CB, KB,
    # geometry: stride, dilation, low padding, and the distance between contributing taps
    conv_stride_d, conv_stride_h, conv_stride_w, dilation_d, dilation_h, dilation_w, pad_d, pad_h, pad_w,
    tap_step_d, tap_step_h, tap_step_w,
    # strides (elements)
    stride_dyn, stride_dyk, stride_dyo, stride_dyp, stride_dyq,
    stride_wk, stride_wc, stride_wt, stride_wr, stride_ws,
    stride_dxn, stride_dxc, stride_dxd, stride_dxh, stride_dxw,
    # autotuning keys only
    M_BUCKET, N_BUCKET, K_BUCKET,
    # meta-parameters
    VOLUMETRIC: tl.constexpr, PACKED: tl.constexpr,
    WIDE_INDEX: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # ---- program id -> (group block, sub-problem, tile)
    pid = tl.program_id(0)
    plane_phases = conv_stride_h * conv_stride_w
    phases = conv_stride_d * plane_phases
    block = tl.program_id(1) // phases
    phase = tl.program_id(1) % phases
    phase_hw = phase % plane_phases
    phase_h = phase_hw // conv_stride_w  # (h + pad_h) mod sh for every row of this sub-problem
    phase_w = phase_hw % conv_stride_w
    num_pid_n = tl.cdiv(CB, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n

    # ---- the taps that reach this phase: r·dh ≡ phase_h (mod sh); at most one solution below tap_step
    first_r, taps_h = first_tap(R, tap_step_h, dilation_h, conv_stride_h, phase_h)
    first_s, taps_w = first_tap(S, tap_step_w, dilation_w, conv_stride_w, phase_w)

    # ---- rows: input pixels of this phase, h = h_first + i·sh (all numerators below are >= 0)
    h_first = (phase_h + conv_stride_h - pad_h % conv_stride_h) % conv_stride_h
    w_first = (phase_w + conv_stride_w - pad_w % conv_stride_w) % conv_stride_w
    rows_h = (H - h_first + conv_stride_h - 1) // conv_stride_h
    cols_w = (W - w_first + conv_stride_w - 1) // conv_stride_w
    plane = widen(rows_h, WIDE_INDEX) * cols_w
    if VOLUMETRIC:
        phase_d = phase // plane_phases
        first_t, taps_d = first_tap(T, tap_step_d, dilation_d, conv_stride_d, phase_d)
        d_first = (phase_d + conv_stride_d - pad_d % conv_stride_d) % conv_stride_d
        rows_d = (D - d_first + conv_stride_d - 1) // conv_stride_d
        volume = plane * rows_d
    else:
        volume = plane
    offs_m = widen(pid_m, WIDE_INDEX) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < N * volume
    n = offs_m // tl.maximum(volume, 1)
    ij = offs_m % tl.maximum(volume, 1)
    if VOLUMETRIC:
        d = d_first + (ij // tl.maximum(plane, 1)) * conv_stride_d
        ij = ij % tl.maximum(plane, 1)
    h = h_first + (ij // tl.maximum(cols_w, 1)) * conv_stride_h
    w = w_first + (ij % tl.maximum(cols_w, 1)) * conv_stride_w
    # dy position read through the phase's first virtual tap; a tap r shifts it back by (r·dh - phase_h) / sh
    p_base = (h + pad_h) // conv_stride_h
    q_base = (w + pad_w) // conv_stride_w
    dy_rows = n * stride_dyn + p_base * stride_dyp + q_base * stride_dyq
    if VOLUMETRIC:
        o_base = (d + pad_d) // conv_stride_d
        dy_rows += o_base * stride_dyo

    # ---- the taps through which some row of this tile reads inside dy: a tall kernel over a short
    # output (or a large padding) leaves most taps without a valid row in a tile, and skipping them
    # skips their loads and products
    far = 1 << 30
    r0, taps_r = tap_window(first_r, taps_h, tap_step_h, dilation_h, conv_stride_h, phase_h,
                            tl.min(tl.where(m_valid, p_base, far)), tl.max(tl.where(m_valid, p_base, -1)), P)
    s0, taps_s = tap_window(first_s, taps_w, tap_step_w, dilation_w, conv_stride_w, phase_w,
                            tl.min(tl.where(m_valid, q_base, far)), tl.max(tl.where(m_valid, q_base, -1)), Q)
    plane_taps = taps_r * taps_s
    if VOLUMETRIC:
        t0, taps_t = tap_window(first_t, taps_d, tap_step_d, dilation_d, conv_stride_d, phase_d,
                                tl.min(tl.where(m_valid, o_base, far)), tl.max(tl.where(m_valid, o_base, -1)), O)
        window_taps = plane_taps * taps_t
    else:
        window_taps = plane_taps

    # ---- columns: input channels of this group (block)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < CB
    if PACKED:
        channel_group = offs_n // Cg  # group of each column within the block
        w_cols = widen(offs_n % Cg, WIDE_INDEX) * stride_wc
    else:
        w_cols = widen(offs_n, WIDE_INDEX) * stride_wc

    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)

    # ---- K loop over (contributing tap, filter block); empty tiles and tapless phases run no step
    filter_blocks = tl.cdiv(KB, BLOCK_K)
    steps = tl.where(widen(pid_m, WIDE_INDEX) * BLOCK_M < N * volume, window_taps * filter_blocks, 0)
    for step in range(0, steps):
        tap = step // filter_blocks
        k = (step - tap * filter_blocks) * BLOCK_K + offs_k
        if VOLUMETRIC:
            tap_t = tap // plane_taps
            tap = tap - tap_t * plane_taps
        tap_r = tap // taps_s
        r = first_r + (r0 + tap_r) * tap_step_h
        s = first_s + (s0 + tap - tap_r * taps_s) * tap_step_w
        shift_h = (r * dilation_h - phase_h) // conv_stride_h
        shift_w = (s * dilation_w - phase_w) // conv_stride_w
        p = p_base - shift_h
        q = q_base - shift_w
        row_valid = m_valid & (p >= 0) & (p < P) & (q >= 0) & (q < Q)
        dy_shift = widen(shift_h, WIDE_INDEX) * stride_dyp + widen(shift_w, WIDE_INDEX) * stride_dyq
        w_tap = widen(r, WIDE_INDEX) * stride_wr + widen(s, WIDE_INDEX) * stride_ws
        if VOLUMETRIC:
            t = first_t + (t0 + tap_t) * tap_step_d
            shift_d = (t * dilation_d - phase_d) // conv_stride_d
            o = o_base - shift_d
            row_valid = row_valid & (o >= 0) & (o < O)
            dy_shift += widen(shift_d, WIDE_INDEX) * stride_dyo
            w_tap += widen(t, WIDE_INDEX) * stride_wt
        k_valid = k < KB
        filters = widen(block * KB + k, WIDE_INDEX)
        a_ptrs = dy_ptr + (dy_rows - dy_shift)[:, None] + (filters * stride_dyk)[None, :]
        a = tl.load(a_ptrs, mask=row_valid[:, None] & k_valid[None, :], other=0.0)
        b_mask = k_valid[:, None] & n_valid[None, :]
        if PACKED:
            b_mask = b_mask & ((k // Kg)[:, None] == channel_group[None, :])
        b_ptrs = w_ptr + (filters * stride_wk)[:, None] + (w_tap + w_cols)[None, :]
        b = tl.load(b_ptrs, mask=b_mask, other=0.0)
        acc = multiply_accumulate(acc, a, b, INPUT_PRECISION, UPCAST)

    # ---- epilogue: dx[n, g·Cg + c, [d,] h, w]
    dx_rows = n * stride_dxn + h * stride_dxh + w * stride_dxw
    if VOLUMETRIC:
        dx_rows += d * stride_dxd
    dx_cols = widen(block * CB + offs_n, WIDE_INDEX) * stride_dxc
    dx_ptrs = dx_ptr + dx_rows[:, None] + dx_cols[None, :]
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=m_valid[:, None] & n_valid[None, :])


def prepare_operands(w: torch.Tensor, dy: torch.Tensor):
    """dy with filters innermost (the A tile [pixels, filters] is K-major); the weight per dtype.

    The B tile is ``w[k-block, c-block, [t,] r, s]``. 16-bit tensor-core instructions
    read either major order, so the weight stays channels-innermost like every
    other operand. TF32 ones (wgmma) read only K-major operands, and K here is the
    filter index: float32 weights are copied filters-innermost, (C, [T,] R, S, K) in
    memory, a small copy that spares a transpose of every B tile in shared memory
    (measured on an H100, L3 in TF32: 116 TFLOP/s against 48 with the NHWC weight).
    """
    if w.dtype == torch.float32 and not common.INTERPRET:
        order = list(range(1, w.dim())) + [0]
        inverse = [order.index(i) for i in range(w.dim())]
        w = w.permute(*order).contiguous().permute(*inverse)
    else:
        w = transpose.as_channels_last(w)
    return w, transpose.as_channels_last(dy)


def grad_input(w: torch.Tensor, dy: torch.Tensor, g: ConvGeometry, pack: int = None,
               rows: bool = None) -> torch.Tensor:
    """dx (N, C, [D,] H, W) from w (K, C/G, [T,] R, S) and dy (N, K, [O,] P, Q); 2-D or 3-D geometry;
    result in dy's memory format.

    ``pack`` forces the groups per program, ``rows`` the row-column kernel for few
    input channels on or off (tests, benchmarks); by default :func:`common.group_pack`
    and :func:`use_row_columns` decide.
    """
    assert g.ndim in (2, 3) and w.dim() == dy.dim() == g.ndim + 2, \
        "implicit kernels take 2-D and 3-D problems (1-D as H = 1)"
    if rows is None:
        rows = use_row_columns(g)
    assert not rows or (g.ndim == 2 and g.groups == 1), "the row-column kernel takes 2-D problems of one group"
    dx = common.new_output(dy, g.input_shape)
    w, dy = prepare_operands(w, dy)
    key = ("grad_input", g, w.stride(), dy.stride(), dx.stride(), dy.dtype, dy.device, pack, rows,
           common.dot_precision(dy.dtype))
    launch = common.planned(key, lambda: _launch_rows(w, dy, dx, g) if rows else _launch(w, dy, dx, g, pack))
    launch(dy, w, dx)
    return dx


def _launch(w: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, g: ConvGeometry, pack=None) -> common.KernelLaunch:
    """The kernel's arguments for this problem, derived once."""
    sizes, kernel, out = common.as_3d(g.in_size), common.as_3d(g.kernel), common.as_3d(g.out_size)
    strides, dilations = common.as_3d(g.stride), common.as_3d(g.dilation)
    pads_low = common.as_3d(g.pad_low, fill=0)
    N, Cg, Kg, G = g.batch, g.channels_per_group, g.filters_per_group, g.groups
    if pack is None:
        pack = common.group_pack(G, Cg, Kg)
    CB, KB = pack * Cg, pack * Kg
    tap_steps = [s // math.gcd(s, d) for s, d in zip(strides, dilations)]
    # rows of dy may be addressed up to (size + pads + kernel·dilation) positions away before masking
    reach = [0, 0] + [size + sum(p) + k * d for size, p, k, d in zip(g.in_size, g.padding, g.kernel, g.dilation)]
    rows_per_phase = N * math.prod(common.cdiv(size, s) for size, s in zip(sizes, strides))
    wide = common.needs_wide_index(common.span(dy, reach), common.span(w), common.span(dx),
                                   N * math.prod(sizes) + 256)
    phases = math.prod(strides)

    def grid(meta):
        return (common.cdiv(rows_per_phase, meta["BLOCK_M"]) * common.cdiv(CB, meta["BLOCK_N"]), (G // pack) * phases)

    scalars = (
        N, *sizes, *out, Cg, Kg, *kernel, CB, KB,
        *strides, *dilations, *pads_low, *tap_steps,
        *common.strides_3d(dy), *common.strides_3d(w), *common.strides_3d(dx),
        common.bucket(rows_per_phase), common.bucket(CB),
        common.bucket(KB * math.prod(common.cdiv(k, t) for k, t in zip(kernel, tap_steps))),
    )
    meta = dict(VOLUMETRIC=g.ndim == 3, PACKED=pack > 1, WIDE_INDEX=wide,
                INPUT_PRECISION=common.dot_precision(dy.dtype),
                UPCAST=common.upcast_operands(dy.dtype), ACC_DTYPE=common.accumulator_dtype(dy.dtype))
    return common.KernelLaunch(implicit_grad_input_kernel, grid, scalars, meta)


# ---- few input channels: kernel rows as GEMM columns ------------------------------------------

#: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) of the row-column kernel; BLOCK_N = C_PAD x image rows
ROWS_TILES = [
    (128, 64, 64, 4, 3),
    (128, 128, 64, 8, 3),
    (64, 64, 64, 4, 3),
    (128, 32, 64, 4, 4),
    (256, 64, 32, 8, 3),
    (64, 128, 32, 4, 4),
]
ROWS_CONFIGS = common.make_configs(ROWS_TILES)

#: at most this many input channels take the row-column kernel (it pads C to a power of two C_PAD)
FEW_CHANNELS = 4


def _prune_rows_configs(configs, named_args, **kwargs):
    """Configs whose tiles fit shared memory (every BLOCK_N of ROWS_TILES is at least 4 = the largest C_PAD)."""
    element_size = named_args["dy_ptr"].element_size()
    def shared_bytes(c):
        return max(c.num_stages, 1) * (c.kwargs["BLOCK_M"] + c.kwargs["BLOCK_N"]) * c.kwargs["BLOCK_K"] * element_size
    kept = [c for c in configs if shared_bytes(c) <= common._SHARED_MEMORY_BUDGET]
    if element_size >= 8:
        kept = [c for c in kept if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64] or kept
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])]


@triton.autotune(configs=ROWS_CONFIGS, key=["M_BUCKET", "N_BUCKET", "K_BUCKET", "C_PAD", "INPUT_PRECISION"],
                 prune_configs_by={"early_config_prune": _prune_rows_configs}, **common.TUNER_OPTIONS)
@triton.jit
def grad_input_rows_kernel(
    # pointers
    dy_ptr, w_ptr, dx_ptr,
    # sizes (one group: C input channels, K filters)
    N, H, W, P, Q, C, K, R, S,
    # geometry
    conv_stride_h, conv_stride_w, dilation_h, dilation_w, pad_h, pad_w, tap_step_w,
    # strides (elements)
    stride_dyn, stride_dyk, stride_dyp, stride_dyq,
    stride_wk, stride_wc, stride_wr, stride_ws,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    # autotuning keys only
    M_BUCKET, N_BUCKET, K_BUCKET,
    # meta-parameters
    C_PAD: tl.constexpr, WIDE_INDEX: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ACC_DTYPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx tile [pixels of one w-phase (rows), (image row h, channel c) pairs (columns)].

    acc[(n, w), (h, c)] = Σ_u Σ_{s, k} dy[n, k, u, q(w, s)] · w[k, c, (h + ph - u·sh)/dh, s]: for each
    dy row u the A tile is shared by every image row of the tile, and the weight tile is zero where
    (h + ph - u·sh)/dh is no tap (not integral, or outside [0, R)).
    """
    rows_per_tile = BLOCK_N // C_PAD
    pid = tl.program_id(0)
    phase_w = tl.program_id(1)  # (w + pad_w) mod sw for every row of this program
    num_h_tiles = tl.cdiv(H, rows_per_tile)
    pid_m = pid // num_h_tiles
    pid_h = pid % num_h_tiles

    # ---- rows: input pixels (n, w) of this w-phase, w = w_first + i·sw
    first_s, taps_w = first_tap(S, tap_step_w, dilation_w, conv_stride_w, phase_w)
    w_first = (phase_w + conv_stride_w - pad_w % conv_stride_w) % conv_stride_w
    cols_w = (W - w_first + conv_stride_w - 1) // conv_stride_w
    offs_m = widen(pid_m, WIDE_INDEX) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < N * cols_w
    n = offs_m // tl.maximum(cols_w, 1)
    w = w_first + (offs_m % tl.maximum(cols_w, 1)) * conv_stride_w
    q_base = (w + pad_w) // conv_stride_w
    s0, taps_s = tap_window(first_s, taps_w, tap_step_w, dilation_w, conv_stride_w, phase_w,
                            tl.min(tl.where(m_valid, q_base, 1 << 30)), tl.max(tl.where(m_valid, q_base, -1)), Q)

    # ---- columns: (image row, channel) pairs, channel fastest
    offs_n = tl.arange(0, BLOCK_N)
    c = offs_n % C_PAD
    h_low = pid_h * rows_per_tile
    h = h_low + offs_n // C_PAD
    col_valid = (c < C) & (h < H)
    h_high = tl.minimum(h_low + rows_per_tile, H) - 1

    # ---- dy rows u that reach some image row of the tile: h + ph - u·sh in [0, (R-1)·dh]
    u_num = h_low + pad_h - (R - 1) * dilation_h
    u_low = tl.where(u_num > 0, (u_num + conv_stride_h - 1) // conv_stride_h, 0)
    u_end = tl.minimum((h_high + pad_h) // conv_stride_h + 1, P)
    dy_rows_u = tl.maximum(u_end - u_low, 0)

    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    dy_rows = n * stride_dyn + q_base * stride_dyq
    w_cols = widen(c, WIDE_INDEX) * stride_wc
    filter_blocks = tl.cdiv(K, BLOCK_K)
    steps = tl.where(widen(pid_m, WIDE_INDEX) * BLOCK_M < N * cols_w, dy_rows_u * taps_s * filter_blocks, 0)
    for step in range(0, steps):
        us = step // filter_blocks
        k = (step - us * filter_blocks) * BLOCK_K + offs_k
        u_index = us // taps_s
        u = u_low + u_index
        s = first_s + (s0 + us - u_index * taps_s) * tap_step_w
        shift_w = (s * dilation_w - phase_w) // conv_stride_w
        q = q_base - shift_w
        row_valid = m_valid & (q >= 0) & (q < Q)
        k_valid = k < K
        filters = widen(k, WIDE_INDEX)
        dy_shift = widen(u, WIDE_INDEX) * stride_dyp - widen(shift_w, WIDE_INDEX) * stride_dyq
        a_ptrs = dy_ptr + (dy_rows + dy_shift)[:, None] + (filters * stride_dyk)[None, :]
        a = tl.load(a_ptrs, mask=row_valid[:, None] & k_valid[None, :], other=0.0)
        r_num = h + pad_h - u * conv_stride_h
        r_safe = tl.maximum(r_num, 0)
        r = r_safe // dilation_h
        tap_ok = col_valid & (r_num >= 0) & (r_safe - r * dilation_h == 0) & (r < R)
        b_ptrs = w_ptr + (filters * stride_wk)[:, None] + (w_cols + widen(r, WIDE_INDEX) * stride_wr
                                                          + widen(s, WIDE_INDEX) * stride_ws)[None, :]
        b = tl.load(b_ptrs, mask=k_valid[:, None] & tap_ok[None, :], other=0.0)
        acc = multiply_accumulate(acc, a, b, INPUT_PRECISION, UPCAST)

    # ---- epilogue: dx[n, c, h, w]
    dx_ptrs = dx_ptr + (n * stride_dxn + w * stride_dxw)[:, None] \
        + (widen(c, WIDE_INDEX) * stride_dxc + widen(h, WIDE_INDEX) * stride_dxh)[None, :]
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=m_valid[:, None] & col_valid[None, :])


def use_row_columns(g: ConvGeometry) -> bool:
    """The row-column kernel for 2-D input gradients of 1-4 channels, one group, a kernel of 2+ rows."""
    return g.ndim == 2 and g.groups == 1 and g.in_channels <= FEW_CHANNELS and g.kernel[0] > 1 and g.in_size[0] > 1


def _launch_rows(w: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, g: ConvGeometry) -> common.KernelLaunch:
    (H, W), (R, S), (P, Q) = g.in_size, g.kernel, g.out_size
    (sh, sw), (dh, dw) = g.stride, g.dilation
    N, C, K = g.batch, g.in_channels, g.out_channels
    c_pad = common.bucket(C)
    tap_step_w = sw // math.gcd(sw, dw)
    reach = [0, 0, H + sum(g.padding[0]) + R * dh, W + sum(g.padding[1]) + S * dw]
    rows = N * common.cdiv(W, sw)
    wide = common.needs_wide_index(common.span(dy, reach), common.span(w), common.span(dx), N * H * W + 256)

    def grid(meta):
        return (common.cdiv(rows, meta["BLOCK_M"]) * common.cdiv(H, meta["BLOCK_N"] // c_pad), sw)

    scalars = (
        N, H, W, P, Q, C, K, R, S,
        sh, sw, dh, dw, g.pad_low[0], g.pad_low[1], tap_step_w,
        *dy.stride(), *w.stride(), *dx.stride(),
        common.bucket(rows), common.bucket(C * H), common.bucket(K * common.cdiv(S, tap_step_w)),
    )
    meta = dict(C_PAD=c_pad, WIDE_INDEX=wide, INPUT_PRECISION=common.dot_precision(dy.dtype),
                UPCAST=common.upcast_operands(dy.dtype), ACC_DTYPE=common.accumulator_dtype(dy.dtype))
    return common.KernelLaunch(grad_input_rows_kernel, grid, scalars, meta)


def grad_input_reference(w: torch.Tensor, dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """The same gradient by torch's autograd in float64, cast back to dy's dtype."""
    x = torch.zeros(g.input_shape, dtype=torch.float64, device=dy.device, requires_grad=True)
    pads = [p for low_high in reversed(g.padding) for p in low_high]
    conv = F.conv3d if g.ndim == 3 else F.conv2d
    y = conv(F.pad(x, pads), w.double(), stride=g.stride, dilation=g.dilation, groups=g.groups)
    (dx,) = torch.autograd.grad(y, x, dy.double())
    return dx.to(dy.dtype)
