"""The three corrmm ops under torch.compile: one graph, no recompiles, and torch.library.opcheck."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from torch._dynamo.utils import counters

import corrmm

from .reference import seeded_generator

KW = dict(border_mode=((1, 0), (2, 1)), subsample=(2, 1), filter_dilation=(1, 2), num_groups=2)


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def _every_public_op(x, w, dy):
    y = corrmm.corr2d(x, w, **KW)
    z = corrmm.conv2d(x, w, **KW)  # the flipped kernel is traced too
    dx = corrmm.corr2d_grad_input(w, dy, x.shape[2:], **KW)
    dw = corrmm.corr2d_grad_weight(x, dy, w.shape[2:], **KW)
    return y, z, dx, dw


def _inputs(*key, dtype=torch.float32):
    g = seeded_generator(*key)
    x = torch.randn(3, 4, 11, 9, generator=g, dtype=dtype)
    w = torch.randn(6, 2, 3, 2, generator=g, dtype=dtype)
    dy = torch.randn(corrmm.corr2d(x, w, **KW).shape, generator=g, dtype=dtype)
    return x, w, dy


def test_public_functions_compile_to_one_graph_without_recompiles():
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(_every_public_op, backend=counter, fullgraph=True)
    for step in range(3):  # new values, same shapes
        x, w, dy = _inputs("ops", step)
        got, expected = compiled(x, w, dy), _every_public_op(x, w, dy)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b)
    assert counter.frame_count == 1, "recompiled on a call with the same shapes"
    assert not counters["graph_break"], dict(counters["graph_break"])
    ops = {n.target for n in counter.graphs[0].graph.nodes if n.op == "call_function"}
    assert {torch.ops.corrmm.corr, torch.ops.corrmm.corr_grad_input, torch.ops.corrmm.corr_grad_weight} <= ops


def test_compiled_ops_differentiate_like_eager():
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")

    def loss(x, w):
        return (corrmm.corr2d(x, w, **KW) ** 2).sum()

    compiled = torch.compile(loss, backend=counter, fullgraph=True)
    for step in range(2):
        x, w, _ = _inputs("grad", step, dtype=torch.float64)
        x.requires_grad_(), w.requires_grad_()
        got = torch.autograd.grad(compiled(x, w), (x, w))
        expected = torch.autograd.grad(loss(x, w), (x, w))
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b)
    assert counter.frame_count == 1


def _opcheck_cases():
    # (name, dtype, spatial input, kernel, pad_low, pad_high, stride, dilation, groups, channels_last)
    yield "2d", torch.float64, (9, 7), (3, 2), [1, 0], [2, 1], [2, 1], [1, 2], 2, False
    yield "2d-cl", torch.float32, (8, 8), (3, 3), [1, 1], [1, 1], [1, 1], [1, 1], 1, True
    yield "1d", torch.float64, (13,), (4,), [0], [3], [3], [1], 1, False
    yield "3d", torch.float64, (5, 4, 6), (2, 3, 2), [1, 0, 0], [0, 1, 1], [1, 2, 1], [2, 1, 1], 2, False


@pytest.mark.parametrize("case", list(_opcheck_cases()), ids=lambda c: c[0])
def test_opcheck(case):
    _, dtype, size, kernel, low, high, stride, dilation, groups, channels_last = case
    g = seeded_generator("opcheck", case[0])
    x = torch.randn(2, 4, *size, generator=g, dtype=dtype)
    w = torch.randn(6, 4 // groups, *kernel, generator=g, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    args = [low, high, stride, dilation, groups, "auto"]
    y = torch.ops.corrmm.corr(x, w, *args)
    dy = torch.randn(y.shape, generator=g, dtype=dtype)
    x, w, dy = (t.requires_grad_() for t in (x, w, dy))
    torch.library.opcheck(torch.ops.corrmm.corr.default, (x, w, *args))
    torch.library.opcheck(torch.ops.corrmm.corr_grad_input.default, (w, dy, list(size), *args))
    torch.library.opcheck(torch.ops.corrmm.corr_grad_weight.default, (x, dy, list(kernel), *args))
