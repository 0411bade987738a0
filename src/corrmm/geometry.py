"""Convolution geometry: padding, strides, dilation, groups and the shape rules.

Nothing here imports torch: these are plain integer rules, shared by the ops,
their fake (shape-only) implementations, the algorithms, the selection rule,
the benchmark and the compile backend.

Vocabulary (one spatial dimension; every rule applies per dimension):

    size    input extent H
    low/hi  zero padding before/after the input
    k, d    kernel extent R and its dilation; the dilated extent is (k - 1) * d + 1
    s       stride ("subsample")
    out     output extent P = (size + low + high - ((k - 1) * d + 1)) // s + 1

Output position p reads input positions p * s + r * d - low for r in [0, k).
With s > 1 several input sizes give the same output size (the trailing
``(size + low + high - dilated_k) % s`` positions are never read), which is why
the gradient ops take the shape they must produce.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence, Tuple, Union

IntOrTuple = Union[int, Sequence[int]]
BorderMode = Union[str, int, Sequence[int], Sequence[Sequence[int]]]

BORDER_MODE_NAMES = ("valid", "full", "half")


def as_int(value, name: str) -> int:
    """An integer argument as a Python int.

    Accepted, as torch accepts them: an int, a numpy integer (``np.int64(2)``) or
    a 0-d integer tensor. Refused with a TypeError that names the argument: bools,
    floats (``2.0`` as well as ``8.7``: torch refuses a float stride, and a shape
    is never fractional), strings, anything with more than zero dimensions.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    boolean = isinstance(value, bool) or "bool" in str(getattr(value, "dtype", ""))
    if not boolean and getattr(value, "ndim", 0) == 0:
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")


def _is_scalar(value) -> bool:
    """Not a sequence: a plain number, a numpy scalar or a 0-d array/tensor."""
    return not hasattr(value, "__iter__") or getattr(value, "ndim", None) == 0


def normalize_ints(value: IntOrTuple, ndim: int, name: str, minimum: int = 1) -> Tuple[int, ...]:
    """An integer or one integer per spatial dimension, each at least ``minimum``."""
    if _is_scalar(value):
        values = (as_int(value, name),) * ndim
    else:
        if isinstance(value, str):
            raise TypeError(f"{name} must be an int or a tuple of {ndim} ints, got {value!r}")
        values = tuple(value)
        if len(values) != ndim:
            raise ValueError(f"{name} must be an int or a tuple of {ndim} ints, got {value!r} "
                             f"({len(values)} entries)")
        values = tuple(as_int(v, f"{name}[{dim}]") for dim, v in enumerate(values))
    for dim, v in enumerate(values):
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum} in every dimension, got {v} in dimension {dim} ({value!r})")
    return values


def dilated_extent(kernel: int, dilation: int) -> int:
    return (kernel - 1) * dilation + 1


def normalize_border_mode(
    border_mode: BorderMode, kernel: Sequence[int], dilation: Sequence[int]
) -> Tuple[Tuple[int, int], ...]:
    """Turn any accepted border mode into one ``(low, high)`` pair per dimension.

    ``"valid"`` pads nothing, ``"full"`` pads ``(k - 1) * d`` on both sides,
    ``"half"`` pads ``((k - 1) * d + 1) // 2`` on both sides; an int pads every
    side alike, a tuple of ints gives one symmetric pad per dimension and a tuple
    of ``(low, high)`` pairs gives asymmetric pads.
    """
    ndim = len(kernel)
    if isinstance(border_mode, str):
        if border_mode == "valid":
            return ((0, 0),) * ndim
        if border_mode == "full":
            return tuple(((k - 1) * d, (k - 1) * d) for k, d in zip(kernel, dilation))
        if border_mode == "half":
            return tuple((dilated_extent(k, d) // 2,) * 2 for k, d in zip(kernel, dilation))
        raise ValueError(
            f"unknown border_mode {border_mode!r}: expected one of {BORDER_MODE_NAMES}, an int, "
            f"a tuple of {ndim} ints or a tuple of {ndim} (low, high) pairs"
        )
    if _is_scalar(border_mode):
        try:
            pad = as_int(border_mode, "border_mode")
        except TypeError:
            raise TypeError(f"border_mode must be one of {BORDER_MODE_NAMES}, an int or a tuple, "
                            f"got {border_mode!r} ({type(border_mode).__name__})") from None
        pads = ((pad, pad),) * ndim
    else:
        entries = tuple(border_mode)
        if len(entries) != ndim:
            raise ValueError(f"border_mode {border_mode!r} has {len(entries)} entries, expected {ndim} (one per spatial dimension)")
        pads = []
        for dim, entry in enumerate(entries):
            if _is_scalar(entry):
                pad = as_int(entry, f"border_mode[{dim}]")
                pads.append((pad, pad))
                continue
            pair = tuple(entry) if not isinstance(entry, str) else ()
            if len(pair) != 2:
                raise ValueError(f"border_mode entry {entry!r} must be an int or a (low, high) pair of ints")
            pads.append((as_int(pair[0], f"border_mode[{dim}][0]"), as_int(pair[1], f"border_mode[{dim}][1]")))
        pads = tuple(pads)
    for dim, (low, high) in enumerate(pads):
        if low < 0 or high < 0:
            raise ValueError(f"negative padding ({low}, {high}) in dimension {dim} (border_mode={border_mode!r})")
    return pads


def output_size(
    size: Sequence[int],
    kernel: Sequence[int],
    padding: Sequence[Tuple[int, int]],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> Tuple[int, ...]:
    """Output extent per dimension; a ValueError naming the sizes when it is below 1."""
    out = []
    for dim, (n, k, (low, high), s, d) in enumerate(zip(size, kernel, padding, stride, dilation)):
        span = n + low + high - dilated_extent(k, d)
        if span < 0:
            raise ValueError(
                f"dimension {dim}: the padded input ({n} + {low} + {high} = {n + low + high}) is smaller than "
                f"the dilated kernel ((k - 1) * d + 1 = ({k} - 1) * {d} + 1 = {dilated_extent(k, d)}); "
                f"the output would be empty"
            )
        out.append(span // s + 1)
    return tuple(out)


def input_size_range(
    out: int, kernel: int, padding: Tuple[int, int], stride: int, dilation: int
) -> Tuple[int, int]:
    """All input extents that give output extent ``out``, as an inclusive range (one dimension)."""
    low = (out - 1) * stride + dilated_extent(kernel, dilation) - padding[0] - padding[1]
    return max(low, 1), low + stride - 1


@dataclass(frozen=True)
class ConvGeometry:
    """The full description of one correlation problem, all passes alike.

    Shapes follow PyTorch: input ``(batch, in_channels, *in_size)``, weight
    ``(out_channels, in_channels // groups, *kernel)``, output
    ``(batch, out_channels, *out_size)``.
    """

    batch: int
    in_channels: int
    out_channels: int
    in_size: Tuple[int, ...]
    kernel: Tuple[int, ...]
    padding: Tuple[Tuple[int, int], ...]
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    groups: int = 1

    @property
    def ndim(self) -> int:
        return len(self.kernel)

    @property
    def out_size(self) -> Tuple[int, ...]:
        return output_size(self.in_size, self.kernel, self.padding, self.stride, self.dilation)

    @property
    def pad_low(self) -> Tuple[int, ...]:
        return tuple(p[0] for p in self.padding)

    @property
    def pad_high(self) -> Tuple[int, ...]:
        return tuple(p[1] for p in self.padding)

    @property
    def channels_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def filters_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return (self.batch, self.in_channels, *self.in_size)

    @property
    def weight_shape(self) -> Tuple[int, ...]:
        return (self.out_channels, self.channels_per_group, *self.kernel)

    @property
    def output_shape(self) -> Tuple[int, ...]:
        return (self.batch, self.out_channels, *self.out_size)

    @property
    def is_empty(self) -> bool:
        """True when some pass has nothing to multiply (a zero extent somewhere)."""
        return 0 in (self.batch, self.in_channels, self.out_channels)

    @property
    def flops(self) -> int:
        """Multiply-adds times two of the direct method; the same for all three passes."""
        product = 2 * self.batch * self.out_channels * self.channels_per_group
        for n in (*self.out_size, *self.kernel):
            product *= n
        return product

    def validate(self) -> "ConvGeometry":
        """Check the channel/group arithmetic and that the output is not empty."""
        if not (len(self.in_size) == len(self.padding) == len(self.stride) == len(self.dilation) == self.ndim):
            raise ValueError(f"inconsistent number of spatial dimensions in {self}")
        if self.groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {self.groups}")
        if self.in_channels % self.groups:
            raise ValueError(f"num_groups={self.groups} does not divide the input channels ({self.in_channels})")
        if self.out_channels % self.groups:
            raise ValueError(f"num_groups={self.groups} does not divide the output channels ({self.out_channels})")
        for dim, n in enumerate(self.in_size):
            if n < 1:
                raise ValueError(f"input size must be >= 1 in every spatial dimension, got {n} in dimension {dim}")
        for dim, k in enumerate(self.kernel):
            if k < 1:
                raise ValueError(f"kernel size must be >= 1 in every spatial dimension, got {k} in dimension {dim}")
        self.out_size  # raises when the output would be empty
        return self


def make_geometry(
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    border_mode: BorderMode = "valid",
    subsample: IntOrTuple = 1,
    filter_dilation: IntOrTuple = 1,
    num_groups: int = 1,
) -> ConvGeometry:
    """Validate user arguments against an input and a weight shape and build the geometry."""
    if len(input_shape) != len(weight_shape):
        raise ValueError(f"input has {len(input_shape)} dimensions but weight has {len(weight_shape)}")
    ndim = len(input_shape) - 2
    if ndim not in (1, 2, 3):
        raise ValueError(f"expected 1, 2 or 3 spatial dimensions, got input of {len(input_shape)} dimensions")
    num_groups = as_int(num_groups, "num_groups")
    if num_groups < 1:
        raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
    stride = normalize_ints(subsample, ndim, "subsample")
    dilation = normalize_ints(filter_dilation, ndim, "filter_dilation")
    kernel = tuple(weight_shape[2:])
    padding = normalize_border_mode(border_mode, kernel, dilation)
    batch, in_channels = input_shape[:2]
    out_channels, weight_channels = weight_shape[:2]
    if in_channels % num_groups:
        raise ValueError(f"num_groups={num_groups} does not divide the input channels ({in_channels})")
    if weight_channels * num_groups != in_channels:
        raise ValueError(
            f"channel mismatch: input has {in_channels} channels, weight expects "
            f"{weight_channels} per group x {num_groups} groups = {weight_channels * num_groups}"
        )
    geometry = ConvGeometry(batch, in_channels, out_channels, tuple(input_shape[2:]), kernel, padding,
                            stride, dilation, num_groups)
    return geometry.validate()


def check_grad_output_shape(geometry: ConvGeometry, grad_output_shape: Sequence[int], what: str) -> None:
    """The gradient ops' rule: ``grad_output`` must be what the forward pass would produce.

    ``what`` names the shape the caller chose (``input_shape`` or ``kernel_shape``)
    so the message points at the argument to fix.
    """
    expected = geometry.output_shape
    if tuple(grad_output_shape[:2]) != expected[:2]:
        raise ValueError(
            f"grad_output has batch/channels {tuple(grad_output_shape[:2])}, expected {expected[:2]}"
        )
    got = tuple(grad_output_shape[2:])
    if got == expected[2:]:
        return
    for dim, (g, e) in enumerate(zip(got, expected[2:])):
        if g != e:
            if what == "input_shape":
                lo, hi = input_size_range(g, geometry.kernel[dim], geometry.padding[dim], geometry.stride[dim],
                                          geometry.dilation[dim])
                hint = f"an input size in [{lo}, {hi}]" if lo <= hi else "no input size"
            else:
                hint = "another kernel size"
            raise ValueError(
                f"impossible {what}: in dimension {dim} it gives an output of {e}, but grad_output has {g}; "
                f"{hint} would produce {g}"
            )
