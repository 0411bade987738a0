"""What every algorithm provides.

An algorithm computes the three passes of one correlation problem described by
a :class:`~corrmm.geometry.ConvGeometry`:

    forward      (input, weight)        -> output         (N, K, *out)
    grad_input   (weight, grad_output)  -> grad of input  (N, C, *in)
    grad_weight  (input, grad_output)   -> grad of weight (K, C/groups, *kernel)

Tensors arrive validated, non-empty, in any memory layout, all of one dtype and
device; results may come back in any layout (the op layer sets the memory
format). ``not_supported_reasons`` lists why a case cannot be served; an empty
list means it can.
"""
from __future__ import annotations

import contextlib
from typing import List

import torch

from ..geometry import ConvGeometry

PASSES = ("forward", "grad_input", "grad_weight")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@contextlib.contextmanager
def matmul_precision_like_convolution(t: torch.Tensor):
    """float32 GEMMs use TF32 exactly when torch's convolutions would (cuDNN's TF32 switch)."""
    if t.device.type != "cuda" or t.dtype != torch.float32:
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


class Algorithm:
    name: str = ""
    #: dtypes the algorithm computes in, on any device it supports
    supported_dtypes = FLOAT_DTYPES

    def not_supported_reasons(self, geometry: ConvGeometry, pass_name: str, device: torch.device,
                              dtype: torch.dtype) -> List[str]:
        reasons = []
        if dtype not in self.supported_dtypes:
            reasons.append(f"{self.name} does not support dtype {dtype}")
        return reasons

    def unit_step_reasons(self, geometry: ConvGeometry) -> List[str]:
        """Why a method that needs stride 1 and dilation 1 (a plain GEMM, a transform) cannot serve ``geometry``."""
        reasons = []
        if any(s != 1 for s in geometry.stride):
            reasons.append(f"{self.name} needs stride 1, got subsample {geometry.stride}")
        if any(d != 1 for d in geometry.dilation):
            reasons.append(f"{self.name} needs dilation 1, got filter_dilation {geometry.dilation}")
        return reasons

    def emulated_on(self, device: torch.device) -> bool:
        """True where this algorithm only runs in an emulator (correct, never fast): the tuner skips it."""
        return False

    def forward(self, input: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
        raise NotImplementedError

    def grad_input(self, weight: torch.Tensor, grad_output: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
        raise NotImplementedError

    def grad_weight(self, input: torch.Tensor, grad_output: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
        raise NotImplementedError

    def run(self, pass_name: str, a: torch.Tensor, b: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
        return getattr(self, pass_name)(a, b, geometry)

    def __repr__(self) -> str:
        return f"<corrmm algorithm {self.name!r}>"
