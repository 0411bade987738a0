"""Shared test set-up. Without a GPU, Triton kernels run in Triton's
interpreter, which must be switched on before anything imports triton.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def fresh_dynamo():
    """A clean torch.compile state (caches and counters) around a compile test."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
