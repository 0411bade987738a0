"""The measurement loop: every candidate on every layer, pass and dtype.

A *candidate* is a corrmm algorithm name, ``auto``, ``tune`` or ``torch``
(``F.conv1d/2d/3d`` and ``aten.convolution_backward``: cuDNN on a GPU, oneDNN on the
CPU). Each (dtype, layer, pass, candidate) gives exactly one
:class:`Measurement`, whatever happens, so a report can always be laid out:

    ok      timed, and its result agrees with torch's
    wrong   timed, but its result is far from torch's (a bug: never counted as best)
    n/a     the candidate raised ValueError: it cannot serve this case
    oom     out of memory
    error   anything else (the message is kept)

corrmm is called through its public functions only, so what is timed is what a
user gets, argument checks and dispatch included.
"""
from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F

import corrmm

from .suite import Layer
from .timing import TimingConfig, measure, synchronize

PASSES = ("forward", "grad_input", "grad_weight")
TORCH = "torch"
CHOOSERS = ("auto", "tune")
OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@dataclass(frozen=True)
class DtypeSpec:
    """A benchmark precision: a tensor dtype and, for float32, whether TF32 matrix units are allowed."""

    name: str
    dtype: torch.dtype
    tf32: Optional[bool]  # None: leave torch's TF32 switches alone (they do not apply)
    #: relative error against torch's result (same dtype) above which a result is called wrong;
    #: loose on purpose: it catches broken results, not rounding differences
    tolerance: float


DTYPES: Dict[str, DtypeSpec] = {
    "bf16": DtypeSpec("bf16", torch.bfloat16, None, 5e-2),
    "fp16": DtypeSpec("fp16", torch.float16, None, 1e-2),
    "tf32": DtypeSpec("tf32", torch.float32, True, 1e-2),
    "fp32": DtypeSpec("fp32", torch.float32, False, 1e-4),
    "fp64": DtypeSpec("fp64", torch.float64, False, 1e-10),
}


@dataclass
class Measurement:
    dtype: str
    layer: str
    pass_name: str
    algo: str
    status: str
    ms: Optional[float] = None
    tflops: Optional[float] = None
    rel_err: Optional[float] = None
    detail: str = ""
    #: for ``auto``: the algorithm the rule picked, when the library says
    choice: Optional[str] = None

    @property
    def timed(self) -> bool:
        return self.ms is not None

    def to_json(self) -> dict:
        out = asdict(self)
        out["pass"] = out.pop("pass_name")
        return out


@dataclass
class BenchPlan:
    device: torch.device
    dtypes: List[str]
    passes: List[str]
    candidates: List[str]
    timing: TimingConfig
    check: bool = True
    seed: int = 0

    @property
    def cases_per_layer(self) -> int:
        return len(self.passes) * len(self.candidates)


def flags_snapshot() -> dict:
    return {
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "cudnn.enabled": torch.backends.cudnn.enabled,
        "mkldnn.enabled": torch.backends.mkldnn.enabled,
    }


@contextlib.contextmanager
def backend_flags(spec: DtypeSpec, device: torch.device):
    """Set TF32 for ``spec`` and cuDNN's benchmark mode on a GPU; put every switch back afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        if spec.tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = spec.tf32
            torch.backends.cudnn.allow_tf32 = spec.tf32
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield flags_snapshot()
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


def accepts_algo(name: str) -> bool:
    """Whether the installed corrmm takes ``algo=name``, found by asking it.

    The probe passes deliberately mismatched channels, so no kernel ever runs:
    a library that does not know the name answers "unknown algo"; one that does
    goes on to reject the shapes. (If it checked shapes first we would wrongly
    answer yes, and every case would then be recorded as n/a: harmless.)
    """
    x, w = torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 1, 1)
    try:
        corrmm.corr2d(x, w, algo=name)
    except (ValueError, TypeError) as err:
        return "unknown algo" not in str(err)
    return True


def default_candidates() -> List[str]:
    names = [*corrmm.algorithms(), "auto"]
    if accepts_algo("tune"):
        names.append("tune")
    return [*names, TORCH]


def _auto_choice(pass_name: str, layer: Layer, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    # best effort: the selection module is internal and may change shape; the report only gains from it
    try:
        from .. import selection
        return str(selection.auto_choice(pass_name, layer.geometry, device, dtype))
    except Exception:
        return None


def _corrmm_call(pass_name: str, algo: str, x, w, dy, layer: Layer) -> Callable[[], torch.Tensor]:
    kw = dict(border_mode=layer.pad, subsample=layer.stride, filter_dilation=layer.dilation,
              num_groups=layer.groups, algo=algo)
    corr = f"corr{layer.dims}d"
    if pass_name == "forward":
        return lambda: getattr(corrmm, corr)(x, w, **kw)
    if pass_name == "grad_input":
        return lambda: getattr(corrmm, f"{corr}_grad_input")(w, dy, x.shape[2:], **kw)
    return lambda: getattr(corrmm, f"{corr}_grad_weight")(x, dy, w.shape[2:], **kw)


def _torch_call(pass_name: str, x, w, dy, layer: Layer) -> Callable[[], torch.Tensor]:
    n = layer.dims
    s, p, d, g = [layer.stride] * n, [layer.pad] * n, [layer.dilation] * n, layer.groups
    conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    if pass_name == "forward":
        return lambda: conv(x, w, stride=s, padding=p, dilation=d, groups=g)
    # one gradient at a time, the way the anchor numbers were measured
    mask = [True, False, False] if pass_name == "grad_input" else [False, True, False]
    index = 0 if pass_name == "grad_input" else 1
    return lambda: torch.ops.aten.convolution_backward(dy, x, w, None, s, p, d, False, [0] * n, g, mask)[index]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (out.float() - ref.float()).norm()
    return (diff / ref.float().norm().clamp_min(1e-30)).item()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class _Layer:
    """Random tensors for one layer in one dtype (never zeros: some kernels skip zeros, and so would timings)."""

    def __init__(self, layer: Layer, spec: DtypeSpec, device: torch.device, seed: int):
        generator = torch.Generator(device=device).manual_seed(seed)

        def rand(shape):
            return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(spec.dtype)

        self.x = rand(layer.input_shape)
        self.w = rand(layer.weight_shape)
        self.dy = rand(layer.geometry.output_shape)


def run(layers: Sequence[Layer], plan: BenchPlan) -> Iterator[Measurement]:
    """Yield one Measurement per (dtype, layer, pass, candidate), in that nesting order."""
    for dtype_name in plan.dtypes:
        spec = DTYPES[dtype_name]
        with backend_flags(spec, plan.device):
            for index, layer in enumerate(layers):
                yield from _run_layer(layer, spec, plan, plan.seed + index)
                _free(plan.device)


def _run_layer(layer: Layer, spec: DtypeSpec, plan: BenchPlan, seed: int) -> Iterator[Measurement]:
    def blanket(status: str, detail: str) -> Iterator[Measurement]:
        for pass_name in plan.passes:
            for algo in plan.candidates:
                yield Measurement(spec.name, layer.name, pass_name, algo, status, detail=detail)

    try:
        tensors = _Layer(layer, spec, plan.device, seed)
    except OOM as err:
        _free(plan.device)
        yield from blanket("oom", _first_line(err))
        return
    for pass_name in plan.passes:
        yield from _run_pass(layer, spec, plan, pass_name, tensors)
        _free(plan.device)
    del tensors


def _run_pass(layer: Layer, spec: DtypeSpec, plan: BenchPlan, pass_name: str, t: _Layer) -> Iterator[Measurement]:
    flops = layer.flops
    reference = None
    if plan.check:
        try:
            reference = _torch_call(pass_name, t.x, t.w, t.dy, layer)()
            synchronize(plan.device)
        except Exception:  # torch's failure is reported when torch itself is timed below
            reference = None
            _free(plan.device)
    for algo in plan.candidates:
        if algo == TORCH:
            fn = _torch_call(pass_name, t.x, t.w, t.dy, layer)
        else:
            fn = _corrmm_call(pass_name, algo, t.x, t.w, t.dy, layer)
        m = Measurement(spec.name, layer.name, pass_name, algo, "ok")
        if algo == "auto":
            m.choice = _auto_choice(pass_name, layer, plan.device, spec.dtype)
        try:
            out = fn()  # the first call: checks the result, and triggers any one-off work before timing
            synchronize(plan.device)
            if plan.check and algo != TORCH and reference is not None:
                m.rel_err = _rel_err(out, reference)
                if not m.rel_err <= spec.tolerance:  # NaN counts as wrong
                    m.status = "wrong"
                    m.detail = f"relative error {m.rel_err:.2e} against torch (tolerance {spec.tolerance:.0e})"
            del out
            m.ms = measure(fn, plan.device, plan.timing)
            m.tflops = flops / (m.ms * 1e-3) / 1e12 if m.ms > 0 else None
            if plan.check and algo != TORCH and reference is not None and m.status == "ok":
                # once more after timing: later calls take cached plans and direct launches, checked here too
                err = _rel_err(fn(), reference)
                if not err <= spec.tolerance:
                    m.status = "wrong"
                    m.detail = f"relative error {err:.2e} against torch after timing (tolerance {spec.tolerance:.0e})"
        except OOM as err:
            m.status, m.detail, m.ms, m.tflops = "oom", _first_line(err), None, None
            _free(plan.device)
        except ValueError as err:
            m.status, m.detail, m.ms, m.tflops = "n/a", str(err), None, None
        except Exception as err:  # a broken candidate must not end the run; it is reported instead
            m.status, m.detail, m.ms, m.tflops = "error", _first_line(err), None, None
            _free(plan.device)
        yield m
    del reference


def total_cases(layers: Sequence[Layer], plan: BenchPlan) -> int:
    return len(plan.dtypes) * len(layers) * plan.cases_per_layer


def environment(device: torch.device) -> dict:
    """Versions and the device name, for the JSON report and the table header."""
    info = {"corrmm": corrmm.__version__, "torch": torch.__version__, "device_type": device.type}
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["cudnn"] = torch.backends.cudnn.version()
        info["cuda"] = torch.version.cuda
        info["torch_backend"] = f"cuDNN {torch.backends.cudnn.version()}"
    else:
        info["device"] = _cpu_name()
        info["cpu_threads"] = torch.get_num_threads()
        info["cudnn"] = None
        if hasattr(os, "getloadavg"):  # other work on the machine shows in CPU timings
            info["load_average"] = list(os.getloadavg())
        info["torch_backend"] = "oneDNN" if torch.backends.mkldnn.is_available() else "aten"
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine() or "cpu"
