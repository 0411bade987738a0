"""The dense weight-gradient kernel: the result's layout, split-K, determinism, the split policy.

Against torch's float64 weight gradient (``grad_weight_reference``) on fresh random
inputs; under Triton's interpreter on the CPU (tests/conftest.py), on the GPU with
``CORRMM_TEST_DEVICE=cuda``. Shapes stay small: every case still spans several
programs, several K steps and, where asked, several splits.
"""
import importlib.util

import pytest
import torch

from corrmm import config
from corrmm.geometry import ConvGeometry
from tests.kernels.shared import TOLERANCE, ieee_float32, requires_kernels  # noqa: F401 (autouse fixture)
from tests.reference import DEVICE, seeded_generator

pytestmark = requires_kernels

if importlib.util.find_spec("triton") is not None:
    from corrmm.kernels import implicit_grad_weight as kgw


def geometry(batch, channels, filters, size, kernel, padding, stride=None, dilation=None, groups=1):
    ndim = len(size)
    return ConvGeometry(batch, channels, filters, tuple(size), tuple(kernel), tuple(padding),
                        tuple(stride or (1,) * ndim), tuple(dilation or (1,) * ndim), groups).validate()


def operands(g, dtype, key, memory_format=torch.contiguous_format):
    gen = seeded_generator("implicit_grad_weight", key, dtype)
    draw = lambda shape: torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)  # noqa: E731
    x, dy = draw(g.input_shape), draw(g.output_shape)
    return x.contiguous(memory_format=memory_format), dy.contiguous(memory_format=memory_format)


def rel_err(ours, ref):
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    assert not torch.isnan(ours).any(), "NaN in the result: an element was never written"
    return ((ours - ref).norm() / ref.norm().clamp_min(1e-300)).item()


# 2-D: 3·(5·6) = 90 pixels with a stride, padding, dilation and 2 groups; 3-D: 2·(3·4·3) = 72 pixels
LAYOUT_CASES = {
    "2d_nchw": (geometry(3, 6, 4, (9, 11), (3, 2), ((1, 0), (1, 2)), (2, 2), (1, 2), groups=2),
                torch.contiguous_format),
    "2d_channels_last": (geometry(3, 6, 4, (9, 11), (3, 2), ((1, 0), (1, 2)), (2, 2), (1, 2), groups=2),
                         torch.channels_last),
    "3d_channels_last_3d": (geometry(2, 4, 5, (3, 7, 5), (2, 3, 3), ((0, 1), (1, 1), (1, 0)), (1, 2, 2)),
                            torch.channels_last_3d),
}


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_result_in_the_callers_layout(case, splits):
    """dw comes back in x's memory format, written there by the GEMM (one split) or by the sum (several)."""
    g, memory_format = LAYOUT_CASES[case]
    x, dy = operands(g, torch.float32, case, memory_format)
    with config.poison_outputs():
        dw = kgw.grad_weight(x, dy, g, splits=splits)
    assert dw.shape == g.weight_shape
    assert dw.is_contiguous(memory_format=memory_format)
    assert rel_err(dw, kgw.grad_weight_reference(x.double(), dy.double(), g)) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_dtypes_odd_sizes_with_splits(dtype):
    """Every dtype, an odd image and a ragged last split: 5·7·3 = 105 pixels in chunks of 256 on a GPU
    (one split) and of 16-pixel steps under the interpreter (the splits are honoured as asked)."""
    g = geometry(5, 5, 7, (9, 5), (3, 3), ((1, 1), (0, 2)), (2, 1), (1, 2))
    x, dy = operands(g, dtype, "dtypes")
    with config.poison_outputs():
        dw = kgw.grad_weight(x, dy, g, splits=2)
    assert dw.dtype == dtype
    assert rel_err(dw, kgw.grad_weight_reference(x.double(), dy.double(), g)) <= TOLERANCE[dtype]


def test_split_k_is_bitwise_reproducible():
    """Two calls with the same split count give the same bits (the partials are summed in split order);
    on a GPU the reduction of this case spans 4 splits of 256 pixels, the last one ragged."""
    g = geometry(9, 4, 5, (10, 9), (3, 3), ((1, 1), (1, 1)))  # 9·10·9 = 810 pixels
    x, dy = operands(g, torch.bfloat16, "determinism")
    once = kgw.grad_weight(x, dy, g, splits=4)
    again = kgw.grad_weight(x, dy, g, splits=4)
    assert torch.equal(once, again), "split-K must be bit-for-bit reproducible"
    assert rel_err(once, kgw.grad_weight_reference(x.double(), dy.double(), g)) <= TOLERANCE[torch.bfloat16]
    default_once, default_again = kgw.grad_weight(x, dy, g), kgw.grad_weight(x, dy, g)
    assert torch.equal(default_once, default_again)


# ---- 1x1 layers read straight from NCHW planes (PLANES): K-major tiles, no layout copy --------------

PLANE_CASES = {
    "2d_groups2": geometry(3, 6, 10, (16, 16), (1, 1), ((0, 0), (0, 0)), groups=2),  # 256-pixel images
    "2d_64_pixels": geometry(5, 4, 9, (8, 8), (1, 1), ((0, 0), (0, 0))),  # blocks end exactly at image ends
    "3d": geometry(2, 5, 7, (4, 8, 8), (1, 1, 1), ((0, 0),) * 3),
}


def test_plane_multiple_is_a_multiple_of_every_k_step():
    """No BLOCK_K block may straddle two images: the plane multiple must be one of every tile's K step."""
    steps = {c.kwargs["BLOCK_K"] for c in kgw.GRAD_WEIGHT_CONFIGS}
    steps |= {tile[2] for tile in kgw._TILES_16BIT + kgw._TILES_32BIT}
    assert all(kgw.PLANE_MULTIPLE % step == 0 for step in steps), steps


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(PLANE_CASES))
def test_plane_reads(case, dtype):
    """1x1 layers on NCHW input take the plane read; with 1 and 3 splits it matches the reference."""
    g = PLANE_CASES[case]
    x, dy = operands(g, dtype, f"planes-{case}")
    assert kgw.reads_planes(g, x, dy)
    ref = kgw.grad_weight_reference(x.double(), dy.double(), g)
    for splits in (1, 3):
        with config.poison_outputs():
            dw = kgw.grad_weight(x, dy, g, splits=splits)
        assert dw.is_contiguous()
        assert rel_err(dw, ref) <= TOLERANCE[dtype], splits


def test_plane_reads_only_where_they_apply():
    """Channels-last input, a padded or strided 1x1 layer, or an image of 255 pixels take the tap kernel;
    asking for planes there is an error that names the geometry."""
    g = PLANE_CASES["2d_groups2"]
    x, dy = operands(g, torch.float32, "planes-where")
    assert not kgw.reads_planes(g, x.contiguous(memory_format=torch.channels_last), dy)
    for other in (geometry(1, 4, 4, (16, 16), (1, 1), ((1, 0), (0, 0))),
                  geometry(1, 4, 4, (32, 32), (1, 1), ((0, 0), (0, 0)), stride=(2, 2)),
                  geometry(1, 4, 4, (15, 17), (1, 1), ((0, 0), (0, 0))),
                  geometry(1, 4, 4, (4, 8), (1, 1), ((0, 0), (0, 0)))):  # 32 pixels
        xo, dyo = operands(other, torch.float32, "planes-other")
        assert not kgw.reads_planes(other, xo, dyo)
        with pytest.raises(ValueError, match="planes=True needs a 1x1"):
            kgw.grad_weight(xo, dyo, other, planes=True)
    assert rel_err(kgw.grad_weight(x, dy, g, planes=False),
                   kgw.grad_weight_reference(x.double(), dy.double(), g)) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nhwc_pair_moves_both_operands_in_one_launch(dtype):
    """The one-launch transpose of x and dy (NCHW calls on a GPU) gives both channels-last copies exactly,
    with an RGB input (narrow tiles) beside a 70-filter gradient (ragged tiles)."""
    gen = seeded_generator("nhwc_pair", dtype)
    x = torch.randn((2, 3, 9, 13), generator=gen).to(DEVICE, dtype)
    dy = torch.randn((2, 70, 5, 7), generator=gen).to(DEVICE, dtype)
    x_nhwc, dy_nhwc = kgw.nhwc_pair(x, dy)
    for ours, src in ((x_nhwc, x), (dy_nhwc, dy)):
        assert ours.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(ours, src)
