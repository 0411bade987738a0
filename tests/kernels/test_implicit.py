"""The implicit-GEMM Triton kernels against torch's float64 convolution.

On a machine without a GPU the kernels run in Triton's interpreter (tests/conftest.py
sets ``TRITON_INTERPRET=1`` before anything imports Triton), so shapes are small
and odd; each case still spans several programs and several K steps of the
interpreter's 32x32x16 tiles. ``CORRMM_TEST_DEVICE=cuda`` runs the same cases on a GPU.

Tolerances (relative error in norm): 1e-5 float32 (IEEE products; TF32 is
switched off here), 1e-12 float64, 1e-2 for the 16-bit types.
"""
import importlib.util
import subprocess
import sys

import pytest
import torch

import corrmm
from corrmm import config
from corrmm.geometry import ConvGeometry
from tests.kernels.shared import TOLERANCE, ieee_float32, requires_kernels  # noqa: F401 (autouse fixture)
from tests.reference import DEVICE, seeded_generator

pytestmark = requires_kernels

if importlib.util.find_spec("triton") is not None:
    from corrmm.algorithms import implicit
    from corrmm.kernels import common
    from corrmm.kernels import implicit_forward as kf, implicit_grad_input as kgi, implicit_grad_weight as kgw


def geometry(batch, channels, filters, size, kernel, padding=((0, 0), (0, 0)), stride=(1, 1), dilation=(1, 1),
             groups=1):
    return ConvGeometry(batch, channels, filters, tuple(size), tuple(kernel), tuple(padding), tuple(stride),
                        tuple(dilation), groups).validate()


def rel_err(ours, ref):
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    assert not torch.isnan(ours).any(), "NaN in the result: an element was never written"
    return ((ours - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def operands(g, dtype, key):
    gen = seeded_generator("implicit", key, dtype)
    draw = lambda shape: torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)  # noqa: E731
    return draw(g.input_shape), draw(g.weight_shape), draw(g.output_shape)


def check_passes(g, dtype=torch.float32, key="", layout=lambda t: t, splits=None, flat=None, passes="fgw",
                 pack=None, rows=None):
    """Each requested pass (f: forward, g: grad-input, w: grad-weight) against the float64 reference."""
    x, w, dy = operands(g, dtype, key)
    x, w, dy = layout(x), layout(w), layout(dy)
    tol = TOLERANCE[dtype]
    with config.poison_outputs():
        if "f" in passes:
            err = rel_err(kf.forward(x, w, g, flat=flat, pack=pack), kf.forward_reference(x.double(), w.double(), g))
            assert err <= tol, f"forward: relative error {err:.2e} > {tol:.0e}"
        if "g" in passes:
            err = rel_err(kgi.grad_input(w, dy, g, pack=pack, rows=rows),
                          kgi.grad_input_reference(w.double(), dy.double(), g))
            assert err <= tol, f"grad_input: relative error {err:.2e} > {tol:.0e}"
        if "w" in passes:
            dw = kgw.grad_weight(x, dy, g, splits=splits, flat=flat)
            err = rel_err(dw, kgw.grad_weight_reference(x.double(), dy.double(), g))
            assert err <= tol, f"grad_weight: relative error {err:.2e} > {tol:.0e}"


# ---- every geometry feature, float32 ------------------------------------------------------

GEOMETRIES = {
    "3x3_pad1": geometry(2, 4, 6, (7, 9), (3, 3), ((1, 1), (1, 1))),
    "stride2x2_asym_pad_dil1x2": geometry(2, 5, 7, (9, 11), (3, 2), ((2, 0), (1, 3)), (2, 2), (1, 2)),
    "stride2x4_dil2x1_groups2": geometry(1, 6, 4, (11, 13), (2, 3), ((1, 0), (0, 2)), (2, 4), (2, 1), groups=2),
    "stride3x2_kernel_wider_than_stride": geometry(2, 3, 5, (13, 8), (5, 4), ((0, 1), (2, 2)), (3, 2)),
    "stride2_dil2_taps_skip_phases": geometry(2, 4, 3, (9, 10), (3, 3), ((1, 1), (2, 0)), (2, 2), (2, 2)),
    "1x1_strided_phases_without_taps": geometry(3, 17, 9, (7, 6), (1, 1), stride=(2, 3)),
    "full_kernel_larger_than_image": geometry(2, 3, 4, (3, 4), (5, 5), ((4, 4), (4, 4))),
    "1x1_image": geometry(3, 5, 4, (1, 1), (1, 1)),
    "groups3_depthwise_like": geometry(2, 3, 6, (8, 7), (3, 3), ((1, 1), (1, 1)), groups=3),
    "many_channels_nonflat": geometry(1, 40, 33, (5, 6), (2, 3), ((1, 0), (1, 1))),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_all_passes_float32(name):
    check_passes(GEOMETRIES[name], key=name)
    if kgi.use_row_columns(GEOMETRIES[name]):  # few input channels: the general kernel too
        check_passes(GEOMETRIES[name], key=name, passes="g", rows=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_dtypes(dtype):
    check_passes(GEOMETRIES["stride2x4_dil2x1_groups2"], dtype, key="dtypes")


def test_channels_last_and_non_contiguous_operands():
    g = GEOMETRIES["stride2x2_asym_pad_dil1x2"]
    check_passes(g, key="cl", layout=lambda t: t.contiguous(memory_format=torch.channels_last))
    # every other element of a wider tensor, with H and W swapped in memory: no dense stride anywhere
    strided = lambda t: torch.empty_like(t.transpose(2, 3).repeat(1, 2, 1, 1)).transpose(2, 3)[:, ::2].copy_(t)  # noqa
    check_passes(g, key="strided", layout=strided)


@pytest.mark.parametrize("flat", [True, False])
def test_flat_and_channel_block_reductions(flat):
    """Both reductions over (r, s, c) whatever the channel count: 20 channels leave a ragged channel block."""
    g = geometry(2, 20, 6, (6, 7), (2, 3), ((1, 0), (0, 1)), (1, 2))
    check_passes(g, key="flat", flat=flat, passes="fw", splits=1)


def test_split_k_is_deterministic_and_exact():
    g = geometry(3, 4, 5, (9, 8), (3, 3), ((1, 1), (1, 1)), (1, 1), (2, 1))
    x, _, dy = operands(g, torch.float32, "split")
    ref = kgw.grad_weight_reference(x.double(), dy.double(), g)
    # 3·9·8 = 216 reduction steps in splits of 256 would be one split: ask for more, forcing a ragged last one
    first = kgw.grad_weight(x, dy, g, splits=3)
    for splits in (1, 2, 3):
        assert rel_err(kgw.grad_weight(x, dy, g, splits=splits), ref) <= 1e-5
    big = geometry(9, 4, 5, (10, 9), (3, 3), ((1, 1), (1, 1)))  # 810 steps: 4 splits of 256, the last 42
    xb, _, dyb = operands(big, torch.float32, "split-big")
    once = kgw.grad_weight(xb, dyb, big, splits=4)
    again = kgw.grad_weight(xb, dyb, big, splits=4)
    assert torch.equal(once, again), "split-K must be bit-for-bit reproducible"
    assert rel_err(once, kgw.grad_weight_reference(xb.double(), dyb.double(), big)) <= 1e-5
    assert torch.equal(first, kgw.grad_weight(x, dy, g, splits=3))


# ---- the weight-gradient kernel: both tile orientations, 3-D, groups, split-K ------------------------

def geometry3d(batch, channels, filters, size, kernel, padding=((0, 0),) * 3, stride=(1, 1, 1),
               dilation=(1, 1, 1), groups=1):
    return ConvGeometry(batch, channels, filters, tuple(size), tuple(kernel), tuple(padding), tuple(stride),
                        tuple(dilation), groups).validate()


GRAD_WEIGHT_GEOMETRIES = {
    "2d_stride2x2_asym_pad_dil1x2": GEOMETRIES["stride2x2_asym_pad_dil1x2"],
    "2d_stride2x4_dil2x1_groups2": GEOMETRIES["stride2x4_dil2x1_groups2"],
    "2d_full_kernel_larger_than_image": GEOMETRIES["full_kernel_larger_than_image"],
    "2d_many_channels_nonflat": GEOMETRIES["many_channels_nonflat"],
    # the digit carries of the pixel index: a block of 16 pixels spans several 1x3 images
    "2d_images_smaller_than_a_k_block": geometry(7, 3, 5, (1, 5), (1, 3), ((0, 0), (0, 0))),
    "3d_3x3x3_pad1": geometry3d(2, 3, 4, (4, 5, 6), (3, 3, 3), ((1, 1),) * 3),
    "3d_stride_dil_asym_pad_groups2": geometry3d(2, 4, 6, (7, 6, 5), (2, 3, 2), ((1, 0), (0, 2), (1, 1)),
                                                 (2, 1, 2), (2, 1, 1), groups=2),
    "3d_depth_only_kernel_odd_sizes": geometry3d(3, 5, 3, (5, 3, 7), (3, 1, 1), ((2, 1), (0, 0), (0, 0)),
                                                 (1, 2, 3)),
    "3d_many_channels_nonflat": geometry3d(1, 32, 17, (3, 4, 5), (2, 2, 2), ((0, 1),) * 3),
}


def check_grad_weight(g, dtype=torch.float32, key="", splits=None, flat=None, pixels=None):
    x, _, dy = operands(g, dtype, key)
    with config.poison_outputs():
        dw = kgw.grad_weight(x, dy, g, splits=splits, flat=flat, pixels=pixels)
    assert dw.shape == g.weight_shape and dw.dtype == dtype
    err = rel_err(dw, kgw.grad_weight_reference(x.double(), dy.double(), g))
    tol = TOLERANCE[dtype]
    assert err <= tol, f"grad_weight: relative error {err:.2e} > {tol:.0e}"
    return dw


@pytest.mark.parametrize("pixels", [True, False], ids=["pixels_inner", "channels_inner"])
@pytest.mark.parametrize("name", list(GRAD_WEIGHT_GEOMETRIES))
def test_grad_weight_geometries(name, pixels):
    check_grad_weight(GRAD_WEIGHT_GEOMETRIES[name], key=name, pixels=pixels)


@pytest.mark.parametrize("pixels", [True, False], ids=["pixels_inner", "channels_inner"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_grad_weight_dtypes_3d(dtype, pixels):
    g = GRAD_WEIGHT_GEOMETRIES["3d_stride_dil_asym_pad_groups2"]
    check_grad_weight(g, dtype, key="dtypes3d", pixels=pixels, splits=2)


@pytest.mark.parametrize("flat", [True, False])
def test_grad_weight_many_small_groups(flat):
    """32 groups of 8 channels and 8 filters: one program column per group, the rows mostly padding."""
    g = geometry(1, 256, 256, (4, 5), (3, 3), ((1, 1), (1, 1)), groups=32)
    check_grad_weight(g, key="groups32", flat=flat, splits=1)


@pytest.mark.parametrize("pixels", [True, False], ids=["pixels_inner", "channels_inner"])
def test_grad_weight_split_k_on_and_off_is_deterministic(pixels):
    """Every split count gives the reference, and the same count gives the same bits on every run."""
    g = geometry3d(5, 4, 3, (4, 5, 6), (2, 3, 3), ((1, 0), (1, 1), (0, 2)), (1, 1, 2))  # 5·3·3·3 = 135 pixels
    results = {splits: check_grad_weight(g, key="split3d", splits=splits, pixels=pixels) for splits in (1, 2, 3)}
    x, _, dy = operands(g, torch.float32, "split3d")
    for splits, first in results.items():
        assert torch.equal(first, kgw.grad_weight(x, dy, g, splits=splits, pixels=pixels)), splits


def test_grad_weight_rejects_mismatched_dimensions():
    g = GRAD_WEIGHT_GEOMETRIES["3d_3x3x3_pad1"]
    x, _, dy = operands(g, torch.float32, "dims")
    with pytest.raises(ValueError, match="3 dims, x of 4"):
        kgw.grad_weight(x[:, :, 0], dy, g)


def test_public_grad_weight_3d_runs_implicit():
    """corr3d_grad_weight with algo="implicit" takes the 3-D kernel; implicit serves every 3-D pass."""
    g = GRAD_WEIGHT_GEOMETRIES["3d_stride_dil_asym_pad_groups2"]
    x, _, dy = operands(g, torch.float64, "public3d")
    kw = dict(border_mode=g.padding, subsample=g.stride, filter_dilation=g.dilation, num_groups=g.groups)
    dw = corrmm.corr3d_grad_weight(x, dy, g.kernel, algo="implicit", **kw)
    assert rel_err(dw, kgw.grad_weight_reference(x, dy, g)) <= 1e-12
    algo = implicit.ALGORITHM
    for pass_name in ("forward", "grad_input", "grad_weight"):
        assert algo.not_supported_reasons(g, pass_name, DEVICE, torch.float32) == []


def test_repeated_calls_reuse_the_launch_and_stay_correct():
    """After the first call a problem launches its compiled kernel directly (on a GPU): fresh data each
    time must still give the reference, and so must operands whose storage is not 16-byte aligned,
    which Triton compiles differently and which take Triton's own path."""
    g = geometry(3, 16, 8, (9, 7), (3, 3), ((1, 1), (1, 1)), (1, 1), (1, 1))
    for round in range(3):
        check_passes(g, key=f"repeat{round}", splits=2)

    def unaligned(t):  # the same values one element into a larger buffer: data_ptr % 16 != 0
        buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        return buffer[1:].view(t.shape).copy_(t)
    for round in range(2):
        check_passes(g, key=f"unaligned{round}", layout=unaligned, splits=2)
    check_passes(g, key="aligned-again", splits=2)


def test_kernel_launch_signature():
    """KernelLaunch maps the tuned config and constexprs onto the kernel's own argument order."""
    launch = kf._launch(*(torch.empty(s, device=DEVICE) for s in ((1, 2, 3, 3), (2, 2, 1, 1), (1, 2, 3, 3))),
                        geometry(1, 2, 2, (3, 3), (1, 1)), None)
    jit = launch.kernel.fn
    assert jit.arg_names[:3] == ["x_ptr", "w_ptr", "y_ptr"]
    assert len(jit.arg_names) == 3 + len(launch.scalars) + len(launch.meta) + 3  # + BLOCK_M/N/K from the config


def test_split_policy():
    choose = kgw.choose_splits
    sms = common.sm_count(DEVICE)
    assert choose(tiles=10 * sms, reduction=10**6, out_elements=10**6, out_element_size=2, device=DEVICE) == 1
    few_tiles = choose(tiles=1, reduction=10**6, out_elements=128 * 128, out_element_size=2, device=DEVICE)
    assert 1 < few_tiles <= kgw.MAX_SPLITS
    # never below the minimum chunk of the reduction
    assert choose(tiles=1, reduction=300, out_elements=16, out_element_size=2, device=DEVICE) == 1


def test_config_pruning_and_buckets():
    """Autotuning keys are powers of two; pruning keeps narrow tiles exactly where N is small."""
    import triton

    assert [common.bucket(n) for n in (1, 2, 3, 16, 17, 97, 128)] == [1, 2, 4, 16, 32, 128, 128]
    assert common.cdiv(7, 2) == 4 and common.cdiv(8, 2) == 4
    shapes = [(128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 16, 32, 4, 4), (256, 32, 32, 8, 3)]
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=st)
               for m, n, k, w, st in shapes]
    prune = common.prune_configs("x_ptr")
    kept = lambda n_bucket, dtype: [c.kwargs["BLOCK_N"] for c in prune(  # noqa: E731
        configs, {"x_ptr": torch.empty(1, dtype=dtype), "M_BUCKET": 2**20, "N_BUCKET": n_bucket})]
    assert kept(4, torch.bfloat16) == [16]  # an RGB layer's input gradient: N = 3
    assert kept(32, torch.bfloat16) == [16, 32]
    assert kept(256, torch.bfloat16) == [128, 256]
    assert kept(256, torch.float32) == [128]  # 128x256x64 fp32 tiles in 3 stages overflow shared memory


def test_wide_index_path(monkeypatch):
    """The int64 offset path (taken for tensors spanning 2**31 elements) computes the same thing."""
    monkeypatch.setattr(common, "needs_wide_index", lambda *extents: True)
    check_passes(GEOMETRIES["stride2x4_dil2x1_groups2"], key="wide", splits=2)


# ---- 3-D, packed groups, few input channels (forward and grad-input) ----------------------------

GEOMETRIES_3D = {
    "3d_3x3x3_pad1": geometry(2, 4, 6, (3, 5, 4), (3, 3, 3), ((1, 1),) * 3, (1, 1, 1), (1, 1, 1)),
    "3d_stride_dil_asym_pad_groups2": geometry(2, 4, 6, (5, 6, 5), (2, 3, 2), ((1, 0), (1, 1), (0, 2)), (2, 1, 2),
                                               (1, 2, 1), groups=2),
    "3d_depth_stride3_dil2_skips_phases": geometry(1, 3, 5, (9, 4, 3), (3, 2, 1), ((2, 1), (0, 1), (0, 0)), (3, 1, 1),
                                                   (2, 1, 1)),
}


@pytest.mark.parametrize("name", list(GEOMETRIES_3D))
def test_3d_forward_and_grad_input(name):
    check_passes(GEOMETRIES_3D[name], key=name, passes="fg")


def test_3d_bfloat16_and_channels_last_3d():
    g = GEOMETRIES_3D["3d_stride_dil_asym_pad_groups2"]
    check_passes(g, torch.bfloat16, key="3d-bf16", passes="fg")
    check_passes(g, key="3d-cl", passes="fg", layout=lambda t: t.contiguous(memory_format=torch.channels_last_3d))


@pytest.mark.parametrize("pack,flat", [(2, None), (4, None), (4, True)])
def test_packed_groups(pack, flat):
    """GP groups per program, block-diagonal weight tiles: 8 groups of 4 channels -> 6 filters each,
    strided so the grad-input phases and the packing meet; float32 and (once) bfloat16."""
    g = geometry(2, 32, 48, (6, 7), (3, 3), ((1, 1), (1, 0)), (2, 1), (1, 2), groups=8)
    check_passes(g, key=f"pack{pack}", passes="fg", pack=pack, flat=flat)
    if pack == 4 and flat is None:
        check_passes(g, torch.bfloat16, key="pack-bf16", passes="fg", pack=pack)


def test_packed_groups_3d():
    g = geometry(1, 16, 16, (4, 5, 4), (3, 1, 3), ((1, 1), (0, 0), (1, 1)), (1, 2, 1), (1, 1, 1), groups=4)
    check_passes(g, key="pack3d", passes="fg", pack=4)


def test_group_pack_policy():
    assert common.group_pack(32, 8, 8) == 4      # ResNeXt's groups of 8: 32 channels a program
    assert common.group_pack(32, 4, 4) == 8
    assert common.group_pack(32, 4, 16) == 2     # the wider side decides
    assert common.group_pack(6, 4, 4) == 2       # a power of two that divides the groups
    assert common.group_pack(32, 32, 32) == 1 and common.group_pack(1, 3, 96) == 1


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_grad_input_few_channels_tall_kernel(channels):
    """1-4 input channels under a kernel as tall as the image (output height 1): each tile runs
    only its own tap rows (tap_window), the rest of the kernel must still be accounted for."""
    g = geometry(2, channels, 6, (20, 9), (20, 3), ((0, 0), (1, 1)))
    assert kgi.use_row_columns(g)
    check_passes(g, key=f"tall{channels}", passes="g")  # kernel rows as GEMM columns
    check_passes(g, key=f"tall{channels}-general", passes="g", rows=False)  # per-tile tap windows


def test_grad_input_row_columns_strides_and_dilation():
    """The row-column kernel with every feature: strides, dilation, asymmetric padding, bfloat16."""
    g = geometry(2, 2, 5, (13, 12), (3, 4), ((2, 1), (0, 3)), (2, 3), (2, 2))
    check_passes(g, key="rows-strided", passes="g", rows=True)
    g = geometry(2, 4, 7, (40, 11), (5, 3), ((0, 3), (1, 1)), (3, 1), (3, 1))
    check_passes(g, torch.bfloat16, key="rows-bf16", passes="g", rows=True)


def test_grad_input_large_stride_first_layer():
    """An 11x11 stride-4 RGB layer in miniature: 16 phases of 3x3 taps, tiles at the image edges."""
    g = geometry(1, 3, 5, (19, 17), (11, 11), ((2, 2), (2, 2)), (4, 4))
    check_passes(g, key="stride4", passes="g")
    check_passes(g, torch.bfloat16, key="stride4-bf16", passes="g", rows=False)


# ---- through corrmm's public functions (algorithm object, 1-D lifting, memory format) -----------

def test_public_functions_1d_and_2d():
    gen = seeded_generator("implicit-public")
    x = torch.randn(2, 6, 19, generator=gen, dtype=torch.float64).to(DEVICE)
    w = torch.randn(4, 3, 4, generator=gen, dtype=torch.float64).to(DEVICE)
    kw = dict(border_mode=((2, 1),), subsample=3, filter_dilation=2, num_groups=2)
    y = corrmm.corr1d(x, w, algo="implicit", **kw)
    y_ref = corrmm.corr1d(x, w, algo="im2col", **kw)
    assert rel_err(y, y_ref) <= 1e-12
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(DEVICE)
    assert rel_err(corrmm.corr1d_grad_input(w, dy, (19,), algo="implicit", **kw),
                   corrmm.corr1d_grad_input(w, dy, (19,), algo="im2col", **kw)) <= 1e-12
    assert rel_err(corrmm.corr1d_grad_weight(x, dy, (4,), algo="implicit", **kw),
                   corrmm.corr1d_grad_weight(x, dy, (4,), algo="im2col", **kw)) <= 1e-12

    x2 = torch.randn(2, 4, 9, 8, generator=gen).to(DEVICE).contiguous(memory_format=torch.channels_last)
    w2 = torch.randn(6, 4, 3, 3, generator=gen).to(DEVICE)
    y2 = corrmm.corr2d(x2, w2, border_mode="half", subsample=2, algo="implicit")
    assert y2.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y2, corrmm.corr2d(x2, w2, border_mode="half", subsample=2, algo="im2col")) <= 1e-5


def test_public_functions_3d():
    gen = seeded_generator("implicit-public-3d")
    x = torch.randn(2, 4, 5, 6, 7, generator=gen, dtype=torch.float64).to(DEVICE)
    w = torch.randn(6, 2, 3, 2, 3, generator=gen, dtype=torch.float64).to(DEVICE)
    kw = dict(border_mode=((1, 1), (0, 1), 2), subsample=(2, 1, 2), filter_dilation=(1, 2, 1), num_groups=2)
    y = corrmm.corr3d(x, w, algo="implicit", **kw)
    assert rel_err(y, corrmm.corr3d(x, w, algo="im2col", **kw)) <= 1e-12
    dy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(DEVICE)
    assert rel_err(corrmm.corr3d_grad_input(w, dy, (5, 6, 7), algo="implicit", **kw),
                   corrmm.corr3d_grad_input(w, dy, (5, 6, 7), algo="im2col", **kw)) <= 1e-12


def test_not_supported_reasons(monkeypatch):
    algo = implicit.ALGORITHM
    g2 = GEOMETRIES["3x3_pad1"]
    assert algo.not_supported_reasons(g2, "forward", DEVICE, torch.float32) == []
    g3 = ConvGeometry(1, 2, 2, (4, 4, 4), (3, 3, 3), ((0, 0),) * 3, (1, 1, 1), (1, 1, 1)).validate()
    assert algo.not_supported_reasons(g3, "forward", DEVICE, torch.float32) == []
    assert algo.not_supported_reasons(g3, "grad_input", DEVICE, torch.float32) == []
    monkeypatch.setattr(implicit, "_interpreting", lambda: False)
    cpu_reasons = algo.not_supported_reasons(g2, "grad_input", torch.device("cpu"), torch.float32)
    assert any("TRITON_INTERPRET" in r for r in cpu_reasons)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        corrmm.corr2d(torch.randn(1, 4, 7, 9), torch.randn(6, 4, 3, 3), algo="implicit")


def test_corrmm_works_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, corrmm\n"
        "assert 'implicit' in corrmm.algorithms()\n"
        "y = corrmm.corr2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3))\n"
        "try:\n"
        "    corrmm.corr2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), algo='implicit')\n"
        "except ValueError as err:\n"
        "    assert 'Triton' in str(err), err\n"
        "else:\n"
        "    raise AssertionError('implicit ran without Triton')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
