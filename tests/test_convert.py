"""corrmm.convert on a ResNet-18-shaped model: outputs and gradients match the unconverted model."""
from __future__ import annotations

import copy

import pytest
import torch

import corrmm

from .integrations.resnet import resnet18


def _convs(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def _run(model, x, target):
    model.zero_grad()
    out = model(x)
    torch.nn.functional.cross_entropy(out, target).backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("training", [True, False])
def test_resnet18_outputs_and_gradients_match(training):
    torch.manual_seed(0)
    reference = resnet18(num_classes=10).double().train(training)
    model = copy.deepcopy(reference)
    params_before = {name: p for name, p in model.named_parameters()}

    assert corrmm.convert(model) is model
    convs = _convs(model)
    # the 7x7 stem, 16 3x3 convolutions (some strided) and 3 strided 1x1 shortcuts
    assert len(convs) == 20
    assert all(type(m) is corrmm.nn.Conv2d for m in convs.values())
    assert {m.kernel_size for m in convs.values()} == {(7, 7), (3, 3), (1, 1)}
    # the very same Parameter objects, so an optimizer made before the conversion still works
    assert all(p is params_before[name] for name, p in model.named_parameters())
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert model.training == training and all(m.training == training for m in model.modules())

    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    target = torch.tensor([1, 7])
    y_ref, g_ref = _run(reference, x, target)
    y, g = _run(model, x, target)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-7, atol=1e-9, msg=lambda m: f"{name}: {m}")
    if training:  # batch-norm running statistics moved alike
        for (name, b), b_ref in zip(model.named_buffers(), reference.buffers()):
            torch.testing.assert_close(b, b_ref, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


def test_optimizer_made_before_conversion_still_trains_the_model():
    torch.manual_seed(0)
    model = resnet18(num_classes=4, width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    corrmm.convert(model)
    before = model.conv1.weight.detach().clone()
    torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 3])).backward()
    optimizer.step()
    assert not torch.equal(model.conv1.weight, before)


def test_filter_fn_sees_qualified_names_and_selects():
    model = resnet18(num_classes=4, width=8)
    seen = []

    def only_layer1(module, name):
        seen.append(name)
        return name.startswith("layer1.")

    corrmm.convert(model, filter_fn=only_layer1, algo="im2col")
    assert "conv1" in seen and "layer2.0.downsample.0" in seen
    assert "bn1" not in seen  # only convolutions are offered to the filter
    for name, m in _convs(model).items():
        if name.startswith("layer1."):
            assert type(m) is corrmm.nn.Conv2d and m.algo == "im2col"
        else:
            assert type(m) is torch.nn.Conv2d


def test_what_is_converted_and_what_is_not():
    class MyConv(torch.nn.Conv2d):  # a subclass may change forward: left alone
        pass

    model = torch.nn.Sequential(torch.nn.Conv1d(2, 3, 3), torch.nn.Conv3d(2, 3, 3), torch.nn.ConvTranspose2d(2, 3, 3),
                                MyConv(2, 3, 3), corrmm.nn.Conv2d(2, 3, 3, algo="im2col"))
    corrmm.convert(model)
    assert [type(m) for m in model] == [corrmm.nn.Conv1d, corrmm.nn.Conv3d, torch.nn.ConvTranspose2d, MyConv,
                                        corrmm.nn.Conv2d]
    assert model[4].algo == "im2col"  # already corrmm: untouched

    # a convolution as the root module is converted in place too
    root = torch.nn.Conv2d(2, 3, 3, dtype=torch.float64)
    assert corrmm.convert(root) is root and type(root) is corrmm.nn.Conv2d
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(root(x), torch.nn.functional.conv2d(x, root.weight, root.bias))

    with pytest.raises(ValueError, match="unknown algo"):
        corrmm.convert(torch.nn.Conv2d(2, 3, 3), algo="nope")
