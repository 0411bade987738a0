"""GPU probe of the weight gradient: corrmm's algorithms against cuDNN on the DESIGN layers, eager calls.

    PYTHONPATH=src python scripts/wgrad_probe.py --dtypes bf16 tf32 --json out.json
    PYTHONPATH=src python scripts/wgrad_probe.py --warm-only --layers L3      # fill Triton's cache only

Every candidate is called the way a user calls it: ``corrmm.corr2d_grad_weight``
on NCHW tensors (layout copies, split-K sum and host time included), timed by
``triton.testing.do_bench`` (median, L2 flushed before each call); cuDNN is
``aten.convolution_backward`` (weight only) with ``cudnn.benchmark`` on. Each
result is compared with cuDNN's; ``--determinism`` also checks that two calls
of the implicit kernel give the same bits. ``--warm-only`` runs each candidate
once (compiling and autotuning) and times nothing: run several of those in
parallel first, and the timed run then finds every binary in Triton's cache.
TFLOP/s counts the direct method, 2·N·K·P·Q·C·R·S.
"""
from __future__ import annotations

import argparse
import json
import math

import torch

import corrmm
from kernel_probe import LAYERS  # the DESIGN layers (scripts/ is on sys.path when a script runs)

DTYPES = {"bf16": torch.bfloat16, "tf32": torch.float32, "fp32": torch.float32, "fp16": torch.float16}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", nargs="+", default=list(LAYERS))
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "tf32"])
    parser.add_argument("--algos", nargs="+", default=["implicit"])
    parser.add_argument("--tag", default="new")
    parser.add_argument("--json")
    parser.add_argument("--warm-only", action="store_true")
    parser.add_argument("--determinism", action="store_true")
    args = parser.parse_args()
    from triton.testing import do_bench

    torch.backends.cudnn.benchmark = True
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
        for layer in args.layers:
            C, H, W, K, k, N, stride, pad = LAYERS[layer]
            gen = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(N, C, H, W, device="cuda", dtype=dtype, generator=gen)
            P, Q = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
            dy = torch.randn(N, K, P, Q, device="cuda", dtype=dtype, generator=gen)
            w = torch.empty(K, C, k, k, device="cuda", dtype=dtype)
            flop = 2.0 * N * K * P * Q * C * k * k

            def cudnn():
                return torch.ops.aten.convolution_backward(
                    dy, x, w, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1, [False, True, False])[1]

            reference = cudnn().double()
            candidates = {"cudnn": cudnn}
            for algo in args.algos:
                candidates[algo] = (lambda a: lambda: corrmm.corr2d_grad_weight(
                    x, dy, (k, k), border_mode=pad, subsample=stride, algo=a.split(":")[0]))(algo)
                if ":" in algo:  # implicit:channels / implicit:pixels force the weight-gradient tile orientation
                    candidates[algo] = orientation(candidates[algo], algo.endswith(":pixels"))
            for name, fn in candidates.items():
                try:
                    out = fn()
                    torch.cuda.synchronize()
                except Exception as err:  # a candidate that cannot serve the layer, or runs out of memory
                    print(f"{dtype_name} {layer} {name}: {type(err).__name__}: {str(err)[:120]}", flush=True)
                    continue
                err = ((out.double() - reference).norm() / reference.norm()).item()
                row = dict(tag=args.tag, dtype=dtype_name, layer=layer, algo=name, rel_err=err)
                if name == "implicit" and args.determinism:
                    row["bitwise_equal"] = bool(torch.equal(out, fn()))
                if not args.warm_only:
                    ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
                    row.update(ms=ms, tflops=flop / ms / 1e9)
                rows.append(row)
                print(json.dumps(row), flush=True)
            del x, dy, w, reference
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if not args.warm_only:
        summary(rows)


def orientation(fn, pixels: bool):
    """fn run with the weight-gradient kernel's tiles pixels innermost (or channels innermost) for every dtype."""
    from corrmm.kernels import implicit_grad_weight as kgw

    def run():
        saved, kgw.pixels_inner = kgw.pixels_inner, lambda dtype, flat: pixels
        try:
            return fn()
        finally:
            kgw.pixels_inner = saved
    return run


def summary(rows):
    """Per dtype: each layer's TFLOP/s per candidate, best corrmm / cuDNN, and the geometric mean."""
    for dtype in sorted({r["dtype"] for r in rows}):
        table = {}
        for r in rows:
            if r["dtype"] == dtype and "ms" in r:
                table.setdefault(r["layer"], {})[r["algo"]] = r
        ratios = []
        print(f"\n{dtype} ({rows[0]['tag']}): layer, TFLOP/s per candidate, best corrmm / cudnn")
        for layer, cands in table.items():
            ours = [c for a, c in cands.items() if a != "cudnn" and c["rel_err"] < 3e-2]
            if "cudnn" not in cands or not ours:
                continue
            best = min(ours, key=lambda c: c["ms"])
            ratio = cands["cudnn"]["ms"] / best["ms"]
            ratios.append(ratio)
            parts = " ".join(f"{a}={c['tflops']:.0f}" for a, c in cands.items())
            print(f"  {layer}: {parts}  best={best['algo']} {ratio:.2f}x")
        if ratios:
            print(f"  geometric mean best/cudnn: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}x")


if __name__ == "__main__":
    main()
