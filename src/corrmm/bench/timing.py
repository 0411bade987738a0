"""Timing one callable: the median of many runs, after a warm-up.

* CUDA: ``triton.testing.do_bench`` when triton imports (CUDA events, the L2
  cache flushed before every run: the method the cuDNN anchor numbers of
  DESIGN section 5 were taken with, so the two are comparable); otherwise a loop
  of our own doing the same.
* CPU: ``time.perf_counter`` around each call.

Budgets are in milliseconds, like ``do_bench``'s: ``warmup_ms`` of untimed
calls, then as many timed calls as fit in ``rep_ms`` (at least ``min_reps``).
The first call is never timed: it is where cuDNN's benchmark mode, corrmm's
``tune`` and Triton's compiler do their one-off work.

With ``cuda_graph`` (``corrmm bench --cuda-graph``) every candidate, torch's
convolution included, is captured once into a CUDA graph and the replays are
timed: device time with the host's launch cost taken out, for both sides alike.
Small layers whose eager time is bound by Python and launch latency show the
gap between the two modes.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class TimingConfig:
    warmup_ms: float
    rep_ms: float
    min_reps: int = 3
    max_reps: int = 1000
    cuda_graph: bool = False

    @classmethod
    def default(cls, device: torch.device, quick: bool = False) -> "TimingConfig":
        if device.type == "cuda":
            # the anchor script used warmup=25, rep=100
            return cls(5.0, 20.0, 3) if quick else cls(25.0, 100.0, 5)
        return cls(0.0, 10.0, 2) if quick else cls(20.0, 200.0, 3)


def method_name(device: torch.device) -> str:
    if device.type == "cuda":
        return "triton.testing.do_bench" if _do_bench() is not None else "cuda events"
    return "time.perf_counter"


def _do_bench():
    try:
        from triton.testing import do_bench
    except Exception:  # triton missing or broken: fall back to our own event loop
        return None
    return do_bench


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, config: TimingConfig) -> float:
    """Median time of ``fn()`` in milliseconds."""
    if device.type == "cuda" and config.cuda_graph:
        fn = _graph_replay(fn, device)
    if device.type == "cuda":
        do_bench = _do_bench()
        if do_bench is not None:
            try:
                return float(do_bench(fn, warmup=config.warmup_ms, rep=config.rep_ms, return_mode="median"))
            except TypeError:  # a triton too old for return_mode
                pass
        return _measure_cuda(fn, device, config)
    return _measure_cpu(fn, config)


def _graph_replay(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """Capture ``fn`` (already warmed up by the caller) into a CUDA graph; return its replay."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # one more eager call on the side stream, as capture requires
        fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize(device)
    return graph.replay


def _repetitions(estimate_ms: float, budget_ms: float, config: TimingConfig, minimum: int) -> int:
    if estimate_ms <= 0:
        return config.max_reps
    return max(minimum, min(config.max_reps, math.ceil(budget_ms / estimate_ms)))


def _measure_cpu(fn: Callable[[], object], config: TimingConfig) -> float:
    start = time.perf_counter()
    fn()  # first call: one-off work, untimed
    estimate_ms = (time.perf_counter() - start) * 1e3
    deadline = time.perf_counter() + config.warmup_ms / 1e3
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        estimate_ms = (time.perf_counter() - start) * 1e3
    times = []
    for _ in range(_repetitions(estimate_ms, config.rep_ms, config, config.min_reps)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _measure_cuda(fn: Callable[[], object], device: torch.device, config: TimingConfig) -> float:
    fn()
    torch.cuda.synchronize(device)
    # a buffer larger than L2, rewritten before every run so each starts cold, as do_bench does
    flush = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device=device)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(5):
        flush.zero_()
        fn()
    end.record()
    torch.cuda.synchronize(device)
    estimate_ms = begin.elapsed_time(end) / 5
    for _ in range(_repetitions(estimate_ms, config.warmup_ms, config, 1)):
        fn()
    reps = _repetitions(estimate_ms, config.rep_ms, config, config.min_reps)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, stop in zip(starts, ends):
        flush.zero_()
        start.record()
        fn()
        stop.record()
    torch.cuda.synchronize(device)
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))
