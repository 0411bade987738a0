"""Time every algorithm, auto, tune and torch's own convolution on a suite of layers.

For each layer of the suite and each pass (forward, grad_input, grad_weight),
in each chosen dtype, times every corrmm algorithm that can serve the case,
``auto``, ``tune`` (when the library has it) and torch (cuDNN with benchmark
mode on a GPU, oneDNN on the CPU), then prints a table per dtype (ms and
TFLOP/s of the direct method's 2*N*K*P*Q*C*R*S) and the suite's geometric-mean
speedup over torch. Every result is also checked against torch's (a wrong one
is timed but marked with "!" and never counted as best).

    corrmm bench                                   # convnet suite, bf16 + tf32 on a GPU; cpu-small, fp32 on a CPU
    corrmm bench --layers L1,S2,R1 --passes forward --dtype bf16
    corrmm bench --suite my_layers.csv --json out.json --plot out.png --quick
    corrmm bench --suite models                    # depthwise, grouped, 3-D and 1-D layers of the models below
    corrmm bench --models resnet18 m5_audio        # training steps of whole models (see --models below)

Exit status: 0, or 1 when some result was wrong or some candidate failed with
an error other than "cannot serve this case" or out of memory.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from typing import List, Optional, Sequence

import torch

import corrmm

from ..bench import report, runner
from ..bench.runner import DTYPES, PASSES, TORCH
from ..bench.suite import BUILTIN_SUITES, load_suite, select_layers
from ..bench.timing import TimingConfig, method_name
from . import usage
from . import bench_models

PASS_ALIASES = {"fwd": "forward", "forward": "forward", "grad_input": "grad_input", "grad_in": "grad_input",
                "dgrad": "grad_input", "grad_weight": "grad_weight", "grad_w": "grad_weight", "wgrad": "grad_weight"}


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda, cuda:N or cpu (default: cuda when there is one)")
    parser.add_argument("--suite", default=None,
                        help=f"{' | '.join(BUILTIN_SUITES)} | PATH.csv (default: convnet on a GPU, cpu-small on a CPU)")
    parser.add_argument("--dtype", dest="dtypes", nargs="+", metavar="DTYPE",
                        help=f"any of {', '.join(DTYPES)} (default: bf16 tf32 on a GPU, fp32 on a CPU)")
    parser.add_argument("--layers", nargs="+", metavar="NAME", help="only these layers, e.g. L1,R3")
    parser.add_argument("--algos", nargs="+", metavar="NAME",
                        help="only these candidates: algorithm names, auto, tune, torch (default: all)")
    parser.add_argument("--passes", nargs="+", metavar="PASS",
                        help="forward|fwd, grad_input|dgrad, grad_weight|wgrad (default: all three)")
    parser.add_argument("--json", metavar="FILE", help="write every measurement and the summary as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="plot the speedup over torch per layer (matplotlib)")
    parser.add_argument("--quick", action="store_true", help="short warm-up and fewer repetitions")
    parser.add_argument("--warmup-ms", type=float, help="warm-up budget per case, ms (overrides the default)")
    parser.add_argument("--rep-ms", type=float, help="timing budget per case, ms (overrides the default)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="time CUDA-graph replays of every candidate, torch included (device time, no launch cost)")
    parser.add_argument("--no-check", action="store_true", help="skip comparing each result with torch's")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or per-layer lines")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (torch.set_num_threads); "
                        "1 gives steadier CPU timings on a shared machine")
    bench_models.add_arguments(parser)


def _split(values: Optional[Sequence[str]]) -> List[str]:
    """``--layers L1,R3``, ``--layers L1 R3`` and mixtures all mean the same."""
    return [v.strip() for value in (values or []) for v in value.split(",") if v.strip()]


_UsageError = usage.UsageError


def _candidates(requested: List[str]) -> List[str]:
    available = runner.default_candidates()
    if not requested:
        return available
    known = [*dict.fromkeys([*available, "auto", "tune", TORCH])]
    unknown = [a for a in requested if a not in known]
    if unknown:
        raise _UsageError(f"unknown --algos {unknown}: expected some of {known}")
    # registry order, so tables read the same whatever order the flags came in
    return [a for a in known if a in requested]


def _passes(requested: List[str]) -> List[str]:
    unknown = [p for p in requested if p not in PASS_ALIASES]
    if unknown:
        raise _UsageError(f"unknown --passes {unknown}: expected some of {list(PASS_ALIASES)}")
    wanted = {PASS_ALIASES[p] for p in requested}
    return [p for p in PASSES if p in wanted] if wanted else list(PASSES)


def _dtypes(requested: List[str], device: torch.device) -> List[str]:
    if not requested:
        return ["bf16", "tf32"] if device.type == "cuda" else ["fp32"]
    unknown = [d for d in requested if d not in DTYPES]
    if unknown:
        raise _UsageError(f"unknown --dtype {unknown}: expected some of {list(DTYPES)}")
    return list(dict.fromkeys(requested))


def _plan(args) -> tuple:
    device = usage.device(args.device)
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            usage.writable_file(option, path)
    for option, value in (("--warmup-ms", args.warmup_ms), ("--rep-ms", args.rep_ms)):
        if value is not None:
            usage.positive(option, value)
    suite_name, layers = load_suite(args.suite or ("convnet" if device.type == "cuda" else "cpu-small"))
    layers = select_layers(layers, _split(args.layers))
    timing = TimingConfig.default(device, args.quick)
    if args.warmup_ms is not None:
        timing = replace(timing, warmup_ms=args.warmup_ms)
    if args.rep_ms is not None:
        timing = replace(timing, rep_ms=args.rep_ms)
    if args.cuda_graph:
        if device.type != "cuda":
            raise _UsageError("--cuda-graph needs --device cuda")
        timing = replace(timing, cuda_graph=True)
    plan = runner.BenchPlan(device=device, dtypes=_dtypes(_split(args.dtypes), device),
                            passes=_passes(_split(args.passes)), candidates=_candidates(_split(args.algos)),
                            timing=timing, check=not args.no_check, seed=args.seed)
    return suite_name, layers, plan


def _layer_line(done: int, total: int, measurements, layer, dtype: str, passes, seconds: float) -> str:
    rows = report.build_rows(measurements, [layer], [dtype], passes)
    parts = []
    for row in rows:
        speedup = row.speedup("best")
        best = f"{row.best.algo} {row.best.ms:.3g} ms" if row.best else "no result"
        parts.append(f"{report.PASS_LABELS[row.pass_name]} {best}"
                     + (f" ({speedup:.2f}x torch)" if speedup is not None else ""))
    return f"[{done}/{total}] {dtype} {layer.name} {layer.describe()}  {seconds:.1f} s: " + "; ".join(parts)


def _measure_all(layers, plan, show_progress: bool):
    """Run the plan with a progress bar on a terminal, a line per layer otherwise (logs stay readable)."""
    measurements = []
    total = runner.total_cases(layers, plan)
    per_layer = plan.cases_per_layer
    use_bar = show_progress and sys.stderr.isatty()
    bar = None
    if use_bar:
        try:
            from tqdm import tqdm
            bar = tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True, leave=False)
        except ImportError:  # a bare GPU image may lack it: fall back to the per-layer lines
            bar = None
    layer_count = len(plan.dtypes) * len(layers)
    started = time.perf_counter()
    interrupted = False
    try:
        for m in runner.run(layers, plan):
            measurements.append(m)
            if bar is not None:
                bar.set_postfix_str(f"{m.dtype} {m.layer} {m.pass_name} {m.algo}", refresh=False)
                bar.update(1)
            if len(measurements) % per_layer == 0:
                layer = next(layer for layer in layers if layer.name == m.layer)
                line = _layer_line(len(measurements) // per_layer, layer_count, measurements[-per_layer:], layer,
                                   m.dtype, plan.passes, time.perf_counter() - started)
                started = time.perf_counter()
                if bar is not None:
                    bar.write(line, file=sys.stdout)
                elif show_progress:
                    print(line, flush=True)
    except KeyboardInterrupt:  # report what was measured so far
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    return measurements, interrupted


def run(args) -> int:
    if args.models is not None:
        return bench_models.run(args)
    try:
        suite_name, layers, plan = _plan(args)
        usage.torch_threads(args.threads)
    except (_UsageError, ValueError) as err:
        print(f"corrmm bench: error: {err}", file=sys.stderr)
        return 2
    env = runner.environment(plan.device)
    torch_label = "torch"
    print(f"corrmm {env['corrmm']} bench on {env['device']} ({plan.device}); torch {env['torch']}, "
          f"triton {env['triton']}, torch's convolution: {env['torch_backend']}")
    print(f"suite {suite_name}: {len(layers)} layers; dtypes {' '.join(plan.dtypes)}; "
          f"passes {' '.join(plan.passes)}")
    print(f"candidates: {' '.join(plan.candidates)}; timing: {method_name(plan.device)}, median, "
          f"warm-up {plan.timing.warmup_ms:g} ms, {plan.timing.rep_ms:g} ms of repetitions"
          f"{' (quick)' if args.quick else ''}{'; CUDA-graph replays' if plan.timing.cuda_graph else ''}", flush=True)
    load = env.get("load_average")
    if load is not None and load[0] > 0.75 * (os.cpu_count() or 1):
        print(f"note: this machine is busy (load average {load[0]:.1f} on {os.cpu_count()} cores): "
              f"CPU timings will be noisy", flush=True)
    if plan.device.type == "cpu" and "tf32" in plan.dtypes:
        print("note: tf32 only changes CUDA matrix units; on the CPU it is fp32", flush=True)

    measurements, interrupted = _measure_all(layers, plan, not args.no_progress)
    rows = report.build_rows(measurements, layers, plan.dtypes, plan.passes)
    runs = []
    for dtype in plan.dtypes:
        spec = DTYPES[dtype]
        with runner.backend_flags(spec, plan.device) as flags:  # the switches as they were while timing
            pass
        summary = report.summarize(rows, dtype, plan.passes)
        runs.append({"dtype": dtype, "torch_dtype": str(spec.dtype), "flags": flags, "summary": summary})
        if not any(r.dtype == dtype for r in rows):
            continue
        flag_text = "" if spec.tf32 is None else f", TF32 {'on' if spec.tf32 else 'off'}"
        print(f"\n== {dtype} ({str(spec.dtype).replace('torch.', '')}{flag_text}) on {env['device']}: "
              f"ms and TFLOP/s per candidate ==")
        print(report.format_table(rows, dtype, plan.candidates, torch_label))
        print(report.format_summary(summary, env["torch_backend"]))
    problems = report.format_problems(measurements)
    if problems:
        print("\n" + problems)
    if interrupted:
        print(f"\ninterrupted: {len(measurements)} of {runner.total_cases(layers, plan)} cases measured")

    settings = {"suite": suite_name, "dtypes": plan.dtypes, "passes": plan.passes, "candidates": plan.candidates,
                "quick": bool(args.quick), "check": plan.check, "seed": plan.seed,
                "timing": {"method": method_name(plan.device), "warmup_ms": plan.timing.warmup_ms,
                           "rep_ms": plan.timing.rep_ms, "min_reps": plan.timing.min_reps, "statistic": "median",
                           "cuda_graph": plan.timing.cuda_graph},
                "algorithms": corrmm.algorithms(), "tune_available": runner.accepts_algo("tune"),
                "args": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list))},
                "interrupted": interrupted}
    if args.json:
        report.write_json(args.json, report.to_json(env, settings, runs, layers, measurements, rows))
        print(f"wrote {args.json}")
    if args.plot:
        title = f"corrmm vs {env['torch_backend']} on {env['device']}, suite {suite_name}"
        usage.plot_or_say_why(args.plot, lambda path: report.write_plot(path, rows, plan.dtypes, plan.passes,
                                                                         plan.candidates, title))
    if interrupted:
        return 130
    return 1 if problems else 0
