"""The ops on PyTensor's backends.

- Numba (the default linker): an ``numba.objmode`` call of the op's body, so
  the compiled graph runs corrmm's CPU path with no object-mode fallback (and
  no warning about one); arrays cross into torch without a copy.
- C/Python linkers: ``Op.perform`` (same body).
- PYTORCH: corrmm's torch functions called directly on the graph's tensors, so
  a graph on the GPU runs corrmm's kernels; the kernel flip happens inside the op.
- JAX: ``jax.lax.conv_general_dilated`` with the same semantics; the gradient
  passes are its transposes (``jax.vjp``), which need the result's spatial
  shape as concrete ints when the function is traced.

Each backend registers only if its module imports.
"""
from __future__ import annotations

from pytensor.graph.basic import Constant

from .ops import BaseCorrMM, CorrMM, CorrMM_gradInputs, CorrMM_gradWeights
from .runtime import perform_numpy


def _constant_shape(node):
    """The shape input's values when the graph fixes them (a constant, or the result's static shape), else None.

    Baked in, they spare torch.compile a graph break and JAX a traced shape.
    """
    if len(node.inputs) != 3:
        return None
    if isinstance(node.inputs[2], Constant):
        return [int(v) for v in node.inputs[2].data]
    spatial = node.outputs[0].type.shape[2:]
    if all(s is not None for s in spatial):
        return [int(s) for s in spatial]
    return None


# ---- Numba ------------------------------------------------------------------------------

#: ops the compiled Numba functions call back into, by index (Numba passes the int, not the op)
_NUMBA_OPS: list = []
_NUMBA_OP_INDEX: dict = {}
_NUMBA_CALLERS: dict = {}


def _numba_op_index(op) -> int:
    index = _NUMBA_OP_INDEX.get(op)
    if index is None:
        index = _NUMBA_OP_INDEX[op] = len(_NUMBA_OPS)
        _NUMBA_OPS.append(op)
    return index


def _run_registered(index, *inputs):
    return perform_numpy(_NUMBA_OPS[index], inputs)


def _register_numba() -> None:
    import numba
    from pytensor.link.numba.dispatch.basic import get_numba_type, numba_funcify, numba_njit

    def caller(out_type, n_inputs: int):
        """One object-mode caller per (result type, arity), shared by every node: Numba compiles an
        object-mode block slowly, and a graph has many corrmm nodes of few types."""
        key = (str(out_type), n_inputs)
        if key not in _NUMBA_CALLERS:
            if n_inputs == 2:
                @numba_njit
                def call(index, a, b):
                    with numba.objmode(out=out_type):
                        out = _run_registered(index, a, b)
                    return out
            else:
                @numba_njit
                def call(index, a, b, shape):
                    with numba.objmode(out=out_type):
                        out = _run_registered(index, a, b, shape)
                    return out
            _NUMBA_CALLERS[key] = call
        return _NUMBA_CALLERS[key]

    @numba_funcify.register(BaseCorrMM)
    def numba_funcify_corrmm(op, node, **kwargs):
        if node.outputs[0].type.dtype == "float16":
            raise NotImplementedError(f"{op}: Numba has no float16 arrays; run float16 graphs with "
                                      f"mode='FAST_COMPILE', 'CVM', 'PYTORCH' or 'JAX', or compute in float32")
        call = caller(get_numba_type(node.outputs[0].type), len(node.inputs))
        index = _numba_op_index(op)

        if len(node.inputs) == 2:
            @numba_njit
            def corrmm_pass(a, b):
                return call(index, a, b)
        else:
            @numba_njit
            def corrmm_pass(a, b, shape):
                return call(index, a, b, shape)
        return corrmm_pass


# ---- PyTorch ------------------------------------------------------------------------------

def _register_pytorch() -> None:
    import torch
    from pytensor.link.pytorch.dispatch.basic import pytorch_funcify

    @pytorch_funcify.register(BaseCorrMM)
    def pytorch_funcify_corrmm(op, node, **kwargs):
        static = _constant_shape(node)

        def corrmm_pass(a, b, shape=None):
            if shape is not None:
                shape = static if static is not None else [int(s) for s in shape]
            return op.compute(a, b, shape)

        return corrmm_pass


# ---- JAX ------------------------------------------------------------------------------------

_SPEC = {1: ("NCH", "OIH", "NCH"), 2: ("NCHW", "OIHW", "NCHW"), 3: ("NCDHW", "OIDHW", "NCDHW")}


def jax_forward(op: BaseCorrMM, img, kern):
    """``op``'s forward pass (correlation, or convolution with filter_flip) as one lax call."""
    from jax import lax

    from ..geometry import make_geometry

    geometry = make_geometry(tuple(img.shape), tuple(kern.shape), **op._geometry_keywords())
    if op.filter_flip:
        kern = kern[(slice(None), slice(None)) + (slice(None, None, -1),) * op.ndim]
    return lax.conv_general_dilated(
        img, kern, window_strides=geometry.stride, padding=list(geometry.padding), rhs_dilation=geometry.dilation,
        dimension_numbers=_SPEC[op.ndim], feature_group_count=op.num_groups, precision=lax.Precision.HIGHEST)


def _concrete(shape, op) -> list:
    try:
        return [int(s) for s in shape]
    except Exception as error:  # a tracer: JAX needs the size when it traces
        raise NotImplementedError(
            f"{op}: under JAX the shape input must be known when the function is traced (a constant or the shape "
            f"of an array), got {shape!r}") from error


def _register_jax() -> None:
    import jax
    import jax.numpy as jnp
    from pytensor.link.jax.dispatch.basic import jax_funcify

    from ..geometry import check_grad_output_shape, make_geometry

    @jax_funcify.register(BaseCorrMM)
    def jax_funcify_corrmm(op, node, **kwargs):
        static = _constant_shape(node)
        dtype = node.outputs[0].type.dtype

        if isinstance(op, CorrMM):
            def corrmm_pass(img, kern):
                op.check_hints(img.shape, kern.shape)
                return jax_forward(op, img, kern)
        elif isinstance(op, CorrMM_gradInputs):
            def corrmm_pass(kern, topgrad, shape):
                spatial = static if static is not None else _concrete(shape, op)
                image_shape = (topgrad.shape[0], kern.shape[1] * op.num_groups, *spatial)
                op.check_hints(image_shape, kern.shape)
                check_grad_output_shape(make_geometry(image_shape, kern.shape, **op._geometry_keywords()),
                                        topgrad.shape, "input_shape")
                _, pull = jax.vjp(lambda x: jax_forward(op, x, kern), jnp.zeros(image_shape, dtype))
                return pull(topgrad)[0]
        else:
            assert isinstance(op, CorrMM_gradWeights)

            def corrmm_pass(img, topgrad, shape):
                spatial = static if static is not None else _concrete(shape, op)
                kernel_shape = (topgrad.shape[1], img.shape[1] // op.num_groups, *spatial)
                op.check_hints(img.shape, kernel_shape)
                check_grad_output_shape(make_geometry(img.shape, kernel_shape, **op._geometry_keywords()),
                                        topgrad.shape, "kernel_shape")
                _, pull = jax.vjp(lambda w: jax_forward(op, img, w), jnp.zeros(kernel_shape, dtype))
                return pull(topgrad)[0]
        return corrmm_pass


def _register_jax_shape_rewrite() -> None:
    """Under JAX, pass a gradient op's shape as a tuple of ints (PyTensor does the same for Reshape)."""
    from pytensor.compile import optdb
    from pytensor.graph.rewriting.basic import dfs_rewriter, node_rewriter
    from pytensor.link.jax.dispatch.shape import JAXShapeTuple
    from pytensor.tensor.basic import MakeVector

    @node_rewriter([CorrMM_gradInputs, CorrMM_gradWeights])
    def corrmm_jax_shape_as_tuple(fgraph, node):
        shape = node.inputs[2]
        if shape.owner is None or not isinstance(shape.owner.op, MakeVector):
            return None
        return node.clone_with_new_inputs([*node.inputs[:2], JAXShapeTuple()(*shape.owner.inputs)]).outputs

    optdb.register("corrmm_jax_shape_as_tuple", dfs_rewriter(corrmm_jax_shape_as_tuple), "jax", position=100)


def _try(register) -> bool:
    try:
        register()
    except ImportError:
        return False
    return True


HAS_NUMBA = _try(_register_numba)
HAS_PYTORCH = _try(_register_pytorch)
HAS_JAX = _try(_register_jax)
if HAS_JAX:
    _register_jax_shape_rewrite()
