"""The algorithm registry: one module per algorithm, one line per module in ``MODULES``.

Each module defines ``ALGORITHM``, an instance of :class:`~corrmm.algorithms.base.Algorithm`.
"""
from __future__ import annotations

import importlib
from typing import Dict

from .base import PASSES, Algorithm

MODULES = [
    "im2col",
    "swapped",
    "gemm1x1",
    "fft",
    "implicit",
    "winograd",
    "depthwise",
]

REGISTRY: Dict[str, Algorithm] = {}
for _module in MODULES:
    _algorithm = importlib.import_module(f"{__name__}.{_module}").ALGORITHM
    REGISTRY[_algorithm.name] = _algorithm

#: names accepted by ``algo=`` besides the registered algorithms
CHOOSERS = ("auto", "tune")


def algorithms() -> list:
    """Names of the registered algorithms, in registry order (``auto`` not included)."""
    return list(REGISTRY)


def get(name: str) -> Algorithm:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown algo {name!r}: expected one of {[*CHOOSERS, *REGISTRY]}") from None


__all__ = ["PASSES", "Algorithm", "REGISTRY", "CHOOSERS", "MODULES", "algorithms", "get"]
