"""Shared test set-up. Without a GPU, Triton kernels run in Triton's
interpreter, which must be switched on before anything imports triton.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture
def fresh_dynamo():
    """A clean torch.compile state (caches and counters) around a compile test."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def pytest_addoption(parser):
    group = parser.getgroup("corrmm", "test tiers for the GPU run (see tests/tiers.py)")
    group.addoption("--tier", choices=("full", "quick"), default="full",
                    help="quick: every algorithm, pass and dtype on a few geometries, and the cheap tests; "
                    "full (default): everything")
    group.addoption("--shard", default=None, metavar="NAME|N/M",
                    help="one part of the full tier: grid-a, grid-b, grid-c, kernels, integrations, core, or N/M")


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: a parametrisation the quick tier keeps (tests/tiers.py)")


def pytest_collection_modifyitems(config, items):
    from tests import tiers

    tier, shard = config.getoption("--tier"), config.getoption("--shard")
    if tier == "full" and shard is None:
        return
    if tier == "quick" and shard is not None:
        raise pytest.UsageError("--shard splits the full tier; it does not combine with --tier quick")
    try:
        selected = tiers.quick(items) if tier == "quick" else tiers.shard(items, shard)
    except ValueError as err:
        raise pytest.UsageError(str(err)) from None
    kept = set(map(id, selected))
    config.hook.pytest_deselected(items=[item for item in items if id(item) not in kept])
    items[:] = selected
