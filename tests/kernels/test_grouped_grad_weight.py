"""The packed-groups weight-gradient kernel (corrmm.kernels.grouped_grad_weight) against float64 references.

On the CPU the kernel runs under Triton's interpreter on small shapes; on a GPU
(the quick tier) the same tests compile it.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

import corrmm
from corrmm import config
from corrmm.geometry import ConvGeometry
from tests.kernels.shared import TOLERANCE, ieee_float32, requires_kernels  # noqa: F401 (autouse fixture)
from tests.reference import DEVICE, seeded_generator

pytestmark = requires_kernels

if importlib.util.find_spec("triton") is not None:
    from corrmm.kernels import grouped_grad_weight as ggw, implicit_grad_weight as kgw


def geometry(batch, channels, filters, size, kernel, padding=None, stride=None, dilation=None, groups=1):
    nd = len(size)
    return ConvGeometry(batch, channels, filters, tuple(size), tuple(kernel), tuple(padding or ((0, 0),) * nd),
                        tuple(stride or (1,) * nd), tuple(dilation or (1,) * nd), groups).validate()


def rel_err(ours, ref):
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    assert not torch.isnan(ours).any(), "NaN in the result: an element was never written"
    return ((ours - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def operands(g, dtype, key):
    gen = seeded_generator("grouped_grad_weight", key, dtype)
    draw = lambda shape: torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)  # noqa: E731
    return draw(g.input_shape), draw(g.output_shape)


def check(g, dtype=torch.float32, key="", splits=None, pack=None):
    x, dy = operands(g, dtype, key)
    with config.poison_outputs():
        dw = ggw.grad_weight(x, dy, g, splits=splits, pack=pack)
    assert dw.shape == g.weight_shape and dw.dtype == dtype
    err = rel_err(dw, kgw.grad_weight_reference(x.double(), dy.double(), g))
    assert err <= TOLERANCE[dtype], f"relative error {err:.2e} > {TOLERANCE[dtype]:.0e}"
    return dw


GEOMETRIES = {
    # ResNeXt-like: 8 groups of 4 channels and filters (GP = 8 by default)
    "groups8_cg4_3x3_pad1": geometry(2, 32, 32, (5, 6), (3, 3), ((1, 1), (1, 1)), groups=8),
    # a packed block wider than one 16-column tile, odd channel count per group (Cg = 3, Kg = 5)
    "groups4_cg3_kg5_stride2_asym_pad": geometry(2, 12, 20, (7, 8), (3, 2), ((2, 0), (1, 1)), (2, 2), groups=4),
    "groups2_dilation_kernel_larger_than_stride": geometry(1, 6, 8, (9, 7), (3, 3), ((1, 1), (0, 2)), (1, 2),
                                                           (2, 1), groups=2),
    "grouped_1x1": geometry(3, 16, 16, (4, 5), (1, 1), groups=4),
    "grouped_1x1_strided": geometry(2, 16, 8, (5, 7), (1, 1), stride=(2, 3), groups=4),
    # the pixel digits carry across several images per K block
    "tiny_images": geometry(5, 8, 8, (1, 3), (1, 2), groups=2),
    "3d_groups4": geometry(2, 8, 8, (3, 4, 5), (2, 3, 2), ((1, 0), (1, 1), (0, 1)), (1, 2, 1), (2, 1, 1),
                           groups=4),
    # 32 filters per group: one group per program, no packing
    "groups2_kg32": geometry(1, 6, 64, (4, 4), (2, 2), groups=2),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_geometries_float32(name):
    check(GEOMETRIES[name], key=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_dtypes(dtype):
    check(GEOMETRIES["groups4_cg3_kg5_stride2_asym_pad"], dtype, key="dtypes", splits=3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_dtypes_3d(dtype):
    check(GEOMETRIES["3d_groups4"], dtype, key="dtypes3d", splits=2)


@pytest.mark.parametrize("pack", [1, 2, 4, 8])
def test_every_pack_gives_the_same_gradient(pack):
    check(GEOMETRIES["groups8_cg4_3x3_pad1"], key="pack", pack=pack, splits=2)


def test_split_k_is_deterministic():
    """Partials summed in a fixed order: two runs are bitwise equal, and every split count is exact."""
    g = geometry(3, 16, 16, (6, 7), (3, 3), ((1, 1), (1, 1)), groups=4)
    x, dy = operands(g, torch.float32, "determinism")
    ref = kgw.grad_weight_reference(x.double(), dy.double(), g)
    first = ggw.grad_weight(x, dy, g, splits=3)
    assert torch.equal(first, ggw.grad_weight(x, dy, g, splits=3))
    for splits in (1, 2, 5):
        assert rel_err(ggw.grad_weight(x, dy, g, splits=splits), ref) <= 1e-5


def test_channels_last_and_non_contiguous_operands():
    g = GEOMETRIES["groups8_cg4_3x3_pad1"]
    x, dy = operands(g, torch.float32, "layouts")
    ref = kgw.grad_weight_reference(x.double(), dy.double(), g)
    cl = ggw.grad_weight(x.contiguous(memory_format=torch.channels_last),
                         dy.contiguous(memory_format=torch.channels_last), g)
    wide_x = torch.zeros(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype, device=x.device)
    wide_x[..., ::2] = x
    strided = ggw.grad_weight(wide_x[..., ::2], dy, g)
    assert rel_err(cl, ref) <= 1e-5 and rel_err(strided, ref) <= 1e-5


def test_bad_pack_and_dimensions_are_rejected():
    g = GEOMETRIES["groups8_cg4_3x3_pad1"]
    x, dy = operands(g, torch.float32, "bad")
    with pytest.raises(ValueError, match="pack=3"):
        ggw.grad_weight(x, dy, g, pack=3)
    with pytest.raises(ValueError, match="2-D or 3-D"):
        ggw.grad_weight(x[:, :, 0], dy, g)


def test_policy():
    """Which layers take the kernel, how many groups one program packs, how many splits."""
    resnext = geometry(64, 256, 256, (28, 28), (3, 3), ((1, 1), (1, 1)), groups=32)
    assert ggw.applies(resnext) and ggw.pack_for(resnext) == 4
    assert ggw.pack_for(geometry(1, 128, 128, (4, 4), (3, 3), groups=32)) == 8  # groups of 4
    assert ggw.pack_for(geometry(1, 1024, 1024, (4, 4), (3, 3), groups=32)) == 1  # groups of 32
    assert not ggw.applies(geometry(1, 64, 64, (4, 4), (3, 3)))  # dense
    assert not ggw.applies(geometry(1, 128, 128, (4, 4), (3, 3), groups=2))  # 64 filters per group
    assert ggw.applies(geometry(1, 512, 512, (4, 4), (3, 3), groups=32))  # groups of 16
    assert not ggw.applies(geometry(1, 1024, 1024, (4, 4), (3, 3), groups=32))  # groups of 32: the dense kernel
    device = torch.device("cpu")  # 4 SMs under the interpreter's model
    assert ggw.choose_splits(8, 288, 50176, 18432, device) == 1  # 24 tiles already fill 4 SMs
    assert ggw.choose_splits(1, 72, 50176, 576, device) == 16  # 4 programs on each of 4 SMs
    assert ggw.choose_splits(1, 9, 100, 9, device) == 1  # too few pixels to split
    assert ggw.choose_splits(1, 9, 10 ** 7, 9, device) == 16


def test_public_calls_route_small_groups_to_the_kernel(monkeypatch):
    """algo="implicit" takes the packed kernel for small groups in 1-D, 2-D and 3-D, and matches im2col."""
    calls = []
    original = ggw.grad_weight
    monkeypatch.setattr(ggw, "grad_weight", lambda *a, **k: calls.append(1) or original(*a, **k))
    kw = dict(border_mode=1, num_groups=4)
    gen = seeded_generator("grouped_grad_weight", "public", torch.float64)
    for fn, size, kernel in ((corrmm.corr1d_grad_weight, (9,), (3,)), (corrmm.corr2d_grad_weight, (5, 6), (3, 3)),
                             (corrmm.corr3d_grad_weight, (3, 4, 5), (3, 3, 3))):
        x = torch.randn(2, 8, *size, generator=gen, dtype=torch.float64).to(DEVICE)
        out = [s + 2 - k + 1 for s, k in zip(size, kernel)]
        dy = torch.randn(2, 12, *out, generator=gen, dtype=torch.float64).to(DEVICE)
        ours = fn(x, dy, kernel, algo="implicit", **kw)
        assert rel_err(ours, fn(x, dy, kernel, algo="im2col", **kw)) <= 1e-12
    assert len(calls) == 3


def test_launch_signature():
    """KernelLaunch's scalars, constexprs and the tuned tile cover the kernel's arguments (its direct launch)."""
    g = GEOMETRIES["groups8_cg4_3x3_pad1"]
    x, dy = operands(g, torch.float32, "signature")
    plan = ggw._Plan(x, dy, g, None, 2)
    names = plan.gemm.kernel.fn.arg_names
    assert len(names) == 3 + len(plan.gemm.scalars) + len(plan.gemm.meta) + 2  # + BLOCK_N, BLOCK_K


def test_non_finite_input_stays_in_its_own_group():
    """A packed tile multiplies every filter by every channel of its GP groups, but stores only the
    same-group blocks: an Inf in one group's input spoils that group's gradient and no other."""
    g = GEOMETRIES["groups8_cg4_3x3_pad1"]  # 8 groups, all in one packed tile by default
    x, dy = operands(g, torch.float32, "non-finite")
    x[1, 5, 2, 3] = float("inf")  # channel 5: group 1
    dw = ggw.grad_weight(x, dy, g)
    ref = kgw.grad_weight_reference(x.double(), dy.double(), g)
    assert torch.equal(dw.isfinite().cpu(), ref.isfinite().cpu())
    spoiled = ~dw.isfinite().flatten(1).all(dim=1)
    assert spoiled[4:8].all() and spoiled.sum() == 4  # filters 4..7 (group 1), every one of them
