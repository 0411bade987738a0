"""Test tiers for the GPU run: ``pytest --tier quick`` and ``pytest --shard NAME`` (tests/conftest.py).

Without these options pytest runs everything, as the CPU CI does. On a GPU the
whole suite takes longer than one check after a change should, so
scripts/gpu_check.sh runs either

    --tier quick       every algorithm, every pass and every dtype on a few geometries each,
                       and the cheap unit tests; the compile, integration and command-line
                       tests are left to the full tier
    --shard NAME       one named part of the full tier: every test is in exactly one
                       (SHARDS below); or --shard N/M, every M-th test from the N-th (1-based)

Quick selection, per test function, deterministic (it depends only on the collection):

    1. tests under QUICK_EXCLUDED paths are left out: compile, integrations, command line,
       the tiers' own tests (they collect the suite again), the random geometries of
       test_properties (each one compiles kernels anew) and the tuner (it times candidates);
    2. a function with parametrisations marked ``pytest.mark.quick`` keeps just those
       (the reference grid marks a few geometries, which every algorithm and dtype runs);
    3. any other function keeps at most QUICK_MAX_CASES parametrisations, evenly spaced
       (its first and last included).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence

QUICK_EXCLUDED = ("tests/test_compile.py", "tests/test_ops_compile.py", "tests/integrations/", "tests/cli/",
                  "tests/bench/", "tests/test_tiers.py", "tests/test_properties.py", "tests/test_tuning.py")
#: on the GPU nearly every new geometry compiles new kernels (about a second each), so the
#: quick tier keeps few of them: a serial run of an earlier, larger selection (355 tests) had
#: done 244 after 4.5 minutes on the H100
QUICK_MAX_CASES = 4

GRID = "tests/algorithms/test_reference_grid.py::test_matches_reference"
#: the reference grid is split this many ways (grid-a, grid-b, ...), item by item in turn, so
#: every shard holds every algorithm and dtype
GRID_SHARDS = 3


def _path(item) -> str:
    return item.nodeid.split("::")[0]


def function_id(item) -> str:
    """The test function's node id without the parametrisation: ``tests/x.py::test_y``."""
    return item.nodeid.split("[")[0]


def _in(item, prefixes: Sequence[str]) -> bool:
    path = _path(item)
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in prefixes)


def _evenly(items: List, count: int) -> List:
    if len(items) <= count:
        return items
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


def quick(items: Sequence) -> List:
    """The quick tier's items, in collection order."""
    by_function: Dict[str, List] = {}
    for item in items:
        if not _in(item, QUICK_EXCLUDED):
            by_function.setdefault(function_id(item), []).append(item)
    kept = set()
    for members in by_function.values():
        marked = [item for item in members if item.get_closest_marker("quick") is not None]
        kept.update(map(id, marked or _evenly(members, QUICK_MAX_CASES)))
    return [item for item in items if id(item) in kept]


INTEGRATION_PATHS = ("tests/test_compile.py", "tests/test_ops_compile.py", "tests/integrations/", "tests/cli/",
                     "tests/bench/")
KERNEL_PATHS = ("tests/kernels/", "tests/algorithms/")


def _grid_shard(letter_index: int) -> Callable:
    def rule(item, position: int) -> bool:
        return function_id(item) == GRID and position % GRID_SHARDS == letter_index
    return rule


#: name -> rule(item, position among the grid's items); "core" takes whatever no other shard does
SHARDS: Dict[str, Callable] = {
    **{f"grid-{'abcdefgh'[i]}": _grid_shard(i) for i in range(GRID_SHARDS)},
    "kernels": lambda item, position: function_id(item) != GRID and _in(item, KERNEL_PATHS),
    "integrations": lambda item, position: _in(item, INTEGRATION_PATHS),
}
SHARD_NAMES = (*SHARDS, "core")


def shard_of(item, grid_position: int) -> str:
    for name, rule in SHARDS.items():
        if rule(item, grid_position):
            return name
    return "core"


def shard(items: Sequence, spec: str) -> List:
    """The items of one shard: a name from SHARD_NAMES, or ``N/M`` (every M-th item from the N-th, 1-based)."""
    if "/" in spec:
        try:
            number, count = (int(part) for part in spec.split("/"))
        except ValueError:
            number = count = 0
        if not 1 <= number <= count:
            raise ValueError(f"--shard {spec!r}: expected N/M with 1 <= N <= M, or one of {list(SHARD_NAMES)}")
        return [item for index, item in enumerate(items) if index % count == number - 1]
    if spec not in SHARD_NAMES:
        raise ValueError(f"unknown --shard {spec!r}: expected one of {list(SHARD_NAMES)} or N/M")
    selected, grid_position = [], 0
    for item in items:
        position = grid_position
        if function_id(item) == GRID:
            grid_position += 1
        if shard_of(item, position) == spec:
            selected.append(item)
    return selected
