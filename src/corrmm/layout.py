"""Memory-format changes of results: NHWC <-> NCHW through a tiled transpose where one is available.

The implicit-GEMM kernels read NHWC; the forward and input-gradient kernels
write their result in the caller's layout already, while the weight gradient
(and any algorithm's result in another layout) goes back in its argument's
memory format through here. On a GPU with Triton installed the 4-D conversions
run through :mod:`corrmm.kernels.transpose` (coalesced on both sides); anywhere
else, and for other ranks, torch's own copy.
"""
from __future__ import annotations

import functools
import importlib.util

import torch

from .memory_format import memory_format_of  # noqa: F401  (re-exported: the op layer reads both here)


@functools.lru_cache(maxsize=1)
def _have_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def to_memory_format(t: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``t.contiguous(memory_format=memory_format)``, with the fast path for 4-D CUDA NHWC -> NCHW."""
    if t.is_contiguous(memory_format=memory_format):
        return t
    if (memory_format == torch.contiguous_format and t.dim() == 4 and t.is_cuda and _have_triton()
            and t.is_contiguous(memory_format=torch.channels_last)):
        from .kernels import transpose
        if transpose.supported(t):
            return transpose.nhwc_to_nchw(t)
    return t.contiguous(memory_format=memory_format)
