"""corrmm inside ``torch.compile``: a graph rewrite and the backends that apply it.

    import corrmm
    fast = torch.compile(model, backend="corrmm")   # inductor + corrmm's convolutions

The backends are registered on ``import corrmm`` (or, for an installed corrmm,
found by Dynamo through the package's ``torch_dynamo_backends`` entry points,
which spares ``import corrmm`` the cost of importing Dynamo).

:func:`rewrite_convolutions` and :func:`cancel_inverse_chains` are pure
functions over ``torch.fx.GraphModule`` (aten-level graphs, as AOT autograd or
``make_fx`` produce them); :func:`rewrite_graph` runs both. The backends are
described in :mod:`corrmm.compile.backend`; :func:`capture_graphs` shows what
they produced.
"""
from .backend import (CapturedGraph, capture_graphs, corrmm_backend, corrmm_eager_backend, counters,
                      decompositions, register, register_on_import)
from .rewrite import cancel_inverse_chains, rewrite_convolutions, rewrite_graph

register_on_import()

__all__ = ["rewrite_convolutions", "cancel_inverse_chains", "rewrite_graph", "corrmm_backend",
           "corrmm_eager_backend", "capture_graphs", "CapturedGraph", "counters", "decompositions", "register"]
