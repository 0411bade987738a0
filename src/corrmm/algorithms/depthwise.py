"""depthwise: direct depthwise correlation (groups = channels), no GEMM and no column buffer.

Filter k = c·M + m (channel multiplier M = K / C >= 1) reads input channel c
only, so each output element is a short sum over the R·S kernel taps of one
channel: far too little arithmetic for a GEMM (a GEMM's reduction would have
length R·S), and the passes are memory-bound. Written per tap t = (r, s, ...)::

    forward      y[n, c·M+m, p]       = Σ_t  w[c·M+m, t] · x[n, c, p·s + t·d - low]
    grad_input   dx[n, c, p·s+t·d-low] += Σ_m w[c·M+m, t] · dy[n, c·M+m, p]     (for every t, p)
    grad_weight  dw[c·M+m, t]          = Σ_{n, p} x[n, c, p·s + t·d - low] · dy[n, c·M+m, p]

(p runs over output positions; positions outside the input are the zero padding.)

* CUDA, 1-D and 2-D: the Triton kernels of :mod:`corrmm.kernels.depthwise`
  (a tile of pixels x a block of channels per program, NHWC, a deterministic
  two-stage weight-gradient reduction). 1-D runs as 2-D with H = 1.
* CPU, 3x3 stride-1 undilated layers on NCHW images (when numba is installed): the
  numba kernel of :mod:`corrmm.kernels.depthwise_numba` for the forward pass, and for the
  input gradient with one filter per channel (the same kernel on dy, the filter rotated).
* CPU otherwise (and 3-D anywhere): torch ops, one per tap, each over the whole batch.
  A tap's input positions form a strided slice of x (restricted to the output
  positions whose tap lands inside the image, so nothing is padded or copied),
  and its weights are one value per channel broadcast over the pixels:
  ``y[.., out] += x[.., in] · w[:, t]`` is a single vectorised multiply-add
  (over channels in channels_last, over width in NCHW). The input gradient adds
  the same products into the input slices (the transposed form: no stride
  phases, no atomics); the weight gradient reduces each tap's product over
  batch and pixels. 16-bit types compute in float32.
"""
from __future__ import annotations

import functools
import importlib.util
import itertools
import math
from typing import List, Tuple

import torch

from ..geometry import ConvGeometry
from ..layout import memory_format_of
from .base import Algorithm
from .implicit import _lift, _lower, as_2d

#: CUDA's limit on the second grid dimension, which carries channel tiles (at least 16 channels each)
_MAX_CUDA_CHANNELS = 65535 * 16


def _kernels():
    from ..kernels import depthwise
    return depthwise


def uses_triton(geometry: ConvGeometry, device: torch.device) -> bool:
    """True where the Triton kernels run the passes (CUDA, 1-D and 2-D); torch ops elsewhere."""
    return device.type == "cuda" and geometry.ndim in (1, 2)


# ---- the torch-op path ---------------------------------------------------------------------

def _tap_ranges(g: ConvGeometry, tap: Tuple[int, ...]):
    """(output slices, input slices) of one tap: the output positions whose input lies inside the image.

    Per dimension, output p reads input p·s + t·d - low; it is inside for p in
    [ceil((low - t·d) / s), floor((size - 1 + low - t·d) / s)] ∩ [0, out). None
    when no output position of this tap reads the image.
    """
    out_slices, in_slices = [], []
    for t, size, out, (low, _), s, d in zip(tap, g.in_size, g.out_size, g.padding, g.stride, g.dilation):
        shift = t * d - low
        first = max(0, -(shift // s))  # ceil(-shift / s)
        last = min(out - 1, (size - 1 - shift) // s)
        if last < first:
            return None
        start = first * s + shift
        out_slices.append(slice(first, last + 1))
        in_slices.append(slice(start, start + (last - first) * s + 1, s))
    return tuple(out_slices), tuple(in_slices)


@functools.lru_cache(maxsize=256)
def _taps(g: ConvGeometry) -> tuple:
    """(flat tap index, (output slices, input slices)) of every kernel tap that reads the image."""
    taps = []
    for index, tap in enumerate(itertools.product(*(range(k) for k in g.kernel))):
        ranges = _tap_ranges(g, tap)
        if ranges is not None:
            taps.append((index, ranges))
    return tuple(taps)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _empty(like: torch.Tensor, shape, dtype: torch.dtype) -> torch.Tensor:
    """A buffer in ``like``'s memory format, so the ops below walk both in the same order."""
    return torch.empty(shape, dtype=dtype, device=like.device, memory_format=memory_format_of(like))


def _tap_weights(w: torch.Tensor, g: ConvGeometry, dtype: torch.dtype) -> torch.Tensor:
    """(T, C, M, 1, ..., 1): tap t's weight per channel and multiplier, shaped to broadcast over pixels."""
    C, M = g.in_channels, g.filters_per_group
    taps = w.to(dtype).reshape(C, M, -1).permute(2, 0, 1)
    return taps.reshape(*taps.shape, *(1,) * g.ndim).contiguous()


def _dense(storage: torch.Tensor, shape, channels_last: bool) -> torch.Tensor:
    """A dense (N, C, *spatial) view of the start of ``storage``, channels innermost if ``channels_last``."""
    count = math.prod(shape)
    if not channels_last:
        return storage[:count].view(shape)
    n, c, *spatial = shape
    return storage[:count].view(n, *spatial, c).permute(0, len(shape) - 1, *range(1, len(shape) - 1))


def _covers(slices, sizes) -> bool:
    return all(s.start == 0 and s.stop == n and s.step in (None, 1) for s, n in zip(slices, sizes))


_ALL = (slice(None), slice(None))  # batch and channels


def torch_forward(x: torch.Tensor, w: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    M = g.filters_per_group
    dtype = _compute_dtype(x.dtype)
    x = x.to(dtype)
    y = _empty(x, g.output_shape, dtype)
    weights = _tap_weights(w, g, dtype)
    taps = _taps(g)
    # a tap that reads the image at every output position (the centre one, usually) writes first
    full = [i for i, (_, (out_slices, _)) in enumerate(taps) if _covers(out_slices, g.out_size)]
    if full:
        taps = (taps[full[0]],) + taps[:full[0]] + taps[full[0] + 1:]
    else:
        y.zero_()
    for m in range(M):
        y_m = y[:, m::M]  # filters c·M + m, one per channel: (N, C, *out)
        for i, (t, (out_slices, in_slices)) in enumerate(taps):
            source = x[(*_ALL, *in_slices)]
            if i == 0 and full:
                torch.mul(source, weights[t, :, m], out=y_m)
            else:
                y_m[(*_ALL, *out_slices)].addcmul_(source, weights[t, :, m])
    return y


def torch_grad_input(w: torch.Tensor, dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    M = g.filters_per_group
    dtype = _compute_dtype(dy.dtype)
    dy = dy.to(dtype)
    dx = _empty(dy, g.input_shape, dtype).zero_()
    weights = _tap_weights(w, g, dtype)
    for t, (out_slices, in_slices) in _taps(g):
        target = dx[(*_ALL, *in_slices)]
        for m in range(M):
            target.addcmul_(dy[:, m::M][(*_ALL, *out_slices)], weights[t, :, m])
    return dx


def torch_grad_weight(x: torch.Tensor, dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    C, M = g.in_channels, g.filters_per_group
    dtype = _compute_dtype(x.dtype)
    x, dy = x.to(dtype), dy.to(dtype)
    dw = torch.empty((C, M, *g.kernel), dtype=dtype, device=x.device)
    dw_taps = dw.view(C, M, -1)
    dw_taps.zero_()  # taps that read only padding stay zero
    reduced = (0, *range(2, 2 + g.ndim))  # batch and pixels
    # one storage for every tap's product (a fresh buffer per tap would cost page faults each
    # time), viewed densely at each tap's shape: torch reduces a sliced channels_last view ~25x slower
    storage = torch.empty(g.batch * C * math.prod(g.out_size), dtype=dtype, device=x.device)
    channels_last = memory_format_of(x) != torch.contiguous_format
    for t, (out_slices, in_slices) in _taps(g):
        source = x[(*_ALL, *in_slices)]
        product = _dense(storage, source.shape, channels_last)
        for m in range(M):
            torch.mul(source, dy[:, m::M][(*_ALL, *out_slices)], out=product)
            torch.sum(product, dim=reduced, out=dw_taps[:, m, t])
    return dw.view(g.weight_shape)


# ---- the numba path: 3x3 NCHW layers on the CPU --------------------------------------------

def _numba_kernels():
    from ..kernels import depthwise_numba
    return depthwise_numba


@functools.lru_cache(maxsize=1)
def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def _rotated_padding(g: ConvGeometry):
    """The padding of the stride-1 input gradient written as a forward pass: d·(k - 1) - low per dimension."""
    return [d * (k - 1) - low for k, d, (low, _) in zip(g.kernel, g.dilation, g.padding)]


def uses_numba(pass_name: str, t: torch.Tensor, g: ConvGeometry) -> bool:
    """True where the numba kernel runs the pass: CPU, 2-D, 3x3, stride 1, no dilation, an NCHW image;
    the input gradient with one filter per channel (the forward kernel on dy, the kernel rotated).
    Strided and dilated layers stay with the torch ops: the kernel's strided loads do not vectorise.
    The weight gradient stays with the torch ops (a reduction that numba does not vectorise
    without fast-math)."""
    if not (t.device.type == "cpu" and g.ndim == 2 and tuple(g.kernel) == (3, 3) and t.is_contiguous()
            and all(s == 1 for s in g.stride) and all(d == 1 for d in g.dilation)
            and pass_name != "grad_weight" and numba_available()):
        return False
    if pass_name == "grad_input":
        return g.filters_per_group == 1 and all(p >= 0 for p in _rotated_padding(g))
    return True


def _run_numba(kernel, *arrays_and_args) -> None:
    """Run a numba kernel on as many threads as torch uses. numba's OpenMP pool, started by its first
    parallel launch, resets the process's OpenMP thread count, which torch's own ops read: torch's
    setting is put back afterwards."""
    import numba
    torch_threads = torch.get_num_threads()
    threads = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    try:
        kernel(*arrays_and_args)
    finally:
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


def numba_forward(x: torch.Tensor, w: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    dtype = _compute_dtype(x.dtype)
    x = x.to(dtype).contiguous()
    w = w.to(dtype).reshape(g.out_channels, 3, 3).contiguous()
    y = torch.empty(g.output_shape, dtype=dtype)
    _run_numba(_numba_kernels().forward_3x3, x.numpy(), w.numpy(), y.numpy(), *(low for low, _ in g.padding))
    return y


def numba_grad_input(w: torch.Tensor, dy: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """dx = dy correlated with the kernel rotated 180°, padded by k - 1 - low (stride 1, M = 1)."""
    dtype = _compute_dtype(dy.dtype)
    dy = dy.to(dtype).contiguous()
    w = w.to(dtype).reshape(g.out_channels, 3, 3).flip((1, 2)).contiguous()
    dx = torch.empty(g.input_shape, dtype=dtype)
    _run_numba(_numba_kernels().forward_3x3, dy.numpy(), w.numpy(), dx.numpy(), *_rotated_padding(g))
    return dx


# ---- the algorithm ---------------------------------------------------------------------

class Depthwise(Algorithm):
    name = "depthwise"

    def not_supported_reasons(self, geometry: ConvGeometry, pass_name: str, device: torch.device,
                              dtype: torch.dtype) -> List[str]:
        reasons = super().not_supported_reasons(geometry, pass_name, device, dtype)
        if geometry.groups != geometry.in_channels:
            reasons.append(f"depthwise needs one input channel per group (groups == channels), got "
                           f"groups={geometry.groups} for {geometry.in_channels} input channels")
        if device.type not in ("cpu", "cuda"):
            reasons.append(f"depthwise runs on CPU and CUDA devices, not {device.type}")
        if uses_triton(geometry, device):
            if importlib.util.find_spec("triton") is None:
                reasons.append("depthwise needs Triton on CUDA, which is not installed")
            if geometry.out_channels > _MAX_CUDA_CHANNELS:
                reasons.append(f"depthwise launches one program column per 16 channels: {geometry.out_channels} "
                               f"filters exceed CUDA's grid limit ({_MAX_CUDA_CHANNELS})")
        return reasons

    def forward(self, input, weight, g: ConvGeometry):
        if uses_triton(g, input.device):
            return _lower(_kernels().forward(_lift(input, g), _lift(weight, g), as_2d(g)), g)
        if uses_numba("forward", input, g):
            return numba_forward(input, weight, g)
        return torch_forward(input, weight, g)

    def grad_input(self, weight, grad_output, g: ConvGeometry):
        if uses_triton(g, grad_output.device):
            return _lower(_kernels().grad_input(_lift(weight, g), _lift(grad_output, g), as_2d(g)), g)
        if uses_numba("grad_input", grad_output, g):
            return numba_grad_input(weight, grad_output, g)
        return torch_grad_input(weight, grad_output, g)

    def grad_weight(self, input, grad_output, g: ConvGeometry):
        if uses_triton(g, input.device):
            return _lower(_kernels().grad_weight(_lift(input, g), _lift(grad_output, g), as_2d(g)), g)
        return torch_grad_weight(input, grad_output, g)


ALGORITHM = Depthwise()
