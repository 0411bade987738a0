"""The auto rule: deterministic, always a supported algorithm, and the choices the
benchmark measurements on the H100 justify (PERFORMANCE.md)."""
import pytest
import torch

import corrmm
from corrmm.algorithms import REGISTRY
from corrmm.geometry import make_geometry
from corrmm.selection import auto_choice, seed_rule

CUDA = torch.device("cuda")
CPU = torch.device("cpu")

# name: (input shape, weight shape, border_mode, subsample) of DESIGN 5's suite
LAYERS = {
    "L1": ((128, 3, 128, 128), (96, 3, 11, 11), 0, 1),
    "L3": ((128, 128, 32, 32), (128, 128, 9, 9), 0, 1),
    "L4": ((128, 128, 16, 16), (128, 128, 7, 7), 0, 1),
    "S2": ((32, 64, 32, 32), (128, 64, 28, 28), 0, 1),
    "R1": ((64, 3, 224, 224), (64, 3, 7, 7), 3, 2),
    "R3": ((64, 256, 56, 56), (64, 256, 1, 1), 0, 1),
    "R4": ((64, 256, 14, 14), (256, 256, 3, 3), 1, 1),
    # grouped, 3-D and few-channel layers (PERFORMANCE.md, "grouped, 3-D, small-channel")
    "G8": ((64, 256, 28, 28), (256, 8, 3, 3), 1, 1, 32),
    "GXS": ((64, 256, 56, 56), (256, 8, 3, 3), 1, 2, 32),
    "A1": ((64, 1, 16000), (128, 1, 80), 0, 4),
    "DW2": ((64, 144, 56, 56), (144, 1, 3, 3), 1, 2, 144),
    "V3": ((8, 64, 16, 56, 56), (128, 64, 3, 3, 3), 1, 1),
    "T1": ((64, 1, 128, 512), (64, 1, 128, 8), 0, 1),
}


def _geometry(name):
    x, w, pad, stride, *groups = LAYERS[name]
    return make_geometry(x, w, border_mode=pad, subsample=stride, num_groups=groups[0] if groups else 1)


@pytest.mark.parametrize("name,dtype,pass_name,expected", [
    ("L1", torch.bfloat16, "forward", "implicit"),
    ("R1", torch.bfloat16, "forward", "implicit"),
    ("L1", torch.float32, "forward", "im2col"),
    ("R1", torch.float32, "forward", "im2col"),
    ("L4", torch.float32, "grad_weight", "implicit"),  # v7: the v6 kernel beats fft at 7x7
    ("L4", torch.float32, "grad_input", "fft"),
    ("L4", torch.bfloat16, "grad_input", "implicit"),
    ("L3", torch.bfloat16, "forward", "implicit"),
    ("R4", torch.bfloat16, "grad_weight", "implicit"),
    ("S2", torch.bfloat16, "forward", "swapped"),
    ("S2", torch.bfloat16, "grad_weight", "implicit"),
    ("S2", torch.float32, "grad_weight", "im2col"),
    ("S2", torch.bfloat16, "grad_input", "implicit"),  # tap windows (grouped / 3-D / few-channel notes)
    ("S2", torch.float32, "grad_input", "fft"),
    ("L1", torch.bfloat16, "grad_input", "implicit"),  # the row-column kernel
    ("L1", torch.float32, "grad_input", "implicit"),
    ("T1", torch.bfloat16, "grad_input", "implicit"),
    ("G8", torch.float32, "forward", "implicit"),      # packed groups
    ("G8", torch.bfloat16, "grad_input", "implicit"),
    ("G8", torch.bfloat16, "grad_weight", "implicit"),  # packed-groups weight gradient
    ("G8", torch.float32, "grad_weight", "implicit"),
    ("GXS", torch.float32, "grad_weight", "implicit"),
    ("V3", torch.bfloat16, "forward", "implicit"),     # 3-D kernels
    ("V3", torch.float32, "grad_input", "implicit"),
    ("L3", torch.bfloat16, "grad_input", "implicit"),
    ("L3", torch.float32, "forward", "fft"),
    ("L3", torch.float32, "grad_weight", "fft"),
    ("L4", torch.float32, "forward", "implicit"),
    ("R4", torch.float32, "grad_weight", "im2col"),
    ("L1", torch.float32, "grad_weight", "implicit"),
    ("R1", torch.float32, "grad_weight", "im2col"),
    ("R3", torch.bfloat16, "forward", "gemm1x1"),
    ("R3", torch.float32, "grad_weight", "gemm1x1"),
    ("R3", torch.bfloat16, "grad_weight", "implicit"),  # v7
    ("A1", torch.bfloat16, "forward", "implicit"),      # v7: one channel, 80 taps, stride 4
    ("DW2", torch.bfloat16, "forward", "implicit"),     # v7: stride-2 depthwise
    ("DW2", torch.bfloat16, "grad_input", "implicit"),
    ("DW2", torch.bfloat16, "grad_weight", "depthwise"),
])
def test_cuda_rule_follows_the_measurements(name, dtype, pass_name, expected, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    if REGISTRY[expected].not_supported_reasons(_geometry(name), pass_name, CUDA, dtype):
        pytest.skip(f"{expected} is not available in this environment")  # e.g. triton missing
    assert auto_choice(pass_name, _geometry(name), CUDA, dtype) == expected


def test_small_group_weight_gradients_in_ieee_float32_stay_with_im2col(monkeypatch):
    """The packed kernel multiplies GP times the useful products: TF32 tensor cores have them to
    spare, IEEE float32 (no tensor cores) does not."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert auto_choice("grad_weight", _geometry("GXS"), CUDA, torch.float32) == "im2col"


# the CPU bench's layers (corrmm/bench/suites/cpu_small.csv) and the demo's, with the fastest
# algorithm `corrmm bench --device cpu --threads 1` measured for them (PERFORMANCE.md, "CPU")
CPU_LAYERS = {
    "C1": ((8, 64, 56, 56), (64, 64, 3, 3), 1, 1),
    "C2": ((8, 256, 14, 14), (256, 256, 3, 3), 1, 1),
    "C3": ((4, 3, 224, 224), (64, 3, 7, 7), 3, 2),
    "C4": ((16, 128, 16, 16), (128, 128, 7, 7), 3, 1),
    "C5": ((64, 16, 8, 8), (32, 16, 3, 3), 1, 1),
    "D1": ((32, 1, 8, 8), (32, 1, 3, 3), 1, 1),
    "D2": ((32, 32, 8, 8), (64, 32, 3, 3), 1, 2),
    "D3": ((32, 64, 4, 4), (64, 64, 3, 3), 1, 1),
    "D4": ((32, 64, 4, 4), (128, 64, 1, 1), 0, 1),
}


@pytest.mark.parametrize("name,pass_name,expected", [
    ("C1", "forward", "winograd"), ("C1", "grad_input", "winograd"), ("C1", "grad_weight", "im2col"),  # CPU v3
    ("C2", "forward", "winograd"), ("C2", "grad_input", "winograd"), ("C2", "grad_weight", "winograd"),
    ("C3", "forward", "im2col"), ("C3", "grad_input", "im2col"), ("C3", "grad_weight", "im2col"),
    ("C4", "grad_weight", "im2col"), ("C4", "grad_input", "swapped"),
    # CPU v3: small images take im2col's whole-batch channels-last columns in every pass
    ("C5", "forward", "im2col"), ("C5", "grad_input", "im2col"), ("C5", "grad_weight", "im2col"),
    ("D1", "forward", "im2col"), ("D1", "grad_input", "im2col"), ("D1", "grad_weight", "im2col"),
    ("D3", "forward", "im2col"), ("D3", "grad_input", "im2col"), ("D3", "grad_weight", "im2col"),
    ("D2", "grad_input", "im2col"), ("D2", "grad_weight", "im2col"),
    ("D4", "forward", "gemm1x1"), ("D4", "grad_weight", "im2col"),
])
def test_cpu_rule_follows_the_measurements(name, pass_name, expected):
    x, w, pad, stride = CPU_LAYERS[name]
    g = make_geometry(x, w, border_mode=pad, subsample=stride)
    assert auto_choice(pass_name, g, CPU, torch.float32) == expected


@pytest.mark.parametrize("pass_name", ["forward", "grad_input", "grad_weight"])
def test_cpu_rule_for_depthwise_layers(pass_name):
    g = make_geometry((8, 256, 28, 28), (256, 1, 3, 3), border_mode=1, num_groups=256)  # C6
    expected = "depthwise" if "depthwise" in REGISTRY else "fft"
    assert auto_choice(pass_name, g, CPU, torch.float32) == expected


@pytest.mark.parametrize("name", [*LAYERS, *CPU_LAYERS])
@pytest.mark.parametrize("pass_name", ["forward", "grad_input", "grad_weight"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cpu_rule_picks_a_supported_algorithm(name, pass_name, dtype):
    x, w, pad, stride, *groups = {**LAYERS, **CPU_LAYERS}[name]
    g = make_geometry(x, w, border_mode=pad, subsample=stride, num_groups=groups[0] if groups else 1)
    choice = auto_choice(pass_name, g, CPU, dtype)
    assert not REGISTRY[choice].not_supported_reasons(g, pass_name, CPU, dtype)


def test_seed_rule():
    # GpuCorrMM's example: a kernel nearly as large as the image, few output positions
    assert seed_rule("forward", _geometry("S2")) == "swapped"
    assert seed_rule("forward", _geometry("L3")) == "im2col"
    assert seed_rule("forward", _geometry("R3")) == "gemm1x1"
    assert seed_rule("grad_input", _geometry("R1")) == "im2col"  # strided: no zero insertion
