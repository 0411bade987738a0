"""Which algorithm runs a pass: the ``auto`` rule.

The rule is cheap (integer arithmetic on the geometry), deterministic and
never times anything. It has two layers.

**The seed's rule, generalised (CPU, and any case the GPU rule leaves open).**
im2col and swapped do the same arithmetic and differ in GEMM shape and column
buffer:

* forward and grad_weight: im2col multiplies image by image, each product having
  P·Q columns (the output extent), while swapped makes one product over the whole
  batch, looping over input channels instead. GpuCorrMM's rule
  ``batch·R·S > channels·P·Q`` picks swapped when the kernel is large compared
  with the output (the per-image products get thin). The weight gradient is the
  same exchange read backwards, so it takes the same predicate.
* grad_input: both GEMMs have the same shape; the column buffers differ
  (im2col's has C·R·S·P·Q elements per image, swapped's K·R·S·H·W, and swapped
  must insert zeros when strided), so swapped is chosen when its buffer is the
  smaller and the stride is 1.
* a 1x1, stride-1, unpadded, undilated layer is a plain GEMM: gemm1x1.

**On the CPU**, fitted to ``corrmm bench --device cpu --threads 1`` (fp32, the
cpu-small suite and the demo's layers; PERFORMANCE.md, "CPU"):

* gemm1x1 for plain 1x1 layers (im2col for their weight gradient on small images);
* winograd for 3x3 / 3-tap stride-1 layers with >= 128 channels and filters per group, and for
  the forward and input-gradient passes of larger images from 64 (CPU v3, C1);
* small images (under 1024 output positions, a whole-batch column buffer within the workspace):
  im2col in every pass, whose CPU path for them (``algorithms/columns_last.py``) builds one
  channels-last column buffer for the batch and runs one oneDNN GEMM per group (PERFORMANCE.md,
  "CPU v3": the demo's layers 1.1x-1.6x swapped);
* grad_input: swapped at stride 1 when its column buffer is no larger than
  im2col's or there are 16+ channels per group, else im2col (whose col2im is
  torch's fold);
* forward and grad_weight: im2col, or swapped where the seed's large-kernel test
  holds (for the forward pass, only with 16+ channels per group);
* depthwise layers: the ``depthwise`` algorithm (below): on C6, 2.4-3.4 ms a pass
  against 23-27 ms for fft, the best of the GEMM algorithms there.

**On CUDA**, fitted to ``corrmm bench`` on an H100 (bf16 and TF32, the
convnet suite; PERFORMANCE.md has the table):

* gemm1x1 whenever it applies (R3: fastest in every pass and dtype);
* the implicit-GEMM kernels by default: they win the 3x3 to 9x9 layers
  (L2-L5, R2, R4, R5) in bf16, and since v4 (outputs written in the caller's
  layout, tiled transposes) the RGB first layers' forward pass too (L1, R1:
  1.2x and 2.4x im2col in bf16);
* forward with few channels per group (``Cg < 16``) in 32/64-bit floats:
  im2col, whose column buffer turns the 3-channel reduction into a long,
  dense cuBLAS GEMM (L1, R1 in TF32: 1.02x-1.05x the implicit kernel);
* the seed's large-kernel predicate (``N·R·S > Cg·P·Q``, S2): swapped for the
  forward pass (the weight gradient stays with the rules below: implicit for
  16-bit types, im2col for 32-bit ones, each 1.7x swapped on S2);
* fft (stride 1, dilation 1) where the direct method is weakest: TF32 forward
  passes with kernels of 9x9 and more (L2, L3: the FFT's complex GEMMs run at
  the same TF32 rate on far fewer operations), TF32 gradients from 7x7 on (L4:
  1.1x-1.9x), and 16-bit input gradients of 9x9+ kernels with few channels
  or a large kernel (L1, S2);
* the weight gradient in 32/64-bit floats: im2col (cuBLAS) otherwise, 1.2x-3x
  the implicit kernel on L5, S1, R1, R4, R5 in TF32; except float32 with few
  channels per group at unit stride and dilation (L1), where the implicit
  kernel's K-major tiles feed TF32 wgmma (v6: 1.6x im2col).

**Depthwise layers** (groups = channels > 1), on the CPU and CUDA alike: the
``depthwise`` algorithm, before either rule above (a direct kernel with R·S
multiply-adds per element; the GEMM algorithms' reductions would have length
R·S; PERFORMANCE.md, "depthwise"). On CUDA a stride-2 layer with one filter per
channel takes the implicit kernels for its forward and input-gradient passes
(MobileNetV2's: 1.5x and 2.3x depthwise's kernels, PERFORMANCE.md "v7").
"""
from __future__ import annotations

import math

import torch

from . import algorithms
from .algorithms import columns_last
from .geometry import ConvGeometry

FEW_CHANNELS = 16      # below this many channels per group, implicit tiles are mostly padding
SMALL_GROUP_FILTERS = 32  # up to this many filters per group the weight gradient packs groups (grouped_grad_weight)
FFT_MIN_TAPS = 81      # fft pays from 9x9 kernels on
FFT_MIN_TAPS_TF32_GRADIENTS = 49  # and TF32 gradients from 7x7 on (L4)


def seed_rule(pass_name: str, g: ConvGeometry) -> str:
    """GpuCorrMM's choice between im2col and swapped, extended to all passes (and gemm1x1)."""
    if _is_plain_gemm(g):
        return "gemm1x1"
    kernel_area, out_area, in_area = math.prod(g.kernel), math.prod(g.out_size), math.prod(g.in_size)
    if pass_name in ("forward", "grad_weight"):
        large_kernel = g.batch * kernel_area > g.channels_per_group * out_area
        return "swapped" if large_kernel else "im2col"
    if pass_name == "grad_input":
        unit_stride = all(s == 1 for s in g.stride)
        smaller_buffer = g.filters_per_group * in_area < g.channels_per_group * out_area
        return "swapped" if unit_stride and smaller_buffer else "im2col"
    raise ValueError(f"unknown pass {pass_name!r}")


def _is_plain_gemm(g: ConvGeometry) -> bool:
    return (all(k == 1 for k in g.kernel) and all(s == 1 for s in g.stride)
            and all(d == 1 for d in g.dilation) and all(p == (0, 0) for p in g.padding))


#: refits from the 2026-11-25 device run (PERFORMANCE.md, "v7"), bf16 unless said
SIXTEEN_BIT = (torch.float16, torch.bfloat16)


def _cuda_rule(pass_name: str, g: ConvGeometry, dtype: torch.dtype) -> str:
    if _is_plain_gemm(g):
        if pass_name == "grad_weight" and dtype in SIXTEEN_BIT:
            return "implicit"  # R3 (1x1, 256 -> 64, 56²): 0.167 ms against gemm1x1's 0.393
        return "gemm1x1"
    taps = math.prod(g.kernel)
    few_channels = g.channels_per_group < FEW_CHANNELS
    large_kernel = g.batch * taps > g.channels_per_group * math.prod(g.out_size)
    unit_steps = all(s == 1 for s in g.stride) and all(d == 1 for d in g.dilation)
    fft_fits = unit_steps and taps >= FFT_MIN_TAPS
    tf32 = dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    tf32_gradient_fft = tf32 and unit_steps and taps >= FFT_MIN_TAPS_TF32_GRADIENTS
    special = _grouped_or_few_channel_rule(pass_name, g, dtype)
    if special:
        return special
    if pass_name == "forward":
        if few_channels and dtype in (torch.float32, torch.float64):
            return "im2col"
        if large_kernel and not few_channels:  # S2; one-channel audio (A1, 80 taps): implicit 6.9x swapped
            return "swapped"
        return "fft" if fft_fits and tf32 else "implicit"
    if pass_name == "grad_input":
        return "fft" if tf32_gradient_fft or (fft_fits and (few_channels or large_kernel)) else "implicit"
    if pass_name == "grad_weight":
        if tf32_gradient_fft and not few_channels and not large_kernel:  # S2 (5x5 output): im2col, 1.7x
            # 9x9 and up (L2, L3: fft 3.6x and 3.3x im2col); at 7x7 the v6 kernel beats it (L4: 0.49 ms
            # against fft's 0.97 and im2col's 0.61)
            return "fft" if taps >= FFT_MIN_TAPS else "implicit"
        if dtype == torch.float32 and few_channels and unit_steps:
            return "implicit"  # L1 in TF32: K-major pixels-inner tiles, 47 TFLOP/s against im2col's 29 (v6)
        if dtype in (torch.float32, torch.float64):
            return "im2col"  # channel-block weight-gradient tiles are MN-major, which TF32 wgmma cannot read
        return "implicit"  # S2 too: 1.65x swapped's speed there (bf16, v4)
    raise ValueError(f"unknown pass {pass_name!r}")


# ---- grouped, 3-D and few-channel layers (PERFORMANCE.md, "grouped, 3-D, small-channel") -------------
# 3-D forward and input-gradient passes need no rule of their own: the general rule's "implicit" now
# runs (V3 in bf16: 7.6x and 34x the old auto choice, forward and grad-input), where it used to fall
# back to the seed rule.

def _grouped_or_few_channel_rule(pass_name: str, g: ConvGeometry, dtype: torch.dtype):
    """implicit where its packed groups, row-column kernel and tap windows win; else None.

    * forward of small groups in float32: G8 in TF32 6.8x im2col (the few-channel rule
      below was fitted to ungrouped RGB layers);
    * input gradient of 1-4 channel 2-D layers (the row-column kernel): T1 106x and L1 2.5x
      fft in bf16, 2.1x fft on L1 in TF32;
    * 16-bit input gradients of kernels large against their output (the seed's predicate):
      the tap windows skip what fft's transforms pay for, S2 1.3x fft in bf16 (TF32 stays fft).
    * TF32 weight gradients of small groups (up to 32 filters each): the packed-groups kernel
      (16-byte pipelined copies, GP groups per tile) where im2col runs one small GEMM per group;
      a prediction (PERFORMANCE.md, "Grouped and depthwise weight gradients"), 16-bit types
      take it through the general rule's "implicit".
    """
    small_groups = g.groups > 1 and 1 < g.channels_per_group < FEW_CHANNELS  # depthwise (Cg = 1) excluded
    if pass_name == "forward" and small_groups and dtype == torch.float32:
        return "implicit"
    if (pass_name == "grad_weight" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
            and g.groups > 1 and g.channels_per_group > 1 and g.filters_per_group <= SMALL_GROUP_FILTERS):
        return "implicit"
    if pass_name == "grad_input":
        if g.ndim == 2 and g.groups == 1 and g.in_channels <= 4 and g.kernel[0] > 1:
            return "implicit"
        large_kernel = g.batch * math.prod(g.kernel) > g.channels_per_group * math.prod(g.out_size)
        if large_kernel and dtype in (torch.float16, torch.bfloat16):
            return "implicit"
    return None
def is_depthwise(g: ConvGeometry) -> bool:
    """One input channel per group, and more than one channel (one channel and one group is a dense layer)."""
    return g.groups == g.in_channels > 1


# ---- the CPU rule (fitted to `corrmm bench --device cpu --threads 1` on the cpu-small suite and the
# demo's layers, fp32, 2-core AMD EPYC, with interleaved re-runs of the close calls; PERFORMANCE.md
# "CPU" has the table) ----------------------------------------------------------------------------

#: winograd F(2x2, 3x3) pays from this many channels and filters per group: C2 (256) 1.5x-2.1x and a
#: 128-channel 28² layer 1.5x-2x the best column-buffer algorithm; at 64 (C1, D3) its transforms,
#: which move 4x the image, cost as much as the multiplications they save
WINOGRAD_MIN_CHANNELS = 128
WINOGRAD_MIN_CHANNELS_CPU_V3 = 64  # forward and input gradient of larger images
SMALL_1X1_OUTPUT = 256  # 1x1 weight gradients on small images: im2col's single GEMM beats per-image ones


def _winograd_fits(g: ConvGeometry) -> bool:
    return (g.ndim <= 2 and all(k == 3 for k in g.kernel) and all(s == 1 for s in g.stride)
            and all(d == 1 for d in g.dilation))


def _cpu_rule(pass_name: str, g: ConvGeometry) -> str:
    if _is_plain_gemm(g):
        if pass_name == "grad_weight" and math.prod(g.out_size) < SMALL_1X1_OUTPUT:
            return "im2col"  # D4: 1.3x gemm1x1's per-image products
        return "gemm1x1"
    if _winograd_fits(g) and min(g.channels_per_group, g.filters_per_group) >= WINOGRAD_MIN_CHANNELS:
        return "winograd"
    if columns_last.serves(g, torch.device("cpu"), torch.float32):
        # small images: im2col's whole-batch channels-last columns and one oneDNN GEMM per group, every
        # pass (CPU v3: the demo's D1-D3 1.1x-1.6x swapped; D1's weight gradient 1.6x)
        return "im2col"
    if (_winograd_fits(g) and pass_name != "grad_weight"
            and min(g.channels_per_group, g.filters_per_group) >= WINOGRAD_MIN_CHANNELS_CPU_V3):
        # with oneDNN's GEMMs (CPU v3) F(2x2, 3x3) pays from 64 channels: C1 forward 15.6 ms against
        # im2col's 21.2, input gradient 16.1 against swapped's 21.6 (its weight gradient: im2col, 20.6 / 21.9)
        return "winograd"
    if pass_name == "grad_input":
        in_area, out_area = math.prod(g.in_size), math.prod(g.out_size)
        unit_stride = all(s == 1 for s in g.stride)
        # swapped (its forward runs in cache-sized panels) at stride 1 when its column buffer is no
        # larger than im2col's or the layer has 16+ channels per group: C1 2.0x, C4 1.9x, C5 1.25x,
        # D3 1.5x; im2col (torch's fold) otherwise: strided (C3, C7) or few channels (D1: 15x)
        smaller_buffer = g.filters_per_group * in_area <= g.channels_per_group * out_area
        if unit_stride and (smaller_buffer or g.channels_per_group >= 16):
            return "swapped"
        return "im2col"
    if seed_rule(pass_name, g) == "swapped":  # a kernel large beside the output (N·R·S > Cg·P·Q)
        if pass_name == "grad_weight" or g.channels_per_group >= 16:
            return "swapped"  # grad_weight: D1 (one input channel) 1.3x im2col; forward: many channels only
    # forward and grad_weight: im2col (panels / channels-last columns), as fast as or faster than swapped
    # everywhere measured (C1 2x-3x, C4 1.3x-1.5x, D1 1.45x) and than fft on C4's 7x7 weight gradient
    return "im2col"


def auto_choice(pass_name: str, geometry: ConvGeometry, device: torch.device, dtype: torch.dtype) -> str:
    """The algorithm ``auto`` runs for this pass (a registered name)."""
    device = torch.device(device)
    # ---- depthwise layers: the direct kernel, on every device that serves it
    if is_depthwise(geometry) and "depthwise" in algorithms.REGISTRY and not algorithms.REGISTRY[
            "depthwise"].not_supported_reasons(geometry, pass_name, device, dtype):
        strided = any(s > 1 for s in geometry.stride)
        one_filter_per_channel = geometry.out_channels == geometry.in_channels
        if (device.type == "cuda" and strided and one_filter_per_channel and pass_name != "grad_weight"
                and geometry.ndim <= 2
                and not algorithms.REGISTRY["implicit"].not_supported_reasons(geometry, pass_name, device, dtype)):
            # MobileNetV2's stride-2 depthwise layer (144 ch, 56² -> 28², bf16): the implicit kernels
            # 0.103 / 0.159 ms forward / grad_input against depthwise's 0.152 / 0.365
            return "implicit"
        return "depthwise"
    if device.type == "cuda":
        choice = _cuda_rule(pass_name, geometry, dtype)
    elif device.type == "cpu":
        choice = _cpu_rule(pass_name, geometry)
    else:
        choice = None
    if choice in algorithms.REGISTRY and not algorithms.REGISTRY[choice].not_supported_reasons(
            geometry, pass_name, device, dtype):
        return choice
    return seed_rule(pass_name, geometry)


def resolve(algo: str, pass_name: str, geometry: ConvGeometry, device: torch.device,
            dtype: torch.dtype) -> algorithms.Algorithm:
    """The algorithm object that runs ``pass_name`` for ``algo`` (a name, ``auto`` or ``tune``)."""
    if algo == "tune":
        return tuned(pass_name, geometry, device, dtype)
    if algo == "auto":
        algo = auto_choice(pass_name, geometry, device, dtype)
    algorithm = algorithms.get(algo)
    reasons = algorithm.not_supported_reasons(geometry, pass_name, device, dtype)
    if reasons:
        raise ValueError(f"algo {algo!r} cannot run this {pass_name} pass: " + "; ".join(reasons))
    return algorithm


def tuned(pass_name: str, geometry: ConvGeometry, device: torch.device, dtype: torch.dtype) -> algorithms.Algorithm:
    """The algorithm ``tune`` picks, on the hot path of a planned call: the tuner only ever returns
    supported choices (it times supported candidates and checks remembered ones); where it cannot
    time now it returns None and the ``auto`` rule decides."""
    from . import tuning  # imported on first use: it times algorithms, which the auto path never needs

    name = tuning.choose(pass_name, geometry, device, dtype)
    return algorithms.get(name if name is not None else auto_choice(pass_name, geometry, device, dtype))
