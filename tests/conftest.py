"""Shared test set-up. Without a GPU, Triton kernels run in Triton's
interpreter, which must be switched on before anything imports triton.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

