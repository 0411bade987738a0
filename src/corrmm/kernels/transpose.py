"""Layout changes between NCHW and NHWC at memory speed: a batched, tiled transpose.

An NCHW image is a C x (H·W) matrix and its NHWC form the (H·W) x C transpose, so
both directions are one kernel over a batch of dense matrices::

    src (B, ROWS, COLS) dense  ->  dst (B, COLS, ROWS) dense

    NCHW -> NHWC:  B = N, ROWS = C,   COLS = H·W
    NHWC -> NCHW:  B = N, ROWS = H·W, COLS = C

Each program moves one BLOCK_R x BLOCK_C tile: it reads rows of the source
(contiguous along COLS) and writes rows of the destination (contiguous along
ROWS); Triton routes the tile through shared memory between the two, so both
the loads and the stores are whole, coalesced lines. torch's generic strided
copy (``t.contiguous(memory_format=torch.channels_last)``) reads one side
scattered: on the H100 it moved the L3 input (33.5 MB in bf16) at about a
third of the copy bandwidth (PERFORMANCE.md, v4).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import common
from .common import widen

#: CUDA's limit on the second grid dimension, which carries the batch
_GRID_Y_LIMIT = 65535


@triton.jit
def batched_transpose_kernel(
    src_ptr, dst_ptr,
    ROWS, COLS,
    WIDE_INDEX: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    batch = tl.program_id(1)
    col_tiles = tl.cdiv(COLS, BLOCK_C)
    offs_r = (pid // col_tiles) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = (pid % col_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_r < ROWS)[:, None] & (offs_c < COLS)[None, :]
    base = widen(batch, WIDE_INDEX) * ROWS * COLS
    rows = widen(offs_r, WIDE_INDEX)
    cols = widen(offs_c, WIDE_INDEX)
    tile = tl.load(src_ptr + base + rows[:, None] * COLS + cols[None, :], mask=mask)
    tl.store(dst_ptr + base + cols[None, :] * ROWS + rows[:, None], tile, mask=mask)


def _tiles(rows: int) -> tuple:
    """(BLOCK_R, BLOCK_C): 64 x 64, or fewer, longer rows when the matrix has few rows (RGB: C = 3)."""
    block_r = min(64, max(8, common.bucket(rows)))
    return block_r, 4096 // block_r


def supported(t: torch.Tensor) -> bool:
    """4-D, on a GPU (or under the interpreter), with a batch the grid can carry."""
    return t.dim() == 4 and (t.is_cuda or common.INTERPRET) and 0 < t.shape[0] <= _GRID_Y_LIMIT and t.numel() > 0


def _transpose(src: torch.Tensor, dst: torch.Tensor, batch: int, rows: int, cols: int) -> None:
    key = ("transpose", batch, rows, cols, src.dtype, src.device)
    common.planned(key, lambda: _launch(src, batch, rows, cols))(src, dst)


def _launch(src: torch.Tensor, batch: int, rows: int, cols: int) -> common.KernelLaunch:
    block_r, block_c = _tiles(rows)
    grid = (common.cdiv(rows, block_r) * common.cdiv(cols, block_c), batch)
    wide = common.needs_wide_index(src.numel() + block_r * block_c)
    return common.KernelLaunch(batched_transpose_kernel, grid, (rows, cols),
                               dict(WIDE_INDEX=wide, BLOCK_R=block_r, BLOCK_C=block_c))


def nchw_to_nhwc(t: torch.Tensor) -> torch.Tensor:
    """A contiguous NCHW tensor's channels_last copy (same shape, NHWC strides)."""
    n, c, h, w = t.shape
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=torch.channels_last)
    _transpose(t, out, n, c, h * w)
    return out


def nhwc_to_nchw(t: torch.Tensor) -> torch.Tensor:
    """A dense channels_last tensor's contiguous (NCHW) copy."""
    n, c, h, w = t.shape
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device)
    _transpose(t, out, n, h * w, c)
    return out


def as_nhwc(t: torch.Tensor) -> torch.Tensor:
    """The operand as the kernels like it best: channels innermost.

    Every kernel reduces over channels for a fixed kernel tap (forward and
    grad-input) or gathers channels as GEMM columns (grad-weight), so channels
    are the contiguous direction of every tile; NHWC makes those loads 16-byte
    vectors, and NCHW would make them strided scalars read once per kernel tap
    (R·S times). One copy up front costs a single pass over the tensor. Under the
    interpreter the operand keeps its own strides (the kernels accept any).
    """
    if common.INTERPRET or t.dim() != 4 or t.is_contiguous(memory_format=torch.channels_last):
        return t
    if t.is_contiguous() and supported(t):  # the tiled transpose: torch's strided copy is ~3x slower
        return nchw_to_nhwc(t)
    return t.contiguous(memory_format=torch.channels_last)
