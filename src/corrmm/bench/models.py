"""``corrmm bench --models``: the training-step throughput of whole networks, corrmm against torch.

For each model, dtype and mode, two copies of the same network (the same initial
weights, drawn from one seed) train on the same synthetic batch:

    mode       torch side                      corrmm side
    eager      the model as built              ``corrmm.convert(model, algo="auto")``
    compiled   ``torch.compile(model)``        ``torch.compile(model, backend="corrmm")``
               (inductor)                      (inductor with corrmm's convolutions)
    reduce-overhead   both compiled with ``mode="reduce-overhead"``: each graph replays
               as a CUDA graph, so neither side pays host time per call

One step is what a training loop does: ``zero_grad``, the forward pass under
``torch.autocast`` (bf16 by default on a GPU; fp32 and tf32 run without
autocast), cross-entropy against random labels, the backward pass and an SGD
step with momentum. Weights and inputs are ``channels_last``
(``channels_last_3d`` for video; 1-D inputs stay contiguous). After
``warmup_steps`` untimed steps (the first one compiles in compiled mode) each
of ``steps`` steps is timed on its own (CUDA events on a GPU, the host clock on
the CPU); the throughput is ``batch / median step time``, in images per second
(one clip per "image" for the video and audio models).

Before timing, each model is checked in eager mode, the way the layer tests
check each op: one training-mode forward and backward pass of a float64 copy
(no autocast) is the reference, and corrmm's relative error in the logits and
in all parameter gradients must stay within twice torch's own error in the same
dtype, plus a few units of rounding. (Compared with each other, the two 16-bit
runs can differ by 20% in the gradients: batch norm's backward pass cancels
most of what reaches it, and both are that far from float64.) All copies start
from the same random state, so dropout and stochastic depth draw the same masks.

Models (torchvision's are imported only when asked for; torchvision must match
the installed torch):

    resnet18, resnext50_32x4d, mobilenet_v2, convnext_tiny   torchvision.models, 224x224 images
    r3d_18                                                   torchvision.models.video, 16-frame 112x112 clips
    m5_audio                                                 corrmm.bench.networks.M5Audio, 1 s of 16 kHz audio
    small_cnn                                                corrmm.bench.networks.SmallCNN, 32x32 images
"""
from __future__ import annotations

import copy
import gc
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import corrmm

from . import networks
from .report import geomean
from .runner import DTYPES, OOM, backend_flags

SIDES = ("torch", "corrmm")
MODES = ("eager", "compiled", "reduce-overhead")
#: torch.compile's mode for each compiled bench mode (the same on both sides)
COMPILE_MODES = {"compiled": None, "reduce-overhead": "reduce-overhead"}
#: what ``--models`` runs on a GPU unless ``--modes`` says otherwise (the CPU: eager only)
DEFAULT_GPU_MODES = ("eager", "compiled")
#: the backend each side compiles with (tests swap in the code-generation-free ones)
COMPILE_BACKENDS = {"torch": "inductor", "corrmm": "corrmm"}
#: autocast dtypes; fp32 and tf32 run without autocast
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
MODEL_DTYPES = ("bf16", "fp16", "tf32", "fp32")
#: unit roundoff of each dtype's products, for the check's allowance of a few units of rounding
EPS = {"bf16": 2.0**-8, "fp16": 2.0**-11, "tf32": 2.0**-11, "fp32": 2.0**-24}
VIDEO_FRAMES = 16
SGD = dict(lr=0.01, momentum=0.9)


# ---- the models -----------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """A network, how to build it and the sizes it is benchmarked at."""

    name: str
    kind: str                      # image, video or audio: what ``size`` means
    build: Callable[[], torch.nn.Module]
    num_classes: int
    gpu: Tuple[int, int]           # default (batch, size) on a GPU
    cpu: Tuple[int, int]           # default (batch, size) on the CPU: tiny
    torchvision: bool = False

    def input_shape(self, batch: int, size: int) -> Tuple[int, ...]:
        """(batch, 3, size, size) images, (batch, 3, 16, size, size) clips, (batch, 1, size) waveforms."""
        if self.kind == "video":
            return (batch, 3, VIDEO_FRAMES, size, size)
        if self.kind == "audio":
            return (batch, 1, size)
        return (batch, 3, size, size)

    def memory_format(self) -> torch.memory_format:
        return {"image": torch.channels_last, "video": torch.channels_last_3d}.get(self.kind,
                                                                                   torch.contiguous_format)


class MissingTorchvision(RuntimeError):
    """torchvision does not import beside this torch."""


def _torchvision_builder(module: str, name: str, num_classes: int) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        models = import_torchvision(module, needed_by=name)
        return getattr(models, name)(weights=None, num_classes=num_classes)
    return build


def import_torchvision(module: str = "models", needed_by: str = "torchvision's models"):
    """``torchvision.<module>``, or MissingTorchvision: one line saying why not and what to do."""
    import importlib
    try:
        return importlib.import_module(f"torchvision.{module}")
    except Exception as err:  # absent, or built for another torch (then its C++ ops fail to register)
        text = str(err).strip()
        reason = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
        raise MissingTorchvision(
            f"torchvision, needed by {needed_by}, does not import here ({reason}); install the torchvision "
            f"built for torch {torch.__version__}, or pick among the built-in models {builtin_models()}") from None


MODELS: Dict[str, ModelSpec] = {spec.name: spec for spec in [
    ModelSpec("resnet18", "image", _torchvision_builder("models", "resnet18", 1000), 1000, (64, 224), (2, 64), True),
    ModelSpec("resnext50_32x4d", "image", _torchvision_builder("models", "resnext50_32x4d", 1000), 1000, (64, 224),
              (2, 64), True),
    ModelSpec("mobilenet_v2", "image", _torchvision_builder("models", "mobilenet_v2", 1000), 1000, (64, 224),
              (2, 64), True),
    ModelSpec("convnext_tiny", "image", _torchvision_builder("models", "convnext_tiny", 1000), 1000, (64, 224),
              (2, 64), True),
    ModelSpec("r3d_18", "video", _torchvision_builder("models.video", "r3d_18", 400), 400, (8, 112), (1, 32), True),
    ModelSpec("m5_audio", "audio", lambda: networks.M5Audio(num_classes=35), 35, (64, 16000), (4, 4000)),
    ModelSpec("small_cnn", "image", lambda: networks.SmallCNN(num_classes=10), 10, (256, 32), (4, 32)),
]}


def builtin_models() -> List[str]:
    return [name for name, spec in MODELS.items() if not spec.torchvision]


def torchvision_available() -> bool:
    try:
        import_torchvision()
        return True
    except MissingTorchvision:
        return False


def resolve_models(requested: Sequence[str]) -> List[str]:
    """The models to run: those named (in registry order), else every model that can run here.

    A named torchvision model without a working torchvision is an error (MissingTorchvision);
    unknown names are a ValueError.
    """
    unknown = [name for name in requested if name not in MODELS]
    if unknown:
        raise ValueError(f"unknown --models {unknown}: expected some of {list(MODELS)}")
    if not requested:
        return list(MODELS) if torchvision_available() else builtin_models()
    names = [name for name in MODELS if name in set(requested)]
    needing = [name for name in names if MODELS[name].torchvision]
    if needing:
        import_torchvision(needed_by=f"models {needing}")
    return names


# ---- the plan and its results -------------------------------------------------------

@dataclass
class ModelPlan:
    device: torch.device
    dtypes: List[str]
    models: List[str]
    modes: List[str]
    steps: int
    warmup_steps: int
    batch: Optional[int] = None     # None: each model's default for the device
    size: Optional[int] = None
    check: bool = True
    seed: int = 0
    algo: str = "auto"

    def batch_and_size(self, spec: ModelSpec) -> Tuple[int, int]:
        batch, size = spec.gpu if self.device.type == "cuda" else spec.cpu
        return self.batch or batch, self.size or size


@dataclass
class ModelMeasurement:
    """One (dtype, model, mode, side): ok (timed), oom, or error (the message is kept)."""

    dtype: str
    model: str
    mode: str
    side: str
    status: str
    batch: int
    input_shape: List[int]
    step_ms: Optional[float] = None          # median
    images_per_s: Optional[float] = None     # batch / median step
    first_step_s: Optional[float] = None     # the first warm-up step, compilation included
    peak_memory_mb: Optional[float] = None   # CUDA only
    final_loss: Optional[float] = None
    step_times_ms: List[float] = field(default_factory=list)
    detail: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ModelCheck:
    """One training-mode step, eager: corrmm's and torch's relative errors against a float64 run.

    ``status`` is ok when each of corrmm's errors is at most its ``bound``
    (twice torch's error plus 16 units of rounding), wrong otherwise, or error/oom.
    """

    dtype: str
    model: str
    status: str
    logits_rel_err: Optional[float] = None          # corrmm's
    grads_rel_err: Optional[float] = None
    torch_logits_rel_err: Optional[float] = None    # torch's own, same dtype
    torch_grads_rel_err: Optional[float] = None
    logits_bound: Optional[float] = None
    grads_bound: Optional[float] = None
    detail: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ModelRow:
    dtype: str
    model: str
    mode: str
    torch: Optional[ModelMeasurement]
    corrmm: Optional[ModelMeasurement]

    @property
    def ratio(self) -> Optional[float]:
        """corrmm's images/s over torch's: above 1 means corrmm trains faster."""
        if self.torch is None or self.corrmm is None or not self.torch.images_per_s or not self.corrmm.images_per_s:
            return None
        return self.corrmm.images_per_s / self.torch.images_per_s

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "model": self.model, "mode": self.mode,
                "torch_images_per_s": self.torch.images_per_s if self.torch else None,
                "corrmm_images_per_s": self.corrmm.images_per_s if self.corrmm else None,
                "torch_step_ms": self.torch.step_ms if self.torch else None,
                "corrmm_step_ms": self.corrmm.step_ms if self.corrmm else None,
                "corrmm_over_torch": self.ratio}


# ---- running ----------------------------------------------------------------------------

def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(spec: ModelSpec, device: torch.device, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # the same initial weights on both sides
    return spec.build().to(device=device, memory_format=spec.memory_format()).train()


def _data(spec: ModelSpec, batch: int, size: int, device: torch.device, seed: int):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.input_shape(batch, size), generator=generator)
    y = torch.randint(0, spec.num_classes, (batch,), generator=generator)
    return x.to(device).contiguous(memory_format=spec.memory_format()), y.to(device)


def _autocast(dtype: str, device: torch.device):
    return torch.autocast(device.type, dtype=AUTOCAST.get(dtype, torch.bfloat16), enabled=dtype in AUTOCAST)


def _loss(model, x, y, dtype: str, device: torch.device):
    with _autocast(dtype, device):
        logits = model(x)
    return logits, F.cross_entropy(logits.float(), y)


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def _step_outputs(model, x, y, dtype: Optional[str], device: torch.device, seed: int):
    """Logits and all parameter gradients (float64) of one forward and backward pass."""
    torch.manual_seed(seed)  # dropout and stochastic depth: the same masks on every copy
    if dtype is None:  # the float64 reference: no autocast
        logits = model(x.double())
        loss = F.cross_entropy(logits, y)
    else:
        logits, loss = _loss(model, x, y, dtype, device)
    loss.backward()
    grads = torch.cat([p.grad.detach().flatten().double() for p in model.parameters() if p.grad is not None])
    return logits.detach().double(), grads


def check_model(spec: ModelSpec, dtype: str, plan: ModelPlan) -> ModelCheck:
    """corrmm's and torch's logits and gradients against a float64 copy, one training-mode step from one state."""
    result = ModelCheck(dtype, spec.name, "ok")
    batch, size = plan.batch_and_size(spec)
    models = outputs = None
    try:
        reference = _build(spec, plan.device, plan.seed)
        models = [copy.deepcopy(reference).double(), reference,
                  corrmm.convert(copy.deepcopy(reference), algo=plan.algo)]
        x, y = _data(spec, batch, size, plan.device, plan.seed)
        outputs = [_step_outputs(model, x, y, None if i == 0 else dtype, plan.device, plan.seed + 1)
                   for i, model in enumerate(models)]
        (logits64, grads64), (torch_logits, torch_grads), (logits, grads) = outputs
        result.torch_logits_rel_err = _rel_err(torch_logits, logits64)
        result.torch_grads_rel_err = _rel_err(torch_grads, grads64)
        result.logits_rel_err = _rel_err(logits, logits64)
        result.grads_rel_err = _rel_err(grads, grads64)
        result.logits_bound = 2 * result.torch_logits_rel_err + 16 * EPS[dtype]
        result.grads_bound = 2 * result.torch_grads_rel_err + 16 * EPS[dtype]
        if not (result.logits_rel_err <= result.logits_bound and result.grads_rel_err <= result.grads_bound):
            result.status = "wrong"  # NaN is wrong too
            result.detail = (f"relative error against float64: logits {result.logits_rel_err:.2e} "
                             f"(torch {result.torch_logits_rel_err:.2e}), gradients {result.grads_rel_err:.2e} "
                             f"(torch {result.torch_grads_rel_err:.2e}); allowed: twice torch's + 16 units")
    except OOM as err:
        result.status, result.detail = "oom", _first_line(err)
    except Exception as err:
        result.status, result.detail = "error", _first_line(err)
    finally:
        reference = models = outputs = None  # noqa: F841 (free before timing)
        _free(plan.device)
    return result


def _prepare(spec: ModelSpec, mode: str, side: str, plan: ModelPlan) -> torch.nn.Module:
    model = _build(spec, plan.device, plan.seed)
    if mode == "eager":
        return corrmm.convert(model, algo=plan.algo) if side == "corrmm" else model
    torch._dynamo.reset()  # each compiled model starts from empty caches and recompile counters
    return torch.compile(model, backend=COMPILE_BACKENDS[side], mode=COMPILE_MODES[mode])


def _time_steps(step: Callable[[], torch.Tensor], count: int, device: torch.device) -> Tuple[List[float], torch.Tensor]:
    """Each step's time in ms (CUDA events on a GPU, so host and device work both count), and the last loss."""
    loss = None
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]
        for start, stop in events:
            start.record()
            loss = step()
            stop.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(stop) for start, stop in events], loss
    times = []
    for _ in range(count):
        begin = time.perf_counter()
        loss = step()
        times.append((time.perf_counter() - begin) * 1e3)
    return times, loss


def measure_model(spec: ModelSpec, dtype: str, mode: str, side: str, plan: ModelPlan) -> ModelMeasurement:
    batch, size = plan.batch_and_size(spec)
    m = ModelMeasurement(dtype, spec.name, mode, side, "ok", batch, list(spec.input_shape(batch, size)))
    model = optimizer = x = y = None
    try:
        model = _prepare(spec, mode, side, plan)
        optimizer = torch.optim.SGD(model.parameters(), **SGD)
        x, y = _data(spec, batch, size, plan.device, plan.seed)

        graphs = mode == "reduce-overhead"

        def step() -> torch.Tensor:
            if graphs:  # a new training iteration: the previous replay's outputs may be reused
                torch.compiler.cudagraph_mark_step_begin()
            optimizer.zero_grad(set_to_none=True)
            _, loss = _loss(model, x, y, dtype, plan.device)
            loss.backward()
            optimizer.step()
            return loss.detach().clone() if graphs else loss.detach()

        if plan.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(plan.device)
        begin = time.perf_counter()
        step()
        _synchronize(plan.device)
        m.first_step_s = time.perf_counter() - begin
        for _ in range(plan.warmup_steps - 1):
            step()
        _synchronize(plan.device)
        times, loss = _time_steps(step, plan.steps, plan.device)
        m.step_times_ms = times
        m.step_ms = statistics.median(times)
        m.images_per_s = batch / (m.step_ms * 1e-3) if m.step_ms > 0 else None
        m.final_loss = loss.item()
        if not math.isfinite(m.final_loss):
            m.detail = f"the loss became {m.final_loss} (timed anyway)"
        if plan.device.type == "cuda":
            m.peak_memory_mb = torch.cuda.max_memory_allocated(plan.device) / 2**20
    except OOM as err:
        m.status, m.detail = "oom", _first_line(err)
    except Exception as err:  # a model that fails on one side must not end the run; it is reported
        m.status, m.detail = "error", _first_line(err)
    finally:
        model = optimizer = x = y = step = None  # noqa: F841
        if mode in COMPILE_MODES:
            torch._dynamo.reset()
        _free(plan.device)
    if m.status != "ok":
        m.step_ms = m.images_per_s = None
    return m


def run(plan: ModelPlan) -> Iterator[object]:
    """Yield, per dtype and model, its ModelCheck (unless ``plan.check`` is off) and one
    ModelMeasurement per (mode, side), in that nesting order."""
    for dtype in plan.dtypes:
        with backend_flags(DTYPES[dtype], plan.device):
            for name in plan.models:
                spec = MODELS[name]
                if plan.check:
                    yield check_model(spec, dtype, plan)
                for mode in plan.modes:
                    for side in SIDES:
                        yield measure_model(spec, dtype, mode, side, plan)


# ---- the report -------------------------------------------------------------------------

def build_rows(measurements: Sequence[ModelMeasurement], plan: ModelPlan) -> List[ModelRow]:
    index = {(m.dtype, m.model, m.mode, m.side): m for m in measurements}
    rows = []
    for dtype in plan.dtypes:
        for name in plan.models:
            for mode in plan.modes:
                pair = [index.get((dtype, name, mode, side)) for side in SIDES]
                if any(pair):
                    rows.append(ModelRow(dtype, name, mode, *pair))
    return rows


def summarize(rows: Sequence[ModelRow], dtype: str) -> Dict[str, dict]:
    """Per mode: the geometric mean of corrmm/torch over the models, and the slowest model."""
    summary = {}
    for mode in MODES:
        selected = [r for r in rows if r.dtype == dtype and r.mode == mode and r.ratio is not None]
        if not selected:
            continue
        worst = min(selected, key=lambda r: r.ratio)
        summary[mode] = {"models": len(selected), "geomean_corrmm_over_torch": geomean([r.ratio for r in selected]),
                         "worst": worst.ratio, "worst_model": worst.model}
    return summary


def _fmt_rate(m: Optional[ModelMeasurement]) -> Tuple[str, str]:
    if m is None:
        return "-", ""
    if m.status != "ok":
        return m.status, ""
    return f"{m.images_per_s:.0f}" if m.images_per_s >= 100 else f"{m.images_per_s:.3g}", f"{m.step_ms:.3g}"


def format_table(rows: Sequence[ModelRow], checks: Dict[Tuple[str, str], ModelCheck], dtype: str) -> str:
    header = ["model", "mode", "batch", "input", "torch img/s", "ms", "corrmm img/s", "ms", "corrmm/torch",
              "error vs float64, corrmm / torch: logits, grads"]
    body = []
    for row in (r for r in rows if r.dtype == dtype):
        sample = row.torch or row.corrmm
        check = checks.get((dtype, row.model))
        if check is None:
            check_text = "-"
        elif check.logits_rel_err is None:
            check_text = check.status
        else:
            check_text = (f"{check.logits_rel_err:.1e} / {check.torch_logits_rel_err:.1e}, "
                          f"{check.grads_rel_err:.1e} / {check.torch_grads_rel_err:.1e}"
                          + ("" if check.status == "ok" else f" {check.status.upper()}"))
        body.append([row.model, row.mode, str(sample.batch), "x".join(map(str, sample.input_shape[1:])),
                     *_fmt_rate(row.torch), *_fmt_rate(row.corrmm),
                     "-" if row.ratio is None else f"{row.ratio:.2f}x", check_text])
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    left = {0, 1, 3, 9}

    def render(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(render(header))
    return "\n".join(line.rstrip() for line in [render(header), rule, *map(render, body)])


def format_summary(summary: Dict[str, dict], torch_label: str) -> str:
    lines = [f"geometric mean of corrmm's images/s over {torch_label}'s (above 1: corrmm trains faster):"]
    for mode, s in summary.items():
        lines.append(f"  {mode:9s} {s['geomean_corrmm_over_torch']:.2f}x   slowest {s['worst_model']} "
                     f"{s['worst']:.2f}x   [{s['models']} models]")
    return "\n".join(lines)


def format_problems(measurements: Sequence[ModelMeasurement], checks: Sequence[ModelCheck]) -> str:
    """Every failed check and every error, with its message (out of memory is a limit, not a bug)."""
    bad = [f"  {c.dtype} {c.model} check: {c.status}: {c.detail}" for c in checks if c.status in ("wrong", "error")]
    bad += [f"  {m.dtype} {m.model} {m.mode} {m.side}: error: {m.detail}" for m in measurements
            if m.status == "error"]
    return f"{len(bad)} problem(s):\n" + "\n".join(bad) if bad else ""


def to_json(environment: dict, settings: dict, plan: ModelPlan, measurements: Sequence[ModelMeasurement],
            checks: Sequence[ModelCheck], rows: Sequence[ModelRow]) -> dict:
    return {
        **environment,
        "settings": settings,
        "runs": [{"dtype": dtype, "summary": summarize(rows, dtype)} for dtype in plan.dtypes],
        "models": [{"name": name, "kind": MODELS[name].kind, "torchvision": MODELS[name].torchvision}
                   for name in plan.models],
        "checks": [c.to_json() for c in checks],
        "measurements": [m.to_json() for m in measurements],
        "rows": [r.to_json() for r in rows],
    }


def write_plot(path: str, rows: Sequence[ModelRow], dtypes: Sequence[str], title: str) -> None:
    """One panel per dtype: corrmm's images/s over torch's per model, a bar per mode."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r.model for r in rows))
    modes = [mode for mode in MODES if any(r.mode == mode for r in rows)]
    fig = Figure(figsize=(1.2 * max(len(models), 3) + 1.5, 3.6 * len(dtypes)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(dtypes), 1, squeeze=False)
    width = 0.8 / max(len(modes), 1)
    for ax, dtype in zip(axes[:, 0], dtypes):
        for k, mode in enumerate(modes):
            ratios = {r.model: r.ratio for r in rows if r.dtype == dtype and r.mode == mode}
            xs = [i + (k - (len(modes) - 1) / 2) * width for i, name in enumerate(models)
                  if ratios.get(name) is not None]
            values = [ratios[name] for name in models if ratios.get(name) is not None]
            ax.bar(xs, values, width=width, label=mode)
        ax.axhline(1.0, color="0.3", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(models)), models, rotation=20, ha="right")
        ax.set_ylabel("corrmm / torch (images/s)")
        ax.set_title(dtype)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(frameon=False)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
