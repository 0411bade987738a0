"""The numpy <-> torch hand-off that every CPU backend of the ops goes through.

PyTensor's C/Python linkers call ``Op.perform`` with numpy arrays, and the
Numba linker calls the same body from ``numba.objmode``. Arrays become torch
tensors without a copy (``torch.from_numpy`` shares the buffer, strides
included); only arrays torch cannot view (negative strides) are copied. The
result goes back as ``tensor.numpy()``, again sharing the buffer.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch


def as_torch(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory where torch can view it."""
    if any(s < 0 for s in array.strides):
        array = np.ascontiguousarray(array)  # torch has no negative strides
    if not array.flags.writeable:
        # the ops never write to their inputs, so sharing a read-only buffer is safe
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(array)
    return torch.from_numpy(array)


def perform_numpy(op, inputs):
    """Run ``op`` (a corrmm PyTensor op) on numpy inputs and return a numpy array."""
    a, b = as_torch(np.asarray(inputs[0])), as_torch(np.asarray(inputs[1]))
    shape = None if len(inputs) < 3 else [int(s) for s in inputs[2]]
    with torch.no_grad():
        out = op.compute(a, b, shape)
    return out.numpy()
