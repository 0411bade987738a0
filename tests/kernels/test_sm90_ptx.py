"""The new weight-gradient kernels build for an H100 and read global memory in 16-byte pieces.

The CPU suite runs kernels only in Triton's interpreter, which never generates
code; this test compiles them for sm_90 with Triton's own ptxas in a separate
process (no interpreter, no GPU needed) and reads the PTX (tests/kernels/sm90_ptx.py).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reference import DEVICE

ROOT = Path(__file__).resolve().parents[2]


def _has_nvidia_backend() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    from triton.backends import backends
    return "nvidia" in backends


pytestmark = pytest.mark.skipif(
    DEVICE.type == "cuda" or not _has_nvidia_backend(),
    reason="on a GPU the other kernel tests build these kernels for real; needs Triton's NVIDIA backend")


@pytest.fixture(scope="module")
def report():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, "-m", "tests.kernels.sm90_ptx"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("case", ["grouped_bf16_one_tap", "grouped_bf16_flat_3d", "grouped_tf32", "grouped_fp64"])
def test_grouped_kernel_reads_through_16_byte_async_copies(report, case):
    """Both column modes and every dtype: each operand tile arrives by 16-byte cp.async (pipelined), none by
    scalar loads (which is what unaligned packed-channel offsets had compiled to)."""
    assert set(report[case]) == {"cp.async.cg.shared.global"}, report[case]


@pytest.mark.parametrize("case", ["depthwise_taps_3x3", "depthwise_taps_7x7"])
def test_depthwise_taps_kernel_reads_vectors(report, case):
    loads = report[case]
    assert loads.get("ld.global.v4.b32", 0) >= 4, loads
    assert not any(kind.endswith((".b16", ".u16")) for kind in loads), loads
