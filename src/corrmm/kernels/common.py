"""Host-side helpers shared by the implicit-GEMM kernels: launch policy, not arithmetic.

* interpreter mode: Triton reads ``TRITON_INTERPRET`` when a kernel is decorated,
  so the mode is fixed when this package is first imported; ``INTERPRET``
  records it for the wrappers (tile sizes, dot precision, device checks).
* autotuning: one small documented config list per kernel, keyed on
  power-of-two buckets of the GEMM sizes so a new batch size or image size does
  not re-tune, and pruned by element size so no config asks for more shared
  memory than a Hopper SM has. Under the interpreter a single small config runs
  (benchmarking configs there would take minutes and prove nothing);
  ``CORRMM_AUTOTUNE=0`` likewise runs one config on a GPU.
* layout: on a GPU operands are read NHWC (channels_last), see
  :func:`corrmm.kernels.transpose.as_nhwc`,
  except the float32 weight of the input gradient (each module's
  ``prepare_operands`` says why); under the interpreter operands keep their
  strides, which is how the tests exercise arbitrary layouts.
* index width: 32-bit offsets unless a tensor (padding included) spans 2**31
  elements, see :func:`needs_wide_index`.
* launching: each wrapper derives a launch's scalar arguments once per problem
  signature (:func:`planned`) and launches through :class:`KernelLaunch`, which
  after the first call skips Triton's autotuner and argument binding.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Dict, List, Sequence

import torch
import triton
import triton.language as tl
from triton.runtime.autotuner import Autotuner

from .. import config
from ..memory_format import memory_format_of

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: above this many elements an offset no longer fits a signed 32-bit int (with room for tile overhang)
_INT32_SAFE = 2**31 - 1 - 2**16

#: bytes of shared memory one Hopper SM gives a program (227 KiB), less a margin for Triton's own use
_SHARED_MEMORY_BUDGET = 220 * 1024


def cdiv(a: int, b: int) -> int:
    """Ceiling division on the host (plain Python: ``triton.cdiv`` costs microseconds per call in Triton 3.9)."""
    return -(-a // b)


def bucket(n: int) -> int:
    """The autotuning key of a size: its next power of two (so 97 and 128 share a tuned config)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def accumulator_dtype(dtype: torch.dtype):
    """fp32 accumulation for every float type but float64, which accumulates in float64."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision: TF32 for float32 exactly when torch's cuDNN convolutions use it.

    The interpreter multiplies in numpy, so it always computes "ieee"; 16-bit and
    64-bit operands ignore the setting (they multiply exactly into the accumulator).
    """
    if dtype == torch.float32 and not INTERPRET and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def upcast_operands(dtype: torch.dtype) -> bool:
    """Under the interpreter, widen 16-bit operands to fp32 before ``tl.dot``.

    Triton 3.9's interpreter multiplies bfloat16 blocks as raw 16-bit integers
    (numpy has no bfloat16), which gives garbage. Products of 16-bit floats are
    exact in fp32, so widening first computes exactly what the tensor cores do
    (16-bit products, fp32 accumulation). On a GPU operands stay 16-bit.
    """
    return INTERPRET and dtype in (torch.float16, torch.bfloat16)


def new_output(like: torch.Tensor, shape: Sequence[int], dtype: torch.dtype = None) -> torch.Tensor:
    """A 4-D output in the memory format the caller will want back: ``like``'s (NCHW unless it is
    channels_last), so no layout copy follows the kernel. The epilogue's stores take any strides;
    into NCHW they are narrower (consecutive pixels, not channels, are adjacent), a small cost
    next to a separate transpose pass over the result. NaN-filled when corrmm poisons outputs."""
    return _allocate(like, shape, dtype, memory_format_of(like))


def new_nhwc(like: torch.Tensor, shape: Sequence[int], dtype: torch.dtype = None) -> torch.Tensor:
    """A 4-D output allocated channels-last (NaN-filled when corrmm poisons outputs)."""
    return _allocate(like, shape, dtype, torch.channels_last)


def _allocate(like: torch.Tensor, shape: Sequence[int], dtype, memory_format) -> torch.Tensor:
    out = torch.empty(tuple(shape), dtype=dtype or like.dtype, device=like.device, memory_format=memory_format)
    if config.poisoning():
        out.fill_(float("nan"))
    return out


def span(t: torch.Tensor, padding: Sequence[int] = (0, 0, 0, 0)) -> int:
    """The largest |offset| in elements that indexing ``t`` can form, padded extents included.

    ``padding`` gives the extra positions (low + high) that the kernels may
    compute per dimension before masking them.
    """
    padding = tuple(padding) + (0,) * (t.dim() - len(padding))  # 5-D tensors: no padding in the unnamed dims
    return sum((size + pad) * abs(stride) for size, pad, stride in zip(t.shape, padding, t.stride()))


def needs_wide_index(*extents: int) -> bool:
    """True when some offset might not fit in int32: the kernels then compute offsets in int64."""
    return max(extents) > _INT32_SAFE


_SM_COUNT: Dict[int, int] = {}


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of the device (4 under the interpreter: enough to exercise split-K)."""
    if device.type != "cuda":
        return 4
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


#: ``CORRMM_AUTOTUNE=0`` runs one modest config instead of tuning (quick GPU checks: no
#: benchmarking of every config for every new shape bucket)
AUTOTUNE = config.autotuning()


def _time_config(kernel_call, quantiles=None, **_):
    """How the autotuner times one config: median of about 20 ms of runs after 5 ms of warm-up.

    Triton's default (25 ms warm-up, 100 ms of runs) costs a few seconds per new layer
    shape and pass once a dozen configs are tried; a model with 20 layer shapes spent
    minutes of its first steps there. The kernels run for 10 µs to a few ms, so 20 ms
    still averages over tens to thousands of runs.
    """
    import triton.testing
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def _tuner_options() -> dict:
    """Keyword arguments for ``triton.autotune`` that this Triton accepts (3.6 and 3.9 both do).

    * ``do_bench``: the shorter timing above;
    * ``cache_results``: the winning config of each tuning key is stored in Triton's cache
      directory beside the compiled binaries, so a second process (the next training run)
      compiles only the winner instead of timing every config again.
    """
    import inspect
    accepted = inspect.signature(triton.autotune).parameters
    wanted = {"do_bench": _time_config, "cache_results": True}
    return {name: value for name, value in wanted.items() if name in accepted}


#: passed to every ``triton.autotune`` of the package
TUNER_OPTIONS = _tuner_options()


#: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) tried by the forward and grad-input kernels
DIRECT_TILES = [
    (128, 128, 64, 8, 3),
    (128, 256, 64, 8, 3),
    (256, 128, 64, 8, 3),
    (128, 128, 32, 4, 4),
    (128, 64, 64, 4, 4),
    (64, 128, 32, 4, 4),
    (64, 64, 32, 4, 4),
    (128, 16, 32, 4, 4),
    (256, 16, 64, 8, 3),
    (128, 32, 64, 4, 4),
    (256, 32, 32, 8, 3),
    # 64 filters or channels (R2: N = 64): taller tiles for more reuse of each B tile
    (256, 64, 64, 8, 3),
    (128, 64, 32, 4, 5),
    # small images (R4, R5, L5: M of a few thousand): more, shorter tiles to fill 132 SMs
    (64, 128, 64, 4, 3),
    (64, 256, 64, 8, 3),
]


#: narrow tiles for packed groups (common.group_pack: 16 to 32 columns, K steps of 16 to 32 channels);
#: common.prune_configs keeps them only where the GEMM's N is at most 32, so dense layers never see them
NARROW_TILES = [
    (128, 32, 32, 4, 4),
    (64, 32, 32, 4, 4),
    (128, 16, 16, 4, 4),
    (256, 32, 32, 8, 4),
    (64, 32, 32, 2, 4),
    (128, 32, 32, 4, 2),
]

#: the channel (and filter) width a program of packed groups aims for: wide enough for 64-byte reads
#: of bf16 and a 32-column tile, narrow enough that the block-diagonal products (GP times the useful
#: ones) stay cheaper than the memory traffic they replace
GROUP_PACK_WIDTH = 32


def group_pack(groups: int, channels_per_group: int, filters_per_group: int, width: int = GROUP_PACK_WIDTH) -> int:
    """How many consecutive groups one program of the forward and input-gradient kernels takes (GP).

    1 unless groups are narrow: then the largest power of two GP dividing ``groups`` with
    GP·max(Cg, Kg) <= ``width`` (e.g. 4 for ResNeXt's 32 groups of 8 channels, 8 for groups of 4).
    """
    widest = max(channels_per_group, filters_per_group)
    pack = 1
    while groups % (pack * 2) == 0 and widest * pack * 2 <= width:
        pack *= 2
    return pack


def as_3d(values: Sequence[int], fill: int = 1) -> tuple:
    """A 2-D size, stride, dilation or padding as 3-D with a leading unit (or ``fill``) depth entry."""
    values = tuple(values)
    return values if len(values) == 3 else (fill,) * (3 - len(values)) + values


def strides_3d(t: torch.Tensor) -> tuple:
    """The strides of a 4-D (N, C, H, W) or 5-D (N, C, D, H, W) tensor as 5 values (depth stride 0 for 4-D)."""
    st = t.stride()
    return st if t.dim() == 5 else (st[0], st[1], 0, st[2], st[3])


def make_configs(shapes: Sequence[tuple]) -> List[triton.Config]:
    """``(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)`` tuples -> Triton configs.

    Under the interpreter, one 32x32x16 config: tiles small enough that the tests'
    odd shapes span several programs and several K steps. With autotuning off, one
    64x64x32 config that fits shared memory in every dtype.
    """
    if INTERPRET:
        shapes = [(32, 32, 16, 4, 1)]
    elif not AUTOTUNE:
        shapes = [(64, 64, 32, 4, 2)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for m, n, k, w, s in shapes]


def prune_configs(operand_arg: str):
    """An ``early_config_prune``: drop configs that cannot fit or would mostly compute padding.

    * shared memory: a config holds ``num_stages`` copies of an A tile
      (BLOCK_M x BLOCK_K) and a B tile (BLOCK_K x BLOCK_N) of the operand's element
      size, so float32 and float64 keep only the smaller configs of the list;
    * waste: a tile more than twice the GEMM's extent (``BLOCK_N > bucket(N)``,
      likewise M) multiplies mostly zeros; the narrow configs (BLOCK_N = 16, 32)
      exist for the few-channel layers (an RGB input's gradient has N = 3) and are
      the only ones kept there, and are dropped where N is large.
    """
    def prune(configs, named_args, **kwargs):
        element_size = named_args[operand_arg].element_size()
        m_bucket, n_bucket = named_args["M_BUCKET"], named_args["N_BUCKET"]
        kept = []
        for c in configs:
            m, n, k = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
            stages = max(c.num_stages, 1)
            fits = stages * (m * k + k * n) * element_size <= _SHARED_MEMORY_BUDGET
            narrow = n < 64
            useful = n <= max(n_bucket, 16) and m <= max(m_bucket, 64) and (not narrow or n_bucket <= 32)
            if fits and useful:
                kept.append(c)
        if element_size >= 8:  # fp64 has no tensor-core fast path worth the register pressure of big tiles
            kept = [c for c in kept if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64] or kept
        return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])]
    return prune


# ---- launching -------------------------------------------------------------------------

_PLANS: Dict[tuple, object] = {}
_MAX_PLANS = 4096


def planned(key: tuple, build: Callable[[], object]):
    """What ``build()`` returns for this key, built once (the wrappers' scalar arguments and launches)."""
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        plan = _PLANS[key] = build()
    return plan


def _alignment(tensors) -> tuple:
    return tuple(t.data_ptr() % 16 == 0 for t in tensors)


class KernelLaunch:
    """One kernel launch whose scalar arguments are fixed and whose leading tensor arguments change.

    The first call goes through Triton: the autotuner picks a config (or finds it
    cached) and the JIT compiles or finds the binary. That path costs about 66 µs of
    host time per launch on the H100 machine, more than many layers' whole GEMM;
    launching the compiled kernel directly (``CompiledKernel[grid]``, the call Triton
    itself ends with) costs about 12 µs (scripts/host_overhead.py). So later calls
    launch the binary of the first, with the tuned config's grid and the constexpr
    values the binary was built with. Triton specialises pointer arguments on
    16-byte alignment, so a call whose tensors align differently from the first
    takes Triton's own path. Under the interpreter every call takes Triton's path.
    """

    def __init__(self, kernel, grid, scalars: Sequence, meta: Dict[str, object]):
        self.kernel, self.grid, self.scalars, self.meta = kernel, grid, tuple(scalars), dict(meta)
        self._direct = None  # (runner, trailing arguments, alignment), or False when unavailable

    def __call__(self, *tensors: torch.Tensor) -> None:
        direct = self._direct
        if direct:
            runner, tail, alignment = direct
            if _alignment(tensors) == alignment:
                runner(*tensors, *tail)
                return
        compiled = self.kernel[self.grid](*tensors, *self.scalars, **self.meta)
        if direct is None:
            self._direct = self._direct_launch(compiled, tensors) or False

    def _direct_launch(self, compiled, tensors):
        if INTERPRET or compiled is None or not hasattr(compiled, "__getitem__"):
            return None
        jit = self.kernel.fn if isinstance(self.kernel, Autotuner) else self.kernel
        config = getattr(self.kernel, "best_config", None) if isinstance(self.kernel, Autotuner) else None
        names = list(getattr(jit, "arg_names", ()))
        trailing = names[len(tensors):]
        named = dict(zip(trailing, self.scalars))
        named.update(self.meta)
        if config is not None:
            named.update(config.kwargs)
        if len(names) != len(tensors) + len(named) or any(n not in named for n in trailing):
            return None  # a signature this class does not understand: keep Triton's path
        grid = self.grid(named) if callable(self.grid) else self.grid
        grid = tuple(grid) + (1,) * (3 - len(grid))
        return _lean_runner(compiled, grid), tuple(named[n] for n in trailing), _alignment(tensors)


@functools.lru_cache(maxsize=None)
def _hook_owner():
    """Where this Triton keeps its launch enter/exit hooks: ``triton.knobs.runtime`` or ``CompiledKernel``."""
    runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
    if runtime is not None and hasattr(runtime, "launch_enter_hook"):
        return runtime
    from triton.compiler.compiler import CompiledKernel
    return CompiledKernel


def _hooks_active() -> bool:
    """Whether a launch hook (a profiler such as proton) would run: set (Triton 3.6) or a non-empty chain
    (Triton 3.9's HookChain)."""
    owner = _hook_owner()
    return any(hook is not None and bool(getattr(hook, "calls", True))
               for hook in (getattr(owner, "launch_enter_hook", None), getattr(owner, "launch_exit_hook", None)))


def _lean_runner(compiled, grid):
    """``compiled[grid]`` without its per-call Python: the launcher itself, on torch's current stream.

    Triton's runner asks its driver for the current device and stream and builds launch
    metadata for profiler hooks on every call: 10-15 µs of host time per launch on the
    H100 machine (scripts/host_profile.py), paid two to four times per training step of
    a layer. This calls the same launcher with the same arguments, reading the stream
    from torch directly; while a profiler hook is set it defers to Triton's runner, so
    profilers still see every launch. Triton versions without this launcher signature
    keep Triton's runner.
    """
    runner = compiled[grid]
    try:
        launch = compiled.run
        function, packed = compiled.function, compiled.packed_metadata
    except AttributeError:
        return runner
    current_stream, current_device = torch._C._cuda_getCurrentRawStream, torch._C._cuda_getDevice
    grid_x, grid_y, grid_z = grid

    def lean(*args):
        if _hooks_active():
            runner(*args)
            return
        launch(grid_x, grid_y, grid_z, current_stream(current_device()), function, packed, None, None, None, *args)
    return lean


@triton.jit
def multiply_accumulate(acc, a, b, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``acc += a @ b`` in the accumulator's precision (see :func:`upcast_operands`)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION, out_dtype=acc.dtype)


@triton.jit
def widen(x, WIDE_INDEX: tl.constexpr):
    """Offsets in int64 when a tensor may span 2**31 elements (see :func:`needs_wide_index`)."""
    # one return statement: Triton 3.6 rejects returns of different types from constexpr branches
    if WIDE_INDEX:
        wide = x.to(tl.int64)
    else:
        wide = x
    return wide
