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


def test_every_autotuned_kernel_uses_the_short_timing_and_the_result_cache():
    """A new layer shape should cost seconds of tuning, not minutes."""
    import inspect

    import triton
    from triton.runtime.autotuner import Autotuner

    from corrmm.kernels import depthwise, implicit_forward, implicit_grad_input, implicit_grad_weight

    accepted = inspect.signature(triton.autotune).parameters
    tuners = [obj for module in (depthwise, implicit_forward, implicit_grad_input, implicit_grad_weight)
              for obj in vars(module).values() if isinstance(obj, Autotuner)]
    assert len(tuners) >= 7
    for tuner in tuners:
        if "do_bench" in accepted:
            assert tuner._do_bench is common._time_config, tuner.base_fn.__name__
