"""What one layer-pass costs on the host and on the GPU: kernels launched, their times, host µs per call.

    python scripts/layer_profile.py  "64,384,14,14:64,384,1,1:s1:p0:g1:forward" ...

Each argument is ``x shape : w shape : stride : padding : groups : pass`` (channels_last tensors,
bf16 unless --dtype). For corrmm's ``auto`` and for torch: host time per call (200 calls, no
synchronisation, divided), GPU time per call (CUDA events around 200 calls), and the profiler's
kernels (name, count per call, mean µs).
"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from corrmm.geometry import make_geometry
from corrmm.selection import auto_choice
from model_layers import pass_calls  # scripts/ is on sys.path when this script runs

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse(spec):
    xs, ws, s, p, g, pass_name = spec.split(":")
    xs = tuple(int(v) for v in xs.split(","))
    ws = tuple(int(v) for v in ws.split(","))
    nd = len(xs) - 2
    return xs, ws, (int(s[1:]),) * nd, (int(p[1:]),) * nd, int(g[1:]), pass_name


def measure(fn, reps=200):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(reps):
        fn()
    host_us = (time.perf_counter() - begin) / reps * 1e6
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    gpu_us = start.elapsed_time(end) / reps * 1e3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    kernels = []
    for e in prof.key_averages():
        device_us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if device_us and e.count:
            kernels.append((device_us / 10, e.count / 10, e.key[:90]))
    return host_us, gpu_us, sorted(kernels, reverse=True)[:6]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("layers", nargs="+")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    dtype = DTYPES[args.dtype]
    for spec in args.layers:
        xs, ws, stride, padding, groups, pass_name = parse(spec)
        algo = auto_choice(pass_name, make_geometry(xs, ws, padding, stride, 1, groups), torch.device("cuda"), dtype)
        print(f"\n== {spec}  (auto: {algo})")
        key = (len(xs) - 2, xs, ws, stride, padding, (1,) * (len(xs) - 2), groups)
        for side, passes in pass_calls(key, dtype, torch.device("cuda")).items():
            fn = passes[pass_name]
            host_us, gpu_us, kernels = measure(fn)
            print(f"  {side:6s} host {host_us:7.1f} us/call   stream {gpu_us:7.1f} us/call")
            for us, count, name in kernels:
                print(f"         {us:7.1f} us  x{count:4.1f}  {name}")


if __name__ == "__main__":
    main()
