"""The ``torch.compile`` backends ``"corrmm"`` and ``"corrmm_eager"``.

``torch.compile(model, backend="corrmm")`` is inductor with one extra step. The
pipeline, for each graph Dynamo captures:

1. AOT autograd traces the joint forward/backward graph in aten ops, with
   inductor's decomposition table minus the convolution entries (so
   ``aten.convolution`` and ``aten.convolution_backward`` reach us whole), and
   partitions it into a forward and a backward graph (or one inference graph).
2. Each of those graphs goes through :func:`corrmm.compile.rewrite_graph`
   (convolutions -> corrmm ops with the algorithm chosen from static shapes,
   then cancelling permute/flip chains).
3. The rewritten graph goes to inductor's ``compile_fx_inner``, which fuses and
   generates code for everything else and calls the corrmm ops as extern kernels.

Steps 1 and 3 are inductor's own ``compile_fx``; step 2 is passed to it as its
``inner_compile`` hook, which runs on exactly the post-partition aten graphs.
That hook has been part of ``compile_fx``'s signature for many releases (it is
how inductor's own tests instrument it), so the backend works on torch 2.11 and
2.13 without copying inductor's forward/backward bookkeeping.

``backend="corrmm_eager"`` runs the same AOT tracing and rewrite, then executes
the rewritten graphs as plain Python (no code generation): for debugging, and
for machines where inductor has no C++/Triton toolchain.

AOT autograd's on-disk cache is turned off while the corrmm backend compiles:
its key is the Dynamo graph and inductor's configuration, not the
``inner_compile`` hook, so it could hand back an entry compiled by the plain
inductor backend, without the rewrite. Inductor's own FX-graph cache stays on;
its key is the rewritten graph.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List

import torch
import torch.fx

from .rewrite import rewrite_graph

aten = torch.ops.aten

#: totals since import, for tests and the curious: graphs rewritten, nodes replaced, chains cancelled
counters: Dict[str, int] = {"graphs": 0, "convolutions": 0, "cancelled_chains": 0}


@dataclass
class CapturedGraph:
    """One graph as the backend handed it on: ``stage`` is "forward", "backward" or "inference"."""

    stage: str
    graph_module: torch.fx.GraphModule
    convolutions: int
    cancelled_chains: int

    def targets(self) -> List[object]:
        return [n.target for n in self.graph_module.graph.nodes if n.op == "call_function"]


_captures: List[List[CapturedGraph]] = []


@contextlib.contextmanager
def capture_graphs():
    """Collect a copy of every graph the corrmm backends produce inside this block.

        with corrmm.compile.capture_graphs() as graphs:
            torch.compile(model, backend="corrmm")(x).sum().backward()
        assert any(torch.ops.corrmm.corr.default in g.targets() for g in graphs)

    Copies are taken right after the rewrite, before inductor's own passes
    change the graph further.
    """
    graphs: List[CapturedGraph] = []
    _captures.append(graphs)
    try:
        yield graphs
    finally:
        _captures.remove(graphs)


def _rewrite(gm: torch.fx.GraphModule, stage: str) -> None:
    convolutions, cancelled = rewrite_graph(gm)
    counters["graphs"] += 1
    counters["convolutions"] += convolutions
    counters["cancelled_chains"] += cancelled
    if _captures:
        copy = torch.fx.Graph()
        output = copy.graph_copy(gm.graph, {})
        copy.output(output)
        captured = CapturedGraph(stage, torch.fx.GraphModule(gm, copy), convolutions, cancelled)
        for graphs in _captures:
            graphs.append(captured)


def decompositions() -> dict:
    """Inductor's decomposition table without the convolution entries, so the rewrite sees them whole."""
    from torch._inductor.decomposition import select_decomp_table

    keep = (aten.convolution, aten.convolution_backward)
    return {op: fn for op, fn in select_decomp_table().items() if getattr(op, "overloadpacket", None) not in keep}


def _stage(kwargs) -> str:
    if kwargs.get("is_backward"):
        return "backward"
    return "inference" if kwargs.get("is_inference") else "forward"


def _no_autograd_cache():
    config = torch._functorch.config
    if hasattr(config, "enable_autograd_cache"):
        return config.patch(enable_autograd_cache=False)
    return contextlib.nullcontext()


def inductor_patches(mode=None, options=None) -> dict:
    """Inductor settings for ``torch.compile``'s ``mode`` and ``options``, as inductor itself reads them.

    ``mode="reduce-overhead"`` replays each compiled graph as a CUDA graph (inductor's
    ``triton.cudagraphs``), which removes the host time of every call, corrmm's
    convolutions included; ``options`` are inductor config entries, applied on top.
    """
    from torch._inductor import list_mode_options

    if mode is not None and mode not in list_mode_options():
        raise ValueError(f"backend='corrmm': unknown mode {mode!r}; expected one of {sorted(list_mode_options())}")
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"backend='corrmm': options must be a dict of inductor settings, got {type(options).__name__}")
    return {**(list_mode_options(mode) if mode else {}), **(options or {})}


def corrmm_backend(gm: torch.fx.GraphModule, example_inputs, mode=None, options=None) -> Callable:
    """``backend="corrmm"``: inductor, with corrmm's graph rewrite on every post-partition aten graph.

    ``torch.compile(model, backend="corrmm", mode=..., options=...)`` takes inductor's modes
    (``"reduce-overhead"``: CUDA graphs) and settings, as ``backend="inductor"`` does.
    """
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner

    patches = inductor_patches(mode, options)

    def inner_compile(graph_module, inputs, *args, **kwargs):
        _rewrite(graph_module, _stage(kwargs))
        return compile_fx_inner(graph_module, inputs, *args, **kwargs)

    with _no_autograd_cache():
        return compile_fx(gm, example_inputs, inner_compile=inner_compile, config_patches=patches,
                          decompositions=decompositions())


def corrmm_eager_backend(gm: torch.fx.GraphModule, example_inputs) -> Callable:
    """``backend="corrmm_eager"``: AOT autograd and the rewrite, then the graphs run as Python."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    def compiler(stage):
        def compile_graph(graph_module, inputs):
            _rewrite(graph_module, stage)
            return make_boxed_func(graph_module.forward)
        return compile_graph

    # nothing decomposed: the graphs stay close to what the model called
    return aot_autograd(fw_compiler=compiler("forward"), bw_compiler=compiler("backward"),
                        inference_compiler=compiler("inference"), decompositions={})(gm, example_inputs)


BACKENDS = {"corrmm": corrmm_backend, "corrmm_eager": corrmm_eager_backend}


def register() -> None:
    """Register both backends with Dynamo now (once per process; imports ``torch._dynamo``)."""
    from torch._dynamo.backends import registry

    registered = getattr(registry, "_COMPILER_FNS", {})
    known = getattr(registry, "_BACKENDS", {})
    for name, fn in BACKENDS.items():
        if name in registered:
            continue
        if known.get(name) is not None:
            # Dynamo has found our entry point and is importing corrmm to load it; it
            # registers the loaded function itself, and would refuse a duplicate
            continue
        registry.register_backend(compiler_fn=fn, name=name)


def register_on_import() -> None:
    """Make ``backend="corrmm"`` resolvable, without importing Dynamo when it can be avoided.

    Importing ``torch._dynamo`` takes about as long as importing torch, so
    ``import corrmm`` does not do it when it need not: an installed corrmm
    declares both backends as ``torch_dynamo_backends`` entry points (see
    pyproject.toml), which Dynamo loads the first time the name is looked up.
    When Dynamo is already imported, or corrmm runs from a source tree without
    its entry points, the backends are registered right away.
    """
    if "torch._dynamo" in sys.modules or not _entry_points_installed():
        register()


def _entry_points_installed() -> bool:
    from importlib.metadata import entry_points

    return set(BACKENDS) <= set(entry_points(group="torch_dynamo_backends").names)
