"""Where the host time of one corrmm call goes, layer by layer of the call stack (GPU).

    PYTHONPATH=src python scripts/host_overhead.py [--out DIR]

Each line times a loop of calls on a tiny problem (the GPU work is a few microseconds,
so the loop measures the host), synchronising once at the end: microseconds of host
time per call. From the outside in: the public function, the registered op, the op's
body, the algorithm, the kernel wrapper, and Triton's launch paths. ``cProfile`` of the
public call and a ``torch.profiler`` kernel list of one large layer (L3 bf16 forward
through the op, NCHW) follow, so the layout copies can be told from the GEMM.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import time

import torch
import torch.nn.functional as F

import corrmm
from corrmm import ops
from corrmm.algorithms import REGISTRY


def host_us(fn, calls: int = 300) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "out"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    lines = []

    def report(name, us):
        line = f"{name:<58s} {us:8.1f} us"
        print(line, flush=True)
        lines.append(line)

    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    x = torch.randn(2, 32, 8, 8, device=dev, dtype=torch.bfloat16)
    w = torch.randn(32, 32, 3, 3, device=dev, dtype=torch.bfloat16)
    x_cl, w_cl = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    geometry_args = ([1, 1], [1, 1], [1, 1], [1, 1], 1)

    report("baseline: x.add_(1) (one torch kernel launch)", host_us(lambda: x.add_(0)))
    report("torch F.conv2d (cuDNN), NCHW", host_us(lambda: F.conv2d(x, w, padding=1)))
    report("torch F.conv2d (cuDNN), channels_last", host_us(lambda: F.conv2d(x_cl, w_cl, padding=1)))
    for algo in ("implicit", "im2col", "auto"):
        report(f"corrmm.corr2d algo={algo}, NCHW",
               host_us(lambda: corrmm.corr2d(x, w, border_mode="half", algo=algo)))
    report("corrmm.corr2d algo=implicit, channels_last",
           host_us(lambda: corrmm.corr2d(x_cl, w_cl, border_mode="half", algo="implicit")))
    y_cl = corrmm.corr2d(x_cl, w_cl, border_mode="half", algo="implicit")
    y = y_cl.contiguous()
    for algo in ("implicit", "auto"):
        report(f"corrmm.corr2d_grad_input algo={algo}, NCHW",
               host_us(lambda: corrmm.corr2d_grad_input(w, y, (8, 8), border_mode="half", algo=algo)))
        report(f"corrmm.corr2d_grad_weight algo={algo}, NCHW",
               host_us(lambda: corrmm.corr2d_grad_weight(x, y, (3, 3), border_mode="half", algo=algo)))
    report("corrmm.corr2d_grad_input implicit, channels_last",
           host_us(lambda: corrmm.corr2d_grad_input(w_cl, y_cl, (8, 8), border_mode="half", algo="implicit")))
    report("corrmm.corr2d_grad_weight implicit, channels_last",
           host_us(lambda: corrmm.corr2d_grad_weight(x_cl, y_cl, (3, 3), border_mode="half", algo="implicit")))
    report("NCHW -> channels_last copy of x (x.contiguous(channels_last))",
           host_us(lambda: x.contiguous(memory_format=torch.channels_last)))
    x_grad, w_grad = x_cl.clone().requires_grad_(), w_cl.clone().requires_grad_()

    def train_step():
        corrmm.corr2d(x_grad, w_grad, border_mode="half", algo="implicit").sum().backward()
    report("forward + backward (sum), implicit, channels_last", host_us(train_step, calls=100))

    def torch_step():
        F.conv2d(x_grad, w_grad, padding=1).sum().backward()
    report("torch forward + backward (sum), channels_last", host_us(torch_step, calls=100))
    report("torch.ops.corrmm.corr implicit, channels_last",
           host_us(lambda: torch.ops.corrmm.corr(x_cl, w_cl, *geometry_args, "implicit")))
    body = getattr(ops.corr, "_init_fn", None)
    if body is not None:
        report("op body (no dispatcher), channels_last",
               host_us(lambda: body(x_cl, w_cl, *geometry_args, "implicit")))
    g = ops.build_geometry(x.shape, w.shape, *geometry_args)
    implicit = REGISTRY["implicit"]
    report("Implicit.forward, channels_last", host_us(lambda: implicit.forward(x_cl, w_cl, g)))
    from corrmm.kernels import common, implicit_forward as kf
    report("kernels.implicit_forward.forward, channels_last", host_us(lambda: kf.forward(x_cl, w_cl, g)))

    # Triton's own launch paths, arguments prepared once
    y = torch.empty(g.output_shape, device=dev, dtype=x.dtype, memory_format=torch.channels_last)
    (H, W), (R, S), (P, Q) = g.in_size, g.kernel, g.out_size
    M = g.batch * P * Q
    launch_args = (x_cl, w_cl, y, g.batch, H, W, P, Q, 32, 32, R, S, 1, 1, 1, 1, 1, 1,
                   *x_cl.stride(), *w_cl.stride(), *y.stride(), common.bucket(M), common.bucket(32),
                   common.bucket(32 * R * S))
    meta = dict(FLAT_K=False, WIDE_INDEX=False, INPUT_PRECISION="ieee", UPCAST=False, ACC_DTYPE=common.tl.float32)

    def grid(m):
        return (common.cdiv(M, m["BLOCK_M"]) * common.cdiv(32, m["BLOCK_N"]), 1)

    kernel = kf.implicit_forward_kernel
    report("triton autotuner launch kernel[grid](...)", host_us(lambda: kernel[grid](*launch_args, **meta)))
    best = kernel.best_config
    fixed_grid = grid(best.kwargs)
    jit = kernel.fn
    report("triton JITFunction launch (best config, no autotuner)",
           host_us(lambda: jit[fixed_grid](*launch_args, **meta, **best.all_kwargs())))
    compiled = jit[fixed_grid](*launch_args, **meta, **best.all_kwargs())
    try:
        from triton import knobs
        enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    except Exception:  # older Triton keeps the hooks on CompiledKernel
        enter = getattr(type(compiled), "launch_enter_hook", None)
        leave = getattr(type(compiled), "launch_exit_hook", None)
    try:
        import inspect
        report_sig = str(inspect.signature(jit.run))
        lines.append(f"JITFunction.run signature: {report_sig}")
        device = torch.cuda.current_device()
        caches = jit.device_caches[device]
        binder = caches[-1]
        bound, _, _ = binder(*launch_args, **meta, **best.all_kwargs())
        values = list(bound.values())
        stream = torch.cuda.current_stream().cuda_stream
        lines.append(f"bound args: {len(values)} (launch args {len(launch_args)})")

        def direct():
            compiled.run(fixed_grid[0], fixed_grid[1], 1, stream, compiled.function, compiled.packed_metadata,
                         None, enter, leave, *values)
        direct()
        torch.cuda.synchronize()
        report("CompiledKernel.run direct (all bound args)", host_us(direct))
    except Exception as err:  # report and go on
        lines.append(f"direct launch failed: {type(err).__name__}: {err}")
        print(lines[-1])

    # cProfile of the public call
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(300):
        corrmm.corr2d(x, w, border_mode="half", algo="implicit")
    torch.cuda.synchronize()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(35)
    lines.append(text.getvalue())
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(300):
        corrmm.corr2d_grad_input(w_cl, y_cl, (8, 8), border_mode="half", algo="implicit")
    torch.cuda.synchronize()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(30)
    lines.append("grad_input, channels_last:\n" + text.getvalue())

    # kernels of L3 bf16 forward through the op, NCHW
    from torch.profiler import ProfilerActivity, profile as tprofile
    x3 = torch.randn(128, 128, 32, 32, device=dev, dtype=torch.bfloat16)
    w3 = torch.randn(128, 128, 9, 9, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        corrmm.corr2d(x3, w3, algo="implicit")
        F.conv2d(x3, w3)
    torch.cuda.synchronize()
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            corrmm.corr2d(x3, w3, algo="implicit")
            F.conv2d(x3, w3)
        torch.cuda.synchronize()
    lines.append(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20))
    with open(os.path.join(args.out, "host_overhead.log"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[-3:]))


if __name__ == "__main__":
    main()
