"""Random geometries (hypothesis): every algorithm agrees with torch's float64 reference."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corrmm

from tests.reference import INTERPRETED, randn, reference_passes, refused, seeded_generator


@st.composite
def problems(draw):
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg, kg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    batch = draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 4)) for _ in range(nd)]
    stride = [draw(st.integers(1, 3)) for _ in range(nd)]
    dilation = [draw(st.integers(1, 2)) for _ in range(nd)]
    padding = [(draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(nd)]
    size = []
    for k, d, (lo, hi) in zip(kernel, dilation, padding):
        least = max(1, (k - 1) * d + 1 - lo - hi)
        size.append(draw(st.integers(least, least + (6 if nd < 3 else 3))))
    return nd, batch, cg * groups, kg * groups, groups, size, kernel, padding, stride, dilation


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems(), algo=st.sampled_from([a for a in ["auto", *corrmm.algorithms()] if a not in INTERPRETED]))
def test_random_geometries_match_reference(problem, algo):
    nd, n, c, k, groups, size, kernel, padding, stride, dilation = problem
    gen = seeded_generator(problem, algo)
    x, w = randn((n, c, *size), gen), randn((k, c // groups, *kernel), gen)
    kw = dict(border_mode=tuple(padding), subsample=stride, filter_dilation=dilation, num_groups=groups, algo=algo)
    try:
        y = getattr(corrmm, f"corr{nd}d")(x, w, **kw)
    except ValueError as err:
        if refused(algo, err):
            return
        raise
    dy = randn(y.shape, gen)
    gx = getattr(corrmm, f"corr{nd}d_grad_input")(w, dy, size, **kw)
    gw = getattr(corrmm, f"corr{nd}d_grad_weight")(x, dy, kernel, **kw)
    ref = reference_passes(x.cpu(), w.cpu(), dy.cpu(), padding, stride, dilation, groups)
    for ours, r in zip((y, gx, gw), ref):
        assert ours.shape == r.shape
        torch.testing.assert_close(ours.cpu(), r, rtol=1e-9, atol=1e-9)
