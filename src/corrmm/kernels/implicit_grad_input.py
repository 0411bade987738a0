"""Implicit-GEMM input gradient: dx = corr_grad_input(w, dy), no zero insertion, no col2im.

Shapes (2-D; 1-D problems arrive as H = 1 views), per group g of G:

    dy (N, K, P, Q)      any strides (NHWC on a GPU)
    w  (K, C/G, R, S)    any strides
    dx (N, C, H, W)      allocated in dy's memory format (common.new_output): no copy afterwards

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

Loop nest (one program = one BLOCK_M x BLOCK_N tile of one sub-problem of one group)::

    for m-tile, n-tile, (g, phase_h, phase_w):             # grid
        acc = 0
        for (r, s) in contributing taps, k0 in filter blocks:   # one K step each
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

#: the forward pass's tiles (the narrow ones serve the input gradient of an RGB layer: N = C = 3)
GRAD_INPUT_CONFIGS = common.make_configs(common.DIRECT_TILES)


@triton.autotune(configs=GRAD_INPUT_CONFIGS, key=["M_BUCKET", "N_BUCKET", "K_BUCKET", "INPUT_PRECISION"],
                 prune_configs_by={"early_config_prune": common.prune_configs("dy_ptr")})
@triton.jit
def implicit_grad_input_kernel(
    # pointers
    dy_ptr, w_ptr, dx_ptr,
    # sizes
    N, H, W, P, Q, Cg, Kg, R, S,
    # geometry: stride, dilation, low padding, and the distance between contributing taps
    conv_stride_h, conv_stride_w, dilation_h, dilation_w, pad_h, pad_w, tap_step_h, tap_step_w,
    # strides (elements)
    stride_dyn, stride_dyk, stride_dyp, stride_dyq,
    stride_wk, stride_wc, stride_wr, stride_ws,
    stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    # autotuning keys only
    M_BUCKET, N_BUCKET, K_BUCKET,
    # meta-parameters
    WIDE_INDEX: tl.constexpr, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # ---- program id -> (group, sub-problem, tile)
    pid = tl.program_id(0)
    phases = conv_stride_h * conv_stride_w
    group = tl.program_id(1) // phases
    phase = tl.program_id(1) % phases
    phase_h = phase // conv_stride_w  # (h + pad_h) mod sh for every row of this sub-problem
    phase_w = phase % conv_stride_w
    num_pid_n = tl.cdiv(Cg, BLOCK_N)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n

    # ---- the taps that reach this phase: r·dh ≡ phase_h (mod sh); at most one solution below tap_step
    first_r = R + tap_step_h  # "none" unless found
    for t in range(0, tap_step_h):
        first_r = tl.where((t * dilation_h + conv_stride_h - phase_h) % conv_stride_h == 0, t, first_r)
    first_s = S + tap_step_w
    for t in range(0, tap_step_w):
        first_s = tl.where((t * dilation_w + conv_stride_w - phase_w) % conv_stride_w == 0, t, first_s)
    taps_h = tl.where(first_r < R, (R - first_r + tap_step_h - 1) // tap_step_h, 0)
    taps_w = tl.where(first_s < S, (S - first_s + tap_step_w - 1) // tap_step_w, 0)

    # ---- rows: input pixels of this phase, h = h_first + i·sh (all numerators below are >= 0)
    h_first = (phase_h + conv_stride_h - pad_h % conv_stride_h) % conv_stride_h
    w_first = (phase_w + conv_stride_w - pad_w % conv_stride_w) % conv_stride_w
    rows_h = (H - h_first + conv_stride_h - 1) // conv_stride_h
    cols_w = (W - w_first + conv_stride_w - 1) // conv_stride_w
    plane = widen(rows_h, WIDE_INDEX) * cols_w
    offs_m = widen(pid_m, WIDE_INDEX) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < N * plane
    n = offs_m // tl.maximum(plane, 1)
    ij = offs_m % tl.maximum(plane, 1)
    h = h_first + (ij // tl.maximum(cols_w, 1)) * conv_stride_h
    w = w_first + (ij % tl.maximum(cols_w, 1)) * conv_stride_w
    # dy position read through the phase's first virtual tap; a tap r shifts it back by (r·dh - phase_h) / sh
    p_base = (h + pad_h) // conv_stride_h
    q_base = (w + pad_w) // conv_stride_w
    dy_rows = n * stride_dyn + p_base * stride_dyp + q_base * stride_dyq

    # ---- columns: input channels of this group
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < Cg
    w_cols = widen(offs_n, WIDE_INDEX) * stride_wc

    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)

    # ---- K loop over (contributing tap, filter block); empty tiles and tapless phases run no step
    filter_blocks = tl.cdiv(Kg, BLOCK_K)
    steps = tl.where(widen(pid_m, WIDE_INDEX) * BLOCK_M < N * plane, taps_h * taps_w * filter_blocks, 0)
    for step in range(0, steps):
        tap = step // filter_blocks
        k = (step - tap * filter_blocks) * BLOCK_K + offs_k
        tap_r = tap // taps_w
        r = first_r + tap_r * tap_step_h
        s = first_s + (tap - tap_r * taps_w) * tap_step_w
        shift_h = (r * dilation_h - phase_h) // conv_stride_h
        shift_w = (s * dilation_w - phase_w) // conv_stride_w
        p = p_base - shift_h
        q = q_base - shift_w
        row_valid = m_valid & (p >= 0) & (p < P) & (q >= 0) & (q < Q)
        k_valid = k < Kg
        dy_shift = widen(shift_h, WIDE_INDEX) * stride_dyp + widen(shift_w, WIDE_INDEX) * stride_dyq
        filters = widen(group * Kg + k, WIDE_INDEX)
        a_ptrs = dy_ptr + (dy_rows - dy_shift)[:, None] + (filters * stride_dyk)[None, :]
        a = tl.load(a_ptrs, mask=row_valid[:, None] & k_valid[None, :], other=0.0)
        w_tap = widen(r, WIDE_INDEX) * stride_wr + widen(s, WIDE_INDEX) * stride_ws
        b_ptrs = w_ptr + (filters * stride_wk)[:, None] + (w_tap + w_cols)[None, :]
        b = tl.load(b_ptrs, mask=k_valid[:, None] & n_valid[None, :], other=0.0)
        acc = multiply_accumulate(acc, a, b, INPUT_PRECISION, UPCAST)

    # ---- epilogue: dx[n, g·Cg + c, h, w]
    dx_rows = n * stride_dxn + h * stride_dxh + w * stride_dxw
    dx_cols = widen(group * Cg + offs_n, WIDE_INDEX) * stride_dxc
    dx_ptrs = dx_ptr + dx_rows[:, None] + dx_cols[None, :]
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=m_valid[:, None] & n_valid[None, :])


def prepare_operands(w: torch.Tensor, dy: torch.Tensor):
    """dy with filters innermost (the A tile [pixels, filters] is K-major); the weight per dtype.

    The B tile is ``w[k-block, c-block, r, s]``. 16-bit tensor-core instructions
    read either major order, so the weight stays channels-innermost like every
    other operand. TF32 ones (wgmma) read only K-major operands, and K here is the
    filter index: float32 weights are copied filters-innermost, (C, R, S, K) in
    memory, a small copy that spares a transpose of every B tile in shared memory
    (measured on an H100, L3 in TF32: 116 TFLOP/s against 48 with the NHWC weight).
    """
    if w.dtype == torch.float32 and not common.INTERPRET:
        w = w.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
    else:
        w = transpose.as_nhwc(w)
    return w, transpose.as_nhwc(dy)


def grad_input(w: torch.Tensor, dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """dx (N, C, H, W) from w (K, C/G, R, S) and dy (N, K, P, Q); 2-D geometry; result in dy's memory format."""
    assert g.ndim == 2 and w.dim() == 4 and dy.dim() == 4, "implicit kernels take 2-D problems (1-D as H = 1)"
    dx = common.new_output(dy, g.input_shape)
    w, dy = prepare_operands(w, dy)
    key = ("grad_input", g, w.stride(), dy.stride(), dx.stride(), dy.dtype, dy.device,
           common.dot_precision(dy.dtype))
    launch = common.planned(key, lambda: _launch(w, dy, dx, g))
    launch(dy, w, dx)
    return dx


def _launch(w: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, g: ConvGeometry) -> common.KernelLaunch:
    """The kernel's arguments for this problem, derived once."""
    (H, W), (R, S), (P, Q) = g.in_size, g.kernel, g.out_size
    (sh, sw), (dh, dw) = g.stride, g.dilation
    N, Cg, Kg, G = g.batch, g.channels_per_group, g.filters_per_group, g.groups
    tap_step_h, tap_step_w = sh // math.gcd(sh, dh), sw // math.gcd(sw, dw)
    # rows of dy may be addressed up to (H + pads + R·dh) positions away before masking
    reach = [0, 0, H + sum(g.padding[0]) + R * dh, W + sum(g.padding[1]) + S * dw]
    rows_per_phase = N * common.cdiv(H, sh) * common.cdiv(W, sw)
    wide = common.needs_wide_index(common.span(dy, reach), common.span(w), common.span(dx), N * H * W + 256)

    def grid(meta):
        return (common.cdiv(rows_per_phase, meta["BLOCK_M"]) * common.cdiv(Cg, meta["BLOCK_N"]), G * sh * sw)

    scalars = (
        N, H, W, P, Q, Cg, Kg, R, S,
        sh, sw, dh, dw, g.pad_low[0], g.pad_low[1], tap_step_h, tap_step_w,
        *dy.stride(), *w.stride(), *dx.stride(),
        common.bucket(rows_per_phase), common.bucket(Cg),
        common.bucket(Kg * common.cdiv(R, tap_step_h) * common.cdiv(S, tap_step_w)),
    )
    meta = dict(WIDE_INDEX=wide, INPUT_PRECISION=common.dot_precision(dy.dtype),
                UPCAST=common.upcast_operands(dy.dtype), ACC_DTYPE=common.accumulator_dtype(dy.dtype))
    return common.KernelLaunch(implicit_grad_input_kernel, grid, scalars, meta)


def grad_input_reference(w: torch.Tensor, dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """The same gradient by torch's autograd in float64, cast back to dy's dtype."""
    x = torch.zeros(g.input_shape, dtype=torch.float64, device=dy.device, requires_grad=True)
    pads = [p for low_high in reversed(g.padding) for p in low_high]
    y = F.conv2d(F.pad(x, pads), w.double(), stride=g.stride, dilation=g.dilation, groups=g.groups)
    (dx,) = torch.autograd.grad(y, x, dy.double())
    return dx.to(dy.dtype)
