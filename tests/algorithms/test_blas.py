"""algorithms/blas.py: oneDNN's float32 matrix product on the CPU, torch.matmul everywhere else.

Every product is compared with torch.matmul in float64 on fresh inputs: 2-D, batched and broadcast
operands, transposed (strided) operands, strided ``out=`` buffers; and which products go to oneDNN.
"""
import pytest
import torch

from corrmm.algorithms import blas

from tests.reference import DEVICE, randn, rel_err, seeded_generator

pytestmark = pytest.mark.skipif(DEVICE.type != "cpu", reason="a CPU path")

SHAPES = [  # (a's shape, b's shape), oneDNN-sized (M·K·N >= 2^20) and not
    ((256, 96), (96, 64)),
    ((3, 128, 72), (72, 130)),        # a's batch flattened by oneDNN
    ((2, 3, 64, 80), (3, 80, 70)),    # broadcast batch dimensions
    ((4, 7, 5), (4, 5, 3)),           # small: torch.matmul
]


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_matches_float64_matmul(shapes, transposed):
    gen = seeded_generator("blas", shapes, transposed)
    a64, b64 = randn(shapes[0], gen), randn(shapes[1], gen)
    a, b = a64.float(), b64.float()
    if transposed:  # the same values, stored column-major
        a, b = a.mT.contiguous().mT, b.mT.contiguous().mT
    ours = blas.matmul(a, b)
    ref = torch.matmul(a64, b64)
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    assert rel_err(ours, ref) < 1e-6


def test_out_buffer_of_any_strides():
    gen = seeded_generator("blas out")
    a64, b64 = randn((3, 200, 96), gen), randn((3, 96, 64), gen)
    out = torch.empty(200, 3, 64).transpose(0, 1)  # (3, 200, 64) strided
    result = blas.matmul(a64.float(), b64.float(), out=out)
    assert result.data_ptr() == out.data_ptr()
    assert rel_err(out, torch.matmul(a64, b64)) < 1e-6


def test_addmm_accumulates():
    gen = seeded_generator("blas addmm")
    a64, b64, c64 = randn((300, 80), gen), randn((80, 60), gen), randn((300, 60), gen)
    c = c64.float()
    blas.addmm_(c, a64.float(), b64.float())
    assert rel_err(c, c64 + a64 @ b64) < 1e-6


def test_which_products_go_to_onednn(monkeypatch):
    big = (torch.empty(256, 96), torch.empty(96, 64))
    assert blas.onednn_serves(*big) == (torch.backends.mkldnn.is_available() and blas._probe() is not None)
    assert not blas.onednn_serves(torch.empty(4, 7), torch.empty(7, 3))                 # too small
    assert not blas.onednn_serves(*(t.double() for t in big))                            # float32 only
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # torch.backends.mkldnn switched off
    assert not blas.onednn_serves(*big)
    monkeypatch.undo()
    monkeypatch.setattr(blas, "ONEDNN_MIN_MACS", 0)
    assert blas.onednn_serves(torch.empty(4, 7), torch.empty(7, 3)) == blas.onednn_serves(*big)


def test_deterministic():
    gen = seeded_generator("blas determinism")
    a, b = randn((512, 288), gen).float(), randn((288, 64), gen).float()
    assert torch.equal(blas.matmul(a, b), blas.matmul(a, b))


def test_matrices_with_a_padded_leading_dimension_stay_with_torch():
    """oneDNN takes them through a path hundreds of times slower than MKL's (im2col's column panels)."""
    gen = seeded_generator("blas padded")
    a64, storage64 = randn((64, 576), gen), randn((576, 2000), gen)
    b64 = storage64[:, :1680]  # (576, 1680) with rows 2000 apart
    assert not blas.onednn_serves(a64.float(), storage64.float()[:, :1680])
    assert not blas.onednn_serves(storage64.float()[:, :1680].t(), a64.float().t())
    assert rel_err(blas.matmul(a64.float(), storage64.float()[:, :1680]), a64 @ b64) < 1e-6
