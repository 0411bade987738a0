"""Drop-in replacements for ``torch.nn.Conv1d/Conv2d/Conv3d`` that run corrmm.

Each class subclasses its torch counterpart, so the constructor takes the same
arguments (``stride``, ``padding`` as ints, tuples, ``"same"`` or ``"valid"``,
``padding_mode`` in zeros/reflect/replicate/circular, ``dilation``, ``groups``,
``bias``, ``device``, ``dtype``), the parameters are the same ``weight`` and
``bias`` with the same initialisation, and the state_dict keys are identical:
a torch state_dict loads into a corrmm layer and back. The only addition is the
keyword ``algo`` (``"auto"`` or a name from :func:`corrmm.algorithms`).

    >>> import torch, corrmm
    >>> layer = corrmm.nn.Conv2d(3, 8, 3, padding="same", algo="auto")
    >>> layer(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 8, 16, 16])

The forward pass is corrmm's ``corr`` op plus a broadcast bias add; the
backward pass is corrmm's two gradient ops. Zero padding, including the
asymmetric split of ``padding="same"``, goes straight into the op as
``(low, high)`` pairs; the other padding modes pad with ``F.pad`` first, exactly
as torch does, and then correlate with no padding.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from . import ops
from .functional import autocast_enabled
from .ops import check_algo

__all__ = ["Conv1d", "Conv2d", "Conv3d"]


def padding_pairs(padding, kernel_size, dilation) -> List[Tuple[int, int]]:
    """The ``(low, high)`` zero padding per spatial dimension that ``torch.nn.Conv*d`` applies.

    ``padding="same"`` pads ``d * (k - 1)`` in total; when that is odd torch puts
    the extra element on the high side (``low = total // 2``).
    """
    ndim = len(kernel_size)
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * ndim
        if padding == "same":
            pairs = []
            for k, d in zip(kernel_size, dilation):
                total = d * (k - 1)
                pairs.append((total // 2, total - total // 2))
            return pairs
        raise ValueError(f"unknown padding {padding!r}: expected 'same', 'valid', an int or a tuple of ints")
    return [(p, p) for p in padding]


def _autocast(*tensors: Optional[torch.Tensor]):
    """Cast like torch's convolution under autocast: every float tensor but float64 to the autocast dtype.

    The corrmm ops are not in autocast's op lists, and they insist on one dtype
    for all their tensors, so the layer does the cast that ``F.conv*d`` would get.
    """
    first = tensors[0]
    device_type = first.device.type
    if not autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)


class _CorrmmConv:
    """The part shared by the three classes: ``algo`` and a ``_conv_forward`` that calls corrmm.

    torch's ``Conv*d.forward`` is ``self._conv_forward(input, self.weight, self.bias)``;
    overriding that one method keeps everything else (parameters, ``extra_repr``,
    ``reset_parameters``, state_dict handling) torch's own.
    """

    algo: str

    def _init_algo(self, algo: str) -> None:
        check_algo(algo)
        self.algo = algo

    def __setstate__(self, state):
        super().__setstate__(state)
        # layers pickled before ``algo`` existed, or converted by swapping the class
        self.__dict__.setdefault("algo", "auto")

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling anything
        raise RuntimeError(f"corrmm.nn.{type(self).__name__} cannot be compiled by torch.jit.script; use "
                           f"torch.compile or torch.export instead (torch.jit.trace also works).")

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.algo == "auto" else f"{text}, algo={self.algo!r}"

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        ndim = len(self.kernel_size)
        # torch accepts an unbatched (C, *spatial) input; the op wants a batch dimension
        unbatched = input.dim() == ndim + 1
        if unbatched:
            input = input.unsqueeze(0)
        pairs = padding_pairs(self.padding, self.kernel_size, self.dilation)
        if self.padding_mode != "zeros":
            # F.pad takes pads last dimension first, low before high
            input = F.pad(input, [p for pair in reversed(pairs) for p in pair], mode=self.padding_mode)
            pairs = [(0, 0)] * ndim
        input, weight, bias = _autocast(input, weight, bias)
        out = ops.call_corr(input, weight, [low for low, _ in pairs], [high for _, high in pairs],
                            list(self.stride), list(self.dilation), self.groups, getattr(self, "algo", "auto"))
        if bias is not None:
            out = out + bias.view(1, -1, *([1] * ndim))
        return out.squeeze(0) if unbatched else out


class Conv1d(_CorrmmConv, torch.nn.Conv1d):
    """``torch.nn.Conv1d`` computed by corrmm; same arguments plus ``algo="auto"``."""

    def __init__(self, *args, algo: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_algo(algo)


class Conv2d(_CorrmmConv, torch.nn.Conv2d):
    """``torch.nn.Conv2d`` computed by corrmm; same arguments plus ``algo="auto"``."""

    def __init__(self, *args, algo: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_algo(algo)


class Conv3d(_CorrmmConv, torch.nn.Conv3d):
    """``torch.nn.Conv3d`` computed by corrmm; same arguments plus ``algo="auto"``."""

    def __init__(self, *args, algo: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_algo(algo)


#: torch class -> corrmm class, for :func:`corrmm.convert`
REPLACEMENTS = {torch.nn.Conv1d: Conv1d, torch.nn.Conv2d: Conv2d, torch.nn.Conv3d: Conv3d}
