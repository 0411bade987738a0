"""The GPU run's test tiers (tests/tiers.py, the ``--tier``/``--shard`` options of tests/conftest.py).

The quick tier is collected for real, as on the GPU (``CORRMM_TEST_DEVICE=cuda``:
collection needs no GPU); the shard rules are checked on stand-in items.
"""
from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import corrmm
from tests import tiers
from tests.algorithms.test_reference_grid import QUICK_CASES

ROOT = Path(__file__).resolve().parents[1]


def _collect(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CORRMM_TEST_DEVICE="cuda")
    src = str(Path(corrmm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_quick_tier_runs_every_algorithm_in_every_dtype_on_1d_2d_and_3d():
    done = _collect("--tier", "quick", "tests")
    assert done.returncode == 0, done.stdout + done.stderr
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    grid = [i for i in ids if i.startswith(tiers.GRID + "[")]
    seen = collections.defaultdict(set)  # (algo, dtype) -> dimensionalities
    for node in grid:
        algo, dtype, dims = re.match(r".*\[(\w+)-(\w+)-(\d)d-", node).groups()
        seen[(algo, dtype)].add(dims)
    dtypes = ["float16", "bfloat16", "float32", "float64"]
    # each grid test checks all three passes against float64: every algorithm, pass and dtype is covered
    assert set(seen) == {(a, d) for a in corrmm.algorithms() for d in dtypes}
    assert all(dims == {"1", "2", "3"} for dims in seen.values()), seen
    assert len(grid) == len(corrmm.algorithms()) * len(dtypes) * len(QUICK_CASES)
    assert not [i for i in ids if any(i.startswith(p) for p in tiers.QUICK_EXCLUDED)]
    per_function = collections.Counter(i.split("[")[0] for i in ids if "[" in i and not i.startswith(tiers.GRID))
    assert per_function and max(per_function.values()) <= tiers.QUICK_MAX_CASES
    assert "tests/test_geometry.py::test_normalize_ints" in ids  # unparametrised cheap tests stay


def test_bad_tier_options_are_usage_errors():
    done = _collect("--shard", "grid-z", "tests/test_geometry.py")
    assert done.returncode != 0 and "grid-z" in done.stderr + done.stdout


class Item:
    """Enough of a pytest item for the selection rules."""

    def __init__(self, nodeid: str, quick: bool = False):
        self.nodeid, self.quick = nodeid, quick

    def get_closest_marker(self, name):
        return object() if name == "quick" and self.quick else None

    def __repr__(self):
        return self.nodeid


def _items():
    items = [Item(f"{tiers.GRID}[im2col-float32-case{i}]", quick=i in (3, 7)) for i in range(10)]
    items += [Item(f"tests/kernels/test_k.py::test_a[{i}]") for i in range(20)]
    items += [Item("tests/algorithms/test_fft.py::test_b"), Item("tests/test_compile.py::test_c"),
              Item("tests/integrations/test_ddp.py::test_d"), Item("tests/cli/test_bench.py::test_e"),
              Item("tests/test_nn.py::test_f"), Item("tests/test_tiers.py::test_g")]
    return items


def test_named_shards_split_the_full_tier_exactly_once():
    items = _items()
    shards = {name: tiers.shard(items, name) for name in tiers.SHARD_NAMES}
    together = [id(item) for members in shards.values() for item in members]
    assert sorted(together) == sorted(map(id, items))  # every test in exactly one shard
    grid = [item for item in items if item.nodeid.startswith(tiers.GRID)]
    assert [len(shards[f"grid-{c}"]) for c in "abc"] == [4, 3, 3]
    assert shards["grid-b"] == grid[1::3]
    assert len(shards["kernels"]) == 21 and all(not i.nodeid.startswith(tiers.GRID) for i in shards["kernels"])
    assert [i.nodeid for i in shards["integrations"]] == ["tests/test_compile.py::test_c",
                                                         "tests/integrations/test_ddp.py::test_d",
                                                         "tests/cli/test_bench.py::test_e"]
    assert [i.nodeid for i in shards["core"]] == ["tests/test_nn.py::test_f", "tests/test_tiers.py::test_g"]


def test_numbered_shards_split_in_turn():
    items = _items()
    parts = [tiers.shard(items, f"{n}/4") for n in range(1, 5)]
    assert sorted(id(i) for part in parts for i in part) == sorted(map(id, items))
    assert parts[1] == items[1::4]
    for bad in ("0/4", "5/4", "x/y", "nope"):
        with pytest.raises(ValueError, match="shard"):
            tiers.shard(items, bad)


def test_quick_selection_keeps_marked_cases_and_thins_the_rest():
    items = _items()
    kept = tiers.quick(items)
    assert [i.nodeid for i in kept if i.nodeid.startswith(tiers.GRID)] == [f"{tiers.GRID}[im2col-float32-case{i}]"
                                                                          for i in (3, 7)]
    thinned = [i.nodeid for i in kept if i.nodeid.startswith("tests/kernels/")]
    assert len(thinned) == tiers.QUICK_MAX_CASES
    assert thinned[0].endswith("[0]") and thinned[-1].endswith("[19]")  # evenly spaced, both ends
    assert tiers.quick(items) == kept  # deterministic
    assert not {"test_c", "test_d", "test_e"} & {i.nodeid.split("::")[1] for i in kept}
