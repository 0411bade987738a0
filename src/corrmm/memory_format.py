"""Which memory format a tensor is stored in.

The lowest layer of layout handling, with no dependencies of its own: the
kernels allocate their outputs in their operand's format, and the op layer
gives results back in it (:mod:`corrmm.layout`, which may run a kernel to get
there and therefore sits above the kernels).
"""
from __future__ import annotations

import torch


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """channels_last(_3d) when ``t`` is stored that way (and not also plain contiguous)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format
