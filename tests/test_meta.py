"""Meta and fake tensors: shapes, dtypes and memory formats propagate, and nothing is computed."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import corrmm
from corrmm.algorithms.base import Algorithm

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
KERNELS = {1: (3,), 2: (3, 2), 3: (2, 3, 2)}
SIZES = {1: (11,), 2: (9, 8), 3: (6, 7, 5)}


@pytest.fixture(autouse=True)
def no_algorithm_runs(monkeypatch):
    """Every algorithm refuses to run: a shape-only call must not reach one."""
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{self.name} ran on shape-only tensors")
    monkeypatch.setattr(Algorithm, "run", refuse)


def _functional(ndim):
    return (getattr(corrmm, f"corr{ndim}d"), getattr(corrmm, f"conv{ndim}d"),
            getattr(corrmm, f"corr{ndim}d_grad_input"), getattr(corrmm, f"corr{ndim}d_grad_weight"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_functions_on_meta_tensors(ndim, dtype):
    corr, conv, grad_input, grad_weight = _functional(ndim)
    x = torch.empty(2, 4, *SIZES[ndim], device="meta", dtype=dtype)
    w = torch.empty(6, 2, *KERNELS[ndim], device="meta", dtype=dtype)
    kw = dict(border_mode=1, subsample=2, num_groups=2)
    expected = TORCH_CONV[ndim](x, w, padding=1, stride=2, groups=2)
    for algo in ("auto", "im2col", "tune"):
        for y in (corr(x, w, algo=algo, **kw), conv(x, w, algo=algo, **kw)):
            assert (y.device.type, y.shape, y.dtype) == ("meta", expected.shape, dtype)
        dx = grad_input(w, y, x.shape[2:], algo=algo, **kw)
        dw = grad_weight(x, y, w.shape[2:], algo=algo, **kw)
        assert (dx.device.type, dx.shape, dx.dtype) == ("meta", x.shape, dtype)
        assert (dw.device.type, dw.shape, dw.dtype) == ("meta", w.shape, dtype)


def test_meta_tensors_keep_the_memory_format_and_differentiate():
    x = torch.empty(2, 4, 9, 8, device="meta").to(memory_format=torch.channels_last).requires_grad_()
    w = torch.empty(6, 4, 3, 3, device="meta", requires_grad=True)
    y = corrmm.corr2d(x, w, border_mode="half")
    assert y.shape == (2, 6, 9, 8) and y.is_contiguous(memory_format=torch.channels_last)
    y.sum().backward()
    assert x.grad.shape == x.shape and w.grad.shape == w.shape and x.grad.device.type == "meta"


def test_meta_tensors_still_validate():
    x = torch.empty(2, 4, 9, 8, device="meta")
    with pytest.raises(ValueError, match="channel mismatch"):
        corrmm.corr2d(x, torch.empty(6, 3, 3, 3, device="meta"))


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_layers_built_on_the_meta_device(ndim):
    layer = getattr(corrmm.nn, f"Conv{ndim}d")(4, 6, 3, padding="same", groups=2, device="meta")
    reference = getattr(torch.nn, f"Conv{ndim}d")(4, 6, 3, padding="same", groups=2, device="meta")
    x = torch.empty(2, 4, *SIZES[ndim], device="meta")
    y = layer(x)
    assert y.device.type == "meta" and y.shape == reference(x).shape
    layer.to_empty(device="cpu")  # what model-loading code does next
    assert layer.weight.device.type == "cpu"


def test_convert_a_meta_model_and_run_it_on_meta_and_fake_tensors():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, device="meta"), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 3, stride=2, padding_mode="reflect", padding=1,
                                                device="meta"))
    expected = model(torch.empty(2, 3, 16, 16, device="meta")).shape
    corrmm.convert(model)
    assert isinstance(model[0], corrmm.nn.Conv2d)
    assert model(torch.empty(2, 3, 16, 16, device="meta")).shape == expected
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake_model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 3))
        corrmm.convert(fake_model)
        y = fake_model(torch.empty(2, 3, 16, 16))
        assert y.shape == (2, 4, 14, 14)
        y.sum().backward()
        assert fake_model[0].weight.grad.shape == (8, 3, 3, 3)
