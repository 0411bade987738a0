"""Repeated calls with one signature: the cached plans and launches must follow the data.

A second call with the same shapes takes a remembered plan (and, on a GPU, a
direct kernel launch). Every way of changing a tensor between calls must show
in the result: new tensors, in-place writes under no_grad, and writes through
``.data``, which bypass the version counter (gradcheck perturbs inputs that way).
"""
import pytest
import torch

import corrmm
from tests.reference import INTERPRETED, randn, reference_passes, rel_err, seeded_generator

ALGOS = [name for name in corrmm.algorithms()]
GEOMETRY = dict(border_mode="half", subsample=1)
TOLERANCE = 1e-12


@pytest.mark.parametrize("algo", ALGOS)
def test_results_follow_every_kind_of_change(algo):
    gen = seeded_generator("repeated", algo)
    shape = (2, 4, 5, 6) if algo in INTERPRETED else (3, 6, 9, 8)
    x = randn(shape, gen)
    k = 1 if algo == "gemm1x1" else 3  # gemm1x1 serves 1x1 kernels only
    groups = shape[1] if algo == "depthwise" else 1  # depthwise serves groups == channels only
    filters = 2 * shape[1] if algo == "depthwise" else 5
    w = randn((filters, shape[1] // groups, k, k), gen)
    dy = randn((shape[0], filters, *shape[2:]), gen)

    def check(label):
        y = corrmm.corr2d(x, w, algo=algo, num_groups=groups, **GEOMETRY)
        gx = corrmm.corr2d_grad_input(w, dy, shape[2:], algo=algo, num_groups=groups, **GEOMETRY)
        gw = corrmm.corr2d_grad_weight(x, dy, (k, k), algo=algo, num_groups=groups, **GEOMETRY)
        ref = reference_passes(x, w, dy, ((k // 2, k // 2),) * 2, (1, 1), (1, 1), groups)
        for name, ours, theirs in zip(("forward", "grad_input", "grad_weight"), (y, gx, gw), ref):
            assert rel_err(ours, theirs) <= TOLERANCE, f"{label}: {name} is stale or wrong"

    check("first call")
    check("same tensors again")
    with torch.no_grad():
        w.mul_(-0.5)
        x.add_(1.0)
    check("after in-place writes")
    w.data[0].normal_(generator=None)
    x.data[:, 0] = 3.0
    dy.data.mul_(2.0)
    check("after writes through .data")
    x, w = x.clone(), w.clone().contiguous(memory_format=torch.channels_last)
    check("new tensors, the weight channels_last")
