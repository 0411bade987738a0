"""Implicit-GEMM forward correlation: y = corr(x, w), the patches built in registers.

Shapes (3-D; a 2-D problem is D = T = 1 and compiles without the depth
arithmetic, a 1-D problem arrives as a 2-D one with H = 1), per group g of G:

    x  (N, C, D, H, W)      any strides (NDHWC on a GPU, see transpose.as_channels_last)
    w  (K, C/G, T, R, S)    any strides
    y  (N, K, O, P, Q)      allocated in x's memory format (common.new_output): no copy afterwards

    y[n, g·Kg + k, o, p, q] = Σ_{c < Cg, t, r, s} w[g·Kg + k, c, t, r, s]
                              · x[n, g·Cg + c, o·sd + t·dd - pd, p·sh + r·dh - ph, q·sw + s·dw - pw]

GEMM view (CUTLASS's "fprop"), per group:

    M = N·O·P·Q  (output pixels, rows)     N = Kg (filters, columns)     K = Cg·T·R·S (the patch)

    A[m, (t, r, s, c)] = x at pixel m shifted by tap (t, r, s), channel c  (zero outside the image)
    B[(t, r, s, c), k] = w[k, c, t, r, s]

Positions outside the image are the zero padding, so pad_high needs no
argument: it only sets O, P and Q. Ordering the reduction (t, r, s, c) with c
innermost makes each K step one kernel tap: its A tile is BLOCK_M pixels x
BLOCK_K consecutive channels (contiguous in NDHWC), its mask depends on the row
only, and the tap offset is one scalar added to a pointer tile.

When Cg is small (Cg = 3 for an RGB first layer) a channel block would be
mostly padding, so FLAT_K instead walks the flattened (t, r, s, c) index BLOCK_K
at a time: every column of the tile has its own tap, and the mask is 2-D.

Many small groups (ResNeXt's 32 groups of 4 or 8 channels) would give tiles of
8 columns and K steps of 8 channels: mostly padding, and 16-byte reads scattered
over the channel axis. PACKED programs instead take GP consecutive groups at
once, as one GEMM of CB = GP·Cg channels and KB = GP·Kg filters whose weight
tile is block-diagonal (the B load masks every channel-filter pair of two
different groups to zero). That multiplies GP times the useful products on the
tensor cores, which have them to spare in these memory-bound layers, and reads
GP·Cg consecutive channels per pixel.

Loop nest (one program = one BLOCK_M x BLOCK_N tile of one block of GP groups)::

    for m-tile, n-tile, group block:                        # grid
        acc = 0
        for (t, r, s, c0) in taps x channel blocks:         # one K step each
                                                            # (FLAT_K: k0 in range(0, CB·T·R·S, BLOCK_K))
            a = x[n(m), c0:c0+BK, o(m)·sd + t·dd - pd, p(m)·sh + r·dh - ph, q(m)·sw + s·dw - pw]   # masked gather
            b = w[n-tile, c0:c0+BK, t, r, s]                # block-diagonal when PACKED
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

#: square and wide tiles for the usual layers, narrow ones (BLOCK_N 16/32) for few filters and packed
#: groups; common.prune_configs keeps those that fit
FORWARD_CONFIGS = common.make_configs(common.DIRECT_TILES + common.NARROW_TILES)


@triton.autotune(configs=FORWARD_CONFIGS,
                 key=["M_BUCKET", "N_BUCKET", "K_BUCKET", "FLAT_K", "PACKED", "VOLUMETRIC", "INPUT_PRECISION"],
                 prune_configs_by={"early_config_prune": common.prune_configs("x_ptr")}, **common.TUNER_OPTIONS)
@triton.jit
def implicit_forward_kernel(
    # pointers
    x_ptr, w_ptr, y_ptr,
    # sizes; CB and KB are the channels and filters of one program's block of groups (Cg and Kg unpacked)
    N, D, H, W, O, P, Q, Cg, Kg, T, R, S, CB, KB,
    # geometry: stride, dilation, low padding
    conv_stride_d, conv_stride_h, conv_stride_w, dilation_d, dilation_h, dilation_w, pad_d, pad_h, pad_w,
    # strides (elements)
    stride_xn, stride_xc, stride_xd, stride_xh, stride_xw,
    stride_wk, stride_wc, stride_wt, stride_wr, stride_ws,
    stride_yn, stride_yk, stride_yo, stride_yp, stride_yq,
    # autotuning keys only (power-of-two buckets of the GEMM sizes)
    M_BUCKET, N_BUCKET, K_BUCKET,
    # meta-parameters
    FLAT_K: tl.constexpr, VOLUMETRIC: tl.constexpr, PACKED: tl.constexpr,
    WIDE_INDEX: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # ---- program id -> tile: n-tiles of one m-tile run back to back, so its input patch is read from L2
    pid = tl.program_id(0)
    block = tl.program_id(1)  # a group, or a block of GP groups when PACKED
    num_pid_n = tl.cdiv(KB, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n

    # ---- rows: output pixels m -> (n, [o,] p, q) and the first input position they read
    offs_m = widen(pid_m, WIDE_INDEX) * BLOCK_M + tl.arange(0, BLOCK_M)
    plane = widen(P, WIDE_INDEX) * Q
    if VOLUMETRIC:
        volume = plane * O
        m_valid = offs_m < N * volume
        n = offs_m // volume
        opq = offs_m % volume
        o = opq // plane
        pq = opq % plane
        d_front = o * conv_stride_d - pad_d
    else:
        m_valid = offs_m < N * plane
        n = offs_m // plane
        pq = offs_m % plane
    p = pq // Q
    q = pq % Q
    h_top = p * conv_stride_h - pad_h
    w_left = q * conv_stride_w - pad_w
    x_rows = n * stride_xn + h_top * stride_xh + w_left * stride_xw + widen(block * CB, WIDE_INDEX) * stride_xc
    if VOLUMETRIC:
        x_rows += d_front * stride_xd

    # ---- columns: filters of this group (block)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < KB
    w_cols = widen(block * KB + offs_n, WIDE_INDEX) * stride_wk
    if PACKED:
        filter_group = offs_n // Kg  # group of each column within the block

    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    RS = R * S

    # ---- K loop
    if FLAT_K:
        # the flattened patch index kk -> (t, r, s, c), c fastest; every column its own tap
        patch_len = T * RS * CB
        for k0 in range(0, patch_len, BLOCK_K):
            kk = k0 + offs_k
            k_valid = kk < patch_len
            c = kk % CB
            trs = kk // CB
            if VOLUMETRIC:
                t = trs // RS
                rs = trs % RS
            else:
                rs = trs
            r = rs // S
            s = rs % S
            h = h_top[:, None] + (r * dilation_h)[None, :]
            w = w_left[:, None] + (s * dilation_w)[None, :]
            inside = (h >= 0) & (h < H) & (w >= 0) & (w < W)
            tap_offset = widen(r * dilation_h, WIDE_INDEX) * stride_xh + widen(s * dilation_w, WIDE_INDEX) * stride_xw
            if VOLUMETRIC:
                d = d_front[:, None] + (t * dilation_d)[None, :]
                inside = inside & (d >= 0) & (d < D)
                tap_offset += widen(t * dilation_d, WIDE_INDEX) * stride_xd
            a_ptrs = x_ptr + x_rows[:, None] + (tap_offset + widen(c, WIDE_INDEX) * stride_xc)[None, :]
            a = tl.load(a_ptrs, mask=inside & m_valid[:, None] & k_valid[None, :], other=0.0)
            b_mask = k_valid[:, None] & n_valid[None, :]
            if PACKED:
                b_mask = b_mask & ((c // Cg)[:, None] == filter_group[None, :])
                c = c % Cg
            w_taps = (widen(c, WIDE_INDEX) * stride_wc + widen(r, WIDE_INDEX) * stride_wr
                      + widen(s, WIDE_INDEX) * stride_ws)
            if VOLUMETRIC:
                w_taps += widen(t, WIDE_INDEX) * stride_wt
            b_ptrs = w_ptr + w_taps[:, None] + w_cols[None, :]
            b = tl.load(b_ptrs, mask=b_mask, other=0.0)
            acc = multiply_accumulate(acc, a, b, INPUT_PRECISION, UPCAST)
    else:
        # one kernel tap (t, r, s) and one block of channels per step; a single flat loop so
        # Triton software-pipelines all T·R·S·ceil(CB/BLOCK_K) steps, not just the channel loop
        channel_blocks = tl.cdiv(CB, BLOCK_K)
        for step in range(0, T * RS * channel_blocks):
            trs = step // channel_blocks
            c = (step - trs * channel_blocks) * BLOCK_K + offs_k
            if VOLUMETRIC:
                t = trs // RS
                rs = trs - t * RS
            else:
                rs = trs
            r = rs // S
            s = rs - r * S
            h = h_top + r * dilation_h
            w = w_left + s * dilation_w
            row_valid = m_valid & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            tap_offset = widen(r * dilation_h, WIDE_INDEX) * stride_xh + widen(s * dilation_w, WIDE_INDEX) * stride_xw
            if VOLUMETRIC:
                d = d_front + t * dilation_d
                row_valid = row_valid & (d >= 0) & (d < D)
                tap_offset += widen(t * dilation_d, WIDE_INDEX) * stride_xd
            c_valid = c < CB
            a_ptrs = x_ptr + (x_rows + tap_offset)[:, None] + (widen(c, WIDE_INDEX) * stride_xc)[None, :]
            a = tl.load(a_ptrs, mask=row_valid[:, None] & c_valid[None, :], other=0.0)
            b_mask = c_valid[:, None] & n_valid[None, :]
            if PACKED:
                b_mask = b_mask & ((c // Cg)[:, None] == filter_group[None, :])
                c = c % Cg
            w_taps = (widen(r, WIDE_INDEX) * stride_wr + widen(s, WIDE_INDEX) * stride_ws
                      + widen(c, WIDE_INDEX) * stride_wc)
            if VOLUMETRIC:
                w_taps += widen(t, WIDE_INDEX) * stride_wt
            b_ptrs = w_ptr + w_taps[:, None] + w_cols[None, :]
            b = tl.load(b_ptrs, mask=b_mask, other=0.0)
            acc = multiply_accumulate(acc, a, b, INPUT_PRECISION, UPCAST)

    # ---- epilogue: y[n, g·Kg + k, [o,] p, q]
    y_rows = n * stride_yn + p * stride_yp + q * stride_yq
    if VOLUMETRIC:
        y_rows += o * stride_yo
    y_cols = widen(block * KB + offs_n, WIDE_INDEX) * stride_yk
    y_ptrs = y_ptr + y_rows[:, None] + y_cols[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_valid[:, None] & n_valid[None, :])


def prepare_operands(x: torch.Tensor, w: torch.Tensor):
    """x and w with channels innermost: the A tile's rows and the B tile's columns are then K-major."""
    return transpose.as_channels_last(x), transpose.as_channels_last(w)


def use_flat_reduction(channels_per_group: int) -> bool:
    """Flatten (t, r, s, c) when a channel block would be mostly padding (few channels, not a multiple of 16)."""
    return channels_per_group % 16 != 0 and channels_per_group < 64


def forward(x: torch.Tensor, w: torch.Tensor, g: ConvGeometry, flat: bool = None, pack: int = None) -> torch.Tensor:
    """y (N, K, [O,] P, Q) = corr(x (N, C, [D,] H, W), w (K, C/G, [T,] R, S)); 2-D or 3-D geometry; result
    in x's memory format.

    ``flat`` forces the flattened-patch reduction on or off and ``pack`` the
    number of groups per program (tests, benchmarks); by default both are chosen
    from the group shape (:func:`use_flat_reduction`, :func:`common.group_pack`).
    """
    assert g.ndim in (2, 3) and x.dim() == w.dim() == g.ndim + 2, \
        "implicit kernels take 2-D and 3-D problems (1-D as H = 1)"
    y = common.new_output(x, g.output_shape)
    x, w = prepare_operands(x, w)
    key = ("forward", g, x.stride(), w.stride(), y.stride(), x.dtype, x.device, flat, pack,
           common.dot_precision(x.dtype))
    launch = common.planned(key, lambda: _launch(x, w, y, g, flat, pack))
    launch(x, w, y)
    return y


def _launch(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, g: ConvGeometry, flat, pack=None) -> common.KernelLaunch:
    """The kernel's arguments for this problem, derived once."""
    (D, H, W), (T, R, S), (O, P, Q) = common.as_3d(g.in_size), common.as_3d(g.kernel), common.as_3d(g.out_size)
    (sd, sh, sw), (dd, dh, dw) = common.as_3d(g.stride), common.as_3d(g.dilation)
    pd, ph, pw = common.as_3d(g.pad_low, fill=0)
    N, Cg, Kg, G = g.batch, g.channels_per_group, g.filters_per_group, g.groups
    if pack is None:
        pack = common.group_pack(G, Cg, Kg)
    CB, KB = pack * Cg, pack * Kg
    if flat is None:
        flat = use_flat_reduction(CB)
    pads = [0, 0] + [sum(p) for p in g.padding]
    M = N * O * P * Q
    wide = common.needs_wide_index(common.span(x, pads), common.span(w), common.span(y), M + 256)

    def grid(meta):
        return (common.cdiv(M, meta["BLOCK_M"]) * common.cdiv(KB, meta["BLOCK_N"]), G // pack)

    scalars = (
        N, D, H, W, O, P, Q, Cg, Kg, T, R, S, CB, KB,
        sd, sh, sw, dd, dh, dw, pd, ph, pw,
        *common.strides_3d(x), *common.strides_3d(w), *common.strides_3d(y),
        common.bucket(M), common.bucket(KB), common.bucket(CB * T * R * S),
    )
    meta = dict(FLAT_K=flat, VOLUMETRIC=g.ndim == 3, PACKED=pack > 1, WIDE_INDEX=wide,
                INPUT_PRECISION=common.dot_precision(x.dtype),
                UPCAST=common.upcast_operands(x.dtype), ACC_DTYPE=common.accumulator_dtype(x.dtype))
    return common.KernelLaunch(implicit_forward_kernel, grid, scalars, meta)


def forward_reference(x: torch.Tensor, w: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """The same correlation by torch in float64 (explicit asymmetric padding), cast back to x's dtype."""
    pads = [p for low_high in reversed(g.padding) for p in low_high]
    conv = F.conv3d if g.ndim == 3 else F.conv2d
    y = conv(F.pad(x.double(), pads), w.double(), stride=g.stride, dilation=g.dilation, groups=g.groups)
    return y.to(x.dtype)
