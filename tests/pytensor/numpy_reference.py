"""An independent reference for the PyTensor tests: the three passes in plain numpy.

Explicit loops over the kernel taps, each a strided slice of the padded input
and one einsum over the channels of a group; no torch, no corrmm. Also the
ported Theano parameter grids.
"""
from __future__ import annotations

import itertools
import zlib

import numpy as np

from corrmm.geometry import make_geometry


def rng(*key) -> np.random.Generator:
    """A generator seeded from the test case, so every case draws its own inputs."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _tap_slices(tap, geometry):
    """The padded-input window read by kernel tap ``tap`` for every output position."""
    return tuple(slice(r * d, r * d + (p - 1) * s + 1, s)
                 for r, d, p, s in zip(tap, geometry.dilation, geometry.out_size, geometry.stride))


def _grouped(a, groups):  # (N, C, ...) -> (N, G, C // G, ...)
    return a.reshape(a.shape[0], groups, a.shape[1] // groups, *a.shape[2:])


def corr(x, w, geometry):
    g = geometry
    xp = np.pad(x, [(0, 0), (0, 0), *g.padding])
    out = np.zeros(g.output_shape, dtype=np.float64)
    wg = w.reshape(g.groups, g.out_channels // g.groups, *w.shape[1:])  # (G, Kg, Cg, *k)
    og = _grouped(out, g.groups)
    for tap in itertools.product(*(range(k) for k in g.kernel)):
        patch = _grouped(xp[(slice(None), slice(None)) + _tap_slices(tap, g)], g.groups)  # (N, G, Cg, *P)
        og += np.einsum("ngc...,gkc->ngk...", patch, wg[(Ellipsis, *tap)])
    return out


def corr_grad_input(w, dy, geometry):
    g = geometry
    padded = [n + low + high for n, (low, high) in zip(g.in_size, g.padding)]
    dxp = np.zeros((g.batch, g.in_channels, *padded), dtype=np.float64)
    wg = w.reshape(g.groups, g.out_channels // g.groups, *w.shape[1:])
    dyg = _grouped(dy, g.groups)  # (N, G, Kg, *P)
    for tap in itertools.product(*(range(k) for k in g.kernel)):
        window = (slice(None), slice(None)) + _tap_slices(tap, g)
        contribution = np.einsum("ngk...,gkc->ngc...", dyg, wg[(Ellipsis, *tap)])
        dxp[window] += contribution.reshape(g.batch, g.in_channels, *contribution.shape[3:])
    crop = tuple(slice(low, low + n) for n, (low, _) in zip(g.in_size, g.padding))
    return dxp[(slice(None), slice(None)) + crop]


def corr_grad_weight(x, dy, geometry):
    g = geometry
    xp = np.pad(x, [(0, 0), (0, 0), *g.padding])
    dw = np.zeros(g.weight_shape, dtype=np.float64)
    dwg = dw.reshape(g.groups, g.out_channels // g.groups, *dw.shape[1:])
    dyg = _grouped(dy, g.groups)
    for tap in itertools.product(*(range(k) for k in g.kernel)):
        patch = _grouped(xp[(slice(None), slice(None)) + _tap_slices(tap, g)], g.groups)
        spatial = "xyz"[:g.ndim]
        dwg[(Ellipsis, *tap)] = np.einsum(f"ngc{spatial},ngk{spatial}->gkc", patch, dyg)
    return dw


def flip(w):
    return w[(slice(None), slice(None)) + (slice(None, None, -1),) * (w.ndim - 2)]


def reference(case, x, w, dy):
    """(forward, grad_input, grad_weight) of ``case`` in float64, flips applied as the case says."""
    g = make_geometry(x.shape, w.shape, case.border_mode, case.subsample, case.dilation, case.groups)
    kernel = flip(w) if case.flip else w
    grad_weight = corr_grad_weight(x, dy, g)
    return corr(x, kernel, g), corr_grad_input(kernel, dy, g), flip(grad_weight) if case.flip else grad_weight


def tolerance(dtype, reduction: int) -> float:
    """Absolute tolerance on unit-normal data: rounding grows at most linearly with the reduction length."""
    eps = float(np.finfo(dtype).eps)
    return 30 * eps * max(reduction, 1)


# ---- the grids (ported from Theano's test_corr.py, test_corr3d.py and test_abstract_conv.py) ----

class Case:
    def __init__(self, image, kernel, border_mode="valid", subsample=1, dilation=1, groups=1, flip=False):
        self.image, self.kernel = tuple(image), tuple(kernel)
        self.border_mode, self.subsample, self.dilation = border_mode, subsample, dilation
        self.groups, self.flip = groups, flip

    @property
    def ndim(self):
        return len(self.image) - 2

    @property
    def geometry(self):
        return make_geometry(self.image, self.kernel, self.border_mode, self.subsample, self.dilation, self.groups)

    def __repr__(self):
        return (f"Case({self.image}, {self.kernel}, {self.border_mode!r}, s={self.subsample}, d={self.dilation}, "
                f"g={self.groups}, flip={self.flip})")


# test_corr.py: test_basic (every border mode over odd/even, square/rectangular images and filters)
CORR2D_BORDER_MODES = ["valid", "full", "half", (1, 1), (2, 1), (1, 2), (3, 3), 1]
CORR2D_SHAPES = [((2, 2, 3, 3), (2, 2, 2, 2)), ((3, 2, 8, 8), (4, 2, 5, 5)), ((3, 2, 7, 5), (5, 2, 2, 3)),
                 ((3, 2, 7, 5), (5, 2, 3, 2))]
# test_corr.py: test_subsample / test_filter_dilation (shape pairs and per-mode settings)
CORR2D_STRIDED = [((3, 2, 7, 5), (5, 2, 2, 3), (2, 2)), ((3, 2, 7, 5), (5, 2, 2, 3), (2, 1)),
                  ((1, 1, 6, 6), (1, 1, 3, 3), (3, 3))]
CORR2D_DILATED = [((3, 2, 7, 5), (5, 2, 2, 3), (2, 2)), ((3, 2, 14, 10), (5, 2, 2, 3), (3, 1)),
                  ((1, 1, 14, 14), (1, 1, 3, 3), (2, 3))]
# test_abstract_conv.py: BaseTestConv2d (shapes incl. empty batch/channels, subsamples, dilations, modes)
ABSTRACT2D_SHAPES = [((8, 1, 6, 6), (5, 1, 2, 2)), ((2, 1, 7, 7), (2, 1, 3, 3)), ((6, 1, 10, 11), (1, 1, 2, 3)),
                     ((1, 5, 9, 9), (4, 5, 3, 2)), ((0, 1, 6, 6), (1, 1, 2, 2)), ((1, 0, 6, 6), (1, 0, 2, 2)),
                     ((1, 1, 6, 6), (0, 1, 2, 2))]
ABSTRACT2D_SUBSAMPLES = [(1, 1), (2, 2), (2, 4)]
ABSTRACT2D_DILATIONS = [(1, 1), (1, 2), (2, 1)]
ABSTRACT2D_BORDER_MODES = ["valid", "half", "full", (0, 0), (1, 1), (5, 5), (5, 2)]
# test_abstract_conv.py: grouped convolution (TestGroupedConvNoOptim)
GROUPED2D = [((5, 6, 5, 5), (6, 2, 3, 3), 3), ((4, 4, 7, 5), (6, 2, 5, 3), 2), ((3, 8, 5, 3), (4, 2, 3, 3), 4),
             ((2, 4, 7, 7), (4, 1, 3, 5), 4)]
# test_corr3d.py: test_basic / test_subsample, and test_abstract_conv.py BaseTestConv3d
CORR3D_BORDER_MODES = ["valid", "full", "half", (1, 1, 1), (2, 1, 1), 1]
CORR3D_SHAPES = [((2, 2, 3, 3, 3), (2, 2, 2, 2, 2)), ((3, 2, 7, 5, 5), (2, 2, 2, 3, 2)),
                 ((3, 2, 7, 5, 5), (2, 2, 3, 2, 2))]
ABSTRACT3D = [((2, 1, 5, 5, 5), (2, 1, 2, 2, 2), (1, 1, 1), (1, 1, 1)), ((1, 2, 7, 5, 6), (1, 2, 2, 1, 3), (1, 2, 3),
                                                                         (2, 1, 2)),
              ((0, 1, 5, 5, 5), (1, 1, 2, 2, 2), (2, 2, 2), (1, 2, 1)), ((1, 1, 5, 5, 5), (0, 1, 2, 2, 2), (1, 1, 1),
                                                                         (1, 1, 1))]


def grid_2d():
    cases = []
    for i, (mode, (image, kernel)) in enumerate(itertools.product(CORR2D_BORDER_MODES, CORR2D_SHAPES)):
        cases.append(Case(image, kernel, mode, flip=bool(i % 2)))
    for mode in ("valid", "full", "half", (2, 1), 1):
        for image, kernel, stride in CORR2D_STRIDED:
            cases.append(Case(image, kernel, mode, subsample=stride, flip=True))
        for image, kernel, dilation in CORR2D_DILATED:
            cases.append(Case(image, kernel, mode, dilation=dilation))
    cases.append(Case((1, 1, 6, 6), (1, 1, 3, 3), 1, subsample=(3, 3), dilation=(2, 2)))
    cases.append(Case((3, 2, 5, 5), (4, 2, 8, 8), "full"))  # test_full_mode: kernel larger than the image
    for i, (image, kernel) in enumerate(ABSTRACT2D_SHAPES):
        for j, mode in enumerate(ABSTRACT2D_BORDER_MODES):
            stride = ABSTRACT2D_SUBSAMPLES[(i + j) % 3]
            dilation = ABSTRACT2D_DILATIONS[(i + 2 * j) % 3]
            case = Case(image, kernel, mode, stride, dilation, flip=bool(j % 2))
            try:
                case.geometry
            except ValueError:  # Theano skipped the combinations with an empty output too
                continue
            cases.append(case)
    for image, kernel, groups in GROUPED2D:
        cases.append(Case(image, kernel, "valid", groups=groups, flip=True))
        cases.append(Case(image, kernel, "half", subsample=(2, 1), groups=groups))
    return cases


def grid_1d():
    """Theano had no 1-D CorrMM: the 2-D grid's first spatial dimension."""
    cases = []
    for case in grid_2d():
        mode = case.border_mode
        if isinstance(mode, tuple):
            mode = (mode[0],)
        one = lambda v: v if isinstance(v, int) else (v[0],)  # noqa: E731
        cases.append(Case(case.image[:3], case.kernel[:3], mode, one(case.subsample), one(case.dilation),
                          case.groups, case.flip))
    unique = {repr(c): c for c in cases}
    return list(unique.values())


def grid_3d():
    cases = []
    for i, (mode, (image, kernel)) in enumerate(itertools.product(CORR3D_BORDER_MODES, CORR3D_SHAPES)):
        cases.append(Case(image, kernel, mode, flip=bool(i % 2)))
    for image, kernel, stride, dilation in ABSTRACT3D:
        for mode in ("valid", "half", (2, 2, 3)):
            cases.append(Case(image, kernel, mode, stride, dilation, flip=True))
    cases.append(Case((3, 2, 7, 5, 5), (2, 2, 2, 3, 3), "half", subsample=(2, 1, 1)))  # test_corr3d test_subsample
    cases.append(Case((3, 4, 5, 5, 5), (4, 2, 3, 3, 3), "valid", groups=2))
    return cases
