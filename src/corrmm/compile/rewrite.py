"""Graph passes over aten-level ``torch.fx`` graphs: the analogue of Theano's ``local_conv_gemm``.

Two pure functions, each changing a ``GraphModule`` in place and returning how
many rewrites it made:

* :func:`rewrite_convolutions` replaces

      aten.convolution(x, w, b, stride, padding, dilation, transposed=False, _, groups)
          -> corrmm.corr(x, w, padding, padding, stride, dilation, groups, algo) [+ b.view(1, K, 1, ...)]

      aten.convolution_backward(dy, x, w, bias_sizes, stride, padding, dilation, False, _, groups, mask)
          -> (corrmm.corr_grad_input(w, dy, x.shape[2:], ...)   if mask[0],
              corrmm.corr_grad_weight(x, dy, w.shape[2:], ...)  if mask[1],
              aten.sum(dy, [0, 2, ...])                          if mask[2])

  choosing each op's algorithm from the node's static shapes with the ``auto``
  rule (:func:`corrmm.selection.auto_choice`) and passing the concrete name into
  the op, so nothing is decided at run time. A node whose shapes are not known
  well enough (no metadata, symbolic spatial sizes) is left alone; a symbolic
  batch size keeps the rewrite but leaves ``algo="auto"`` to the op.

* :func:`cancel_inverse_chains` removes chains of ``permute``/``transpose``/``t``/
  ``flip`` that compose to the identity (the redundant dimshuffles of the seed):
  every such op is a signed permutation of the axes, a chain of them composes
  into one, and when that one is the identity the chain's last node is replaced
  by the chain's input.

Shapes come from ``node.meta["val"]`` (fake tensors, as AOT autograd and
``make_fx`` leave them) or ``node.meta["tensor_meta"]`` (``ShapeProp``). New
nodes get a ``val`` computed by running the op on the fake inputs, so later
passes (inductor's) see correct shapes and strides.
"""
from __future__ import annotations

import operator
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx

from .. import selection
from ..algorithms import get as get_algorithm
from ..ops import FLOAT_DTYPES, build_geometry

aten = torch.ops.aten

__all__ = ["rewrite_convolutions", "cancel_inverse_chains", "rewrite_graph"]


# ---- metadata helpers -------------------------------------------------------------------

def _meta(value):
    """The fake tensor (or TensorMetadata) recorded for an FX value, or None."""
    if isinstance(value, torch.fx.Node):
        return value.meta.get("val", value.meta.get("tensor_meta"))
    return None


def _is_static(values) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _bind(node: torch.fx.Node) -> Dict[str, object]:
    """The node's arguments by schema name (positional, keyword or default)."""
    bound = {}
    for i, arg in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            bound[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            bound[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
    return bound


def _per_dim(values, ndim: int) -> Optional[List[int]]:
    """A stride/padding/dilation list with one entry per spatial dimension (aten allows one for all)."""
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim or not _is_static(values):
        return None
    return values


def _fake_value(target, args):
    """Run ``target`` on the fake values of ``args``; None when some value is unknown or not fake."""
    flat, _ = torch.utils._pytree.tree_flatten(args)
    vals = []
    for a in flat:
        if isinstance(a, torch.fx.Node):
            val = a.meta.get("val")
            if not isinstance(val, torch.Tensor):
                return None
            vals.append(val)
    fake_mode = torch._guards.detect_fake_mode(vals)
    if fake_mode is None:
        return None
    concrete = torch.fx.node.map_arg(args, lambda n: n.meta["val"])
    with fake_mode:
        return target(*concrete)


def _insert(graph: torch.fx.Graph, target, args, like: torch.fx.Node) -> torch.fx.Node:
    """A call_function node before ``like``, with ``like``'s debug metadata and its own fake value."""
    with graph.inserting_before(like):
        node = graph.call_function(target, tuple(args))
    for key in ("stack_trace", "nn_module_stack", "source_fn_stack", "seq_nr", "original_aten", "from_node"):
        if key in like.meta:
            node.meta[key] = like.meta[key]
    val = _fake_value(target, tuple(args))
    if val is not None:
        node.meta["val"] = val
    return node


# ---- the convolution rewrite ---------------------------------------------------------------

class _Conv:
    """What the corrmm ops need from one aten convolution node, or None from :meth:`parse` if unusable."""

    def __init__(self, input_meta, weight_meta, pad, stride, dilation, groups):
        self.input_meta, self.weight_meta = input_meta, weight_meta
        self.ndim = len(weight_meta.shape) - 2  # spatial dimensions
        self.pad, self.stride, self.dilation, self.groups = pad, stride, dilation, groups

    @classmethod
    def parse(cls, input, weight, stride, padding, dilation, transposed, groups) -> Optional["_Conv"]:
        if transposed:
            return None
        x, w = _meta(input), _meta(weight)
        if x is None or w is None or len(x.shape) != len(w.shape) or len(w.shape) not in (3, 4, 5):
            return None
        if x.dtype not in FLOAT_DTYPES or w.dtype != x.dtype:
            return None
        ndim = len(w.shape) - 2
        stride, padding, dilation = (_per_dim(v, ndim) for v in (stride, padding, dilation))
        if None in (stride, padding, dilation) or not _is_static([groups]):
            return None
        # the ops take the spatial sizes as plain ints: symbolic ones cannot be rewritten
        if not _is_static(x.shape[2:]) or not _is_static(w.shape[1:]):
            return None
        conv = cls(x, w, padding, stride, dilation, groups)
        try:
            conv.geometry(batch=1)  # the checks the op would make, so a rewritten node never fails them
        except ValueError:
            return None
        return conv

    def geometry(self, batch=None):
        x, w = self.input_meta, self.weight_meta
        shape = (x.shape[0] if batch is None else batch, *x.shape[1:])
        return build_geometry(shape, w.shape, self.pad, self.pad, self.stride, self.dilation, self.groups)

    def choose(self, pass_name: str) -> str:
        """The ``auto`` rule's pick, fixed now from the static shapes; ``"auto"`` when the batch is symbolic."""
        x = self.input_meta
        if not _is_static(x.shape[:2]) or not hasattr(x, "device"):
            return "auto"
        try:
            geometry = self.geometry()
            name = selection.auto_choice(pass_name, geometry, x.device, x.dtype)
            if get_algorithm(name).not_supported_reasons(geometry, pass_name, x.device, x.dtype):
                return "auto"
            return name
        except (ValueError, TypeError):
            return "auto"

    def op_args(self, algo: str) -> list:
        return [list(self.pad), list(self.pad), list(self.stride), list(self.dilation), self.groups, algo]


def _rewrite_forward(graph: torch.fx.Graph, node: torch.fx.Node) -> bool:
    a = _bind(node)
    conv = _Conv.parse(a["input"], a["weight"], a["stride"], a["padding"], a["dilation"], a["transposed"],
                       a["groups"])
    if conv is None:
        return False
    out = _insert(graph, torch.ops.corrmm.corr.default,
                  [a["input"], a["weight"], *conv.op_args(conv.choose("forward"))], node)
    if a["bias"] is not None:
        bias = _insert(graph, aten.view.default, [a["bias"], [1, -1] + [1] * conv.ndim], node)
        out = _insert(graph, aten.add.Tensor, [out, bias], node)
    node.replace_all_uses_with(out)
    graph.erase_node(node)
    return True


def _rewrite_backward(graph: torch.fx.Graph, node: torch.fx.Node) -> bool:
    a = _bind(node)
    conv = _Conv.parse(a["input"], a["weight"], a["stride"], a["padding"], a["dilation"], a["transposed"],
                       a["groups"])
    if conv is None or _meta(a["grad_output"]) is None:
        return False
    mask = list(a["output_mask"])
    users = list(node.users)
    # aot graphs read the results through getitem; anything else we leave to torch
    if not all(u.op == "call_function" and u.target is operator.getitem for u in users):
        return False
    for user in [u for u in users if not u.users]:  # unread results (make_fx leaves them): nothing to compute
        graph.erase_node(user)
        users.remove(user)
    if not all(mask[u.args[1]] for u in users):
        return False
    dy, x, w = a["grad_output"], a["input"], a["weight"]
    replacements = {}
    for user in users:
        index = user.args[1]
        if index in replacements:
            continue
        if index == 0:
            replacements[0] = _insert(graph, torch.ops.corrmm.corr_grad_input.default,
                                      [w, dy, list(conv.input_meta.shape[2:]),
                                       *conv.op_args(conv.choose("grad_input"))], node)
        elif index == 1:
            replacements[1] = _insert(graph, torch.ops.corrmm.corr_grad_weight.default,
                                      [x, dy, list(conv.weight_meta.shape[2:]),
                                       *conv.op_args(conv.choose("grad_weight"))], node)
        else:  # the bias gradient sums grad_output over batch and space
            replacements[2] = _insert(graph, aten.sum.dim_IntList, [dy, [0, *range(2, 2 + conv.ndim)]], node)
    for user in users:
        user.replace_all_uses_with(replacements[user.args[1]])
        graph.erase_node(user)
    graph.erase_node(node)
    return True


def rewrite_convolutions(gm: torch.fx.GraphModule) -> int:
    """Replace aten (non-transposed) convolution and convolution_backward nodes with corrmm ops.

    Returns the number of aten nodes replaced. ``gm`` is recompiled when changed.
    """
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.convolution.default:
            count += _rewrite_forward(gm.graph, node)
        elif node.target is aten.convolution_backward.default:
            count += _rewrite_backward(gm.graph, node)
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


# ---- cancelling permute / transpose / flip chains --------------------------------------------

_AXIS_OPS = (aten.permute.default, aten.transpose.int, aten.t.default, aten.flip.default)


def _rank(node: torch.fx.Node) -> Optional[int]:
    meta = _meta(node)
    if meta is not None:
        return len(meta.shape)
    if node.target is aten.permute.default:
        return len(node.args[1])
    if node.target is aten.t.default:
        return 2  # t is the identity below 2-D, so treating it as a 2-D swap is still exact for t(t(x))
    return None


def _signed_permutation(node: torch.fx.Node, rank: int) -> Optional[Tuple[Tuple[int, ...], frozenset]]:
    """``node`` as (perm, flips): the result is ``permute(flip(x, flips), perm)``; None if not one of ours."""
    if node.op != "call_function" or node.target not in _AXIS_OPS or not isinstance(node.args[0], torch.fx.Node):
        return None
    if _rank(node) not in (rank, None):
        return None
    identity = list(range(rank))
    try:
        if node.target is aten.permute.default:
            perm = [d % rank for d in node.args[1]]
            if sorted(perm) != identity:
                return None
            return tuple(perm), frozenset()
        if node.target is aten.flip.default:
            return tuple(identity), frozenset(d % rank for d in node.args[1])
        if rank < 2:  # t and transpose of a 0-d or 1-d tensor change nothing
            return tuple(identity), frozenset()
        if node.target is aten.transpose.int:
            a, b = (_bind(node)[k] % rank for k in ("dim0", "dim1"))
        else:  # t
            a, b = 0, 1
    except (TypeError, ZeroDivisionError):
        return None  # symbolic dims, or a 0-d tensor
    identity[a], identity[b] = identity[b], identity[a]
    return tuple(identity), frozenset()


def _compose(inner, outer):
    """outer applied after inner, both as (perm, flips) with the result ``permute(flip(x, flips), perm)``.

    A flip of output axis j of ``permute(z, q)`` is a flip of z's axis q[j], and
    flips commute with each other, so the flips collect on the input's axes.
    """
    (q, f), (p, g) = inner, outer
    return tuple(q[i] for i in p), f ^ frozenset(q[j] for j in g)


def cancel_inverse_chains(gm: torch.fx.GraphModule) -> int:
    """Replace each chain of permute/transpose/t/flip that composes to the identity by its input.

    A chain is followed upward from each such node through its first argument;
    the longest prefix that cancels is cut. A node whose value is a graph output
    is left alone, so no output becomes an alias of an input where there was
    none. Nodes of the chain that lose their last user are erased. Returns the
    number of chains cancelled; ``gm`` is recompiled when changed.
    """
    graph = gm.graph
    count = 0
    erased = set()
    for node in list(graph.nodes):
        if node in erased or node.op != "call_function" or node.target not in _AXIS_OPS:
            continue
        if any(u.op == "output" for u in node.users):
            continue
        rank = _rank(node)
        transform = None if rank is None else _signed_permutation(node, rank)
        if transform is None:
            continue
        identity = (tuple(range(rank)), frozenset())
        chain, source, cut = [node], node.args[0], None
        while (step := _signed_permutation(source, rank)) is not None:
            transform = _compose(step, transform)
            chain.append(source)
            source = source.args[0]
            if transform == identity:
                cut = (source, len(chain))  # keep looking: a longer chain may cancel too
        if cut is None:
            continue
        source, length = cut
        node.replace_all_uses_with(source)
        for dead in chain[:length]:  # downstream first, so each one's users are gone before it
            if dead.users:
                break
            graph.erase_node(dead)
            erased.add(dead)
        count += 1
    if count:
        graph.lint()
        gm.recompile()
    return count


def rewrite_graph(gm: torch.fx.GraphModule) -> Tuple[int, int]:
    """Both passes, convolutions first: returns (convolution nodes replaced, chains cancelled)."""
    return rewrite_convolutions(gm), cancel_inverse_chains(gm)
