"""Depthwise layers on the GPU: corrmm's depthwise kernels against cuDNN, pass by pass.

    python scripts/depthwise_bench.py [--out DIR] [--dtypes bf16,fp32] [--layers D1,D3]

For every layer and dtype: the median time (triton.testing.do_bench) of
corrmm's ``depthwise`` algorithm through the public functions and of torch's
convolution (cuDNN: F.conv2d with groups = channels, and
aten.convolution_backward for one gradient at a time, as ``corrmm bench``
measures), both on the same channels_last tensors in one run; the achieved
bandwidth over the minimum traffic (each operand read once, the result written
once); the relative error of both against a float64 reference; and whether two
weight-gradient runs agree bit for bit. The copy ceiling (a device-to-device
copy, bytes read plus written) is measured first. Writes depthwise_bench_<dtypes>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
import corrmm  # noqa: E402

# name: (batch, channels, size, kernel, stride, pad, layout)
LAYERS = {
    "D1": (64, 256, 28, 3, 1, 1, "channels_last"),   # depthwise 3x3, 256 channels (issue 10's layer), batch 64
    "D2": (8, 256, 28, 3, 1, 1, "channels_last"),    # the same, batch 8
    "D3": (64, 144, 56, 3, 2, 1, "channels_last"),   # MobileNetV2's stride-2 block: 56² -> 28²
    "D4": (64, 96, 56, 7, 1, 3, "channels_last"),    # ConvNeXt's 7x7
    "D1n": (64, 256, 28, 3, 1, 1, "contiguous"),     # D1 with NCHW tensors (the kernels transpose to NHWC)
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def bench(fn) -> float:
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def host_us(fn, calls: int = 200) -> float:
    """Host time per call (µs) of back-to-back calls: the launch rate when the GPU keeps up."""
    import time
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy, bytes read plus bytes written."""
    src = torch.empty(2**28, dtype=torch.float32, device="cuda").normal_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms / 1e6


def rel_err(a, ref) -> float:
    a, ref = a.double(), ref.double()
    return ((a - ref).norm() / ref.norm()).item()


def run_layer(name, dtype_name, passes=("forward", "grad_input", "grad_weight")):
    n, c, size, k, stride, pad, layout = LAYERS[name]
    dtype = DTYPES[dtype_name]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn((n, c, size, size), generator=gen, device="cuda").to(dtype).contiguous(memory_format=fmt)
    w = torch.randn((c, 1, k, k), generator=gen, device="cuda").to(dtype)
    out = (size + 2 * pad - k) // stride + 1
    dy = torch.randn((n, c, out, out), generator=gen, device="cuda").to(dtype).contiguous(memory_format=fmt)
    s, p, d = [stride] * 2, [pad] * 2, [1, 1]
    kw = dict(border_mode=pad, subsample=stride, num_groups=c, algo="depthwise")
    ours = {
        "forward": lambda: corrmm.corr2d(x, w, **kw),
        "grad_input": lambda: corrmm.corr2d_grad_input(w, dy, x.shape[2:], **kw),
        "grad_weight": lambda: corrmm.corr2d_grad_weight(x, dy, w.shape[2:], **kw),
    }
    cudnn = {
        "forward": lambda: F.conv2d(x, w, stride=s, padding=p, groups=c),
        "grad_input": lambda: torch.ops.aten.convolution_backward(dy, x, w, None, s, p, d, False, [0, 0], c,
                                                                  [True, False, False])[0],
        "grad_weight": lambda: torch.ops.aten.convolution_backward(dy, x, w, None, s, p, d, False, [0, 0], c,
                                                                   [False, True, False])[1],
    }
    # float64 references on the GPU (cuDNN's fp64 path), through autograd
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    y64 = F.conv2d(x64, w64, stride=s, padding=p, groups=c)
    gx64, gw64 = torch.autograd.grad(y64, (x64, w64), dy.double())
    refs = {"forward": y64.detach(), "grad_input": gx64, "grad_weight": gw64}
    size_of = lambda t: t.numel() * t.element_size()  # noqa: E731
    traffic = {"forward": size_of(x) + size_of(w) + size_of(dy), "grad_input": size_of(dy) + size_of(w) + size_of(x),
               "grad_weight": size_of(x) + size_of(dy) + size_of(w)}
    rows = []
    for pass_name in passes:
        ours_out, cudnn_out = ours[pass_name](), cudnn[pass_name]()
        row = dict(layer=name, dtype=dtype_name, layout=layout, pass_name=pass_name,
                   err_ours=rel_err(ours_out, refs[pass_name]), err_cudnn=rel_err(cudnn_out, refs[pass_name]))
        if pass_name == "grad_weight":
            row["deterministic"] = bool(torch.equal(ours_out, ours[pass_name]()))
        row["host_us_ours"] = host_us(ours[pass_name])
        row["ms_ours"] = bench(ours[pass_name])
        row["ms_cudnn"] = bench(cudnn[pass_name])
        row["speedup"] = row["ms_cudnn"] / row["ms_ours"]
        row["gbs_ours"] = traffic[pass_name] / row["ms_ours"] / 1e6
        row["gbs_cudnn"] = traffic[pass_name] / row["ms_cudnn"] / 1e6
        rows.append(row)
        print(f"{name:4s} {dtype_name:4s} {pass_name:11s} ours {row['ms_ours'] * 1e3:8.1f} us "
              f"({row['gbs_ours']:6.0f} GB/s)  cudnn {row['ms_cudnn'] * 1e3:8.1f} us ({row['gbs_cudnn']:6.0f} GB/s)  "
              f"x{row['speedup']:5.2f}  err {row['err_ours']:.1e} / {row['err_cudnn']:.1e}"
              + (f"  det={row['deterministic']}" if "deterministic" in row else "")
              + f"  host {row['host_us_ours']:.0f} us/call", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--dtypes", default="bf16,fp32")
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--passes", default="forward,grad_input,grad_weight")
    args = parser.parse_args()
    gbs = copy_bandwidth()
    print(f"copy ceiling: {gbs:.0f} GB/s; {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"cudnn {torch.backends.cudnn.version()}", flush=True)
    rows = []
    for dtype_name in args.dtypes.split(","):
        for name in args.layers.split(","):
            rows += run_layer(name, dtype_name, args.passes.split(","))
    tag = args.dtypes.replace(",", "_") + ("" if args.passes.count(",") == 2 else "_" + args.passes.replace(",", "_"))
    with open(os.path.join(args.out, f"depthwise_bench_{tag}.json"), "w") as f:
        json.dump(dict(copy_gbs=gbs, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
