"""Host time of a training step's convolution calls on the GPU, per layer kind, with cProfile's top entries.

    PYTHONPATH=src python scripts/host_profile.py [--calls 300]

Layers of the kinds real models are made of (a 3x3 conv, a 1x1 conv, a depthwise 3x3, a
grouped 3x3), channels_last, bf16 autocast as in ``corrmm bench --models``, on tensors small
enough that the GPU finishes before the host issues the next call: the loop time is host
time. For each: torch's layer and corrmm's layer (forward + backward), µs per step; then
cProfile's entries with the most own time for corrmm's step, which say where the host goes.
"""
import argparse
import cProfile
import io
import pstats
import time

import torch

import corrmm

LAYERS = {
    "3x3 64->64": dict(in_channels=64, out_channels=64, kernel_size=3, padding=1, bias=False),
    "1x1 64->256": dict(in_channels=64, out_channels=256, kernel_size=1, bias=False),
    "depthwise 3x3 96": dict(in_channels=96, out_channels=96, kernel_size=3, padding=1, groups=96, bias=False),
    "grouped 3x3 128/32": dict(in_channels=128, out_channels=128, kernel_size=3, padding=1, groups=32, bias=False),
}


def step_us(layer, x, calls):
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = layer(x)
        y.sum().backward()
    for _ in range(20):
        step()
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(calls):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - begin) / calls * 1e6, step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    for name, kwargs in LAYERS.items():
        torch.manual_seed(0)
        reference = torch.nn.Conv2d(**kwargs).cuda().to(memory_format=torch.channels_last)
        ours = corrmm.convert(torch.nn.Sequential(torch.nn.Conv2d(**kwargs))).cuda().to(
            memory_format=torch.channels_last)
        x = torch.randn(2, kwargs["in_channels"], 8, 8, device="cuda").contiguous(
            memory_format=torch.channels_last).requires_grad_()
        torch_us, _ = step_us(reference, x, args.calls)
        corrmm_us, step = step_us(ours, x, args.calls)
        print(f"\n== {name}: torch {torch_us:6.1f} us/step, corrmm {corrmm_us:6.1f} us/step (fwd + bwd, host-bound)")
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.calls):
            step()
        torch.cuda.synchronize()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(18)
        lines = [line for line in text.getvalue().splitlines() if line.strip()]
        start = next(i for i, line in enumerate(lines) if "ncalls" in line)
        print("\n".join(lines[start:start + 19]))


if __name__ == "__main__":
    main()
