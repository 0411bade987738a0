"""``corrmm bench --models``: the options and the printed report of the model benchmark.

    corrmm bench --models                                   # every model that runs here, eager and compiled
    corrmm bench --models resnet18 m5_audio --modes eager --steps 10 --batch 32
    corrmm bench --models --device cpu --json models.json   # the built-in models, tiny sizes, eager

The measurement itself is :mod:`corrmm.bench.models`.
"""
from __future__ import annotations

import sys
import time
from typing import List, Optional, Sequence

import torch

import corrmm

from ..bench import models as model_bench
from ..bench.runner import environment
from . import usage

#: layer-bench options that mean nothing to the model bench
LAYER_ONLY = {"suite": "--suite", "layers": "--layers", "algos": "--algos", "passes": "--passes",
              "cuda_graph": "--cuda-graph", "warmup_ms": "--warmup-ms", "rep_ms": "--rep-ms"}
DEFAULT_STEPS = {"cuda": (20, 5), "cpu": (3, 1)}  # (timed steps, warm-up steps)
QUICK_STEPS = {"cuda": (5, 2), "cpu": (2, 1)}


def add_arguments(parser) -> None:
    group = parser.add_argument_group(
        "model benchmark", "training-step throughput of whole networks, corrmm against torch "
        f"(models: {', '.join(model_bench.MODELS)}; see corrmm.bench.models)")
    group.add_argument("--models", nargs="*", metavar="NAME",
                       help="run the model benchmark instead of the layer suite: these models, or with no names "
                       "every model that runs here (torchvision's need torchvision)")
    group.add_argument("--modes", nargs="+", metavar="MODE",
                       help="eager, compiled, reduce-overhead (compiled with CUDA graphs on both sides) "
                            "(default: eager and compiled on a GPU, eager on the CPU)")
    group.add_argument("--batch", type=int, help="batch size for every model (default: each model's own)")
    group.add_argument("--image-size", type=int,
                       help="pixels per side (samples for m5_audio; default: each model's own)")
    group.add_argument("--steps", type=int, help="timed training steps per case (default 20 on a GPU, 3 on the CPU)")
    group.add_argument("--warmup-steps", type=int,
                       help="untimed steps first, at least 1 (default 5 on a GPU, 1 on the CPU)")


def _split(values: Optional[Sequence[str]]) -> List[str]:
    return [v.strip() for value in (values or []) for v in value.split(",") if v.strip()]


def _positive(value: Optional[int], flag: str) -> Optional[int]:
    if value is not None and value < 1:
        raise ValueError(f"{flag} must be >= 1, got {value}")
    return value


def _plan(args) -> model_bench.ModelPlan:
    given = [flag for name, flag in LAYER_ONLY.items() if getattr(args, name, None) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)} belong to the layer benchmark, not to --models")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no GPU")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"--device {args.device}: only cuda and cpu are benchmarked")
    dtypes = list(dict.fromkeys(_split(args.dtypes))) or (["bf16"] if device.type == "cuda" else ["fp32"])
    unknown = [d for d in dtypes if d not in model_bench.MODEL_DTYPES]
    if unknown:
        raise ValueError(f"unknown --dtype {unknown} for --models: expected some of {list(model_bench.MODEL_DTYPES)}")
    modes = _split(args.modes) or (list(model_bench.DEFAULT_GPU_MODES) if device.type == "cuda" else ["eager"])
    unknown = [m for m in modes if m not in model_bench.MODES]
    if unknown:
        raise ValueError(f"unknown --modes {unknown}: expected some of {list(model_bench.MODES)}")
    steps, warmup = (QUICK_STEPS if args.quick else DEFAULT_STEPS)[device.type]
    return model_bench.ModelPlan(
        device=device, dtypes=dtypes, models=model_bench.resolve_models(_split(args.models)),
        modes=[m for m in model_bench.MODES if m in modes],
        steps=_positive(args.steps, "--steps") or steps,
        warmup_steps=_positive(args.warmup_steps, "--warmup-steps") or warmup,
        batch=_positive(args.batch, "--batch"), size=_positive(args.image_size, "--image-size"),
        check=not args.no_check, seed=args.seed)


def _progress_line(item) -> str:
    if isinstance(item, model_bench.ModelCheck):
        if item.logits_rel_err is None:
            return f"{item.dtype} {item.model} check: {item.status} {item.detail}"
        return (f"{item.dtype} {item.model} check: {item.status}; relative error against float64, corrmm / torch: "
                f"logits {item.logits_rel_err:.1e} / {item.torch_logits_rel_err:.1e}, "
                f"gradients {item.grads_rel_err:.1e} / {item.torch_grads_rel_err:.1e}")
    if item.status != "ok":
        return f"{item.dtype} {item.model} {item.mode} {item.side}: {item.status} {item.detail}"
    return (f"{item.dtype} {item.model} {item.mode} {item.side}: {item.images_per_s:.4g} img/s, "
            f"{item.step_ms:.3g} ms per step, first step {item.first_step_s:.1f} s")


def run(args) -> int:
    try:
        plan = _plan(args)
        usage.torch_threads(args.threads)
    except (ValueError, usage.UsageError, model_bench.MissingTorchvision) as err:
        print(f"corrmm bench: error: {err}", file=sys.stderr)
        return 2
    env = environment(plan.device)
    print(f"corrmm {env['corrmm']} model bench on {env['device']} ({plan.device}); torch {env['torch']}, "
          f"triton {env['triton']}, torch's convolution: {env['torch_backend']}")
    skipped = [name for name in model_bench.MODELS if name not in plan.models]
    if not _split(args.models) and skipped:
        print(f"note: torchvision does not import here: {', '.join(skipped)} left out")
    print(f"models {' '.join(plan.models)}; dtypes {' '.join(plan.dtypes)} "
          f"({'autocast' if set(plan.dtypes) & set(model_bench.AUTOCAST) else 'no autocast'}); "
          f"modes {' '.join(plan.modes)}; {plan.warmup_steps} warm-up + {plan.steps} timed steps, median; "
          f"channels_last, SGD; corrmm algo {plan.algo}", flush=True)

    measurements, checks = [], []
    started = time.perf_counter()
    interrupted = False
    try:
        for item in model_bench.run(plan):
            (checks if isinstance(item, model_bench.ModelCheck) else measurements).append(item)
            if not args.no_progress:
                print(f"[{time.perf_counter() - started:6.1f} s] {_progress_line(item)}", flush=True)
    except KeyboardInterrupt:  # report what was measured so far
        interrupted = True

    rows = model_bench.build_rows(measurements, plan)
    check_index = {(c.dtype, c.model): c for c in checks}
    for dtype in plan.dtypes:
        if not any(r.dtype == dtype for r in rows):
            continue
        how = f"{dtype} autocast" if dtype in model_bench.AUTOCAST else dtype
        print(f"\n== {how}, channels_last, SGD step on {env['device']}: images/s and median step ms ==")
        print(model_bench.format_table(rows, check_index, dtype))
        print(model_bench.format_summary(model_bench.summarize(rows, dtype), env["torch_backend"]))
    problems = model_bench.format_problems(measurements, checks)
    if problems:
        print("\n" + problems)
    if interrupted:
        print(f"\ninterrupted: {len(measurements)} measurements taken")

    settings = {"benchmark": "models", "dtypes": plan.dtypes, "models": plan.models, "modes": plan.modes,
                "steps": plan.steps, "warmup_steps": plan.warmup_steps, "batch": plan.batch, "image_size": plan.size,
                "check": plan.check, "seed": plan.seed, "algo": plan.algo, "quick": bool(args.quick),
                "compile_backends": dict(model_bench.COMPILE_BACKENDS), "optimizer": {"sgd": model_bench.SGD},
                "timing": {"method": "CUDA events" if plan.device.type == "cuda" else "perf_counter",
                           "statistic": "median step"},
                "algorithms": corrmm.algorithms(), "interrupted": interrupted}
    if args.json:
        from ..bench.report import write_json
        write_json(args.json, model_bench.to_json(env, settings, plan, measurements, checks, rows))
        print(f"wrote {args.json}")
    if args.plot:
        title = f"corrmm vs torch ({env['torch_backend']}), training steps on {env['device']}"
        usage.plot_or_say_why(args.plot, lambda path: model_bench.write_plot(path, rows, plan.dtypes, title))
    if interrupted:
        return 130
    return 1 if problems else 0
