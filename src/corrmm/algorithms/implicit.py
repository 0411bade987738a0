"""implicit: Triton implicit-GEMM kernels that build the patches on chip, no column buffer.

The three passes are the GEMMs of :mod:`corrmm.kernels` (CUTLASS's views)::

    forward      M = N·P·Q   N = K       K = C·R·S
    grad_input   M = N·H·W   N = C       K = K·R·S   split into stride_h·stride_w phases, no zero insertion
    grad_weight  M = K       N = C·R·S   K = N·P·Q   split-K, partials summed in a fixed order
                                                     (small groups: several packed per program)

The kernels are 3-D, compiled without the depth arithmetic for 2-D problems;
a 1-D problem runs as a 2-D one with H = 1 (a view, no copy). Every dtype is: float16/bfloat16/float32
accumulate in fp32 and float64 in fp64 (``tl.dot`` on float64 operands), and
float32 uses TF32 exactly when ``torch.backends.cudnn.allow_tf32`` is set.

Triton is imported on first use, not at corrmm's import: corrmm works without
it, and ``TRITON_INTERPRET`` (read by Triton when the kernels are defined) may be
set any time before the first implicit call. On the CPU the kernels run only
under the interpreter, which is how CI tests them.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
from typing import List

import torch

from ..geometry import ConvGeometry
from .base import Algorithm

#: CUDA's limit on the second grid dimension, which carries groups (and stride phases)
_GRID_Y_LIMIT = 65535


def _kernels():
    from .. import kernels
    return kernels


def _interpreting() -> bool:
    """The interpreter mode the kernels have, or will have when first imported."""
    loaded = sys.modules.get("corrmm.kernels")
    if loaded is not None and hasattr(loaded, "INTERPRET"):
        return loaded.INTERPRET
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def as_2d(g: ConvGeometry) -> ConvGeometry:
    """A 1-D geometry as 2-D with a unit leading dimension (H = R = 1, no pad, stride and dilation 1);
    2-D and 3-D geometries unchanged."""
    if g.ndim != 1:
        return g
    return ConvGeometry(g.batch, g.in_channels, g.out_channels, (1, *g.in_size), (1, *g.kernel),
                        ((0, 0), *g.padding), (1, *g.stride), (1, *g.dilation), g.groups)


def _lift(t: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    return t.unsqueeze(2) if g.ndim == 1 else t


def _lower(t: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    return t.squeeze(2) if g.ndim == 1 else t


class Implicit(Algorithm):
    name = "implicit"

    def emulated_on(self, device: torch.device) -> bool:
        return torch.device(device).type == "cpu"  # Triton's interpreter

    def not_supported_reasons(self, geometry: ConvGeometry, pass_name: str, device: torch.device,
                              dtype: torch.dtype) -> List[str]:
        reasons = super().not_supported_reasons(geometry, pass_name, device, dtype)
        if importlib.util.find_spec("triton") is None:
            reasons.append("implicit needs Triton, which is not installed")
        if device.type == "cpu" and not _interpreting():
            reasons.append("implicit runs on the CPU only under the Triton interpreter (TRITON_INTERPRET=1)")
        elif device.type not in ("cpu", "cuda"):
            reasons.append(f"implicit runs on CUDA devices, not {device.type}")
        grid_y = geometry.groups
        if pass_name == "grad_input":
            grid_y *= math.prod(geometry.stride)
        if grid_y > _GRID_Y_LIMIT:
            reasons.append(f"implicit launches groups x stride phases = {grid_y} programs along the grid's "
                           f"second axis, above CUDA's limit of {_GRID_Y_LIMIT}")
        return reasons

    def forward(self, input, weight, g: ConvGeometry):
        y = _kernels().implicit_forward.forward(_lift(input, g), _lift(weight, g), as_2d(g))
        return _lower(y, g)

    def grad_input(self, weight, grad_output, g: ConvGeometry):
        dx = _kernels().implicit_grad_input.grad_input(_lift(weight, g), _lift(grad_output, g), as_2d(g))
        return _lower(dx, g)

    def grad_weight(self, input, grad_output, g: ConvGeometry):
        # small groups (ResNeXt's 32 of 4 to 32 channels) take the packed-groups kernel, others the dense one
        kernels = _kernels()
        module = kernels.grouped_grad_weight if kernels.grouped_grad_weight.applies(as_2d(g)) \
            else kernels.implicit_grad_weight
        if g.ndim == 3:  # the weight-gradient kernels are 3-D (2-D runs with depth 1)
            return module.grad_weight(input, grad_output, g)
        dw = module.grad_weight(_lift(input, g), _lift(grad_output, g), as_2d(g))
        return _lower(dw, g)


ALGORITHM = Implicit()
