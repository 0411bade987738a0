"""Matrix products for the GEMM-based algorithms: oneDNN's on the CPU in float32, torch.matmul elsewhere.

torch's CPU ``matmul`` calls MKL, whose single-precision GEMM runs its AVX2
code on AMD processors (about 110 GFLOP/s a core on the development machine's
Zen 5); the oneDNN library that torch ships for its own CPU convolutions has a
matrix product too, compiled at run time for the AVX-512 units it finds, and
reaches 2x that (PERFORMANCE.md, "CPU v3"). torch exposes it as the operator
``torch.ops.mkldnn._linear_pointwise`` (``x @ wᵀ`` on ordinary dense tensors).
:func:`matmul` sends a float32 CPU product there when it is large enough to
repay oneDNN's ~10 µs of fixed cost per call, and everything else (other
devices and dtypes, small products, a torch built without oneDNN or with it
switched off through ``torch.backends.mkldnn``) to ``torch.matmul``. Both
accumulate in float32 and give the same result on every run with the same
number of threads.
"""
from __future__ import annotations

import itertools
from typing import Optional

import torch

#: products of fewer multiply-adds (M·K·N) than this stay with torch.matmul: oneDNN's fixed
#: cost per call (~10 µs) is more than it saves below about 2^20 (1 thread, PERFORMANCE.md "CPU v3")
ONEDNN_MIN_MACS = 1 << 20

_onednn_linear = None  # the operator once probed; False when it is missing or misbehaves


def _probe():
    """The oneDNN linear operator, after one small call that must agree with torch.mm; None if unusable."""
    global _onednn_linear
    if _onednn_linear is None:
        _onednn_linear = False
        if not torch.backends.mkldnn.is_available():
            return None
        try:
            op = torch.ops.mkldnn._linear_pointwise
            a = torch.arange(12, dtype=torch.float32).view(3, 4)
            w = torch.arange(8, dtype=torch.float32).view(2, 4)
            if torch.equal(op(a, w, None, "none", [], ""), torch.mm(a, w.t())):
                _onednn_linear = op
        except (AttributeError, RuntimeError, TypeError):
            pass
    return _onednn_linear or None


def _dense(t: torch.Tensor) -> bool:
    """The last two dimensions are a dense matrix, row- or column-major (no padded leading dimension:
    oneDNN takes such operands, but through a path hundreds of times slower than MKL's)."""
    rows, cols = t.shape[-2:]
    row_stride, col_stride = t.stride()[-2:]
    return ((col_stride == 1 or cols == 1) and (row_stride == cols or rows == 1)) or \
           ((row_stride == 1 or rows == 1) and (col_stride == rows or cols == 1))


def onednn_serves(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when :func:`matmul` would hand ``a @ b`` to oneDNN."""
    if not (a.is_cpu and b.is_cpu and a.dtype is torch.float32 and b.dtype is torch.float32
            and a.dim() >= 2 and b.dim() >= 2):
        return False
    a_shape = a.shape
    if a_shape[-2] * a_shape[-1] * b.shape[-1] < ONEDNN_MIN_MACS:
        return False
    if not (_dense(a) and _dense(b)) or (b.dim() == 2 and a.dim() > 2 and not a.is_contiguous()):
        return False
    return torch.backends.mkldnn.enabled and _probe() is not None


def matmul(a: torch.Tensor, b: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``torch.matmul(a, b)`` for ``a`` (..., M, K) and ``b`` (..., K, N), batch dimensions broadcast.

    With ``out`` the product is written there (a view of any strides) and returned.
    """
    if not onednn_serves(a, b):
        return torch.matmul(a, b) if out is None else torch.matmul(a, b, out=out)
    linear = _probe()
    if b.dim() == 2:  # oneDNN flattens a's leading dimensions itself
        result = linear(a, b.t(), None, "none", [], "")
        if out is None:
            return result
        return out.copy_(result)
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = a.expand(*batch, *a.shape[-2:])
    b = b.expand(*batch, *b.shape[-2:])
    if out is None:
        out = a.new_empty(*batch, a.shape[-2], b.shape[-1])
    for index in itertools.product(*(range(n) for n in batch)):
        out[index].copy_(linear(a[index], b[index].t(), None, "none", [], ""))
    return out


def addmm_(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``c.addmm_(a, b)``: c += a @ b, in place."""
    if not onednn_serves(a, b):
        return c.addmm_(a, b)
    return c.add_(_probe()(a, b.t(), None, "none", [], ""))
