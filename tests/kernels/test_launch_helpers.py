"""Host-side launch helpers of the kernels: planned launches, built once per key."""
import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="corrmm.kernels needs Triton")

if importlib.util.find_spec("triton") is not None:
    from corrmm.kernels import common


def test_planned_builds_once_per_key():
    built = []
    key = ("test-plan", object())
    one = common.planned(key, lambda: built.append(1) or "plan")
    two = common.planned(key, lambda: built.append(1) or "other")
    assert one == two == "plan" and built == [1]
