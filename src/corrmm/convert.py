"""``corrmm.convert``: make an existing model's convolutions run on corrmm, in place."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .nn import REPLACEMENTS
from .ops import check_algo

__all__ = ["convert"]


def convert(module: torch.nn.Module, filter_fn: Optional[Callable[[torch.nn.Module, str], bool]] = None,
            algo: str = "auto") -> torch.nn.Module:
    """Swap every ``torch.nn.Conv1d/Conv2d/Conv3d`` in ``module`` for its :mod:`corrmm.nn` twin, in place.

    module: any ``torch.nn.Module``; it is changed in place and returned (also
        when it is itself a convolution).
    filter_fn: ``filter_fn(layer, qualified_name) -> bool``; only layers for
        which it returns True are converted (all of them when None). The name is
        the one ``module.named_modules()`` gives (``"layer1.0.conv1"``; ``""``
        for ``module`` itself).
    algo: the ``algo`` the converted layers use.

    Each layer keeps its identity: its class is switched to the corrmm subclass,
    so the very same ``weight``/``bias`` Parameter objects (and therefore an
    optimizer built before the conversion), buffers, device, dtype, training
    mode and any hooks stay as they were, and ``state_dict`` keys do not change.
    Only exact torch convolution classes are converted: a user subclass may
    override ``forward``, and transposed convolutions are a different operation.
    """
    check_algo(algo)
    for name, layer in module.named_modules():
        replacement = REPLACEMENTS.get(type(layer))
        if replacement is None or (filter_fn is not None and not filter_fn(layer, name)):
            continue
        layer.__class__ = replacement
        layer.algo = algo
    return module
