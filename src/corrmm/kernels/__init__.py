"""Triton kernels: implicit-GEMM correlation, one module per pass.

    implicit_forward.forward          y  = corr(x, w)              M = N·P·Q, N = K,     K = C·R·S
    implicit_grad_input.grad_input    dx = corr_grad_input(w, dy)  M = N·H·W, N = C,     K = K·R·S  (per stride phase)
    implicit_grad_weight.grad_weight  dw = corr_grad_weight(x, dy) M = K,     N = C·R·S, K = N·P·Q  (split-K)
    transpose.nchw_to_nhwc / nhwc_to_nchw   layout changes at copy bandwidth
    depthwise.forward / grad_input / grad_weight   direct depthwise kernels (groups = channels), no GEMM
    grouped_grad_weight.grad_weight   dw of small groups: GP groups per program, block-diagonal, split-K

Each module holds its kernel, a wrapper (checks, allocation, launch) and a
pure-torch float64 reference (``forward_reference``, ``grad_input_reference``,
``grad_weight_reference``). Importing this package imports Triton and decorates
the kernels, which fixes interpreter mode (``TRITON_INTERPRET=1``) for the
process: :data:`INTERPRET` says which. :mod:`corrmm.algorithms.implicit`
imports it lazily, so corrmm works without Triton.
"""
from . import common, depthwise, grouped_grad_weight, implicit_forward, implicit_grad_input, implicit_grad_weight, transpose
from .common import INTERPRET

__all__ = ["INTERPRET", "common", "depthwise", "grouped_grad_weight", "implicit_forward", "implicit_grad_input", "implicit_grad_weight",
           "transpose"]
