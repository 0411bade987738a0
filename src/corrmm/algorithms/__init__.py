"""The algorithm registry: one module per algorithm, one line here per module."""
from __future__ import annotations

from typing import Dict

from .base import PASSES, Algorithm
from . import im2col, swapped

REGISTRY: Dict[str, Algorithm] = {
    module.ALGORITHM.name: module.ALGORITHM
    for module in (
        im2col,
        swapped,
    )
}

#: names accepted by ``algo=`` besides the registered algorithms
CHOOSERS = ("auto",)


def algorithms() -> list:
    """Names of the registered algorithms, in registry order (``auto`` not included)."""
    return list(REGISTRY)


def get(name: str) -> Algorithm:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown algo {name!r}: expected one of {[*CHOOSERS, *REGISTRY]}") from None


__all__ = ["PASSES", "Algorithm", "REGISTRY", "CHOOSERS", "algorithms", "get"]
