"""Host-side launch helpers of the kernels: the remembered weight copies and the planned launches."""
import gc
import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="corrmm.kernels needs Triton")

if importlib.util.find_spec("triton") is not None:
    from corrmm.kernels import common


def counting_relay():
    calls = []

    def relay(w):
        calls.append(1)
        return w.permute(0, 2, 3, 1).contiguous()
    return relay, calls


def test_weight_copy_is_reused_until_the_weight_changes():
    relay, calls = counting_relay()
    w = torch.randn(4, 3, 2, 2)
    first = common.relaid_weight(w, "test", relay)
    assert common.relaid_weight(w, "test", relay) is first and len(calls) == 1
    with torch.no_grad():
        w.add_(1.0)  # an optimizer step: the version counter moves
    second = common.relaid_weight(w, "test", relay)
    assert len(calls) == 2 and torch.equal(second, w.permute(0, 2, 3, 1))
    w.data = torch.randn(4, 3, 2, 2)  # rebinding the storage
    third = common.relaid_weight(w, "test", relay)
    assert len(calls) == 3 and torch.equal(third, w.permute(0, 2, 3, 1))
    assert common.relaid_weight(w, "other layout", relay) is not third and len(calls) == 4


def test_weight_copies_are_forgotten_with_their_weight():
    relay, calls = counting_relay()
    before = len(common._WEIGHT_COPIES)
    w = torch.randn(4, 3, 2, 2)
    common.relaid_weight(w, "test", relay)
    assert len(common._WEIGHT_COPIES) == before + 1
    del w
    gc.collect()
    assert len(common._WEIGHT_COPIES) == before
    # a new tensor is never served another tensor's copy, even at a recycled address or id
    for _ in range(20):
        fresh = torch.randn(4, 3, 2, 2)
        assert torch.equal(common.relaid_weight(fresh, "test", relay), fresh.permute(0, 2, 3, 1))


def test_relay_returning_its_argument_is_not_remembered():
    w = torch.randn(2, 2, 1, 1)
    before = len(common._WEIGHT_COPIES)
    assert common.relaid_weight(w, "identity", lambda t: t) is w
    assert len(common._WEIGHT_COPIES) == before


def test_planned_builds_once_per_key():
    built = []
    key = ("test-plan", object())
    one = common.planned(key, lambda: built.append(1) or "plan")
    two = common.planned(key, lambda: built.append(1) or "other")
    assert one == two == "plan" and built == [1]
