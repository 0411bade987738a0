"""Weight gradients of grouped and depthwise layers on the GPU: corrmm's kernels and their variants
against cuDNN, layer by layer.

    python scripts/grouped_dw_grad_weight_probe.py [--dtypes bf16,tf32] [--layers GX2,DW1] [--variants]

Inputs are NCHW-contiguous, as ``corrmm bench`` makes them, so layout copies count.
Grouped layers time ``grouped_grad_weight`` (default pack, and with ``--variants``
every other power-of-two pack) and the dense implicit kernel; depthwise layers the
"taps" kernel reading NCHW, the same on channels-last copies, and the "chunks"
kernel. Each line: median ms (triton.testing.do_bench), ratio cuDNN / ours, relative
error against torch's result, and whether two runs agree bit for bit.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from corrmm.geometry import ConvGeometry  # noqa: E402

# name: (batch, channels, filters, size, kernel, stride, pad, groups)
LAYERS = {
    "GX2": (64, 256, 256, (28, 28), 3, 1, 1, 32),       # ResNeXt-50 32x8d-like: 32 groups of 8
    "GXS": (64, 256, 256, (56, 56), 3, 2, 1, 32),       # its stride-2 block
    "RX4": (64, 128, 128, (56, 56), 3, 1, 1, 32),       # ResNeXt-50 32x4d stage 1: groups of 4
    "RX16": (64, 512, 512, (14, 14), 3, 1, 1, 32),      # stage 3: groups of 16
    "RX32": (64, 1024, 1024, (7, 7), 3, 1, 1, 32),      # stage 4: groups of 32
    "G1x1": (64, 256, 256, (28, 28), 1, 1, 0, 32),      # grouped 1x1
    "G1D": (64, 256, 256, (2000,), 3, 1, 1, 32),        # 1-D, groups of 8
    "G3D": (8, 64, 64, (8, 28, 28), 3, 1, 1, 8),        # 3-D, groups of 8
    "DW1": (64, 144, 144, (56, 56), 3, 1, 1, 144),
    "DW2": (64, 144, 144, (56, 56), 3, 2, 1, 144),
    "CX1": (64, 96, 96, (56, 56), 7, 1, 3, 96),
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32}


def geometry(batch, channels, filters, size, kernel, stride, pad, groups) -> ConvGeometry:
    nd = len(size)
    return ConvGeometry(batch, channels, filters, size, (kernel,) * nd, ((pad, pad),) * nd, (stride,) * nd,
                        (1,) * nd, groups).validate()


def bench(fn) -> float:
    from triton.testing import do_bench
    return do_bench(fn, warmup=10, rep=40, return_mode="median")


def torch_grad_weight(x, dy, g):
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}[g.ndim]
    w = torch.zeros(g.weight_shape, dtype=x.dtype, device=x.device)

    def run():
        return torch.ops.aten.convolution_backward(
            dy, x, w, None, g.stride, tuple(p[0] for p in g.padding), g.dilation, False, (0,) * g.ndim,
            g.groups, (False, True, False))[1]
    del conv
    return run


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtypes", default="bf16")
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--variants", action="store_true", help="every other pack / the channels-last taps input")
    parser.add_argument("--profile", action="store_true", help="kernel times of the default variant")
    parser.add_argument("--dense", action="store_true", help="also the dense implicit kernel on grouped layers")
    args = parser.parse_args()
    from corrmm.kernels import depthwise as kd, grouped_grad_weight as ggw, implicit_grad_weight as kgw
    from corrmm.algorithms.implicit import as_2d

    src = torch.empty(2**28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = bench(lambda: dst.copy_(src))
    copy_bw = 2 * src.numel() * 4 / copy_ms / 1e6  # GB/s
    print(f"copy bandwidth {copy_bw:.0f} GB/s; {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    del src, dst
    for dname in args.dtypes.split(","):
        dtype = DTYPES[dname]
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = dname == "tf32"
        for name in args.layers.split(","):
            g = geometry(*LAYERS[name])
            gen = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(g.input_shape, generator=gen, device="cuda").to(dtype)
            dy = torch.randn(g.output_shape, generator=gen, device="cuda").to(dtype)
            ref_fn = torch_grad_weight(x, dy, g)
            ref = ref_fn().float()
            t_torch = bench(ref_fn)
            traffic = (x.numel() + dy.numel()) * x.element_size()
            variants = {}
            lift = (lambda t: t.unsqueeze(2)) if g.ndim == 1 else (lambda t: t)
            g2 = as_2d(g)
            if g.groups == g.in_channels:
                variants["taps-nchw"] = lambda: kd.grad_weight(x, dy, g2, method="taps", nchw=True)
                variants["taps-nhwc"] = lambda: kd.grad_weight(x, dy, g2, method="taps", nchw=False)
                if args.variants:
                    xc = x.contiguous(memory_format=torch.channels_last)
                    dyc = dy.contiguous(memory_format=torch.channels_last)
                    variants["taps-cl-in"] = lambda: kd.grad_weight(xc, dyc, g2, method="taps", nchw=False)
                variants["chunks"] = lambda: kd.grad_weight(x, dy, g2, method="chunks")
            else:
                default = ggw.pack_for(g2)
                variants[f"packed{default}"] = lambda: ggw.grad_weight(lift(x), lift(dy), g2)
                if args.variants:
                    for pack in (1, 2, 4, 8, 16):
                        if pack != default and g.groups % pack == 0 and pack * g.channels_per_group <= 128:
                            variants[f"packed{pack}"] = (lambda p: lambda: ggw.grad_weight(lift(x), lift(dy), g2,
                                                                                            pack=p))(pack)
                    for splits in (8, 16, 32, 64):
                        variants[f"packed{default}-splits{splits}"] = (
                            lambda k: lambda: ggw.grad_weight(lift(x), lift(dy), g2, splits=k))(splits)
                if args.dense:
                    variants["dense"] = lambda: kgw.grad_weight(lift(x), lift(dy), g2)
            line = [f"{dname} {name:5s} torch {t_torch:.4f} ms"]
            for vname, fn in variants.items():
                try:
                    ms = bench(fn)
                    bw = traffic / ms / 1e6
                    out = fn().reshape(g.weight_shape).float()
                    err = ((out - ref).norm() / ref.norm()).item()
                    same = torch.equal(fn(), fn())
                    tile = ""
                    if vname.startswith("packed"):
                        tile = f", tile {ggw.grouped_grad_weight_kernel.best_config}"
                    line.append(f"{vname} {ms:.4f} ms ({t_torch / ms:.2f}x, {bw / copy_bw:.0%} copy bw, "
                                f"err {err:.1e}{'' if same else ', NOT DETERMINISTIC'}{tile})")
                except Exception as exc:  # report and go on
                    line.append(f"{vname} ERROR {type(exc).__name__}: {str(exc)[:200]}")
            print("\n    ".join(line), flush=True)
            if args.profile:
                first = next(iter(variants.values()))
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    for _ in range(5):
                        first()
                    torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="device_time_total", row_limit=6), flush=True)
            del x, dy, ref
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
