"""The three correlation ops on PyTensor's graph, Theano's CorrMM family.

    CorrMM(ndim, ...)(img, kern)                    -> out        the forward pass
    CorrMM_gradInputs(ndim, ...)(kern, topgrad, shape)  -> img_grad   shape: the image's spatial size
    CorrMM_gradWeights(ndim, ...)(img, topgrad, shape)  -> kern_grad  shape: the kernel's spatial size

Layouts are Theano's (and corrmm's): img ``(N, C, *spatial)``, kern
``(K, C // num_groups, *kernel)``, out ``(N, K, *out)``. One class per pass,
parameterised by ``ndim`` (1, 2 or 3 spatial dimensions); ``Corr1dMM``,
``Corr3dMM`` and their gradient names are factories for the other ranks.

``filter_flip=True`` makes an op a true convolution: the kernel is flipped in
every spatial dimension inside the op (so no negative-step Subtensor appears in
the graph, which the PYTORCH backend cannot run). The three ops of one family
(same props) are each other's gradients::

    out = CorrMM(img, kern)
      d img  = CorrMM_gradInputs(kern, g, img.shape[2:])
      d kern = CorrMM_gradWeights(img, g, kern.shape[2:])
    img_grad = CorrMM_gradInputs(kern, topgrad)
      d kern    = CorrMM_gradWeights(g, topgrad, kern.shape[2:])
      d topgrad = CorrMM(g, kern)
    kern_grad = CorrMM_gradWeights(img, topgrad)
      d img     = CorrMM_gradInputs(g, topgrad, img.shape[2:])
      d topgrad = CorrMM(img, g)

(each line is <g, A(u, v)> read another way), so gradients compose to any order.
All three are bilinear, so the pushforward is the sum of the op applied to one
tangent and one primal.

``imshp``/``kshp`` are Theano's shape hints (full shapes, ``None`` for an
unknown entry): they give the graph static shapes and are checked against the
arrays when the function runs.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import DisconnectedType, disconnected_type
from pytensor.graph.basic import Apply, Variable
from pytensor.graph.op import Op
from pytensor.tensor.type import TensorType

from .. import functional
from ..geometry import (BORDER_MODE_NAMES, check_grad_output_shape, make_geometry,
                        normalize_border_mode, normalize_ints)

FLOAT_DTYPES = ("float16", "float32", "float64")


# ---- props: normalised once, hashable ------------------------------------------------

def normalize_border(border_mode, ndim: int):
    """A border-mode name, or one ``(low, high)`` pair per dimension (ints and tuples of ints expanded)."""
    if isinstance(border_mode, str):
        if border_mode not in BORDER_MODE_NAMES:
            raise ValueError(f"unknown border_mode {border_mode!r}: expected one of {BORDER_MODE_NAMES}, an int, "
                             f"a tuple of {ndim} ints or a tuple of {ndim} (low, high) pairs")
        return border_mode
    if isinstance(border_mode, np.integer):
        border_mode = int(border_mode)
    # the kernel does not matter for explicit pads: normalize_border_mode only validates and expands them
    return normalize_border_mode(border_mode, (1,) * ndim, (1,) * ndim)


def normalize_hint(hint, rank: int, name: str) -> Optional[Tuple[Optional[int], ...]]:
    """A shape hint: None, or ``rank`` entries each an int >= 0 or None (unknown)."""
    if hint is None:
        return None
    try:
        entries = tuple(hint)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of {rank} ints or None, got {hint!r}") from None
    if len(entries) != rank:
        raise ValueError(f"{name} must have {rank} entries, got {hint!r}")
    out = []
    for entry in entries:
        if entry is None:
            out.append(None)
        elif isinstance(entry, (int, np.integer)) and not isinstance(entry, bool) and entry >= 0:
            out.append(int(entry))
        else:
            raise ValueError(f"{name} entries must be ints >= 0 or None, got {entry!r} in {hint!r}")
    return tuple(out)


def _static_ints(values) -> Optional[Tuple[int, ...]]:
    return tuple(values) if all(v is not None for v in values) else None


def _merge_static(static: Sequence[Optional[int]], hint: Optional[Sequence[Optional[int]]], what: str):
    """Static shape entries refined by a hint; a contradiction is a ValueError at graph build."""
    if hint is None:
        return tuple(static)
    merged = []
    for dim, (s, h) in enumerate(zip(static, hint)):
        if s is not None and h is not None and s != h:
            raise ValueError(f"{what} hint {tuple(hint)} disagrees with the variable's static shape "
                             f"{tuple(static)} in dimension {dim}")
        merged.append(s if s is not None else h)
    return tuple(merged)


def _check_hint(op, hint, shape, what: str) -> None:
    """Theano's run-time check of a shape hint against the array's shape."""
    if hint is None:
        return
    for dim, (h, s) in enumerate(zip(hint, shape)):
        if h is not None and h != s:
            raise ValueError(f"{op}: the {what} given when the graph was built, {tuple(hint)}, disagrees with "
                             f"the array's shape {tuple(shape)} in dimension {dim} ({h} != {s})")


# ---- the family ----------------------------------------------------------------------

class BaseCorrMM(Op):
    """Props and checks shared by the three ops (see the module docstring)."""

    __props__ = ("ndim", "border_mode", "subsample", "filter_dilation", "num_groups", "filter_flip", "imshp",
                 "kshp")
    _pass_name = ""

    def __init__(self, ndim: int = 2, border_mode="valid", subsample=1, filter_dilation=1, num_groups: int = 1,
                 filter_flip: bool = False, imshp=None, kshp=None):
        if ndim not in (1, 2, 3):
            raise ValueError(f"{type(self).__name__}: ndim must be 1, 2 or 3, got {ndim!r}")
        if not isinstance(num_groups, (int, np.integer)) or isinstance(num_groups, bool) or num_groups < 1:
            raise ValueError(f"{type(self).__name__}: num_groups must be an int >= 1, got {num_groups!r}")
        self.ndim = int(ndim)
        self.border_mode = normalize_border(border_mode, self.ndim)
        self.subsample = normalize_ints(subsample, self.ndim, "subsample")
        self.filter_dilation = normalize_ints(filter_dilation, self.ndim, "filter_dilation")
        self.num_groups = int(num_groups)
        self.filter_flip = bool(filter_flip)
        self.imshp = normalize_hint(imshp, self.ndim + 2, "imshp (input_shape)")
        self.kshp = normalize_hint(kshp, self.ndim + 2, "kshp (filter_shape)")

    def __str__(self):
        mode = self.border_mode if isinstance(self.border_mode, str) else list(self.border_mode)
        extra = "".join(f", {k}={v}" for k, v in (("dilation", self.filter_dilation), ("groups", self.num_groups))
                        if v not in ((1,) * self.ndim, 1))
        kind = "conv" if self.filter_flip else "corr"
        return f"{type(self).__name__}{{{self.ndim}d {kind}, {mode}, subsample={self.subsample}{extra}}}"

    # -- helpers shared by the passes
    def family(self, cls):
        """The op of class ``cls`` with the same props (its gradient partner)."""
        return cls(**self._props_dict())

    def _pads(self, kernel: Sequence) -> Tuple[Tuple, ...]:
        """(low, high) per dimension; ``kernel`` entries may be ints or symbolic scalars."""
        if self.border_mode == "valid":
            return ((0, 0),) * self.ndim
        if self.border_mode == "full":
            return tuple(((k - 1) * d,) * 2 for k, d in zip(kernel, self.filter_dilation))
        if self.border_mode == "half":
            return tuple((((k - 1) * d + 1) // 2,) * 2 for k, d in zip(kernel, self.filter_dilation))
        return self.border_mode

    def _geometry_keywords(self):
        return dict(border_mode=self.border_mode, subsample=self.subsample, filter_dilation=self.filter_dilation,
                    num_groups=self.num_groups)

    def _tensor(self, value, name: str):
        var = pt.as_tensor_variable(value)
        if not isinstance(var.type, TensorType):
            raise TypeError(f"{type(self).__name__}: {name} must be a dense tensor, got {var.type}")
        if var.type.ndim != self.ndim + 2:
            raise TypeError(f"{type(self).__name__}: {name} must have {self.ndim + 2} dimensions "
                            f"(N, C, {self.ndim} spatial), got {var.type.ndim} ({var.type})")
        if var.type.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{type(self).__name__}: {name} has dtype {var.type.dtype}; expected one of "
                            f"{FLOAT_DTYPES}")
        return var

    def _same_dtype(self, **variables) -> None:
        (first_name, first), *rest = variables.items()
        for name, var in rest:
            if var.type.dtype != first.type.dtype:
                raise TypeError(f"{type(self).__name__}: dtype mismatch: {first_name} is {first.type.dtype} but "
                                f"{name} is {var.type.dtype}")

    def _shape_input(self, shape, name: str):
        """The spatial-shape input of a gradient op: an int vector of ``ndim`` entries."""
        if isinstance(shape, (tuple, list)):
            if all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape):
                shape = np.asarray(shape, dtype="int64")
            else:
                shape = pt.stack([pt.cast(s, "int64") for s in shape]) if len(shape) else shape
        var = pt.as_tensor_variable(shape)
        if var.type.ndim == 1 and var.type.dtype.startswith(("int", "uint")) and var.type.dtype != "int64":
            var = pt.cast(var, "int64")
        if var.type.ndim != 1 or not var.type.dtype.startswith(("int", "uint")):
            raise TypeError(f"{type(self).__name__}: {name} must be an int vector, got {var.type}")
        if var.type.shape[0] is not None and var.type.shape[0] != self.ndim:
            raise ValueError(f"{type(self).__name__}: {name} must have {self.ndim} entries (the spatial shape), "
                             f"got {var.type.shape[0]}")
        return var

    def _output(self, dtype, static_shape):
        return TensorType(dtype, shape=tuple(static_shape))()

    def _check_static(self, image_shape, kernel_shape, topgrad_shape=None, what=None):
        """Validate the geometry at graph build when the shapes that decide it are static."""
        image, kernel = _static_ints(image_shape), _static_ints(kernel_shape)
        if image is not None and kernel is not None:
            geometry = make_geometry(image, kernel, **self._geometry_keywords())
            if topgrad_shape is not None and _static_ints(topgrad_shape) is not None:
                check_grad_output_shape(geometry, topgrad_shape, what)
            return geometry.output_shape
        channels, per_group = image_shape[1], kernel_shape[1]
        if channels is not None and per_group is not None and per_group * self.num_groups != channels:
            raise ValueError(f"{type(self).__name__}: channel mismatch: the image has {channels} channels, the "
                             f"kernel expects {per_group} per group x {self.num_groups} groups")
        if kernel_shape[0] is not None and kernel_shape[0] % self.num_groups:
            raise ValueError(f"{type(self).__name__}: num_groups={self.num_groups} does not divide the number of "
                             f"filters ({kernel_shape[0]})")
        return None

    def _out_spatial(self, image_spatial, kernel_spatial, dims=None):
        """Symbolic (or int) output extents of the spatial dimensions ``dims`` (default: all)."""
        dims = range(self.ndim) if dims is None else dims
        full_kernel = [1] * self.ndim
        for i, k in zip(dims, kernel_spatial):
            full_kernel[i] = k
        pads = self._pads(full_kernel)
        out = []
        for i, n, k in zip(dims, image_spatial, kernel_spatial):
            (low, high), s, d = pads[i], self.subsample[i], self.filter_dilation[i]
            size = (n + low + high - ((k - 1) * d + 1)) // s + 1
            if isinstance(size, int) and size < 1:
                raise ValueError(f"{type(self).__name__}: dimension {i}: the padded input ({n} + {low} + {high}) is "
                                 f"smaller than the dilated kernel ((k - 1) * d + 1 = {(k - 1) * d + 1})")
            out.append(size)
        return out

    # -- the runtime body, shared by perform, the Numba object-mode call and (in torch) the PYTORCH backend
    def compute(self, a, b, shape=None):
        """Run the pass on torch tensors (``shape``: a sequence of ints for the gradient ops)."""
        raise NotImplementedError

    def check_hints(self, image_shape, kernel_shape) -> None:
        _check_hint(self, self.imshp, image_shape, "input_shape")
        _check_hint(self, self.kshp, kernel_shape, "filter_shape")

    def perform(self, node, inputs, outputs):
        from .runtime import perform_numpy

        outputs[0][0] = perform_numpy(self, inputs)

    def _flip(self, t):
        return t.flip(list(range(2, 2 + self.ndim)))

    def connection_pattern(self, node):
        return [[True], [True], [False]][:len(node.inputs)]


class CorrMM(BaseCorrMM):
    """Forward correlation (convolution with ``filter_flip=True``): ``(img, kern) -> out``."""

    _pass_name = "forward"

    def make_node(self, img, kern):
        img, kern = self._tensor(img, "img"), self._tensor(kern, "kern")
        self._same_dtype(img=img, kern=kern)
        image = _merge_static(img.type.shape, self.imshp, "input_shape")
        kernel = _merge_static(kern.type.shape, self.kshp, "filter_shape")
        out = self._check_static(image, kernel)
        if out is None:  # partly known: every extent whose image and kernel sizes are static
            spatial = [None if n is None or k is None else self._out_spatial([n], [k], dims=[i])[0]
                       for i, (n, k) in enumerate(zip(image[2:], kernel[2:]))]
            out = (image[0], kernel[0], *spatial)
        return Apply(self, [img, kern], [self._output(img.type.dtype, out)])

    def infer_shape(self, fgraph, node, shapes):
        image, kernel = shapes
        return [(image[0], kernel[0], *self._out_spatial(image[2:], kernel[2:]))]

    def compute(self, img, kern, shape=None):
        self.check_hints(img.shape, kern.shape)
        if self.filter_flip:
            kern = self._flip(kern)
        corr = getattr(functional, f"corr{self.ndim}d")
        return corr(img, kern, **self._geometry_keywords())

    def pullback(self, inputs, outputs, cotangents):
        img, kern = inputs
        (g,) = cotangents
        d_img = self.family(CorrMM_gradInputs)(kern, g, img.shape[2:])
        d_kern = self.family(CorrMM_gradWeights)(img, g, kern.shape[2:])
        return [d_img, d_kern]

    def pushforward(self, inputs, outputs, tangents):
        img, kern = inputs
        return [_bilinear_sum(self, (img, kern), tangents)]


class CorrMM_gradInputs(BaseCorrMM):
    """Gradient of CorrMM with respect to the image: ``(kern, topgrad, shape) -> img_grad``.

    ``shape`` is the image's spatial shape (an int vector or a tuple; several
    sizes give the same output when ``subsample > 1``). It may be left out
    when the stride is 1 in every dimension.
    """

    _pass_name = "grad_input"

    def make_node(self, kern, topgrad, shape=None):
        kern, topgrad = self._tensor(kern, "kern"), self._tensor(topgrad, "topgrad")
        self._same_dtype(kern=kern, topgrad=topgrad)
        kernel = _merge_static(kern.type.shape, self.kshp, "filter_shape")
        if shape is None:
            if any(s != 1 for s in self.subsample):
                raise ValueError(f"{type(self).__name__}: shape (the image's spatial shape) is required when "
                                 f"subsample={self.subsample} > 1: several image sizes give the same output")
            kspatial = [kern.shape[2 + i] if kernel[2 + i] is None else kernel[2 + i] for i in range(self.ndim)]
            pads = self._pads(kspatial)
            shape = pt.stack([pt.cast(topgrad.shape[2 + i] - 1 + (k - 1) * d + 1 - low - high, "int64")
                              for i, (k, d, (low, high)) in enumerate(zip(kspatial, self.filter_dilation, pads))])
        shape = self._shape_input(shape, "shape")
        spatial = _constant_ints(shape, self.ndim)
        channels = None if kernel[1] is None else kernel[1] * self.num_groups
        image = _merge_static((topgrad.type.shape[0], channels, *spatial), self.imshp, "input_shape")
        self._check_static(image, kernel, topgrad.type.shape, "input_shape")
        return Apply(self, [kern, topgrad, shape], [self._output(kern.type.dtype, image)])

    def infer_shape(self, fgraph, node, shapes):
        kern, topgrad, shape = node.inputs
        return [(shapes[1][0], shapes[0][1] * self.num_groups, *(shape[i] for i in range(self.ndim)))]

    def compute(self, kern, topgrad, shape=None):
        image_shape = (topgrad.shape[0], kern.shape[1] * self.num_groups, *shape)
        self.check_hints(image_shape, kern.shape)
        if self.filter_flip:
            kern = self._flip(kern)
        grad_input = getattr(functional, f"corr{self.ndim}d_grad_input")
        return grad_input(kern, topgrad, list(shape), **self._geometry_keywords())

    def pullback(self, inputs, outputs, cotangents):
        kern, topgrad, shape = inputs
        (g,) = cotangents
        d_kern = self.family(CorrMM_gradWeights)(g, topgrad, kern.shape[2:])
        d_topgrad = self.family(CorrMM)(g, kern)
        return [d_kern, d_topgrad, disconnected_type()]

    def pushforward(self, inputs, outputs, tangents):
        return [_bilinear_sum(self, inputs, tangents)]


class CorrMM_gradWeights(BaseCorrMM):
    """Gradient of CorrMM with respect to the kernel: ``(img, topgrad, shape) -> kern_grad``.

    ``shape`` is the kernel's spatial shape. It may be left out when the
    stride is 1 and the border mode is explicit or "valid" (the kernel size then
    follows from the image and output sizes).
    """

    _pass_name = "grad_weight"

    def make_node(self, img, topgrad, shape=None):
        img, topgrad = self._tensor(img, "img"), self._tensor(topgrad, "topgrad")
        self._same_dtype(img=img, topgrad=topgrad)
        image = _merge_static(img.type.shape, self.imshp, "input_shape")
        if shape is None:
            if any(s != 1 for s in self.subsample) or self.border_mode in ("half", "full"):
                raise ValueError(f"{type(self).__name__}: shape (the kernel's spatial shape) is required when "
                                 f"subsample > 1 or border_mode is 'half' or 'full' (got subsample="
                                 f"{self.subsample}, border_mode={self.border_mode!r})")
            pads = self._pads([None] * self.ndim)
            shape = pt.stack([pt.cast((img.shape[2 + i] + low + high - topgrad.shape[2 + i]) // d + 1, "int64")
                              for i, (d, (low, high)) in enumerate(zip(self.filter_dilation, pads))])
        shape = self._shape_input(shape, "shape")
        spatial = _constant_ints(shape, self.ndim)
        per_group = None if image[1] is None else image[1] // self.num_groups
        if image[1] is not None and image[1] % self.num_groups:
            raise ValueError(f"{type(self).__name__}: num_groups={self.num_groups} does not divide the image's "
                             f"channels ({image[1]})")
        kernel = _merge_static((topgrad.type.shape[1], per_group, *spatial), self.kshp, "filter_shape")
        self._check_static(image, kernel, topgrad.type.shape, "kernel_shape")
        return Apply(self, [img, topgrad, shape], [self._output(img.type.dtype, kernel)])

    def infer_shape(self, fgraph, node, shapes):
        img, topgrad, shape = node.inputs
        return [(shapes[1][1], shapes[0][1] // self.num_groups, *(shape[i] for i in range(self.ndim)))]

    def compute(self, img, topgrad, shape=None):
        kernel_shape = (topgrad.shape[1], img.shape[1] // self.num_groups, *shape)
        self.check_hints(img.shape, kernel_shape)
        grad_weight = getattr(functional, f"corr{self.ndim}d_grad_weight")
        result = grad_weight(img, topgrad, list(shape), **self._geometry_keywords())
        return self._flip(result) if self.filter_flip else result

    def pullback(self, inputs, outputs, cotangents):
        img, topgrad, shape = inputs
        (g,) = cotangents
        d_img = self.family(CorrMM_gradInputs)(g, topgrad, img.shape[2:])
        d_topgrad = self.family(CorrMM)(img, g)
        return [d_img, d_topgrad, disconnected_type()]

    def pushforward(self, inputs, outputs, tangents):
        return [_bilinear_sum(self, inputs, tangents)]


def _constant_ints(shape: Variable, ndim: int):
    """The entries of a constant shape vector, else ``ndim`` unknowns."""
    try:
        from pytensor.tensor.basic import get_underlying_scalar_constant_value
        values = []
        for i in range(ndim):
            values.append(int(get_underlying_scalar_constant_value(shape[i])))
        return tuple(values)
    except Exception:  # NotScalarConstantError and friends: not known at build time
        return (None,) * ndim


def _bilinear_sum(op: BaseCorrMM, inputs, tangents):
    """The pushforward of a bilinear op: op(da, b) + op(a, db), skipping disconnected tangents."""
    a, b, *rest = inputs
    da, db = tangents[0], tangents[1]
    terms = []
    if not isinstance(da.type, DisconnectedType):
        terms.append(op(da, b, *rest))
    if not isinstance(db.type, DisconnectedType):
        terms.append(op(a, db, *rest))
    if not terms:
        return disconnected_type()
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


# ---- Theano's names for the other ranks -----------------------------------------------

def _factory(cls, ndim: int, name: str):
    def make(border_mode="valid", subsample=1, filter_dilation=1, num_groups=1, filter_flip=False, imshp=None,
             kshp=None):
        return cls(ndim, border_mode, subsample, filter_dilation, num_groups, filter_flip, imshp, kshp)

    make.__name__ = make.__qualname__ = name
    make.__doc__ = f"``{cls.__name__}`` with ndim={ndim}."
    return make


Corr1dMM = _factory(CorrMM, 1, "Corr1dMM")
Corr1dMM_gradInputs = _factory(CorrMM_gradInputs, 1, "Corr1dMM_gradInputs")
Corr1dMM_gradWeights = _factory(CorrMM_gradWeights, 1, "Corr1dMM_gradWeights")
Corr3dMM = _factory(CorrMM, 3, "Corr3dMM")
Corr3dMMGradInputs = _factory(CorrMM_gradInputs, 3, "Corr3dMMGradInputs")
Corr3dMMGradWeights = _factory(CorrMM_gradWeights, 3, "Corr3dMMGradWeights")
