"""Depthwise 3x3 (256 channels, 28², batch 8, fp32) on the CPU: corrmm against torch's convolution.

    python scripts/depthwise_cpu_bench.py [--algo depthwise] [--threads N] [--cpu-time] [--rounds 3]

Each pass of corrmm (through the public functions) and of torch (F.conv2d and
aten.convolution_backward one gradient at a time, as ``corrmm bench``
measures; oneDNN where torch uses it) in NCHW and channels_last, interleaved in
rounds: the best time of all calls (as issue 12's "best of 5"; on a shared machine
a call whose threads lose their core for a scheduler slice takes milliseconds
longer, and corrmm's per-tap form, one parallel op per tap, meets that R·S times
per call) and the median of the rounds' medians. ``--cpu-time`` times with the
process's CPU clock instead (meaningful with one thread only).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
import corrmm  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="depthwise")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cpu-time", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter

    def timings_ms(fn):
        fn()
        times = []
        for _ in range(args.repeats):
            start = clock()
            fn()
            times.append((clock() - start) * 1e3)
        return times

    n, c, size, k, stride, pad = 8, 256, 28, 3, 1, 1
    print(f"threads {torch.get_num_threads()}, {'CPU' if args.cpu_time else 'wall'} clock, algo {args.algo}")
    for layout, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, size, size, generator=gen).contiguous(memory_format=fmt)
        w = torch.randn(c, 1, k, k, generator=gen)
        out = (size + 2 * pad - k) // stride + 1
        dy = torch.randn(n, c, out, out, generator=gen).contiguous(memory_format=fmt)
        s, p, d = [stride] * 2, [pad] * 2, [1, 1]
        kw = dict(border_mode=pad, subsample=stride, num_groups=c, algo=args.algo)
        calls = {
            "forward": (lambda: corrmm.corr2d(x, w, **kw), lambda: F.conv2d(x, w, stride=s, padding=p, groups=c)),
            "grad_input": (lambda: corrmm.corr2d_grad_input(w, dy, (size, size), **kw),
                           lambda: torch.ops.aten.convolution_backward(dy, x, w, None, s, p, d, False, [0, 0], c,
                                                                       [True, False, False])[0]),
            "grad_weight": (lambda: corrmm.corr2d_grad_weight(x, dy, (k, k), **kw),
                            lambda: torch.ops.aten.convolution_backward(dy, x, w, None, s, p, d, False, [0, 0], c,
                                                                        [False, True, False])[1]),
        }
        rounds = {name: ([], []) for name in calls}
        for _ in range(args.rounds):
            for name, (ours, theirs) in calls.items():
                rounds[name][0].append(timings_ms(ours))
                rounds[name][1].append(timings_ms(theirs))
        for name, (ours, theirs) in rounds.items():
            best_o, best_t = min(map(min, ours)), min(map(min, theirs))
            med_o = statistics.median(map(statistics.median, ours))
            med_t = statistics.median(map(statistics.median, theirs))
            print(f"{layout:13s} {name:11s} best: corrmm {best_o:7.3f} ms torch {best_t:7.3f} ms "
                  f"x{best_t / best_o:5.2f}"
                  f"   median: corrmm {med_o:7.3f} torch {med_t:7.3f} x{med_t / med_o:5.2f}", flush=True)


if __name__ == "__main__":
    main()
