"""Every algorithm, every pass, every dtype against torch's float64 correlation.

The grid follows Theano's conv tests: every border mode, subsample (1,1) (2,2)
(2,4) (3,2), dilation (1,2) (2,1), groups, kernels larger than the image in
full mode, 1x1 images and kernels, odd and prime sizes. An algorithm either
matches the reference or refuses the case with a ValueError that says why;
im2col and swapped must serve every case.
"""
import itertools

import pytest
import torch

import corrmm
from corrmm.algorithms import REGISTRY

from tests.reference import (DEVICE, DTYPES, INTERPRETED, UNIVERSAL, assert_passes_match_reference, randn,
                             seeded_generator)


# (batch, channels, in_size, filters, kernel, groups)
SHAPES_2D = [
    (2, 3, (7, 11), 4, (3, 2), 1),
    (3, 4, (13, 5), 6, (5, 3), 2),
    (1, 1, (1, 1), 2, (1, 1), 1),        # 1x1 image and kernel
    (2, 2, (3, 4), 3, (5, 6), 1),        # kernel larger than the image: only full/padded modes fit
    (2, 6, (17, 19), 6, (1, 1), 3),      # 1x1 kernel, prime sizes
    (2, 4, (9, 8), 4, (3, 3), 4),        # depthwise
]
BORDER_MODES_2D = ["valid", "full", "half", 1, (2, 0), ((1, 3), (0, 2))]
STRIDE_DILATION_2D = [((1, 1), (1, 1)), ((2, 2), (1, 1)), ((2, 4), (1, 2)), ((3, 2), (2, 1)), ((1, 1), (2, 1))]

SHAPES_1D = [(2, 3, (11,), 4, (3,), 1), (2, 4, (5,), 2, (7,), 2)]
SHAPES_3D = [(2, 2, (5, 4, 6), 3, (2, 3, 1), 1), (1, 4, (3, 5, 4), 2, (3, 1, 2), 2)]


def padding_of(border_mode, kernel, dilation):
    """The test's own reading of DESIGN 1's border modes (independent of corrmm.geometry)."""
    nd = len(kernel)
    if border_mode == "valid":
        return [(0, 0)] * nd
    if border_mode == "full":
        return [((k - 1) * d,) * 2 for k, d in zip(kernel, dilation)]
    if border_mode == "half":
        return [(((k - 1) * d + 1) // 2,) * 2 for k, d in zip(kernel, dilation)]
    if isinstance(border_mode, int):
        return [(border_mode, border_mode)] * nd
    return [p if isinstance(p, tuple) else (p, p) for p in border_mode]


def _cases(shapes, border_modes, stride_dilation):
    return [(shape, bm, s, d) for shape, bm, (s, d) in itertools.product(shapes, border_modes, stride_dilation)]


CASES = (_cases(SHAPES_2D, BORDER_MODES_2D, STRIDE_DILATION_2D)
         + _cases(SHAPES_1D, ["valid", "full", (1,), ((2, 0),)], [((1,), (1,)), ((2,), (2,)), ((3,), (1,))])
         + _cases(SHAPES_3D, ["valid", "half", ((1, 0), (0, 2), (1, 1))],
                  [((1, 1, 1), (1, 1, 1)), ((2, 1, 3), (1, 2, 1))]))
CASES_3D = [case for case in CASES if len(case[0][2]) == 3]


#: the few geometries of the quick tier (tests/tiers.py), run by every algorithm in every dtype; between
#: them: groups, depthwise, asymmetric padding, stride, dilation, a kernel larger than the image, 1-D, 3-D
QUICK_CASES = [
    (SHAPES_2D[1], ((1, 3), (0, 2)), (2, 4), (1, 2)),
    (SHAPES_2D[3], "full", (3, 2), (2, 1)),
    (SHAPES_2D[5], "half", (2, 2), (1, 1)),
    (SHAPES_1D[1], "full", (2,), (2,)),
    (SHAPES_3D[1], ((1, 0), (0, 2), (1, 1)), (2, 1, 3), (1, 2, 1)),
]


def _case_id(case):
    (n, c, size, k, kernel, g), bm, s, d = case
    return f"{len(size)}d-n{n}c{c}x{'x'.join(map(str, size))}-k{k}r{'x'.join(map(str, kernel))}g{g}-{bm}-s{s}-d{d}"


def _run_case(algo, dtype, case):
    (n, c, size, k, kernel, groups), border_mode, stride, dilation = case
    padding = padding_of(border_mode, kernel, dilation)
    out = [(h + lo + hi - ((r - 1) * dl + 1)) // st + 1
           for h, (lo, hi), r, st, dl in zip(size, padding, kernel, stride, dilation)]
    fn = getattr(corrmm, f"corr{len(size)}d")
    gen = seeded_generator(algo, dtype, case)
    x64 = randn((n, c, *size), gen)
    w64 = randn((k, c // groups, *kernel), gen)
    kwargs = dict(border_mode=border_mode, subsample=stride, filter_dilation=dilation, num_groups=groups, algo=algo)
    x, w = x64.to(dtype), w64.to(dtype)
    if min(out) < 1:
        with pytest.raises(ValueError, match="smaller than the dilated kernel|output"):
            fn(x, w, **kwargs)
        return
    dy64 = randn((n, k, *out), gen)
    dy = dy64.to(dtype)
    try:
        y = fn(x, w, **kwargs)
    except ValueError as err:
        assert algo not in UNIVERSAL, f"{algo} must serve every case: {err}"
        reasons = REGISTRY[algo].not_supported_reasons(
            corrmm.geometry.make_geometry(x.shape, w.shape, border_mode, stride, dilation, groups),
            "forward", x.device, dtype)
        assert reasons and "cannot run" in str(err)
        return
    geometry = corrmm.geometry.make_geometry(x.shape, w.shape, border_mode, stride, dilation, groups)
    gx = _pass_or_refusal(algo, "grad_input", geometry, dtype, lambda: getattr(
        corrmm, f"corr{len(size)}d_grad_input")(w, dy, size, **kwargs))
    gw = _pass_or_refusal(algo, "grad_weight", geometry, dtype, lambda: getattr(
        corrmm, f"corr{len(size)}d_grad_weight")(x, dy, kernel, **kwargs))
    assert y.shape == (n, k, *out) and (gx is None or gx.shape == x.shape) and (gw is None or gw.shape == w.shape)
    assert_passes_match_reference((y, gx, gw), (x64, w64, dy64), (x, w, dy), padding, stride, dilation, groups,
                                  dtype, algo)


def _pass_or_refusal(algo, pass_name, geometry, dtype, run):
    """A gradient pass's result, or None where ``algo`` refuses that pass alone (saying why)."""
    try:
        return run()
    except ValueError as err:
        assert algo not in UNIVERSAL, f"{algo} must serve every case: {err}"
        assert REGISTRY[algo].not_supported_reasons(geometry, pass_name, DEVICE, dtype) and "cannot run" in str(err)
        return None


def _grid():
    for algo in corrmm.algorithms():
        for dtype in DTYPES:
            cases = CASES
            if algo in INTERPRETED:  # interpreted kernels: every feature, fewer combinations
                if dtype not in (torch.float32, torch.bfloat16):
                    continue
                cases = CASES[::11] + CASES_3D[1::4]  # and a few more 3-D cases than every 11th
            for case in cases:
                yield pytest.param(algo, dtype, case, id=f"{algo}-{str(dtype)[6:]}-{_case_id(case)}",
                                   marks=[pytest.mark.quick] if case in QUICK_CASES else [])


@pytest.mark.parametrize("algo,dtype,case", list(_grid()))
def test_matches_reference(algo, dtype, case):
    _run_case(algo, dtype, case)


def test_auto_matches_reference():
    for case in CASES[::7]:
        _run_case("auto", torch.float32, case)


def test_universal_algorithms_are_registered():
    assert UNIVERSAL <= set(corrmm.algorithms())
