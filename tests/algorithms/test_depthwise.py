"""The depthwise algorithm and its Triton kernels against torch's float64 correlation.

Through the public functions: channel multipliers 1 to 4, kernels 1x1 to 7x7
(and larger than the image), 1-D, 2-D and 3-D, strides 1, 2 and (2, 1),
dilation 1 and 2, every border mode and asymmetric padding, odd sizes, NCHW,
channels_last and gapped layouts, every dtype; gradcheck and gradgradcheck in
float64; empty batches; refusals; the ``auto`` rule. On the CPU the passes run
as torch ops; the Triton kernels are called directly on tiny shapes (Triton's
interpreter there, the GPU with ``CORRMM_TEST_DEVICE=cuda``, where the public
functions run them too).
"""
import importlib.util
import os

import pytest
import torch

import corrmm
from corrmm import config
from corrmm.algorithms import REGISTRY
from corrmm.geometry import ConvGeometry, make_geometry
from corrmm.selection import auto_choice

from tests.reference import (DEVICE, DTYPES, assert_every_pass_refuses, assert_passes_match_reference, randn,
                             rel_err, seeded_generator)

# (batch, channels, multiplier, in_size, kernel, border_mode, stride, dilation)
CASES = [
    (2, 5, 1, (9, 11), (3, 3), "half", (1, 1), (1, 1)),
    (2, 4, 2, (10, 7), (3, 3), 1, (2, 2), (1, 1)),
    (3, 3, 1, (13, 12), (5, 5), "valid", (2, 1), (1, 1)),
    (2, 6, 2, (11, 9), (7, 7), "full", (1, 1), (1, 1)),
    (2, 3, 1, (9, 10), (3, 3), ((0, 2), (1, 0)), (1, 2), (2, 2)),   # asymmetric padding, dilation 2
    (1, 4, 1, (6, 7), (1, 1), "valid", (1, 1), (1, 1)),
    (2, 5, 1, (15, 13), (7, 7), "half", (2, 2), (1, 1)),
    (2, 2, 3, (8, 8), (5, 3), ((2, 1), (0, 3)), (1, 1), (2, 1)),
    (2, 3, 1, (3, 4), (5, 6), "full", (1, 1), (1, 1)),              # kernel larger than the image
    (1, 1, 4, (7, 8), (3, 3), "half", (1, 1), (1, 1)),              # one channel, four filters
    (2, 5, 1, (17,), (3,), "half", (1,), (1,)),
    (2, 3, 2, (20,), (7,), ((3, 1),), (2,), (2,)),
    (2, 3, 1, (5, 6, 7), (3, 3, 3), "half", (1, 2, 1), (1, 1, 1)),
    (1, 2, 2, (4, 5, 6), (2, 3, 1), "valid", (1, 1, 2), (2, 1, 1)),
]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def _case_id(case):
    n, c, m, size, kernel, bm, s, d = case
    return (f"{len(size)}d-n{n}c{c}m{m}-{'x'.join(map(str, size))}-r{'x'.join(map(str, kernel))}-{bm}-s{s}-d{d}"
            .replace(" ", ""))


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last" and t.dim() in (4, 5):
        return t.contiguous(memory_format={4: torch.channels_last, 5: torch.channels_last_3d}[t.dim()])
    if layout == "strided":  # channels outside the batch and a gap after every element: no dense stride
        storage = t.new_zeros((t.shape[1], t.shape[0], *t.shape[2:-1], 2 * t.shape[-1]))
        view = storage.transpose(0, 1)[..., ::2]
        view.copy_(t)
        return view
    return t


def _padding(geometry):
    return [tuple(p) for p in geometry.padding]


def check_case(case, dtype, layout="contiguous", algo="depthwise"):
    n, c, m, size, kernel, border_mode, stride, dilation = case
    nd = len(size)
    g = make_geometry((n, c, *size), (c * m, 1, *kernel), border_mode, stride, dilation, c)
    gen = seeded_generator("depthwise", case, dtype, layout)
    x64, w64, dy64 = randn(g.input_shape, gen), randn(g.weight_shape, gen), randn(g.output_shape, gen)
    x, w, dy = _layout(x64.to(dtype), layout), w64.to(dtype), _layout(dy64.to(dtype), layout)
    kwargs = dict(border_mode=border_mode, subsample=stride, filter_dilation=dilation, num_groups=c, algo=algo)
    with config.poison_outputs():
        ours = (getattr(corrmm, f"corr{nd}d")(x, w, **kwargs),
                getattr(corrmm, f"corr{nd}d_grad_input")(w, dy, size, **kwargs),
                getattr(corrmm, f"corr{nd}d_grad_weight")(x, dy, kernel, **kwargs))
    assert_passes_match_reference(ours, (x64, w64, dy64), (x.contiguous(), w, dy.contiguous()), _padding(g),
                                  stride, dilation, c, dtype, f"depthwise {layout}")
    return ours


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference(case, dtype):
    check_case(case, dtype)


@pytest.mark.parametrize("layout", LAYOUTS[1:])
@pytest.mark.parametrize("case", CASES[::2] + CASES[12:13], ids=_case_id)
def test_layouts(case, layout):
    ours = check_case(case, torch.float32, layout)
    if layout == "channels_last" and len(case[3]) > 1:
        assert ours[0].is_contiguous(memory_format={2: torch.channels_last, 3: torch.channels_last_3d}[len(case[3])])


def test_auto_serves_depthwise_layers_with_depthwise():
    for device in (torch.device("cpu"), torch.device("cuda")):
        depthwise = make_geometry((8, 256, 28, 28), (256, 1, 3, 3), 1, 1, 1, 256)
        multiplier = make_geometry((8, 32, 28, 28), (64, 1, 5, 5), 2, 2, 1, 32)
        if REGISTRY["depthwise"].not_supported_reasons(depthwise, "forward", device, torch.bfloat16):
            continue  # CUDA without Triton
        for pass_name in ("forward", "grad_input", "grad_weight"):
            assert auto_choice(pass_name, depthwise, device, torch.bfloat16) == "depthwise"
            assert auto_choice(pass_name, multiplier, device, torch.float32) == "depthwise"
            grouped = make_geometry((8, 32, 28, 28), (32, 2, 3, 3), 1, 1, 1, 16)
            single_channel = make_geometry((8, 1, 28, 28), (32, 1, 3, 3), 1, 1, 1, 1)
            assert auto_choice(pass_name, grouped, device, torch.float32) != "depthwise"
            assert auto_choice(pass_name, single_channel, device, torch.float32) != "depthwise"
    check_case(CASES[1], torch.float32, algo="auto")


GRADCHECK_CASES = [
    (1, 2, 2, (5, 6), (3, 3), ((1, 0), (2, 1)), (2, 1), (1, 2)),
    (1, 2, 1, (9,), (3,), 1, (2,), (2,)),
]


def test_gradcheck_and_gradgradcheck():
    for case in GRADCHECK_CASES:
        n, c, m, size, kernel, border_mode, stride, dilation = case
        nd = len(size)
        gen = seeded_generator("depthwise gradcheck", case)
        x = randn((n, c, *size), gen).requires_grad_()
        w = randn((c * m, 1, *kernel), gen).requires_grad_()
        kwargs = dict(border_mode=border_mode, subsample=stride, filter_dilation=dilation, num_groups=c,
                      algo="depthwise")
        fn = lambda x, w: getattr(corrmm, f"corr{nd}d")(x, w, **kwargs)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, w))
        assert torch.autograd.gradgradcheck(fn, (x, w))


def test_empty_batch():
    x, w = torch.randn(0, 4, 7, 6, device=DEVICE), torch.randn(8, 1, 3, 3, device=DEVICE)
    kwargs = dict(border_mode="half", num_groups=4, algo="depthwise")
    y = corrmm.corr2d(x, w, **kwargs)
    assert y.shape == (0, 8, 7, 6)
    assert corrmm.corr2d_grad_input(w, y, (7, 6), **kwargs).shape == (0, 4, 7, 6)
    dw = corrmm.corr2d_grad_weight(x, y, (3, 3), **kwargs)
    assert dw.shape == (8, 1, 3, 3) and not dw.any()


@pytest.mark.parametrize("channels,weight_shape,groups", [(4, (4, 2, 3, 3), 2), (4, (6, 4, 3, 3), 1)])
def test_grouped_and_dense_layers_are_refused(channels, weight_shape, groups):
    gen = seeded_generator("depthwise refuses", weight_shape, groups)
    x, w = randn((2, channels, 6, 5), gen), randn(weight_shape, gen)
    y = corrmm.corr2d(x, w, num_groups=groups, algo="im2col")
    assert_every_pass_refuses("depthwise", x, w, y, "groups == channels", num_groups=groups)


# ---- the Triton kernels, called directly ---------------------------------------------------

needs_kernels = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None
    or (DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1"),
    reason="the depthwise kernels need Triton, and on the CPU its interpreter",
)
KERNEL_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-2, torch.bfloat16: 1e-2}

# (batch, channels, multiplier, in_size, kernel, padding, stride, dilation): tiny, so the
# interpreter stays quick; each spans several pixel and channel tiles of its 16x8 tiles
KERNEL_CASES = {
    "3x3_pad1": (2, 9, 1, (5, 7), (3, 3), ((1, 1), (1, 1)), (1, 1), (1, 1)),
    "stride2_mult2_asym": (2, 5, 2, (7, 6), (3, 2), ((0, 2), (1, 0)), (2, 1), (1, 2)),
    "5x5_full_stride2x1": (1, 4, 1, (4, 5), (5, 5), ((4, 4), (4, 4)), (2, 1), (1, 1)),
    "1d_7": (2, 3, 1, (1, 13), (1, 7), ((0, 0), (3, 3)), (1, 2), (1, 1)),
}


def kernel_geometry(case):
    n, c, m, size, kernel, padding, stride, dilation = case
    return ConvGeometry(n, c, c * m, size, kernel, padding, stride, dilation, c).validate()


def check_kernels(name, dtype=torch.float32, layout="contiguous"):
    from corrmm.kernels import depthwise as kd

    g = kernel_geometry(KERNEL_CASES[name])
    gen = seeded_generator("depthwise kernels", name, dtype, layout)
    x, w, dy = (randn(shape, gen, dtype) for shape in (g.input_shape, g.weight_shape, g.output_shape))
    x, dy = _layout(x, layout), _layout(dy, layout)
    tol = KERNEL_TOLERANCE[dtype]
    with config.poison_outputs():
        results = (kd.forward(x, w, g), kd.grad_input(w, dy, g), kd.grad_weight(x, dy, g))
    x64, w64, dy64 = x.double(), w.double(), dy.double()
    references = (kd.forward_reference(x64, w64, g), kd.grad_input_reference(w64, dy64, g),
                  kd.grad_weight_reference(x64, dy64, g))
    for pass_name, ours, ref in zip(("forward", "grad_input", "grad_weight"), results, references):
        err = rel_err(ours, ref)
        assert ours.shape == ref.shape and ours.dtype == dtype, pass_name
        assert err <= tol, f"{name} {pass_name} {dtype} {layout}: relative error {err:.2e} > {tol:.0e}"
    return results


@needs_kernels
@pytest.mark.parametrize("name", KERNEL_CASES)
def test_kernels_match_reference(name):
    check_kernels(name)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=lambda d: str(d)[6:])
def test_kernel_dtypes(dtype):
    check_kernels("stride2_mult2_asym", dtype)


@needs_kernels
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_kernel_layouts(layout):
    check_kernels("3x3_pad1", layout=layout)


@needs_kernels
def test_kernel_weight_gradient_is_deterministic():
    from corrmm.kernels import depthwise as kd

    g = kernel_geometry(KERNEL_CASES["3x3_pad1"])
    assert kd.grad_weight_tiles(g, DEVICE)[3] > 1, "the case must span several chunks"
    gen = seeded_generator("depthwise determinism")
    x, dy = randn(g.input_shape, gen, torch.float32), randn(g.output_shape, gen, torch.float32)
    first = kd.grad_weight(x, dy, g)
    for _ in range(2):
        assert torch.equal(first, kd.grad_weight(x, dy, g)), "the weight gradient must be bit-for-bit reproducible"


@needs_kernels
def test_kernel_wide_index_path(monkeypatch):
    """The int64 offset path (tensors spanning 2**31 elements) computes the same thing."""
    from corrmm.kernels import common

    monkeypatch.setattr(common, "needs_wide_index", lambda *extents: True)
    monkeypatch.setattr(common, "_PLANS", {})
    check_kernels("stride2_mult2_asym")


@needs_kernels
def test_kernel_launch_signatures():
    """KernelLaunch maps scalars, constexprs and the tuned tile onto each kernel's argument order."""
    from corrmm.kernels import depthwise as kd

    g = kernel_geometry(KERNEL_CASES["3x3_pad1"])
    x, w, y = (torch.empty(s, device=DEVICE) for s in (g.input_shape, g.weight_shape, g.output_shape))
    for launch in (kd._forward_launch(x, w, y, g, 1), kd._grad_input_launch(w, y, x, g, 1)):
        names = launch.kernel.fn.arg_names
        assert len(names) == 3 + len(launch.scalars) + len(launch.meta) + 2  # + BLOCK_PIX, BLOCK_C


def test_not_supported_reasons_name_the_problem():
    algo = REGISTRY["depthwise"]
    depthwise = make_geometry((2, 8, 6, 6), (16, 1, 3, 3), 1, 1, 1, 8)
    grouped = make_geometry((2, 8, 6, 6), (8, 2, 3, 3), 1, 1, 1, 4)
    assert algo.not_supported_reasons(depthwise, "forward", torch.device("cpu"), torch.float32) == []
    assert any("groups == channels" in r and "groups=4" in r
               for r in algo.not_supported_reasons(grouped, "grad_weight", torch.device("cpu"), torch.float32))
    assert any("CPU and CUDA" in r for r in algo.not_supported_reasons(depthwise, "forward", torch.device("mps"),
                                                                        torch.float32))
    huge = ConvGeometry(1, 2**20 + 16, 2**20 + 16, (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1), (1, 1),
                        2**20 + 16).validate()
    cuda_reasons = algo.not_supported_reasons(huge, "forward", torch.device("cuda"), torch.float32)
    assert any("grid limit" in r for r in cuda_reasons) or any("Triton" in r for r in cuda_reasons)
    assert algo.not_supported_reasons(huge, "forward", torch.device("cpu"), torch.float32) == []


@needs_kernels
@pytest.mark.parametrize("method,nchw", [("taps", True), ("taps", False), ("chunks", False)])
@pytest.mark.parametrize("name", ["stride2_mult2_asym", "5x5_full_stride2x1", "1d_7"])
def test_kernel_weight_gradient_methods(name, method, nchw):
    """Both weight-gradient kernels, on NCHW operands read as they are and on channels-last ones."""
    from corrmm.kernels import depthwise as kd

    g = kernel_geometry(KERNEL_CASES[name])
    gen = seeded_generator("depthwise methods", name)
    x, dy = randn(g.input_shape, gen, torch.float32), randn(g.output_shape, gen, torch.float32)
    if not nchw:
        x, dy = _layout(x, "channels_last"), _layout(dy, "channels_last")
    with config.poison_outputs():
        dw = kd.grad_weight(x, dy, g, method=method, nchw=nchw)
    assert rel_err(dw, kd.grad_weight_reference(x.double(), dy.double(), g)) <= 1e-5


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=lambda d: str(d)[6:])
def test_kernel_weight_gradient_taps_7x7_and_determinism(dtype):
    """A 7x7 kernel fills the taps kernel's 64 tap lanes; two runs agree bit for bit."""
    from corrmm.kernels import depthwise as kd

    g = ConvGeometry(2, 5, 5, (6, 7), (7, 7), ((3, 3), (3, 2)), (1, 1), (1, 1), 5).validate()
    assert kd.grad_weight_method(g) == "taps" and kd.grad_weight_tiles(g, DEVICE, "taps")[3] > 1
    gen = seeded_generator("depthwise taps 7x7", dtype)
    x, dy = randn(g.input_shape, gen, dtype), randn(g.output_shape, gen, dtype)
    first = kd.grad_weight(x, dy, g)
    assert rel_err(first, kd.grad_weight_reference(x.double(), dy.double(), g)) <= KERNEL_TOLERANCE[dtype]
    assert torch.equal(first, kd.grad_weight(x, dy, g))


@needs_kernels
def test_kernel_weight_gradient_method_policy():
    from corrmm.kernels import depthwise as kd

    big = ConvGeometry(1, 4, 4, (12, 12), (9, 9), ((4, 4), (4, 4)), (1, 1), (1, 1), 4).validate()
    assert kd.grad_weight_method(big) == "chunks"  # 81 taps: more than the taps kernel's 64 lanes
    with pytest.raises(ValueError, match="'taps' or 'chunks'"):
        kd.grad_weight(torch.zeros(big.input_shape), torch.zeros(big.output_shape), big, method="rows")


@needs_kernels
def test_kernel_weight_gradient_taps_launch_signature(monkeypatch):
    """The taps kernel's launch covers every argument without a tuned config (its direct launch)."""
    from corrmm.kernels import common, depthwise as kd

    monkeypatch.setattr(common, "_PLANS", {})
    g = kernel_geometry(KERNEL_CASES["3x3_pad1"])
    x, dy = torch.zeros(g.input_shape, device=DEVICE), torch.zeros(g.output_shape, device=DEVICE)
    kd.grad_weight(x, dy, g, method="taps")
    # on a GPU the operands' NHWC transposes are planned launches too: pick the taps kernel's pair
    (partials, _), = [plan for plan in common._PLANS.values() if isinstance(plan, tuple)]
    assert len(partials.kernel.arg_names) == 3 + len(partials.scalars) + len(partials.meta)
def test_cpu_passes_without_numba_take_the_torch_ops(monkeypatch):
    """Where numba is missing, 3x3 stride-1 NCHW layers run on the per-tap torch ops, as every other layer."""
    from corrmm.algorithms import depthwise
    monkeypatch.setattr(depthwise, "numba_available", lambda: False)
    g = make_geometry((2, 4, 6, 6), (4, 1, 3, 3), 1, 1, 1, 4)
    assert not depthwise.uses_numba("forward", torch.empty(g.input_shape), g)
    check_case((2, 4, 1, (6, 6), (3, 3), 1, (1, 1), (1, 1)), torch.float32)
