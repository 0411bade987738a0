"""What the kernel test modules share: when they can run, their tolerances, IEEE float32 products."""
import importlib.util
import os

import pytest
import torch

from tests.reference import DEVICE

#: module-level mark of the kernel tests: Triton, and on the CPU its interpreter (tests/conftest.py sets it)
requires_kernels = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None
    or (DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1"),
    reason="the implicit kernels need Triton, and on the CPU its interpreter",
)

#: relative error in norm against the float64 reference: IEEE float32 products (TF32 off), float64,
#: and the 16-bit types
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def ieee_float32():
    """float32 cases measure IEEE products: TF32 off for the test, restored after (autouse where imported)."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = previous
