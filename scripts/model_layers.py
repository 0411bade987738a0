"""Where a model's convolution time goes: every distinct conv layer of a model, timed per pass.

    python scripts/model_layers.py resnet18 [resnext50_32x4d ...] [--dtype bf16] [--json FILE]

For each model of ``corrmm bench --models``, runs one forward pass on torch's layers with hooks
that record each convolution's geometry, then times each distinct geometry's three passes
(forward, grad_input, grad_weight) in the model bench's setting (channels_last, the autocast
dtype) for torch (cuDNN, benchmark mode) and for corrmm's ``auto`` (the algorithm it picks is
printed), with triton's ``do_bench`` (median). The totals are weighted by how often each
geometry occurs, so the table says which layers hold a model's convolution time back.
"""
import argparse
import collections
import json
import sys

import torch
import torch.nn.functional as F

import corrmm
from corrmm.bench import models as model_bench
from corrmm.bench.timing import TimingConfig, measure
from corrmm.geometry import make_geometry
from corrmm.selection import auto_choice

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PASSES = ("forward", "grad_input", "grad_weight")
#: 10 ms of warm-up, 40 ms of timed calls, median (do_bench on a GPU, the host clock on the CPU)
TIMING = TimingConfig(10.0, 40.0, 3)


def conv_layers(name: str, device: torch.device):
    """(key -> count) of the model's convolutions, key = (ndim, x shape, w shape, stride, padding, dilation, groups)."""
    spec = model_bench.MODELS[name]
    batch, size = spec.gpu if device.type == "cuda" else spec.cpu
    model = spec.build().to(device).eval()
    seen = collections.Counter()

    def hook(module, args, _output):
        x = args[0]
        seen[(x.dim() - 2, tuple(x.shape), tuple(module.weight.shape), tuple(module.stride),
              tuple(module.padding), tuple(module.dilation), module.groups)] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    with torch.no_grad():
        model(torch.randn(spec.input_shape(batch, size), device=device))
    for h in handles:
        h.remove()
    return seen


def pass_calls(key, dtype, device):
    """{"torch": {pass: fn}, "corrmm": {pass: fn}} for one layer key, on fresh channels_last tensors."""
    ndim, xs, ws, stride, padding, dilation, groups = key
    fmt = {1: torch.contiguous_format, 2: torch.channels_last, 3: torch.channels_last_3d}[ndim]
    x = torch.randn(xs, device=device, dtype=dtype).contiguous(memory_format=fmt)
    w = torch.randn(ws, device=device, dtype=dtype).contiguous(memory_format=fmt) * 0.1
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[ndim]
    dy = torch.randn_like(conv(x, w, None, stride, padding, dilation, groups))

    def torch_backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            dy, x, w, None, stride, padding, dilation, False, [0] * ndim, groups, mask)

    return {
        "torch": {
            "forward": lambda: conv(x, w, None, stride, padding, dilation, groups),
            "grad_input": torch_backward([True, False, False]),
            "grad_weight": torch_backward([False, True, False]),
        },
        "corrmm": {
            "forward": lambda: getattr(corrmm, f"corr{ndim}d")(x, w, padding, stride, dilation, groups),
            "grad_input": lambda: getattr(corrmm, f"corr{ndim}d_grad_input")(
                w, dy, xs[2:], padding, stride, dilation, groups),
            "grad_weight": lambda: getattr(corrmm, f"corr{ndim}d_grad_weight")(
                x, dy, ws[2:], padding, stride, dilation, groups),
        },
    }


def time_layer(key, dtype, device):
    out = {}
    for side, passes in pass_calls(key, dtype, device).items():
        for p, fn in passes.items():
            try:
                out[(side, p)] = measure(fn, device, TIMING)
            except Exception as err:  # noqa: BLE001 - a probe reports and goes on
                out[(side, p)] = float("nan")
                print(f"  {side} {p} failed: {str(err).splitlines()[0][:120]}", file=sys.stderr)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    report = {}
    for name in args.models:
        layers = conv_layers(name, device)
        print(f"\n== {name}: {sum(layers.values())} convolutions, {len(layers)} distinct; {args.dtype}, ms per call")
        print(f"{'count':>5} {'x shape':>22} {'w shape':>18} {'s':>6} {'p':>6} {'g':>4} | "
              + " | ".join(f"{p[:7]:>7} torch/corrmm  algo" for p in PASSES))
        totals = collections.Counter()
        rows = []
        for key, count in sorted(layers.items(), key=lambda kv: -kv[1]):
            ndim, xs, ws, stride, padding, dilation, groups = key
            times = time_layer(key, dtype, device)
            geometry = make_geometry(xs, ws, padding, stride, dilation, groups)
            algos = {p: auto_choice(p, geometry, device, dtype) for p in PASSES}
            for p in PASSES:
                totals[("torch", p)] += count * times[("torch", p)]
                totals[("corrmm", p)] += count * times[("corrmm", p)]
            cells = " | ".join(f"{times[('torch', p)]:7.3f} {times[('corrmm', p)]:7.3f} {algos[p][:9]:>9}" for p in PASSES)
            print(f"{count:5d} {str(xs):>22} {str(ws):>18} {str(stride):>6} {str(padding):>6} {groups:4d} | {cells}",
                  flush=True)
            rows.append({"count": count, "x": xs, "w": ws, "stride": stride, "padding": padding,
                         "dilation": dilation, "groups": groups, "algos": algos,
                         "ms": {f"{s}/{p}": t for (s, p), t in times.items()}})
        for p in PASSES:
            t, c = totals[("torch", p)], totals[("corrmm", p)]
            print(f"   total {p:11s}: torch {t:7.2f} ms  corrmm {c:7.2f} ms  speed {t / c:5.2f}x")
        t = sum(v for (s, _), v in totals.items() if s == "torch")
        c = sum(v for (s, _), v in totals.items() if s == "corrmm")
        print(f"   total all passes : torch {t:7.2f} ms  corrmm {c:7.2f} ms  speed {t / c:5.2f}x")
        report[name] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
