"""The torch.compile backend and its graph passes.

The passes are pure functions over FX graphs and are tested on graphs made by
``make_fx`` or by hand. The backend is tested end to end: a small CNN trained
under ``backend="corrmm"`` (inductor) follows eager torch step for step, in one
graph, without recompiling, and the graphs it hands to inductor hold corrmm ops
and no aten convolution.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from torch import nn
from torch._dynamo.utils import counters
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.shape_prop import ShapeProp

import corrmm
from corrmm import selection
from corrmm.compile import cancel_inverse_chains, capture_graphs, rewrite_convolutions
from corrmm.ops import build_geometry

from .reference import seeded_generator

aten = torch.ops.aten
CORRMM_OPS = {torch.ops.corrmm.corr.default, torch.ops.corrmm.corr_grad_input.default,
              torch.ops.corrmm.corr_grad_weight.default}
ATEN_CONVS = {aten.convolution.default, aten.convolution_backward.default}


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def _targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


# ---- rewrite_convolutions on make_fx graphs ------------------------------------------------

# (input shape, weight shape, stride, padding, dilation, groups)
CONV_CASES = [
    ((2, 4, 11, 9), (6, 2, 3, 2), [2, 1], [1, 0], [1, 2], 2),
    ((3, 2, 6, 6), (4, 2, 5, 5), [1, 1], [2, 2], [1, 1], 1),     # kernel large next to the output: swapped
    ((2, 3, 13), (5, 3, 4), [3], [2], [1], 1),
    ((1, 4, 5, 6, 4), (4, 1, 2, 3, 2), [1, 2, 1], [1, 0, 1], [2, 1, 1], 4),
]


def _conv_and_backward(x, w, b, dy, stride, padding, dilation, groups):
    """The two aten nodes the backend sees, with every output of the backward asked for."""
    zeros = [0] * len(stride)
    y = aten.convolution.default(x, w, b, stride, padding, dilation, False, zeros, groups)
    gx, gw, gb = aten.convolution_backward.default(dy, x, w, [w.shape[0]], stride, padding, dilation, False,
                                                   zeros, groups, [True, True, True])
    return y, gx, gw, gb


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{len(c[0]) - 2}d")
def test_rewrite_convolutions_on_aten_graph(case):
    xs, ws, stride, padding, dilation, groups = case
    g = seeded_generator("rewrite", case)
    x, w = torch.randn(xs, generator=g, dtype=torch.float64), torch.randn(ws, generator=g, dtype=torch.float64)
    b = torch.randn(ws[0], generator=g, dtype=torch.float64)
    args = (stride, padding, dilation, groups)
    y = aten.convolution.default(x, w, b, stride, padding, dilation, False, [0] * len(stride), groups)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)

    def f(x, w, b, dy):
        return _conv_and_backward(x, w, b, dy, *args)

    gm = make_fx(f, tracing_mode="fake")(x, w, b, dy)
    assert set(_targets(gm)) & ATEN_CONVS == ATEN_CONVS
    assert rewrite_convolutions(gm) == 2
    targets = _targets(gm)
    assert not set(targets) & ATEN_CONVS
    assert CORRMM_OPS <= set(targets)

    # each op carries the algorithm the auto rule picks for its pass, fixed at rewrite time
    geometry = build_geometry(xs, ws, padding, padding, stride, dilation, groups)
    passes = {torch.ops.corrmm.corr.default: "forward", torch.ops.corrmm.corr_grad_input.default: "grad_input",
              torch.ops.corrmm.corr_grad_weight.default: "grad_weight"}
    for node in gm.graph.nodes:
        if node.target in passes:
            expected = selection.auto_choice(passes[node.target], geometry, x.device, x.dtype)
            assert node.args[-1] == expected
            assert node.meta["val"].shape == {"forward": geometry.output_shape, "grad_input": geometry.input_shape,
                                              "grad_weight": geometry.weight_shape}[passes[node.target]]

    for got, expected in zip(gm(x, w, b, dy), f(x, w, b, dy)):
        torch.testing.assert_close(got, expected)


def test_rewrite_honours_output_mask_and_leaves_transposed_alone():
    x, w, dy = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(2, 4, 6, 6)
    wt = torch.randn(4, 3, 3, 3)  # transposed: (in, out, *kernel)

    def f(x, w, dy, wt):
        gw = aten.convolution_backward.default(dy, x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                               [False, True, False])[1]
        up = aten.convolution.default(dy, wt, None, [1, 1], [0, 0], [1, 1], True, [0, 0], 1)  # transposed
        return gw, up

    gm = make_fx(f, tracing_mode="fake")(x, w, dy, wt)
    assert rewrite_convolutions(gm) == 1
    targets = _targets(gm)
    assert targets.count(torch.ops.corrmm.corr_grad_weight.default) == 1
    assert torch.ops.corrmm.corr_grad_input.default not in targets and aten.sum.dim_IntList not in targets
    assert aten.convolution.default in targets  # the transposed one
    for got, expected in zip(gm(x, w, dy, wt), f(x, w, dy, wt)):
        torch.testing.assert_close(got, expected)


def test_rewrite_needs_shapes():
    """Without shape metadata there is nothing to choose an algorithm from: the node stays."""
    gm = torch.fx.symbolic_trace(lambda x, w: torch.ops.aten.convolution.default(
        x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1))
    assert rewrite_convolutions(gm) == 0


# ---- cancel_inverse_chains on a handmade graph --------------------------------------------------

def _handmade_graph():
    g = torch.fx.Graph()
    x = g.placeholder("x")  # 4-d
    m = g.placeholder("m")  # 2-d
    call = g.call_function
    outputs = []
    # flip(flip(x, dims), same dims in another order and sign) -> x
    outputs.append(call(aten.flip.default, (call(aten.flip.default, (x, [2, 3])), [-1, 2])))
    # permute then its inverse -> x
    outputs.append(call(aten.permute.default, (call(aten.permute.default, (x, [0, 2, 3, 1])), [0, 3, 1, 2])))
    # t(t(m)) -> m
    outputs.append(call(aten.t.default, (call(aten.t.default, (m,)),)))
    # transpose then the permute that undoes it -> x
    outputs.append(call(aten.permute.default, (call(aten.transpose.int, (x, 1, 3)), [0, 3, 2, 1])))
    # flip, permute, flip of the moved axis, inverse permute: a signed permutation that cancels -> x
    a = call(aten.flip.default, (x, [1]))
    a = call(aten.permute.default, (a, [0, 2, 1, 3]))
    a = call(aten.flip.default, (a, [2]))
    outputs.append(call(aten.permute.default, (a, [0, 2, 1, 3])))
    # does not cancel: flips of different axes
    outputs.append(call(aten.flip.default, (call(aten.flip.default, (x, [2])), [3])))
    # cancels, but the inner permute has a second user, so it must stay
    inner = call(aten.permute.default, (x, [1, 0, 2, 3]))
    outputs.append(call(aten.permute.default, (inner, [1, 0, 2, 3])))
    outputs.append(inner)
    # a cancelling chain whose end is a graph output directly: left alone (no new input aliases)
    direct = call(aten.t.default, (call(aten.t.default, (m,)),))
    # consume every result through an op, so only `direct` and `inner` feed the output node
    consumed = [call(aten.mul.Tensor, (o, 2.0)) for o in outputs if o is not inner]
    g.output((*consumed, inner, direct))
    return torch.fx.GraphModule(torch.nn.Module(), g)


def test_cancel_inverse_chains_on_handmade_graph():
    gm = _handmade_graph()
    x, m = torch.randn(2, 3, 4, 5), torch.randn(3, 6)
    ShapeProp(gm).propagate(x, m)
    expected = gm(x, m)
    before = _targets(gm)

    assert cancel_inverse_chains(gm) == 6
    after = _targets(gm)
    for got, want in zip(gm(x, m), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # what is left: the two non-cancelling flips, the shared permute, the direct t(t(m))
    assert after.count(aten.flip.default) == 2
    assert after.count(aten.permute.default) == 1
    assert after.count(aten.t.default) == 2
    assert after.count(aten.transpose.int) == 0
    assert before.count(aten.mul.Tensor) == after.count(aten.mul.Tensor) == 7
    # the multiplies that read a cancelled chain now read the input itself
    sources = {n.args[0].name for n in gm.graph.nodes if n.target is aten.mul.Tensor}
    assert {"x", "m"} <= sources


def test_cancel_inverse_chains_without_shapes_still_cancels_t_t():
    gm = torch.fx.symbolic_trace(lambda m: torch.ops.aten.t.default(torch.ops.aten.t.default(m)) * 2)
    gm.graph.eliminate_dead_code()
    assert cancel_inverse_chains(gm) == 1
    m = torch.randn(3, 4)
    torch.testing.assert_close(gm(m), m * 2)


# ---- the backend, end to end ------------------------------------------------------------------------

class SmallCNN(nn.Module):
    """conv-bn-relu, a strided conv, a 1x1, a grouped dilated padded conv, a linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def _train(model, step_fn, batches, lr=0.1):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for x, y in batches:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(step_fn(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _batches(n, shape=(4, 3, 12, 12)):
    g = seeded_generator("batches", shape)
    return [(torch.randn(shape, generator=g), torch.randint(0, 5, (shape[0],), generator=g)) for _ in range(n)]


def _assert_rewritten(graphs, stages):
    assert {g.stage for g in graphs} == stages, [g.stage for g in graphs]
    for g in graphs:
        targets = set(g.targets())
        assert not targets & ATEN_CONVS, f"{g.stage} graph still has an aten convolution"
        assert targets & CORRMM_OPS, f"{g.stage} graph has no corrmm op"
        assert g.convolutions > 0


@pytest.mark.parametrize("backend", ["corrmm", "corrmm_eager"])
def test_small_cnn_trains_like_eager(backend):
    torch.manual_seed(0)
    reference = SmallCNN()
    model = copy.deepcopy(reference)
    counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    batches = _batches(3)

    with capture_graphs() as graphs:
        losses = _train(model, compiled, batches)
    expected = _train(reference, reference, batches)

    torch.testing.assert_close(losses, expected, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    for (name, b), c in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")

    assert counter.frame_count == 1, "the second and third steps recompiled"
    assert not counters["graph_break"], dict(counters["graph_break"])
    _assert_rewritten(graphs, {"forward", "backward"})
    fw = next(g for g in graphs if g.stage == "forward")
    bw = next(g for g in graphs if g.stage == "backward")
    assert fw.targets().count(torch.ops.corrmm.corr.default) == 4
    # the first layer's input needs no gradient: three grad_input ops, four grad_weight ops
    assert bw.targets().count(torch.ops.corrmm.corr_grad_input.default) == 3
    assert bw.targets().count(torch.ops.corrmm.corr_grad_weight.default) == 4

    # inference (no grad, eval mode) gets its own graph, rewritten the same way
    model.eval(), reference.eval()
    with capture_graphs() as graphs, torch.no_grad():
        x = batches[0][0]
        torch.testing.assert_close(compiled(x), reference(x), rtol=1e-4, atol=1e-5)
    _assert_rewritten(graphs, {"inference"})


def test_modes_and_options_reach_inductor(monkeypatch):
    """backend="corrmm" takes torch.compile's mode and options as inductor does; bad ones are refused."""
    from corrmm.compile.backend import inductor_patches

    assert inductor_patches() == {}
    assert inductor_patches("reduce-overhead")["triton.cudagraphs"] is True
    assert inductor_patches("default", {"max_autotune": True}) == {"max_autotune": True}
    with pytest.raises(ValueError, match="unknown mode 'fastest'"):
        inductor_patches("fastest")
    with pytest.raises(TypeError, match="options must be a dict"):
        inductor_patches(None, ["max_autotune"])

    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2))
    model = copy.deepcopy(reference)
    x = torch.randn(2, 3, 9, 9)
    seen = []
    rewrite = corrmm.compile.backend._rewrite

    def spy(graph_module, stage):  # the inductor settings in force where each graph is compiled
        seen.append((stage, torch._inductor.config.triton.cudagraphs))
        rewrite(graph_module, stage)

    monkeypatch.setattr(corrmm.compile.backend, "_rewrite", spy)
    with capture_graphs() as graphs:
        torch.compile(model, backend="corrmm", mode="reduce-overhead", fullgraph=True)(x).square().sum().backward()
    reference(x).square().sum().backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
    assert seen == [("forward", True), ("backward", True)], seen
    _assert_rewritten(graphs, {"forward", "backward"})


@pytest.mark.parametrize("nd", [1, 3])
def test_eager_backend_1d_and_3d(nd):
    conv, pool = {1: (nn.Conv1d, (5, 3, 16)), 3: (nn.Conv3d, (2, 3, 6, 5, 6))}[nd]
    torch.manual_seed(0)
    reference = nn.Sequential(conv(3, 6, 3, padding=1), nn.ReLU(), conv(6, 4, 2, stride=2, groups=2))
    model = copy.deepcopy(reference)
    compiled = torch.compile(model, backend="corrmm_eager", fullgraph=True)
    x = torch.randn(pool)
    with capture_graphs() as graphs:
        compiled(x).square().sum().backward()
    reference(x).square().sum().backward()
    _assert_rewritten(graphs, {"forward", "backward"})
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)


def test_dynamic_batch_keeps_the_rewrite():
    """A symbolic batch size keeps corrmm ops (choosing at run time); the spatial sizes stay static."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3))
    compiled = torch.compile(model, backend="corrmm_eager")
    with capture_graphs() as graphs:
        for batch in (2, 5):
            x = torch.randn(batch, 3, 8, 8)
            torch._dynamo.mark_dynamic(x, 0)
            torch.testing.assert_close(compiled(x), model(x))
    fw = [g for g in graphs if g.stage in ("forward", "inference")]
    assert fw and all(torch.ops.corrmm.corr.default in g.targets() for g in fw)
    algos = {n.args[-1] for g in fw for n in g.graph_module.graph.nodes if n.target == torch.ops.corrmm.corr.default}
    assert algos == {"auto"}


def test_backends_are_registered_without_importing_dynamo():
    code = ("import sys, corrmm; dynamo_at_import = 'torch._dynamo' in sys.modules\n"
            "from torch._dynamo.backends.registry import lookup_backend\n"
            "assert lookup_backend('corrmm') is corrmm.compile.corrmm_backend\n"
            "assert lookup_backend('corrmm_eager') is corrmm.compile.corrmm_eager_backend\n"
            "print(dynamo_at_import)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    from importlib.metadata import entry_points
    if "corrmm" in entry_points(group="torch_dynamo_backends").names:  # installed: found lazily
        assert out.stdout.strip() == "False"


def test_resnet18_shape_under_eager_backend():
    """Residual adds, max pooling, 7x7/3x3/1x1 and strided convolutions: every one rewritten, gradients alike."""
    from .integrations.resnet import resnet18

    torch.manual_seed(0)
    reference = resnet18(num_classes=10, width=8).double()
    model = copy.deepcopy(reference)
    compiled = torch.compile(model, backend="corrmm_eager", fullgraph=True)
    x, target = torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([3, 8])
    with capture_graphs() as graphs:
        loss = nn.functional.cross_entropy(compiled(x), target)
        loss.backward()
    expected = nn.functional.cross_entropy(reference(x), target)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m: f"{name}: {m}")
    _assert_rewritten(graphs, {"forward", "backward"})
    fw = next(g for g in graphs if g.stage == "forward")
    bw = next(g for g in graphs if g.stage == "backward")
    assert fw.targets().count(torch.ops.corrmm.corr.default) == 20
    assert bw.targets().count(torch.ops.corrmm.corr_grad_weight.default) == 20
    assert bw.targets().count(torch.ops.corrmm.corr_grad_input.default) == 19  # not for the image itself
