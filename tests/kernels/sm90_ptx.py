"""Compile corrmm's weight-gradient kernels for an H100 (sm_90) without a GPU and report their global reads.

Run in a process without ``TRITON_INTERPRET`` (the interpreter never builds
kernels, so it cannot catch what only Triton's code generator rejects, such as
a variable of different types in the two branches of an ``if``). Prints one JSON
object: case name -> {instruction: count} for the global loads and asynchronous
copies of the PTX. Pointer arguments and strides are marked 16-divisible and
the unit strides specialised to 1, as Triton does at launch for NHWC tensors
whose channel counts are multiples of 16.
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from corrmm.kernels import depthwise, grouped_grad_weight

LOADS = re.compile(r"\b(ld\.global(?:\.\w+)*|cp\.async\.\w+\.shared\.global)")


def _compile(jit, pointer_types, constexprs, divisible, ones, num_warps=4, num_stages=3) -> dict:
    signature, constants = {}, dict(constexprs)
    for name in jit.arg_names:
        if name in constexprs or name in ones:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointer_types[name]
        else:
            signature[name] = "i32"
    constants.update({name: 1 for name in ones})
    attrs = {(jit.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    source = ASTSource(fn=jit, signature=signature, constexprs=constants, attrs=attrs)
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    ptx = kernel.asm["ptx"]
    return dict(Counter(LOADS.findall(ptx)))


def grouped_cases():
    jit = grouped_grad_weight.grouped_grad_weight_kernel.fn
    divisible = ["x_ptr", "dy_ptr", "dw_ptr", "stride_xn", "stride_xd", "stride_xh", "stride_xw", "stride_dyn",
                 "stride_dyo", "stride_dyp", "stride_dyq", "stride_dwsplit", "stride_dwk", "stride_dwt",
                 "stride_dwr", "stride_dws"]
    ones = ["stride_xc", "stride_dyk", "stride_dwc"]
    for name, dtype, cb, kb, block_n, depth, precision in (
            ("grouped_bf16_one_tap", "bf16", 32, 32, 32, False, "ieee"),
            ("grouped_bf16_flat_3d", "bf16", 32, 32, 128, True, "ieee"),
            ("grouped_tf32", "fp32", 32, 32, 64, False, "tf32"),
            ("grouped_fp64", "fp64", 32, 32, 32, False, "ieee")):
        meta = dict(CB=cb, KB=kb, DEPTH=depth, WIDE_INDEX=False, INPUT_PRECISION=precision, UPCAST=False,
                    ACC_DTYPE=tl.float64 if dtype == "fp64" else tl.float32, BLOCK_M=max(16, kb),
                    BLOCK_N=block_n, BLOCK_K=32)
        pointers = {"x_ptr": f"*{dtype}", "dy_ptr": f"*{dtype}", "dw_ptr": "*fp64" if dtype == "fp64" else "*fp32"}
        yield name, _compile(jit, pointers, meta, divisible, ones)


def depthwise_cases():
    jit = depthwise.depthwise_grad_weight_taps_kernel
    for name, taps, pixels, channels in (("depthwise_taps_3x3", 16, 8, 32), ("depthwise_taps_7x7", 64, 2, 32)):
        meta = dict(WIDE_INDEX=False, ACC_DTYPE=tl.float32, TAPS=taps, BLOCK_PIX=pixels, BLOCK_C=channels)
        pointers = {"x_ptr": "*bf16", "dy_ptr": "*bf16", "partial_ptr": "*fp32"}
        divisible = ["x_ptr", "dy_ptr", "partial_ptr", "stride_xn", "stride_xh", "stride_xw", "stride_dyn",
                     "stride_dyp", "stride_dyq", "K"]
        yield name, _compile(jit, pointers, meta, divisible, ["stride_xc", "stride_dyk", "M"])


if __name__ == "__main__":
    report = dict(grouped_cases())
    report.update(depthwise_cases())
    json.dump(report, sys.stdout)
