"""NaN and Inf for the algorithms whose transforms mix positions (fft, winograd).

A frequency or tile transform spreads one NaN or Inf beyond the window of
outputs a direct convolution confines it to (Inf - Inf = NaN). Such a pass is
decorated with :func:`direct_when_non_finite`: it first checks its two operands
and, when either holds a NaN or Inf, runs im2col's pass instead, whose placement
is torch's. On a GPU the check reads one number back (a synchronisation); while a
CUDA graph is being captured no read is allowed, so there it is skipped.
"""
from __future__ import annotations

import functools

import torch

from .im2col import ALGORITHM as DIRECT


def all_finite(*tensors: torch.Tensor) -> bool:
    """True when no element of the tensors is NaN or ±Inf (False also when a sum overflows: harmless)."""
    if tensors[0].device.type == "meta":
        return True  # shapes only: nothing to read
    if tensors[0].is_cuda and torch.cuda.is_current_stream_capturing():
        return True  # no device-to-host read during capture (see the module docstring)
    total = sum(t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32) for t in tensors)
    return bool(torch.isfinite(total))


def direct_when_non_finite(pass_method):
    """Decorate ``forward``/``grad_input``/``grad_weight``: non-finite operands take :data:`DIRECT`'s pass."""
    name = pass_method.__name__

    @functools.wraps(pass_method)
    def checked(self, a: torch.Tensor, b: torch.Tensor, geometry):
        if not all_finite(a, b):
            return getattr(DIRECT, name)(a, b, geometry)
        return pass_method(self, a, b, geometry)
    return checked
