"""Grouped, 3-D and few-channel layers: the implicit kernels against cuDNN, pass by pass (GPU only).

    python3 scripts/bench_grouped_3d.py --label new --out new.json          # time (and cuDNN)
    python3 scripts/bench_grouped_3d.py --label new --warm-only --workers 8 # compile every tile config first
    python3 scripts/bench_grouped_3d.py --table old.json new.json           # one table of both

``--warm-only`` compiles each variant's pruned autotuning configs in parallel
processes (Triton's on-disk cache keeps them), so the timing run that follows
spends its time benchmarking, not compiling. A corrmm without 3-D or group
packing (an older checkout on PYTHONPATH) times the variants it has.

Timing: triton.testing.do_bench medians (warm-up 25 ms, 100 ms of repeats),
cudnn.benchmark on, operands channels-last; the input gradient of cuDNN is
``aten.convolution_backward`` with only the input mask set, which is what autograd
runs for that pass. Each corrmm result is checked against cuDNN's in the same dtype.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys

#: name -> (batch, channels, filters, size, kernel, stride, pad, groups)
CASES = {
    "G8": (64, 256, 256, (28, 28), (3, 3), 1, 1, 32),      # ResNeXt stage 2: 32 groups x 8 channels
    "G4": (64, 128, 128, (56, 56), (3, 3), 1, 1, 32),      # 32 groups x 4 channels
    "V3": (8, 64, 128, (16, 56, 56), (3, 3, 3), 1, 1, 1),  # R3D 3x3x3
    "T1": (64, 1, 64, (128, 512), (128, 8), 1, 0, 1),      # spectrogram first layer: kernel as tall as the input
    "A1": (64, 3, 96, (224, 224), (11, 11), 4, 2, 1),      # AlexNet's first layer
    "L1": (128, 3, 96, (128, 128), (11, 11), 1, 0, 1),     # the convnet suite's few-channel and large-kernel
    "S2": (32, 64, 128, (32, 32), (28, 28), 1, 0, 1),      # layers, whose input gradients auto gave to fft
    "R4": (64, 256, 256, (14, 14), (3, 3), 1, 1, 1),       # dense regression checks
    "L3": (128, 128, 128, (32, 32), (9, 9), 1, 0, 1),
}

#: (case, passes, options per pass): options are the keyword arguments given to the kernel wrapper
VARIANTS = [
    ("G8", "fg", [{}, {"pack": 2}, {"pack": 8}, {"algo": "auto"}]),   # default pack 4; the old code is pack 1
    ("G4", "fg", [{}, {"pack": 4}, {"pack": 16}, {"algo": "auto"}]),  # default pack 8
    ("V3", "fg", [{}, {"algo": "auto"}]),
    ("T1", "g", [{}, {"rows": False}, {"algo": "fft"}, {"algo": "auto"}]),
    ("A1", "g", [{}, {"rows": False}, {"algo": "auto"}]),
    ("R4", "fg", [{}]),
    ("L3", "fg", [{}]),
]
#: the follow-up set (BENCH_SET=2): the row-column kernel, its rivals, and repeats
VARIANTS_2 = [
    ("T1", "g", [{}, {"algo": "auto"}]),
    ("A1", "g", [{}, {"rows": False}, {"algo": "auto"}]),
    ("L1", "g", [{}, {"algo": "fft"}]),
    ("S2", "g", [{}, {"algo": "fft"}]),
    ("G8", "fg", [{}]),
    ("R4", "g", [{}]),
]
if os.environ.get("BENCH_SET") == "2":
    VARIANTS = VARIANTS_2
if os.environ.get("BENCH_CASES"):
    VARIANTS = [v for v in VARIANTS if v[0] in os.environ["BENCH_CASES"].split(",")]
DTYPES = ("bf16", "tf32")


def geometry_of(case):
    from corrmm.geometry import ConvGeometry
    n, c, k, size, kernel, stride, pad, groups = CASES[case]
    nd = len(size)
    return ConvGeometry(n, c, k, size, kernel, ((pad, pad),) * nd, (stride,) * nd, (1,) * nd, groups).validate()


def operands(case, dtype_name):
    import torch
    torch.manual_seed(0)
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    g = geometry_of(case)
    fmt = torch.channels_last_3d if g.ndim == 3 else torch.channels_last
    x = torch.randn(g.input_shape, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    w = torch.randn(g.weight_shape, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    dy = torch.randn(g.output_shape, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    return g, x, w, dy


def supported_options(fn, options):
    params = inspect.signature(fn).parameters
    return all(name in params for name in options)


def corrmm_call(pass_name, g, x, w, dy, options):
    """A zero-argument callable running the pass, or None where this corrmm lacks the variant."""
    if "algo" in options:  # through corrmm's public functions: auto, fft, ...
        import corrmm
        nd = g.ndim
        kw = dict(border_mode=g.padding[0][0], subsample=g.stride, num_groups=g.groups, algo=options["algo"])
        if pass_name == "f":
            return lambda: getattr(corrmm, f"corr{nd}d")(x, w, **kw)
        return lambda: getattr(corrmm, f"corr{nd}d_grad_input")(w, dy, g.in_size, **kw)
    from corrmm.kernels import implicit_forward as kf, implicit_grad_input as kgi
    fn = kf.forward if pass_name == "f" else kgi.grad_input
    if not supported_options(fn, options):
        return None
    if g.ndim == 3 and "VOLUMETRIC" not in (kf.implicit_forward_kernel.fn.arg_names):
        return None
    if pass_name == "f":
        return lambda: kf.forward(x, w, g, **options)
    return lambda: kgi.grad_input(w, dy, g, **options)


def launch_of(pass_name, g, x, w, dy, options):
    """(autotuner, tensors, scalars, meta) of the variant, for compiling its configs ahead."""
    from corrmm.kernels import common, implicit_forward as kf, implicit_grad_input as kgi
    if pass_name == "f":
        y = common.new_output(x, g.output_shape)
        xp, wp = kf.prepare_operands(x, w)
        args = (xp, wp, y, g, None) + ((options.get("pack"),) if "pack" in inspect.signature(kf._launch).parameters
                                       else ())
        return kf._launch(*args), (xp, wp, y)
    dx = common.new_output(dy, g.input_shape)
    wp, dyp = kgi.prepare_operands(w, dy)
    rows = options.get("rows")
    if rows is None and hasattr(kgi, "use_row_columns"):
        rows = kgi.use_row_columns(g)
    if rows:
        return kgi._launch_rows(wp, dyp, dx, g), (dyp, wp, dx)
    if "pack" in inspect.signature(kgi._launch).parameters:
        return kgi._launch(wp, dyp, dx, g, options.get("pack")), (dyp, wp, dx)
    return kgi._launch(wp, dyp, dx, g), (dyp, wp, dx)


def work_items():
    for case, passes, option_list in VARIANTS:
        for dtype_name in DTYPES:
            for pass_name in passes:
                for options in option_list:
                    if dtype_name == "tf32" and options and "algo" not in options and "rows" not in options:
                        continue
                    yield case, dtype_name, pass_name, options


def set_precision(dtype_name):
    import torch
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = dtype_name == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"


def warm(item):
    """Compile every pruned config of one variant (no launch)."""
    case, dtype_name, pass_name, options = item
    if "algo" in options:
        return 0
    try:
        set_precision(dtype_name)
        g, x, w, dy = operands(case, dtype_name)
        if corrmm_call(pass_name, g, x, w, dy, options) is None:
            return 0
        launch, tensors = launch_of(pass_name, g, x, w, dy, options)
        tuner = launch.kernel
        jit = tuner.fn
        named = dict(zip(jit.arg_names, tuple(tensors) + tuple(launch.scalars)))
        named.update(launch.meta)
        configs = tuner.configs
        prune = getattr(tuner, "early_config_prune", None)
        if prune is not None:
            configs = prune(configs, named)
        for config in configs:
            jit.warmup(*tensors, *launch.scalars, **launch.meta, **config.kwargs, num_warps=config.num_warps,
                       num_stages=config.num_stages, grid=(1,))
        return len(configs)
    except Exception as err:  # warming is an optimisation: the timing run compiles what is missing
        print(f"warm {item}: {type(err).__name__}: {err}", file=sys.stderr)
        return 0


def rel_err(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def cudnn_call(pass_name, g, x, w, dy):
    import torch
    import torch.nn.functional as F
    nd = g.ndim
    stride, padding, dilation = list(g.stride), [p[0] for p in g.padding], list(g.dilation)
    if pass_name == "f":
        conv = F.conv3d if nd == 3 else F.conv2d
        return lambda: conv(x, w, stride=stride, padding=padding, dilation=dilation, groups=g.groups)
    return lambda: torch.ops.aten.convolution_backward(dy, x, w, None, stride, padding, dilation, False, [0] * nd,
                                                       g.groups, [True, False, False])[0]


def peak_bytes(fn):
    import torch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def time_all(label, with_cudnn):
    import torch
    from triton.testing import do_bench
    rows = []
    cudnn_done = set()
    for case, dtype_name, pass_name, options in work_items():
        set_precision(dtype_name)
        g, x, w, dy = operands(case, dtype_name)
        run = corrmm_call(pass_name, g, x, w, dy, options)
        reference = cudnn_call(pass_name, g, x, w, dy)
        flops = 2 * g.batch * g.out_channels * math.prod(g.out_size) * g.channels_per_group * math.prod(g.kernel)
        if with_cudnn and (case, dtype_name, pass_name) not in cudnn_done:
            cudnn_done.add((case, dtype_name, pass_name))
            ms = do_bench(reference, warmup=25, rep=100, return_mode="median")
            rows.append(dict(label="cudnn", case=case, dtype=dtype_name, passname=pass_name, options="", ms=ms,
                             tflops=flops / ms / 1e9, peak_mb=peak_bytes(reference) / 2**20))
            print(f"cudnn  {case} {dtype_name} {pass_name}: {ms * 1e3:9.1f} us", flush=True)
        if run is None:
            continue
        try:
            err = rel_err(run(), reference())
            ms = do_bench(run, warmup=25, rep=100, return_mode="median")
            peak = peak_bytes(run) / 2**20
        except Exception as e:  # report and go on: one variant must not cost the others
            print(f"{label} {case} {dtype_name} {pass_name} {options}: {type(e).__name__}: {e}", flush=True)
            continue
        rows.append(dict(label=label, case=case, dtype=dtype_name, passname=pass_name,
                         options=",".join(f"{k}={v}" for k, v in options.items()), ms=ms, tflops=flops / ms / 1e9,
                         err=err, peak_mb=peak))
        print(f"{label:6} {case} {dtype_name} {pass_name} {rows[-1]['options']:10}: {ms * 1e3:9.1f} us  "
              f"err {err:.1e}  peak {peak:.0f} MiB", flush=True)
        del x, w, dy
        torch.cuda.empty_cache()
    return rows


def table(paths):
    rows = [r for p in paths for r in json.load(open(p))]
    cudnn = {(r["case"], r["dtype"], r["passname"]): r["ms"] for r in rows if r["label"] == "cudnn"}
    print(f"{'case':4} {'dtype':5} {'pass':4} {'variant':16} {'us':>9} {'TFLOP/s':>8} {'x cuDNN':>8} {'err':>8}")
    for r in sorted(rows, key=lambda r: (list(CASES).index(r["case"]), r["dtype"], r["passname"], r["label"])):
        base = cudnn.get((r["case"], r["dtype"], r["passname"]))
        speed = base / r["ms"] if base else float("nan")
        variant = r["label"] + (":" + r["options"] if r["options"] else "")
        print(f"{r['case']:4} {r['dtype']:5} {r['passname']:4} {variant:16} {r['ms'] * 1e3:9.1f} {r['tflops']:8.1f} "
              f"{speed:8.2f} {r.get('err', 0):8.1e}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", default="new")
    parser.add_argument("--out")
    parser.add_argument("--warm-only", action="store_true")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--no-cudnn", action="store_true")
    parser.add_argument("--table", nargs="+")
    args = parser.parse_args()
    if args.table:
        table(args.table)
        return
    if args.warm_only:
        import multiprocessing
        items = list(work_items())
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            compiled = pool.map(warm, items, chunksize=1)
        print(f"{args.label}: compiled {sum(compiled)} configs for {len(items)} variants", flush=True)
        return
    rows = time_all(args.label, not args.no_cudnn)
    if args.out:
        json.dump(rows, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
