"""``corrmm bench``: the suites, the report arithmetic, and one real run end to end.

The end-to-end run is a subprocess on a small slice of the cpu-small suite
(on CUDA when ``CORRMM_TEST_DEVICE=cuda``), so it exercises the console
command exactly as a user would call it, JSON and plot included.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import corrmm
from corrmm.bench import report, runner
from corrmm.bench.runner import Measurement
from corrmm.bench.suite import Layer, load_suite, select_layers
from corrmm.bench.timing import TimingConfig, measure
from corrmm.cli import main

DEVICE = os.environ.get("CORRMM_TEST_DEVICE", "cpu")

# DESIGN section 5, typed in again so the CSV is checked against the document, not against itself:
# name: (batch, C, H, W, K, kernel, stride, pad)
DESIGN_LAYERS = {
    "L1": (128, 3, 128, 128, 96, 11, 1, 0),
    "L2": (128, 64, 64, 64, 128, 9, 1, 0),
    "L3": (128, 128, 32, 32, 128, 9, 1, 0),
    "L4": (128, 128, 16, 16, 128, 7, 1, 0),
    "L5": (128, 384, 13, 13, 384, 3, 1, 0),
    "S1": (32, 64, 32, 32, 128, 5, 1, 0),
    "S2": (32, 64, 32, 32, 128, 28, 1, 0),
    "R1": (64, 3, 224, 224, 64, 7, 2, 3),
    "R2": (64, 64, 56, 56, 64, 3, 1, 1),
    "R3": (64, 256, 56, 56, 64, 1, 1, 0),
    "R4": (64, 256, 14, 14, 256, 3, 1, 1),
    "R5": (64, 512, 7, 7, 512, 3, 1, 1),
}


def _direct_flops(batch, c, h, w, k, r, stride, pad):
    p = (h + 2 * pad - r) // stride + 1
    q = (w + 2 * pad - r) // stride + 1
    return 2 * batch * k * p * q * c * r * r


# ---- suites -------------------------------------------------------------------------

def test_convnet_suite_is_design_section_5():
    name, layers = load_suite("convnet")
    assert name == "convnet"
    assert [layer.name for layer in layers] == list(DESIGN_LAYERS)
    for layer in layers:
        batch, c, h, w, k, r, stride, pad = DESIGN_LAYERS[layer.name]
        assert (layer.batch, layer.channels, layer.height, layer.width, layer.filters) == (batch, c, h, w, k)
        assert (layer.kernel_h, layer.kernel_w, layer.stride, layer.pad) == (r, r, stride, pad)
        assert (layer.dilation, layer.groups) == (1, 1)
        assert layer.flops == _direct_flops(batch, c, h, w, k, r, stride, pad), layer.name
    # two hand-checked values: L1 is 2*128*96*118*118*3*11*11, R1 outputs 112x112
    assert layers[0].flops == 2 * 128 * 96 * 118 * 118 * 3 * 11 * 11
    assert layers[7].geometry.out_size == (112, 112)


def test_cpu_small_suite_is_small():
    _, layers = load_suite("cpu-small")
    assert 3 <= len(layers) <= 8
    for layer in layers:
        assert 4 <= layer.batch <= 64
        assert layer.flops < 1e10  # ten GFLOP or less: well under a second on any CPU
    # the layers of issue 12's table, by shape: 3x3 56² and 14², 7x7 stride 2 on 224², 7x7 on 16²,
    # the demo's size, depthwise
    shapes = {(l.batch, l.channels, l.height, l.filters, l.kernel_h, l.stride, l.groups) for l in layers}
    assert {(8, 64, 56, 64, 3, 1, 1), (8, 256, 14, 256, 3, 1, 1), (4, 3, 224, 64, 7, 2, 1),
            (16, 128, 16, 128, 7, 1, 1), (64, 16, 8, 32, 3, 1, 1), (8, 256, 28, 256, 3, 1, 256)} <= shapes


def test_suite_from_path_with_optional_columns(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("# a comment\nname,batch,channels,height,width,filters,kernel_h,kernel_w,stride,pad,groups\n"
                    "g1,2,4,9,7,6,3,2,2,1,2\n\ng2,1,3,5,5,2,1,1,1,0,\n")
    label, layers = load_suite(str(path))
    assert label == str(path)
    assert layers[0] == Layer("g1", 2, 4, 9, 7, 6, 3, 2, 2, 1, 1, 2)
    assert layers[0].weight_shape == (6, 2, 3, 2)
    assert layers[1].groups == 1
    assert [layer.name for layer in select_layers(layers, ["g2"])] == ["g2"]


@pytest.mark.parametrize("text, message", [
    ("name,batch,channels\nx,1,2\n", "missing columns"),
    ("name,batch,channels,height,width,filters,kernel_h,kernel_w,stride,pad\nx,1,2,5,5,3,3,3,one,0\n",
     "must be an int"),
    ("name,batch,channels,height,width,filters,kernel_h,kernel_w,stride,pad\nx,1,2,5,5,3,7,7,1,0\n",
     "smaller than"),
    ("name,batch,channels,height,width,filters,kernel_h,kernel_w,stride,pad\n"
     "x,1,2,5,5,3,3,3,1,0\nx,1,2,5,5,3,3,3,1,0\n", "unique"),
])
def test_bad_suites_are_rejected(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_suite(str(path))


def test_unknown_suite_layer_and_algo_are_usage_errors(capsys):
    assert main(["bench", "--suite", "nope"]) == 2
    assert main(["bench", "--suite", "cpu-small", "--layers", "C1,Z9"]) == 2
    assert main(["bench", "--suite", "cpu-small", "--algos", "bogus"]) == 2
    assert main(["bench", "--suite", "cpu-small", "--dtype", "fp8"]) == 2
    err = capsys.readouterr().err
    assert "Z9" in err and "bogus" in err and "fp8" in err


# ---- timing and report arithmetic ----------------------------------------------------

def test_cpu_timing_is_a_positive_median_after_an_untimed_call():
    calls = []
    ms = measure(lambda: calls.append(1), torch.device("cpu"), TimingConfig(0.0, 1.0, min_reps=4, max_reps=50))
    assert ms >= 0 and 1 + 4 <= len(calls) <= 1 + 50


def test_backend_flags_are_restored():
    before = runner.flags_snapshot()
    with runner.backend_flags(runner.DTYPES["tf32"], torch.device("cpu")) as flags:
        assert flags["cuda.matmul.allow_tf32"] and flags["cudnn.allow_tf32"]
    with runner.backend_flags(runner.DTYPES["fp32"], torch.device("cpu")) as flags:
        assert not flags["cuda.matmul.allow_tf32"] and not flags["cudnn.allow_tf32"]
    assert runner.flags_snapshot() == before


def test_best_skips_wrong_results_and_speedups_are_geometric_means():
    a, b = Layer("A", 1, 1, 4, 4, 1, 1, 1), Layer("B", 1, 1, 4, 4, 1, 1, 1)

    def m(layer, algo, ms, status="ok"):
        return Measurement("fp32", layer, "forward", algo, status, ms=ms, tflops=1.0)

    measurements = [
        m("A", "im2col", 2.0), m("A", "swapped", 1.0, "wrong"), m("A", "auto", 2.2), m("A", "torch", 4.0),
        m("B", "im2col", 8.0), m("B", "swapped", 4.0), m("B", "auto", 4.0), m("B", "torch", 2.0),
        Measurement("fp32", "B", "forward", "fft", "n/a", detail="stride"),
    ]
    rows = report.build_rows(measurements, [a, b], ["fp32"], ["forward"])
    assert [r.best.algo for r in rows] == ["im2col", "swapped"]  # the wrong 1.0 ms never wins
    summary = report.summarize(rows, "fp32", ["forward"])["forward"]
    assert summary["geomean_speedup_best"] == pytest.approx(1.0)  # 2x and 0.5x
    assert summary["geomean_speedup_auto"] == pytest.approx((4 / 2.2 * 0.5) ** 0.5)
    assert summary["worst_auto_over_best"] == pytest.approx(1.1)
    assert summary["worst_auto_over_best_layer"] == "A"
    table = report.format_table(rows, "fp32", ["im2col", "swapped", "fft", "auto", "torch"], "torch")
    assert "1.00!" in table and "n/a" in table


def test_wrong_and_failing_algorithms_are_reported_not_fatal(tmp_path, monkeypatch, capsys):
    import importlib

    from corrmm.algorithms.base import Algorithm

    class Broken(Algorithm):  # fast and wrong: must be caught, never counted as best
        name = "broken"

        def forward(self, input, weight, geometry):
            return input.new_zeros(geometry.output_shape)

    class Failing(Algorithm):
        name = "failing"

        def forward(self, input, weight, geometry):
            raise RuntimeError("kernel exploded")

    registry = importlib.import_module("corrmm.algorithms").REGISTRY
    monkeypatch.setitem(registry, "broken", Broken())
    monkeypatch.setitem(registry, "failing", Failing())
    out_json = tmp_path / "b.json"
    status = main(["bench", "--suite", "cpu-small", "--layers", "C5", "--passes", "fwd", "--quick",
                   "--device", "cpu", "--algos", "broken,failing,im2col,torch", "--json", str(out_json)])
    assert status == 1
    printed = capsys.readouterr().out
    assert "kernel exploded" in printed and "relative error" in printed
    statuses = {m["algo"]: m["status"] for m in json.loads(out_json.read_text())["measurements"]}
    assert statuses == {"broken": "wrong", "failing": "error", "im2col": "ok", "torch": "ok"}
    assert json.loads(out_json.read_text())["rows"][0]["best_algo"] == "im2col"


# ---- end to end -------------------------------------------------------------------------

def test_bench_command_end_to_end(tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    layers = ["C5", "C7"]  # a plain and a strided, padded layer: keeps the run to seconds
    env = dict(os.environ)
    # the suite is timed, not checked against Triton's interpreter, which would take minutes
    env.pop("TRITON_INTERPRET", None)
    env["CORRMM_CACHE_DIR"] = str(tmp_path / "cache")  # tune's winners stay out of the user's cache
    src = str(Path(corrmm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "corrmm", "bench", "--suite", "cpu-small", "--layers", ",".join(layers),
           "--quick", "--device", DEVICE, "--json", str(out_json), "--plot", str(out_png)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    log = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, log
    assert "geometric mean speedup" in done.stdout, log

    doc = json.loads(out_json.read_text())
    assert doc["torch"] == torch.__version__ and "device" in doc and "triton" in doc and "cudnn" in doc
    assert doc["settings"]["suite"] == "cpu-small"
    dtypes = doc["settings"]["dtypes"]
    assert [run["dtype"] for run in doc["runs"]] == dtypes and all("flags" in run for run in doc["runs"])
    entries = {}
    for m in doc["measurements"]:
        key = (m["dtype"], m["layer"], m["pass"], m["algo"])
        assert key not in entries, key
        entries[key] = m
    for dtype in dtypes:
        for layer in layers:
            for pass_name in runner.PASSES:
                ok = []
                for algo in [*corrmm.algorithms(), "auto", "torch"]:
                    m = entries[(dtype, layer, pass_name, algo)]
                    assert m["status"] in ("ok", "n/a"), m
                    if m["status"] == "ok":
                        assert m["ms"] > 0 and m["tflops"] > 0, m
                        ok.append(algo)
                assert "torch" in ok and "auto" in ok, (dtype, layer, pass_name, ok)
                assert set(ok) & set(corrmm.algorithms()), (dtype, layer, pass_name, ok)
    assert {(r["dtype"], r["layer"], r["pass"]) for r in doc["rows"]} == \
        {(d, layer, p) for d in dtypes for layer in layers for p in runner.PASSES}
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
