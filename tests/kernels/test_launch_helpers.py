"""Host-side launch helpers of the kernels: planned launches, built once per key."""
import importlib.util

import pytest
import torch

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


class _FakeCompiled:
    """What _lean_runner reads from a Triton CompiledKernel."""

    function, packed_metadata = "function-handle", "packed"

    def __init__(self):
        self.launches, self.runner_calls = [], []

    def run(self, *args):
        self.launches.append(args)

    def __getitem__(self, grid):
        return lambda *args: self.runner_calls.append((grid, args))


def test_lean_runner_launches_on_torchs_stream_and_defers_to_triton_under_a_profiler(monkeypatch):
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 1000 + device, raising=False)
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 3, raising=False)
    compiled = _FakeCompiled()
    launch = common._lean_runner(compiled, (5, 2, 1))
    launch("x", "y", 7)
    assert compiled.launches == [(5, 2, 1, 1003, "function-handle", "packed", None, None, None, "x", "y", 7)]
    assert compiled.runner_calls == []

    # a launch hook (a profiler): every launch goes through Triton's runner, which calls it
    hook = lambda *args: None  # noqa: E731
    owner = common._hook_owner()
    chain = owner.launch_enter_hook
    if hasattr(chain, "add"):  # Triton 3.9: a chain of hooks
        chain.add(hook)
        undo = lambda: chain.remove(hook)  # noqa: E731
    else:  # a plain attribute, None when unset
        monkeypatch.setattr(owner, "launch_enter_hook", hook)
        undo = lambda: monkeypatch.setattr(owner, "launch_enter_hook", None)  # noqa: E731
    try:
        assert common._hooks_active()
        launch("x", "y", 7)
    finally:
        undo()
    assert compiled.runner_calls == [((5, 2, 1), ("x", "y", 7))] and len(compiled.launches) == 1
    assert not common._hooks_active()
