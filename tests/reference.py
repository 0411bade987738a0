"""Test helpers: the device under test, the float64 reference, tolerances.

``CORRMM_TEST_DEVICE=cuda`` runs the suite on the GPU (scripts/gpu_check.sh sets
it); the default is the CPU.
"""
import os
import zlib

import pytest
import torch
import torch.nn.functional as F

import corrmm
from corrmm.algorithms import REGISTRY


DEVICE = torch.device(os.environ.get("CORRMM_TEST_DEVICE", "cpu"))
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

#: algorithms that run emulated (slowly: Triton's interpreter) on this device get a reduced grid
INTERPRETED = {name for name, algorithm in REGISTRY.items() if algorithm.emulated_on(DEVICE)}

_REFERENCE_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def seeded_generator(*key) -> torch.Generator:
    """A generator seeded from the test case, so every case draws its own inputs."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def randn(shape, generator, dtype=torch.float64, device=DEVICE):
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


def reference_corr(x, w, padding, stride, dilation, groups):
    """torch's own correlation with explicit (low, high) padding, in x's dtype, on x's device."""
    pads = []
    for low, high in reversed(padding):
        pads += [low, high]
    return _REFERENCE_CONV[x.dim() - 2](F.pad(x, pads), w, stride=stride, dilation=dilation, groups=groups)


def reference_passes(x, w, dy, padding, stride, dilation, groups):
    """(output, grad_input, grad_weight) of torch's correlation, through autograd."""
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    y = reference_corr(x, w, padding, stride, dilation, groups)
    gx, gw = torch.autograd.grad(y, (x, w), dy)
    return y.detach(), gx, gw


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    assert not torch.isnan(a).any(), "NaN in result"
    denom = ref.norm().item()
    return (a - ref).norm().item() / (denom if denom > 0 else 1.0)


EPS = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24, torch.float64: 2.0**-53}


def tf32_active(dtype) -> bool:
    return DEVICE.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32


def assert_close_to_reference(ours, ref64, torch_same_dtype, dtype, what=""):
    """Our error against the float64 reference is at most twice torch's own in the same dtype
    (plus a few units of rounding, so exact-zero torch errors still leave room)."""
    eps = 2.0**-11 if tf32_active(dtype) else EPS[dtype]
    ours_err = rel_err(ours, ref64)
    torch_err = rel_err(torch_same_dtype, ref64)
    bound = 2 * torch_err + 16 * eps
    assert ours_err <= bound, f"{what}: relative error {ours_err:.3e} > bound {bound:.3e} (torch's own {torch_err:.3e})"


def assert_passes_match_reference(ours, tensors64, tensors, padding, stride, dilation, groups, dtype, label):
    """(forward, grad_input, grad_weight) against torch's float64 passes and torch's own in ``dtype``.

    ``tensors64`` and ``tensors`` are the same (x, w, dy) in float64 and in ``dtype``; a pass whose
    result is None (the algorithm refused it) is not compared."""
    ref64 = reference_passes(*(t.cpu() for t in tensors64), padding, stride, dilation, groups)
    same_dtype = reference_passes(*tensors, padding, stride, dilation, groups)
    for name, result, r64, rdt in zip(("forward", "grad_input", "grad_weight"), ours, ref64, same_dtype):
        if result is None:
            continue
        assert result.shape == r64.shape and result.dtype == dtype, f"{label} {name}: shape or dtype"
        assert_close_to_reference(result, r64, rdt, dtype, f"{label} {name} {dtype}")


UNIVERSAL = {"im2col", "swapped"}  # algorithms that must serve every geometry


def refused(algo: str, err: ValueError) -> bool:
    """True when ``err`` is an algorithm declining a case it does not serve (only the
    specialised algorithms may); anything else is re-raised by the caller."""
    if "cannot run" not in str(err):
        return False
    assert algo not in UNIVERSAL, f"{algo} must serve every case: {err}"
    return True


def assert_every_pass_refuses(algo: str, x, w, y, words: str, **kwargs) -> None:
    """All three 2-D passes of ``algo`` raise a ValueError naming the algorithm and ``words``."""
    with pytest.raises(ValueError, match=f"{algo}.*{words}"):
        corrmm.corr2d(x, w, algo=algo, **kwargs)
    with pytest.raises(ValueError, match=f"{algo}.*{words}"):
        corrmm.corr2d_grad_input(w, y, x.shape[2:], algo=algo, **kwargs)
    with pytest.raises(ValueError, match=f"{algo}.*{words}"):
        corrmm.corr2d_grad_weight(x, y, w.shape[2:], algo=algo, **kwargs)
