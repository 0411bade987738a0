"""``corrmm bench --models`` and the suites' 1-D and 3-D layers.

The model bench runs on the CPU (or ``CORRMM_TEST_DEVICE``) with the two
built-in networks at tiny sizes; torchvision's models are only checked for the
error a user without torchvision gets.
"""
from __future__ import annotations

import json
import os
import statistics
import sys

import pytest
import torch

import corrmm
from corrmm.bench import models as model_bench
from corrmm.bench.suite import load_suite
from corrmm.cli import main

DEVICE = os.environ.get("CORRMM_TEST_DEVICE", "cpu")
TINY = ["--device", DEVICE, "--batch", "2", "--steps", "2", "--warmup-steps", "1", "--modes", "eager"]


def _measurements(doc):
    return {(m["dtype"], m["model"], m["mode"], m["side"]): m for m in doc["measurements"]}


def test_models_bench_eager_json_and_plot(tmp_path, capsys):
    out_json, out_png = tmp_path / "models.json", tmp_path / "models.png"
    status = main(["bench", "--models", "m5_audio,small_cnn", *TINY, "--json", str(out_json), "--plot", str(out_png)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "corrmm/torch" in printed and "geometric mean" in printed

    doc = json.loads(out_json.read_text())
    assert doc["torch"] == torch.__version__ and "device" in doc
    settings = doc["settings"]
    assert settings["benchmark"] == "models" and settings["models"] == ["m5_audio", "small_cnn"]
    assert settings["modes"] == ["eager"] and settings["steps"] == 2 and settings["batch"] == 2
    dtype = settings["dtypes"][0]
    for check in doc["checks"]:  # corrmm's and torch's logits and gradients against a float64 run
        assert check["status"] == "ok", check
        for what in ("logits", "grads"):
            ours, theirs = check[f"{what}_rel_err"], check[f"torch_{what}_rel_err"]
            assert 0 <= ours <= 2 * theirs + 16 * model_bench.EPS[dtype] == check[f"{what}_bound"], check
            if dtype == "fp32":
                assert ours < 1e-4, check
    assert {c["model"] for c in doc["checks"]} == {"m5_audio", "small_cnn"}

    entries = _measurements(doc)
    assert set(entries) == {(dtype, model, "eager", side) for model in ("m5_audio", "small_cnn")
                            for side in ("torch", "corrmm")}
    for m in entries.values():
        assert m["status"] == "ok", m
        assert len(m["step_times_ms"]) == 2 and all(t > 0 for t in m["step_times_ms"])
        assert m["step_ms"] == pytest.approx(statistics.median(m["step_times_ms"]))
        assert m["images_per_s"] == pytest.approx(2 / (m["step_ms"] / 1e3))
        assert m["batch"] == 2 and m["final_loss"] == m["final_loss"]  # not NaN
    assert entries[(dtype, "m5_audio", "eager", "torch")]["input_shape"][:2] == [2, 1]
    assert entries[(dtype, "small_cnn", "eager", "torch")]["input_shape"][:2] == [2, 3]
    for row in doc["rows"]:
        ours, theirs = (entries[(dtype, row["model"], "eager", side)] for side in ("corrmm", "torch"))
        assert row["corrmm_over_torch"] == pytest.approx(ours["images_per_s"] / theirs["images_per_s"])
    summary = doc["runs"][0]["summary"]["eager"]
    ratios = [row["corrmm_over_torch"] for row in doc["rows"]]
    assert summary["geomean_corrmm_over_torch"] == pytest.approx((ratios[0] * ratios[1]) ** 0.5)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_models_bench_compiled_mode_uses_the_corrmm_backend(monkeypatch, tmp_path, fresh_dynamo):
    # the real backends generate code (minutes on a CPU); these trace and rewrite the same graphs without it
    monkeypatch.setitem(model_bench.COMPILE_BACKENDS, "torch", "eager")
    monkeypatch.setitem(model_bench.COMPILE_BACKENDS, "corrmm", "corrmm_eager")
    out_json = tmp_path / "models.json"
    before = corrmm.compile.counters["convolutions"]
    argv = ["bench", "--models", "m5_audio", *TINY[:-1], "compiled", "--no-check", "--json", str(out_json)]
    assert main(argv) == 0
    # forward and backward graphs of the corrmm side: 4 convolutions each way
    assert corrmm.compile.counters["convolutions"] - before >= 8
    doc = json.loads(out_json.read_text())
    assert {(m["side"], m["mode"], m["status"]) for m in doc["measurements"]} == \
        {("torch", "compiled", "ok"), ("corrmm", "compiled", "ok")}
    assert doc["checks"] == [] and doc["settings"]["compile_backends"] == {"torch": "eager", "corrmm": "corrmm_eager"}


@pytest.mark.parametrize("mode, compile_mode", [("compiled", None), ("reduce-overhead", "reduce-overhead")])
def test_compiled_modes_compile_both_sides_alike(monkeypatch, mode, compile_mode):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: calls.append(kwargs) or model)
    plan = model_bench.ModelPlan(models=["m5_audio"], dtypes=["fp32"], modes=[mode], device=torch.device("cpu"),
                                 batch=2, size=None, steps=1, warmup_steps=1, seed=0, algo="auto", check=False)
    for side in ("torch", "corrmm"):
        model_bench._prepare(model_bench.MODELS["m5_audio"], mode, side, plan)
    assert calls == [{"backend": model_bench.COMPILE_BACKENDS[side], "mode": compile_mode}
                     for side in ("torch", "corrmm")]


def test_check_catches_a_wrong_convolution(monkeypatch):
    real_convert = model_bench.corrmm.convert

    def convert_and_spoil(model, algo):  # one weight 1% off: a bug the check must see
        real_convert(model, algo=algo)
        with torch.no_grad():
            next(m for m in model.modules() if isinstance(m, torch.nn.Conv1d)).weight.mul_(1.01)
        return model

    monkeypatch.setattr(model_bench.corrmm, "convert", convert_and_spoil)
    plan = model_bench.ModelPlan(torch.device("cpu"), ["fp32"], ["m5_audio"], ["eager"], steps=1, warmup_steps=1,
                                 batch=2)
    check = model_bench.check_model(model_bench.MODELS["m5_audio"], "fp32", plan)
    assert check.status == "wrong" and "float64" in check.detail, check
    assert check.grads_rel_err > check.grads_bound


def test_missing_torchvision_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now raises ImportError
    monkeypatch.delitem(sys.modules, "torchvision.models", raising=False)
    assert main(["bench", "--models", "resnet18", "m5_audio", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "torchvision, needed by models ['resnet18'], does not import" in err and "m5_audio" in err and "small_cnn" in err
    # with no names, the models that run here
    assert model_bench.resolve_models([]) == model_bench.builtin_models() == ["m5_audio", "small_cnn"]


@pytest.mark.parametrize("argv, words", [
    (["--models", "vgg99"], "vgg99"),
    (["--models", "m5_audio", "--modes", "jit"], "jit"),
    (["--models", "m5_audio", "--dtype", "fp64"], "fp64"),
    (["--models", "m5_audio", "--suite", "convnet"], "--suite"),
    (["--models", "m5_audio", "--steps", "0"], "--steps"),
])
def test_model_bench_usage_errors(capsys, argv, words):
    assert main(["bench", "--device", "cpu", *argv]) == 2
    assert words in capsys.readouterr().err


def test_builtin_networks_train_on_their_input_shapes():
    for name in model_bench.builtin_models():
        spec = model_bench.MODELS[name]
        model = spec.build()
        batch, size = spec.cpu
        logits = model(torch.randn(spec.input_shape(batch, size)))
        assert logits.shape == (batch, spec.num_classes)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
        kinds = {(type(m).__name__, m.groups > 1) for m in convs}
        assert kinds == ({("Conv1d", False)} if spec.kind == "audio" else {("Conv2d", False), ("Conv2d", True)})


# ---- suites with 1-D and 3-D layers -------------------------------------------------------

def test_models_suite_has_the_models_convolutions():
    _, layers = load_suite("models")
    by_name = {layer.name: layer for layer in layers}
    depthwise = [layer for layer in layers if layer.groups == layer.channels == layer.filters and layer.groups > 1]
    assert {(layer.kernel_h, layer.stride) for layer in depthwise} >= {(3, 1), (3, 2), (7, 1)}
    assert any(layer.groups == 32 and layer.kernel_h == 3 for layer in layers)          # ResNeXt
    assert any(layer.kernel_h == 1 and layer.stride == 2 and layer.dims == 2 for layer in layers)  # shortcuts
    v1 = by_name["V1"]  # R3D-18's 3x3x3, typed in again: 8 clips of 64 channels, 16x56x56
    assert v1.input_shape == (8, 64, 16, 56, 56) and v1.weight_shape == (64, 64, 3, 3, 3)
    assert v1.flops == 2 * 8 * 64 * (16 * 56 * 56) * 64 * 27
    a1 = by_name["A1"]  # M5's first layer: one channel, 80 taps, stride 4
    assert a1.input_shape == (64, 1, 16000) and a1.weight_shape == (128, 1, 80)
    assert a1.geometry.output_shape == (64, 128, (16000 - 80) // 4 + 1)


@pytest.mark.parametrize("row, message", [
    ("x,4,1,2,1,5,5,3,1,3,3,1,0", "dims must be 1, 2 or 3"),
    ("x,2,1,2,3,5,5,3,1,3,3,1,0", "depth and kernel_d are for dims=3"),
    ("x,1,1,2,1,5,5,3,1,3,3,1,0", "height and kernel_h must be 1"),
])
def test_bad_dims_are_rejected(tmp_path, row, message):
    path = tmp_path / "bad.csv"
    path.write_text("name,dims,batch,channels,depth,height,width,filters,kernel_d,kernel_h,kernel_w,stride,pad\n"
                    + row + "\n")
    with pytest.raises(ValueError, match=message):
        load_suite(str(path))


def test_layer_bench_runs_1d_and_3d_layers(tmp_path):
    path, out_json = tmp_path / "nd.csv", tmp_path / "nd.json"
    path.write_text("name,dims,batch,channels,depth,height,width,filters,kernel_d,kernel_h,kernel_w,stride,pad,groups\n"
                    "D1,1,2,4,1,1,37,6,1,1,5,2,1,2\n"
                    "D3,3,2,4,5,6,7,6,3,3,2,1,1,2\n")
    assert main(["bench", "--suite", str(path), "--device", "cpu", "--algos", "im2col,torch", "--quick",
                 "--no-progress", "--json", str(out_json)]) == 0
    doc = json.loads(out_json.read_text())
    assert {(m["layer"], m["pass"], m["algo"]) for m in doc["measurements"] if m["status"] == "ok"} == \
        {(layer, p, a) for layer in ("D1", "D3") for p in ("forward", "grad_input", "grad_weight")
         for a in ("im2col", "torch")}
    layers = {layer["name"]: layer for layer in doc["layers"]}
    assert layers["D1"]["output_shape"] == [2, 6, (37 + 2 - 5) // 2 + 1]
    assert layers["D3"]["output_shape"] == [2, 6, 5, 6, 8]
