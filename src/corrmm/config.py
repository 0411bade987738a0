"""Process-wide settings: the column-buffer workspace cap.

The cap bounds the temporary memory of the algorithms that materialise a
column buffer (im2col, swapped): they process the batch in chunks small enough
for the buffer to fit. Set it with ``corrmm.set_workspace_limit(bytes)`` or the
environment variable ``CORRMM_WORKSPACE_MB`` (read once, at import).
"""
from __future__ import annotations

import contextlib
import os

_DEFAULT_WORKSPACE_MB = 1024
_workspace_limit_bytes = int(float(os.environ.get("CORRMM_WORKSPACE_MB", _DEFAULT_WORKSPACE_MB)) * 2**20)


def workspace_limit() -> int:
    """The column-buffer cap in bytes."""
    return _workspace_limit_bytes


def set_workspace_limit(num_bytes: int) -> None:
    """Cap the column buffer of im2col-style algorithms at ``num_bytes``.

    A chunk always holds at least one image, so a single image whose column
    buffer exceeds the cap still runs.
    """
    global _workspace_limit_bytes
    if not isinstance(num_bytes, int) or isinstance(num_bytes, bool) or num_bytes < 1:
        raise ValueError(f"workspace limit must be a positive number of bytes, got {num_bytes!r}")
    _workspace_limit_bytes = num_bytes


@contextlib.contextmanager
def workspace_limit_set_to(num_bytes: int):
    """Temporarily change the workspace cap (restored on exit)."""
    previous = _workspace_limit_bytes
    set_workspace_limit(num_bytes)
    try:
        yield
    finally:
        set_workspace_limit(previous)


# ---- debug poisoning: outputs start as NaN so an element no kernel wrote shows up ----

_poison = os.environ.get("CORRMM_POISON", "0") not in ("", "0")


def poisoning() -> bool:
    return _poison


@contextlib.contextmanager
def poison_outputs(enabled: bool = True):
    """Within this block, every output buffer an algorithm allocates is filled with NaN first."""
    global _poison
    previous = _poison
    _poison = enabled
    try:
        yield
    finally:
        _poison = previous


def new_output(like, shape, dtype=None):
    """Allocate an output buffer like ``like`` (device, dtype); NaN-filled when poisoning."""
    out = like.new_empty(shape, dtype=dtype)
    if _poison:
        out.fill_(float("nan"))
    return out
