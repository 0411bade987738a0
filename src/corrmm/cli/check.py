"""Compute a convolution and its gradients with every algorithm and check them against torch.

Runs on the GPU when there is one, else on the CPU; prints one line per
algorithm and pass with the relative error against torch's float64 result.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import corrmm

from . import usage


def add_arguments(parser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float16", "bfloat16", "float32", "float64"],
                        help="dtype of the computation (default float32); the reference is always float64")


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def run(args) -> int:
    device, dtype = usage.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    # a strided, padded, dilated, grouped 2-D layer with odd sizes
    x = torch.randn(4, 6, 23, 19, device=device, dtype=dtype)
    w = torch.randn(8, 3, 3, 5, device=device, dtype=dtype)
    kw = dict(border_mode=((1, 2), (2, 0)), subsample=(2, 1), filter_dilation=(1, 2), num_groups=2)
    x64, w64 = x.double().cpu().requires_grad_(), w.double().cpu().requires_grad_()
    ref = F.conv2d(F.pad(x64, (2, 0, 1, 2)), w64, stride=(2, 1), dilation=(1, 2), groups=2)
    dy = torch.randn(ref.shape, device=device, dtype=dtype)
    ref.backward(dy.double().cpu())
    print(f"corrmm {corrmm.__version__} on {device} ({dtype}); input {tuple(x.shape)}, weight {tuple(w.shape)}, {kw}")
    worst = 0.0
    tolerance = {torch.float64: 1e-10, torch.float32: 1e-2, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    for algo in ["auto", *corrmm.algorithms()]:
        start = time.perf_counter()
        try:
            y = corrmm.corr2d(x, w, algo=algo, **kw)
            dx = corrmm.corr2d_grad_input(w, dy, x.shape[2:], algo=algo, **kw)
            dw = corrmm.corr2d_grad_weight(x, dy, w.shape[2:], algo=algo, **kw)
        except ValueError as err:
            print(f"  {algo:10s} skipped: {err}")
            continue
        errors = [_rel_err(y, ref.detach()), _rel_err(dx, x64.grad), _rel_err(dw, w64.grad)]
        worst = max(worst, *errors)
        ms = (time.perf_counter() - start) * 1e3
        print(f"  {algo:10s} relative error  forward {errors[0]:.1e}  grad_input {errors[1]:.1e}  "
              f"grad_weight {errors[2]:.1e}   ({ms:.1f} ms)")
    ok = worst < tolerance
    print(f"{'OK' if ok else 'FAILED'}: worst relative error {worst:.1e} (tolerance {tolerance:.0e})")
    return 0 if ok else 1
