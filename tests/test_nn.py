"""corrmm.nn.Conv1d/2d/3d against torch.nn.Conv1d/2d/3d: same state_dict, same outputs and gradients.

Every case builds a torch layer and a corrmm layer from the same arguments,
loads the torch state_dict into the corrmm layer (strictly), compares the
forward pass and all gradients in float64, then loads the corrmm state_dict
back into a fresh torch layer and compares again.
"""
from __future__ import annotations

import pytest
import torch

import corrmm

from .reference import seeded_generator

# torch warns about its own padded copy for even kernels with padding="same"; not our concern here
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same.")

TORCH = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
CORRMM = {1: corrmm.nn.Conv1d, 2: corrmm.nn.Conv2d, 3: corrmm.nn.Conv3d}
SIZES = {1: (13,), 2: (11, 9), 3: (6, 7, 5)}
PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]

# (kernel, stride, padding, dilation, groups): odd sizes, even kernels (asymmetric "same"), tuples
CONFIGS = {
    1: [(3, 1, 1, 1, 1), (4, 1, "same", 1, 2), (3, 2, 2, 1, 4), (2, 1, "same", 3, 1), (5, 3, "valid", 1, 1)],
    2: [(3, 1, 1, 1, 1), ((4, 3), 1, "same", 1, 2), ((3, 2), (2, 1), (2, 1), 1, 4), (3, 1, "same", (2, 1), 1),
        (1, 2, 0, 1, 1), ((2, 3), 1, "valid", 2, 2)],
    3: [(3, 1, 1, 1, 1), ((2, 3, 2), 1, "same", 1, 2), (3, (2, 1, 2), (1, 0, 1), (1, 2, 1), 4)],
}
# bias on every other case, so both kinds meet every dimension and padding mode
CASES = [(nd, cfg, mode, i % 2 == 0)
         for i, (nd, cfg, mode) in enumerate((nd, cfg, mode) for nd, cfgs in CONFIGS.items() for cfg in cfgs
                                              for mode in PADDING_MODES)]


def _layers(nd, cfg, mode, bias, dtype=torch.float64, **extra):
    kernel, stride, padding, dilation, groups = cfg
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias,
                  padding_mode=mode, dtype=dtype)
    return TORCH[nd](4, 8, **kwargs), CORRMM[nd](4, 8, **kwargs, **extra)


def _forward_backward(layer, x, dy):
    x = x.detach().requires_grad_()
    layer.zero_grad()
    y = layer(x)
    y.backward(dy)
    grads = {name: p.grad.clone() for name, p in layer.named_parameters()}
    return y.detach(), x.grad, grads


def _assert_same(torch_layer, corrmm_layer, x, atol=1e-10, rtol=1e-10):
    with torch.no_grad():
        shape = torch_layer(x).shape
    dy = torch.randn(shape, generator=seeded_generator(tuple(shape)), dtype=x.dtype)
    y_ref, dx_ref, g_ref = _forward_backward(torch_layer, x, dy)
    y, dx, g = _forward_backward(corrmm_layer, x, dy)
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(dx, dx_ref, atol=atol, rtol=rtol)
    assert g.keys() == g_ref.keys()
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("nd,cfg,mode,bias", CASES)
def test_matches_torch_through_state_dict(nd, cfg, mode, bias):
    torch_layer, corrmm_layer = _layers(nd, cfg, mode, bias)
    assert corrmm_layer.state_dict().keys() == torch_layer.state_dict().keys()
    corrmm_layer.load_state_dict(torch_layer.state_dict(), strict=True)
    x = torch.randn(3, 4, *SIZES[nd], generator=seeded_generator(nd, cfg, mode), dtype=torch.float64)
    _assert_same(torch_layer, corrmm_layer, x)

    # and back: a fresh torch layer loads the corrmm state_dict
    back, _ = _layers(nd, cfg, mode, bias)
    back.load_state_dict(corrmm_layer.state_dict(), strict=True)
    _assert_same(back, corrmm_layer, x)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_float32_unbatched_and_channels_last(nd):
    torch_layer, corrmm_layer = _layers(nd, (3, 1, "same", 1, 2), "zeros", True, dtype=torch.float32)
    corrmm_layer.load_state_dict(torch_layer.state_dict())
    x = torch.randn(2, 4, *SIZES[nd], generator=seeded_generator("f32", nd))
    _assert_same(torch_layer, corrmm_layer, x, atol=1e-5, rtol=1e-4)
    # unbatched (C, *spatial) input, as torch accepts
    _assert_same(torch_layer, corrmm_layer, x[0], atol=1e-5, rtol=1e-4)
    if nd > 1:
        fmt = torch.channels_last if nd == 2 else torch.channels_last_3d
        xc = x.contiguous(memory_format=fmt)
        assert corrmm_layer(xc).is_contiguous(memory_format=fmt)
        _assert_same(torch_layer, corrmm_layer, xc, atol=1e-5, rtol=1e-4)


def test_same_parameters_init_and_repr():
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(3, 6, 5, stride=2, padding=2, groups=3, padding_mode="reflect")
    torch.manual_seed(0)
    ours = corrmm.nn.Conv2d(3, 6, 5, stride=2, padding=2, groups=3, padding_mode="reflect", algo="im2col")
    assert isinstance(ours, torch.nn.Conv2d)
    torch.testing.assert_close(ours.weight, ref.weight, rtol=0, atol=0)  # torch's own initialisation
    torch.testing.assert_close(ours.bias, ref.bias, rtol=0, atol=0)
    assert repr(ours) == repr(ref)[:-1] + ", algo='im2col')"
    assert "algo" not in repr(corrmm.nn.Conv2d(3, 6, 5))


def test_forced_algorithms_agree():
    x = torch.randn(2, 4, 10, 10, dtype=torch.float64)
    layers = {algo: corrmm.nn.Conv2d(4, 8, 3, padding=1, dtype=torch.float64, algo=algo)
              for algo in ["auto", *corrmm.algorithms()]}
    state = layers["auto"].state_dict()
    outputs = {}
    for algo, layer in layers.items():
        layer.load_state_dict(state)
        try:
            outputs[algo] = layer(x)
        except ValueError:  # an algorithm that cannot serve this case says so
            continue
    for algo, y in outputs.items():
        torch.testing.assert_close(y, outputs["auto"], msg=lambda m: f"{algo}: {m}")


def test_unknown_algo_is_rejected():
    with pytest.raises(ValueError, match="unknown algo"):
        corrmm.nn.Conv2d(3, 4, 3, algo="nope")


def test_autocast_casts_like_torch():
    torch_layer, corrmm_layer = _layers(2, (3, 1, 1, 1, 1), "zeros", True, dtype=torch.float32)
    corrmm_layer.load_state_dict(torch_layer.state_dict())
    x = torch.randn(2, 4, 11, 9, generator=seeded_generator("autocast"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, ours = torch_layer(x), corrmm_layer(x)
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), atol=5e-2, rtol=5e-2)
