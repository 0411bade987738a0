"""GPU probe of the implicit-GEMM kernels: correctness on the device, then speed against cuDNN.

    PYTHONPATH=src python scripts/kernel_probe.py --check          # every pass, dtype, layout vs float64
    PYTHONPATH=src python scripts/kernel_probe.py --bench L3 R4    # TFLOP/s against cuDNN (bf16 by default)

``--check`` is meant to run with ``CORRMM_AUTOTUNE=0`` (one config, so the many
small shapes compile once each instead of tuning). ``--bench`` autotunes, checks
each result against cuDNN's, and times with ``triton.testing.do_bench(return_mode="median")``
(L2 flushed before each call) or ``do_bench_cudagraph`` (GPU time alone, launch cost hidden):

* ``kernel``: our kernel on channels_last operands, eager (what a channels_last model pays);
* ``graph``: the same call replayed from a CUDA graph;
* ``op``: ``corrmm`` with ``algo="implicit"`` on NCHW tensors (op dispatch and layout conversions included);
* ``cudnn`` / ``cudnn_graph``: ``F.conv2d`` / ``aten.convolution_backward`` on NCHW tensors, benchmark mode on.

``--variants`` also times alternative operand layouts for float32 (TF32) passes.
TFLOP/s always counts the direct method, 2·N·K·P·Q·C·R·S (DESIGN.md section 5).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F

import corrmm
from corrmm.geometry import ConvGeometry

LAYERS = {  # DESIGN.md section 5: (C, H, W, K, kernel, batch, stride, pad)
    "L1": (3, 128, 128, 96, 11, 128, 1, 0),
    "L2": (64, 64, 64, 128, 9, 128, 1, 0),
    "L3": (128, 32, 32, 128, 9, 128, 1, 0),
    "L4": (128, 16, 16, 128, 7, 128, 1, 0),
    "L5": (384, 13, 13, 384, 3, 128, 1, 0),
    "S1": (64, 32, 32, 128, 5, 32, 1, 0),
    "S2": (64, 32, 32, 128, 28, 32, 1, 0),
    "R1": (3, 224, 224, 64, 7, 64, 2, 3),
    "R2": (64, 56, 56, 64, 3, 64, 1, 1),
    "R3": (256, 56, 56, 64, 1, 64, 1, 0),
    "R4": (256, 14, 14, 256, 3, 64, 1, 1),
    "R5": (512, 7, 7, 512, 3, 64, 1, 1),
}
DEVICE = os.environ.get("PROBE_DEVICE", "cuda")  # "cpu" with TRITON_INTERPRET=1: a dry run of --check
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32,
          "fp64": torch.float64}


def rel_err(ours, ref):
    ours, ref = ours.double(), ref.double()
    if torch.isnan(ours).any():
        return float("nan")
    return ((ours - ref).norm() / ref.norm().clamp_min(1e-300)).item()


# ---- correctness ---------------------------------------------------------------------

def check(out_dir):
    from corrmm import config
    from corrmm.kernels import common
    from corrmm.kernels import implicit_forward as kf, implicit_grad_input as kgi, implicit_grad_weight as kgw

    geometries = {
        "3x3_pad1": ConvGeometry(4, 32, 48, (15, 17), (3, 3), ((1, 1), (1, 1)), (1, 1), (1, 1)),
        "s2x2_asym_dil1x2": ConvGeometry(3, 20, 24, (19, 23), (3, 2), ((2, 0), (1, 3)), (2, 2), (1, 2)),
        "s2x4_dil2x1_g2": ConvGeometry(2, 64, 32, (21, 29), (2, 3), ((1, 0), (0, 2)), (2, 4), (2, 1), 2),
        "rgb_7x7_s2_p3": ConvGeometry(2, 3, 16, (33, 31), (7, 7), ((3, 3), (3, 3)), (2, 2), (1, 1)),
        "s3x2_dil2_k5": ConvGeometry(2, 16, 17, (23, 18), (5, 4), ((0, 1), (2, 2)), (3, 2), (2, 2)),
    }
    tolerance = {"fp32": 1e-5, "tf32": 5e-3, "bf16": 1e-2, "fp16": 1e-2, "fp64": 1e-12}
    failures, rows = 0, []
    gen = torch.Generator().manual_seed(0)
    for dtype_name in ("fp32", "tf32", "bf16", "fp16", "fp64"):
        dtype = DTYPES[dtype_name]
        torch.backends.cudnn.allow_tf32 = dtype_name == "tf32"
        names = list(geometries) if dtype_name in ("bf16", "fp32") else ["s2x2_asym_dil1x2", "rgb_7x7_s2_p3"]
        for name in names:
            g = geometries[name].validate()
            draw = lambda s: torch.randn(s, generator=gen, dtype=torch.float64).to(DEVICE, dtype)  # noqa: E731
            x, w, dy = draw(g.input_shape), draw(g.weight_shape), draw(g.output_shape)
            kw = dict(border_mode=g.padding, subsample=g.stride, filter_dilation=g.dilation, num_groups=g.groups,
                      algo="implicit")
            ref = (kf.forward_reference(x.double(), w.double(), g),
                   kgi.grad_input_reference(w.double(), dy.double(), g),
                   kgw.grad_weight_reference(x.double(), dy.double(), g))
            for layout in ("nchw", "channels_last"):
                xl, wl, dyl = (t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t
                               for t in (x, w, dy))
                try:
                    with config.poison_outputs():
                        ours = (corrmm.corr2d(xl, wl, **kw),
                                corrmm.corr2d_grad_input(wl, dyl, g.in_size, **kw),
                                corrmm.corr2d_grad_weight(xl, dyl, g.kernel, **kw))
                    errs = [rel_err(o, r) for o, r in zip(ours, ref)]
                    fmt_ok = ours[0].is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
                except Exception:  # report and go on: one broken case must not hide the others
                    traceback.print_exc()
                    errs, fmt_ok = [float("nan")] * 3, False
                ok = all(e <= tolerance[dtype_name] for e in errs) and fmt_ok
                failures += not ok
                rows.append((dtype_name, name, layout, *errs, ok))
                print(f"{dtype_name:5s} {name:18s} {layout:13s} fwd {errs[0]:.2e} dgrad {errs[1]:.2e} "
                      f"wgrad {errs[2]:.2e} {'ok' if ok else 'FAIL'}", flush=True)
    # the strided (non-NHWC) kernel path, forced splits and both reductions, on the GPU
    torch.backends.cudnn.allow_tf32 = False
    g = geometries["s3x2_dil2_k5"].validate()
    x, w, dy = (torch.randn(s, generator=gen).to(DEVICE) for s in (g.input_shape, g.weight_shape, g.output_shape))
    common.as_nhwc = lambda t: t
    for flat in (True, False):
        for splits in (1, 3):
            errs = [rel_err(kf.forward(x, w, g, flat=flat), kf.forward_reference(x, w, g)),
                    rel_err(kgi.grad_input(w, dy, g), kgi.grad_input_reference(w, dy, g)),
                    rel_err(kgw.grad_weight(x, dy, g, splits=splits, flat=flat),
                            kgw.grad_weight_reference(x, dy, g))]
            ok = all(e <= 1e-5 for e in errs)
            failures += not ok
            print(f"nchw-strided flat={flat} splits={splits}: {['%.2e' % e for e in errs]} {'ok' if ok else 'FAIL'}")
    g = geometries["rgb_7x7_s2_p3"].validate()  # 2·17·16 = 544 reduction steps: 3 real splits
    x, dy = (torch.randn(s, generator=gen).to(DEVICE) for s in (g.input_shape, g.output_shape))
    a = kgw.grad_weight(x, dy, g, splits=3)
    b = kgw.grad_weight(x, dy, g, splits=3)
    err = rel_err(a, kgw.grad_weight_reference(x, dy, g))
    print(f"split-K x3: error {err:.2e}, bitwise deterministic: {torch.equal(a, b)}")
    failures += not (torch.equal(a, b) and err <= 1e-5)
    # 1-D through the public function
    x1, w1 = torch.randn(3, 8, 50, device=DEVICE), torch.randn(6, 4, 5, device=DEVICE)
    y1 = corrmm.corr1d(x1, w1, border_mode=((2, 1),), subsample=3, filter_dilation=2, num_groups=2, algo="implicit")
    y1r = corrmm.corr1d(x1, w1, border_mode=((2, 1),), subsample=3, filter_dilation=2, num_groups=2, algo="im2col")
    print("1-D forward:", rel_err(y1, y1r))
    print(f"CHECK: {failures} failure(s)")
    if out_dir:
        with open(os.path.join(out_dir, "check.json"), "w") as f:
            json.dump(rows, f)
    return failures


def compact(config) -> str:
    if config is None:
        return "-"
    blocks = "x".join(str(config.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return f"{blocks} w{config.num_warps} s{config.num_stages}"


def describe_compiled(kernel) -> str:
    """Registers, spills, shared memory and the matrix instruction of every compiled variant (best effort:
    Triton's cache layout is internal and changes between versions)."""
    lines = []
    try:
        for caches in kernel.fn.device_caches.values():
            for compiled in caches[0].values():
                ptx = compiled.asm.get("ptx", "")
                mma = "wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "fma"
                meta = compiled.metadata
                consts = {k: v for k, v in getattr(compiled.src, "constants", {}).items()
                          if isinstance(v, (int, bool, str))}
                lines.append(f"{kernel.fn.__name__}: warps={meta.num_warps} stages={meta.num_stages} "
                             f"regs={compiled.n_regs} spills={compiled.n_spills} shared={meta.shared} {mma} {consts}")
    except Exception as err:  # diagnostics only
        lines.append(f"{getattr(kernel, 'fn', kernel)}: cannot describe ({err!r})")
    return "\n".join(lines) + "\n"


# ---- speed --------------------------------------------------------------------------

def layout_variants(dtype_name, pass_name):
    """Operand layouts to compare, as replacements of the pass's ``prepare_operands`` (None: the library's).

    TF32 tensor-core instructions read only K-major tiles, so for float32 the
    layout that makes the reduction index contiguous may win where NHWC loses.
    """
    from corrmm.kernels import common

    def nhwc(a, b):
        return common.as_nhwc(a), common.as_nhwc(b)

    def batch_inner(t):  # (C, N, H, W) in memory: for one channel, (n, h, w) contiguous
        return t.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)

    variants = {"default": None}
    if dtype_name == "tf32" and pass_name == "grad_input":
        variants["nhwc_weight"] = nhwc
    if dtype_name == "tf32" and pass_name == "grad_weight":
        variants["dy_batch_inner"] = lambda x, dy: (common.as_nhwc(x), batch_inner(dy))
        variants["both_batch_inner"] = lambda x, dy: (batch_inner(x), batch_inner(dy))
    return variants


def bench(layers, dtype_names, out_dir, budget_s, variants):
    from triton.testing import do_bench, do_bench_cudagraph

    from corrmm.kernels import implicit_forward as kf, implicit_grad_input as kgi, implicit_grad_weight as kgw

    modules = {"forward": (kf, kf.implicit_forward_kernel), "grad_input": (kgi, kgi.implicit_grad_input_kernel),
               "grad_weight": (kgw, kgw.implicit_grad_weight_kernel)}
    torch.backends.cudnn.benchmark = True
    start = time.time()
    results = []
    for dtype_spec in dtype_names:
        dtype_name, _, own_layers = dtype_spec.partition(":")
        dtype = DTYPES[dtype_name]
        torch.backends.cudnn.allow_tf32 = dtype_name == "tf32"
        tolerance = {"bf16": 2e-2, "fp16": 1e-2, "tf32": 1e-2, "fp32": 1e-4, "fp64": 1e-10}[dtype_name]
        for layer in own_layers.split("+") if own_layers else layers:
            C, H, W, K, k, N, s, p = LAYERS[layer]
            g = ConvGeometry(N, C, K, (H, W), (k, k), ((p, p), (p, p)), (s, s), (1, 1)).validate()
            x = torch.randn(g.input_shape, device=DEVICE, dtype=dtype)
            w = torch.randn(g.weight_shape, device=DEVICE, dtype=dtype)
            dy = torch.randn(g.output_shape, device=DEVICE, dtype=dtype)
            xc, wc, dyc = (t.contiguous(memory_format=torch.channels_last) for t in (x, w, dy))
            kw = dict(border_mode=g.padding, subsample=g.stride, algo="implicit")
            conv_args = dict(stride=list(g.stride), padding=[p, p], dilation=[1, 1], transposed=False,
                             output_padding=[0, 0], groups=1)
            runs = {
                "forward": (lambda: kf.forward(xc, wc, g),
                            lambda: corrmm.corr2d(x, w, **kw),
                            lambda: F.conv2d(x, w, stride=s, padding=p)),
                "grad_input": (lambda: kgi.grad_input(wc, dyc, g),
                               lambda: corrmm.corr2d_grad_input(w, dy, g.in_size, **kw),
                               lambda: torch.ops.aten.convolution_backward(dy, x, w, None, **conv_args,
                                                                           output_mask=[True, False, False])[0]),
                "grad_weight": (lambda: kgw.grad_weight(xc, dyc, g),
                                lambda: corrmm.corr2d_grad_weight(x, dy, g.kernel, **kw),
                                lambda: torch.ops.aten.convolution_backward(dy, x, w, None, **conv_args,
                                                                            output_mask=[False, True, False])[1]),
            }
            for pass_name, (ours, op, cudnn) in runs.items():
                module, kernel = modules[pass_name]
                library_layout = module.prepare_operands
                for variant, layout in (layout_variants(dtype_name, pass_name) if variants else {"default": None}).items():
                    if time.time() - start > budget_s:
                        print(f"budget of {budget_s}s spent: skipping {dtype_name} {layer} {pass_name}", flush=True)
                        continue
                    module.prepare_operands = layout or library_layout
                    kernel.cache.clear()  # the key ignores strides: tune each layout afresh
                    try:
                        t0 = time.time()
                        mine = ours()  # autotunes
                        torch.cuda.synchronize()
                        tune_s = time.time() - t0
                        err = rel_err(mine, cudnn())
                        cpu_t0 = time.perf_counter()
                        for _ in range(20):
                            ours()
                        cpu_us = (time.perf_counter() - cpu_t0) / 20 * 1e6  # launch cost, no sync inside
                        torch.cuda.synchronize()
                        ms = {"kernel": do_bench(ours, return_mode="median"),
                              "graph": do_bench_cudagraph(ours, return_mode="median"),
                              "op": do_bench(op, return_mode="median") if variant == "default" else float("nan"),
                              "cudnn": do_bench(cudnn, return_mode="median"),
                              "cudnn_graph": do_bench_cudagraph(cudnn, return_mode="median")}
                    except Exception:
                        traceback.print_exc()
                        continue
                    finally:
                        module.prepare_operands = library_layout
                    tflops = {name: g.flops / (t * 1e-3) / 1e12 for name, t in ms.items()}
                    best = compact(getattr(kernel, "best_config", None))
                    timings = getattr(kernel, "configs_timings", None) or {}
                    for config, t in sorted(timings.items(), key=lambda item: str(item[1])):
                        print(f"    {compact(config)}: {['%.4f' % v for v in t]}", flush=True)
                    ok = err <= tolerance
                    row = dict(layer=layer, dtype=dtype_name, pass_name=pass_name, variant=variant, ms=ms,
                               tflops=tflops, config=best, tune_s=round(tune_s, 1), err_vs_cudnn=err, ok=ok,
                               launch_us=round(cpu_us, 1))
                    results.append(row)
                    print(f"{layer} {dtype_name} {pass_name:11s} {variant:16s} kernel {tflops['kernel']:6.1f} "
                          f"graph {tflops['graph']:6.1f} op {tflops['op']:6.1f} cudnn {tflops['cudnn']:6.1f} "
                          f"cudnn_graph {tflops['cudnn_graph']:6.1f} TFLOP/s; vs cuDNN {err:.1e} {'ok' if ok else 'FAIL'}; "
                          f"launch {cpu_us:.0f} us; tuned {tune_s:.0f}s; {best}", flush=True)
                    if out_dir:  # after every row: a run cut short still brings its numbers back
                        with open(os.path.join(out_dir, "bench.json"), "w") as f:
                            json.dump(results, f, indent=1)
    if out_dir:
        with open(os.path.join(out_dir, "compiled.txt"), "w") as f:
            for _, kernel in modules.values():
                f.write(describe_compiled(kernel))
    print("\nlayer dtype pass        variant           kernel  graph     op  cudnn cudnn_graph (TFLOP/s)  graph/cudnn_graph")
    for r in results:
        t = r["tflops"]
        print(f"{r['layer']:5s} {r['dtype']:5s} {r['pass_name']:11s} {r['variant']:16s} {t['kernel']:6.1f} "
              f"{t['graph']:6.1f} {t['op']:6.1f} {t['cudnn']:6.1f} {t['cudnn_graph']:6.1f}  "
              f"{t['graph'] / t['cudnn_graph']:.2f}{'' if r['ok'] else '  WRONG'}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--bench", nargs="*", metavar="LAYER")
    parser.add_argument("--dtypes", default="bf16", help="comma-separated; a dtype may name its own layers: "
                        "bf16:L3+R4,tf32:L3")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds after which no new pass starts")
    parser.add_argument("--variants", action="store_true", help="also time alternative operand layouts (TF32)")
    args = parser.parse_args(argv)
    out_dir = os.environ.get("OUT")
    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
    print(f"torch {torch.__version__}, triton {__import__('triton').__version__}, {device_name}", flush=True)
    failures = 0
    if args.check:
        failures = check(out_dir)
    if args.bench is not None:
        bench(args.bench or ["L3", "R4"], args.dtypes.split(","), out_dir, args.budget, args.variants)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
