"""Where a dense weight gradient's eager time goes, and what its split-K count does (GPU).

    PYTHONPATH=src python scripts/wgrad_breakdown.py --layers L4 R4 R5 --json out.json

For each layer of the DESIGN table (bf16 unless ``--dtype``):

* eager: ``corrmm.corr2d_grad_weight(algo="implicit")`` on NCHW tensors and cuDNN's
  weight gradient, ``do_bench`` medians (L2 flushed before each call);
* host: µs per public call, measured with the calls queued behind a sleeping
  kernel (so only the host's own work is timed);
* device: µs per kernel of one public call (``torch.profiler``);
* plan: the split count and the tuned tile the call took;
* sweep: the GEMM and its fixed-order sum alone (the plan of the NCHW call, run on
  the operands' NHWC copies: no transposes) for a range of split counts with that
  tile, ``do_bench`` medians.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import corrmm
from corrmm.geometry import ConvGeometry
from corrmm.kernels import common, transpose
from corrmm.kernels import implicit_grad_weight as kgw
from kernel_probe import LAYERS  # the DESIGN layers (scripts/ is on sys.path when a script runs)

SPLITS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64)


def host_us(fn, calls=20):
    """Host time per call: the launches queue behind a ~20 ms sleeping kernel, so the GPU never waits for them."""
    torch.cuda.synchronize()
    torch.cuda._sleep(40_000_000)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def host_profile(fn, calls=100):
    """cProfile of ``calls`` public calls queued behind a sleeping kernel: where the host time goes."""
    import cProfile
    import io
    import pstats

    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(22)
    return text.getvalue()


def device_us(fn, calls=5):
    """Device µs per call of each kernel name (torch.profiler's CUDA activity)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    totals = {}
    for event in prof.events():
        if str(getattr(event, "device_type", "")).endswith("CUDA"):
            name = event.name[:60]
            totals[name] = totals.get(name, 0.0) + event.device_time_total / calls
    return {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def plan_of(g, splits=None):
    for key, plan in common._PLANS.items():
        if key[0] == "grad_weight" and key[1] == g and key[6] == splits:
            return plan
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", nargs="+", default=["L4", "L5", "S1", "R2", "R3", "R4", "R5", "L2", "L3"])
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "tf32"])
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--profile-host", nargs="*", default=[], metavar="LAYER",
                        help="also print a cProfile of the public call's host time on these layers")
    parser.add_argument("--json")
    args = parser.parse_args()
    from triton.testing import do_bench

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32}[args.dtype]
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.dtype == "tf32"
    rows = []
    for layer in args.layers:
        try:
            rows.append(measure(layer, dtype, args, do_bench))
        except Exception as err:  # report and go on with the next layer
            print(f"{layer}: {type(err).__name__}: {str(err)[:300]}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), f, indent=1)


def measure(layer, dtype, args, do_bench):
    kernel = kgw.implicit_grad_weight_kernel
    C, H, W, K, k, N, s, p = LAYERS[layer]
    g = ConvGeometry(N, C, K, (H, W), (k, k), ((p, p), (p, p)), (s, s), (1, 1)).validate()
    x = torch.randn(g.input_shape, device="cuda", dtype=dtype)
    dy = torch.randn(g.output_shape, device="cuda", dtype=dtype)
    w = torch.empty(g.weight_shape, device="cuda", dtype=dtype)
    flop = 2.0 * N * K * g.out_size[0] * g.out_size[1] * C * k * k

    def ours():
        return corrmm.corr2d_grad_weight(x, dy, (k, k), border_mode=p, subsample=s, algo="implicit")

    def cudnn():
        return torch.ops.aten.convolution_backward(dy, x, w, None, [s] * 2, [p] * 2, [1, 1], False, [0, 0], 1,
                                                   [False, True, False])[1]

    reference = cudnn().double()
    out = ours()
    torch.cuda.synchronize()
    best = kernel.best_config
    row = dict(layer=layer, dtype=args.dtype, gflop=flop / 1e9,
               rel_err=((out.double() - reference).norm() / reference.norm()).item(),
               bitwise_equal=bool(torch.equal(out, ours())),
               tile=f"{best.kwargs['BLOCK_M']}x{best.kwargs['BLOCK_N']}x{best.kwargs['BLOCK_K']}"
                    f"/w{best.num_warps}/s{best.num_stages}")
    xn, dyn = transpose.as_nhwc(x), transpose.as_nhwc(dy)
    plan = plan_of(g)
    row["splits"] = plan.splits if plan is not None else None
    row["eager_ms"] = do_bench(ours, warmup=25, rep=100, return_mode="median")
    row["cudnn_ms"] = do_bench(cudnn, warmup=25, rep=100, return_mode="median")
    row["host_us"] = host_us(ours)
    row["cudnn_host_us"] = host_us(cudnn)
    row["device_us"] = device_us(ours)
    row["tflops"] = flop / row["eager_ms"] / 1e9
    row["cudnn_tflops"] = flop / row["cudnn_ms"] / 1e9
    print(f"{layer}: eager {row['eager_ms'] * 1e3:.0f} us ({row['tflops']:.0f} TF/s) cudnn "
          f"{row['cudnn_ms'] * 1e3:.0f} us ({row['cudnn_tflops']:.0f}) = {row['cudnn_ms'] / row['eager_ms']:.2f}x; "
          f"host {row['host_us']:.0f} us (cudnn {row['cudnn_host_us']:.0f}); splits {row['splits']} "
          f"tile {row['tile']}; err {row['rel_err']:.1e} equal={row['bitwise_equal']}", flush=True)
    print(f"   device us: {row['device_us']}", flush=True)
    if layer in args.profile_host:
        print(host_profile(ours), flush=True)
    if not args.no_sweep:
        saved = kernel.configs
        kernel.configs, kernel.cache = [best], {}
        try:
            sweep = {}
            most = max(1, (N * g.out_size[0] * g.out_size[1]) // 256)
            for splits in SPLITS:
                if splits > most:
                    break
                kgw.grad_weight(x, dy, g, splits=splits)  # the plan of NCHW operands (output NCHW)
                split_plan = plan_of(g, splits)
                if split_plan.splits in sweep:
                    continue
                fn = (lambda run: lambda: run(xn, dyn))(split_plan)  # the GEMM and the sum, no transposes
                sweep[split_plan.splits] = do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e3
            row["sweep_us"] = sweep
            print("   sweep (splits: us): " + ", ".join(f"{sp}: {us:.0f}" for sp, us in sweep.items()), flush=True)
        finally:
            kernel.configs, kernel.cache = saved, {}
    return row


if __name__ == "__main__":
    main()
