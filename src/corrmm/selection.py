"""Which algorithm runs a pass: the ``auto`` rule.

The rule generalises the one GpuCorrMM found in 2014. Both column-buffer
algorithms do the same arithmetic; they differ in the shape of their GEMMs and
the size of their column buffers:

* forward and grad_weight: im2col multiplies image by image, each product having
  P·Q columns (the output extent), while swapped makes one product over the whole
  batch, looping over input channels instead. The seed's rule
  ``batch·R·S > channels·P·Q`` picks swapped when the kernel is large compared
  with the output (the per-image products get thin). The weight gradient is the
  same exchange read backwards, so it takes the same predicate.
* grad_input: both GEMMs have the same shape; the column buffers differ
  (im2col's has C·R·S·P·Q elements per image, swapped's K·R·S·H·W, and swapped
  must insert zeros when strided), so swapped is chosen when its buffer is the
  smaller and the stride is 1.

The rule is cheap (integer arithmetic on the geometry) and deterministic.
"""
from __future__ import annotations

import math

import torch

from . import algorithms
from .geometry import ConvGeometry


def auto_choice(pass_name: str, geometry: ConvGeometry, device: torch.device, dtype: torch.dtype) -> str:
    g = geometry
    kernel_area = math.prod(g.kernel)
    out_area = math.prod(g.out_size)
    in_area = math.prod(g.in_size)
    if pass_name in ("forward", "grad_weight"):
        large_kernel = g.batch * kernel_area > g.channels_per_group * out_area
        return "swapped" if large_kernel else "im2col"
    if pass_name == "grad_input":
        unit_stride = all(s == 1 for s in g.stride)
        smaller_buffer = g.filters_per_group * in_area < g.channels_per_group * out_area
        return "swapped" if unit_stride and smaller_buffer else "im2col"
    raise ValueError(f"unknown pass {pass_name!r}")


def resolve(algo: str, pass_name: str, geometry: ConvGeometry, device: torch.device,
            dtype: torch.dtype) -> algorithms.Algorithm:
    """The algorithm object that runs ``pass_name`` for ``algo`` (a name, ``auto`` or ``tune``)."""
    if algo == "auto":
        algo = auto_choice(pass_name, geometry, device, dtype)
    elif algo == "tune":
        from . import tuning  # imported on first use: it times algorithms, which the auto path never needs

        algo = tuning.choose(pass_name, geometry, device, dtype)
    algorithm = algorithms.get(algo)
    reasons = algorithm.not_supported_reasons(geometry, pass_name, device, dtype)
    if reasons:
        raise ValueError(f"algo {algo!r} cannot run this {pass_name} pass: " + "; ".join(reasons))
    return algorithm
