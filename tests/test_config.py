"""Settings: the environment variables and the setters follow one rule each, and a bad value is
reported with the variable's name and the accepted forms (at first use, never by ``import corrmm``)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import corrmm
from corrmm import config

SRC = str(Path(corrmm.__file__).resolve().parents[1])
BAD_SIZES = ["garbage", "64MB", "nan", "inf", "-inf", "0", "-5", "1e-12", "0x10"]


def run_python(code: str, **env_vars) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRMM_")}
    env.update(env_vars, PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("text, expected", [("1024", 2**30), ("0.5", 2**19), (" 64 ", 64 * 2**20), ("1e3", 1000 * 2**20)])
def test_workspace_sizes_accepted(text, expected):
    assert config.parse_workspace_mb("CORRMM_WORKSPACE_MB", text) == expected


@pytest.mark.parametrize("text", BAD_SIZES)
def test_workspace_sizes_refused_with_the_variable_and_the_forms(text):
    with pytest.raises(ValueError) as info:
        config.parse_workspace_mb("CORRMM_WORKSPACE_MB", text)
    message = str(info.value)
    assert f"CORRMM_WORKSPACE_MB={text!r}" in message and "positive, finite number of MiB" in message


@pytest.mark.parametrize("text, expected", [("1", True), ("TRUE", True), ("yes", True), ("On", True),
                                            ("0", False), ("false", False), ("NO", False), ("off", False)])
def test_flags_accepted(text, expected):
    assert config.parse_flag("CORRMM_POISON", text) is expected


@pytest.mark.parametrize("text", ["2", "maybe", "enabled", "-1"])
def test_flags_refused(text):
    with pytest.raises(ValueError, match=rf"CORRMM_POISON='{text}' is not an on/off value: expected one of 1, true"):
        config.parse_flag("CORRMM_POISON", text)


@pytest.mark.parametrize("value", [0, -1])
def test_setter_refuses_what_the_variable_refuses(value):
    with pytest.raises(ValueError, match="positive integer number of bytes"):
        corrmm.set_workspace_limit(value)


@pytest.mark.parametrize("value", [1.5, 2.0, float("nan"), float("inf"), "64", True, None])
def test_setter_refuses_non_integers(value):
    with pytest.raises(TypeError, match="num_bytes must be a positive integer number of bytes"):
        corrmm.set_workspace_limit(value)


@pytest.mark.parametrize("value", [np.int64(4096), torch.tensor(4096)])
def test_setter_takes_integral_numpy_and_torch_scalars(value):
    with config.workspace_limit_set_to(value):
        assert corrmm.workspace_limit() == 4096 and type(corrmm.workspace_limit()) is int


def test_poison_outputs_takes_a_bool():
    with pytest.raises(TypeError, match="enabled must be True or False"):
        with corrmm.poison_outputs("yes"):
            pass


_FIRST_USE = """
import torch, corrmm
print("imported")
try:
    corrmm.corr2d(torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3), algo="im2col")
except ValueError as exc:
    print("ERROR", exc)
corrmm.set_workspace_limit(2**20)  # the setter replaces the bad value
print("after setter", corrmm.corr2d(torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3), algo="im2col").shape)
"""


@pytest.mark.parametrize("value", ["", "garbage", "64MB", "nan", "inf", "0", "-3"])
def test_bad_workspace_variable_is_reported_at_first_use(value):
    result = run_python(_FIRST_USE, CORRMM_WORKSPACE_MB=value)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "imported"  # import corrmm never fails because of the environment
    if value == "":  # empty means unset: the default, no error
        assert lines[1].startswith("after setter")
    else:
        assert lines[1].startswith(f"ERROR CORRMM_WORKSPACE_MB={value!r} is not a workspace size"), lines
        assert lines[2] == "after setter torch.Size([2, 4, 4, 4])"


def test_good_variables_are_read_once_at_import():
    code = "import corrmm; from corrmm import config; print(corrmm.workspace_limit(), config.poisoning())"
    result = run_python(code, CORRMM_WORKSPACE_MB="2.5", CORRMM_POISON="yes")
    assert result.stdout.split() == [str(int(2.5 * 2**20)), "True"], result.stderr


def test_bad_poison_variable_is_reported_at_first_use():
    result = run_python(_FIRST_USE.replace("corrmm.set_workspace_limit(2**20)", "corrmm.config._environment_errors.clear()"),
                        CORRMM_POISON="maybe")
    assert "ERROR CORRMM_POISON='maybe' is not an on/off value" in result.stdout, result.stderr


def test_bad_autotune_variable_is_reported_by_the_kernels_and_check_environment():
    code = ("from corrmm import config\ntry:\n    config.check_environment()\nexcept ValueError as e:\n    print('CHECK', e)\n"
            "try:\n    import corrmm.kernels\nexcept ValueError as e:\n    print('KERNELS', e)\n")
    result = run_python(code, CORRMM_AUTOTUNE="sometimes", TRITON_INTERPRET="1")
    assert "CHECK CORRMM_AUTOTUNE='sometimes' is not an on/off value" in result.stdout, result.stderr
    assert "KERNELS CORRMM_AUTOTUNE='sometimes'" in result.stdout, result.stderr
