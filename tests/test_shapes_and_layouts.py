"""Strided input gradients for every admissible input shape, empty and zero-sized
problems, memory formats, poisoning, determinism and the workspace cap."""
import pytest
import torch

import corrmm

from tests.reference import (DEVICE, INTERPRETED, assert_passes_match_reference, randn, reference_passes, refused,
                             rel_err, seeded_generator)

ALGOS = [a for a in corrmm.algorithms() if a not in INTERPRETED] + ["auto"]


def serves(test):
    """Run the test; a specialised algorithm declining the geometry ends it (see ``refused``)."""
    import functools

    @functools.wraps(test)
    def wrapper(algo, *args, **kwargs):
        try:
            test(algo, *args, **kwargs)
        except ValueError as err:
            if not refused(algo, err):
                raise
    return wrapper


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("stride,dilation,pad", [((2, 3), (1, 1), (0, 1)), ((3, 2), (2, 1), (2, 0)), ((4, 4), (1, 2), (1, 1))])
@serves
def test_grad_input_every_admissible_input_shape(algo, stride, dilation, pad):
    gen = seeded_generator("admissible", algo, stride, dilation, pad)
    w = randn((3, 2, 3, 2), gen)
    out = (3, 4)
    dy = randn((2, 3, *out), gen)
    # the admissible heights/widths, from the output-size formula solved by hand
    ranges = []
    for o, k, s, d, p in zip(out, (3, 2), stride, dilation, pad):
        lowest = (o - 1) * s + (k - 1) * d + 1 - 2 * p
        ranges.append(range(lowest, lowest + s))
    kw = dict(border_mode=pad, subsample=stride, filter_dilation=dilation, algo=algo)
    for h in ranges[0]:
        for wd in ranges[1]:
            dx = corrmm.corr2d_grad_input(w, dy, (h, wd), **kw)
            x = randn((2, 2, h, wd), gen)
            ref = reference_passes(x.cpu(), w.cpu(), dy.cpu(), [(pad[0],) * 2, (pad[1],) * 2], stride, dilation, 1)[1]
            assert dx.shape == (2, 2, h, wd)
            assert torch.allclose(dx.cpu(), ref, atol=1e-10)
    for bad in [(ranges[0].start - 1, ranges[1].start), (ranges[0].stop, ranges[1].start),
                (ranges[0].start, ranges[1].stop)]:
        if min(bad) < 1:
            continue
        with pytest.raises(ValueError, match="impossible input_shape"):
            corrmm.corr2d_grad_input(w, dy, bad, **kw)


def test_grad_weight_rejects_impossible_kernel_shape():
    x, dy = torch.randn(2, 3, 9, 9), torch.randn(2, 4, 7, 7)
    assert corrmm.corr2d_grad_weight(x, dy, (3, 3)).shape == (4, 3, 3, 3)
    with pytest.raises(ValueError, match="impossible kernel_shape"):
        corrmm.corr2d_grad_weight(x, dy, (4, 3))


@pytest.mark.parametrize("algo", ALGOS)
@serves
def test_empty_batch_and_zero_channels(algo):
    x = torch.randn(0, 4, 6, 6, device=DEVICE)
    w = torch.randn(5, 4, 3, 3, device=DEVICE)
    y = corrmm.corr2d(x, w, algo=algo)
    assert y.shape == (0, 5, 4, 4)
    dy = torch.randn(0, 5, 4, 4, device=DEVICE)
    assert corrmm.corr2d_grad_input(w, dy, (6, 6), algo=algo).shape == (0, 4, 6, 6)
    gw = corrmm.corr2d_grad_weight(x, dy, (3, 3), algo=algo)
    assert gw.shape == (5, 4, 3, 3) and not gw.any()
    # zero input channels: the output is all zeros
    x0, w0 = torch.randn(2, 0, 6, 6, device=DEVICE), torch.randn(5, 0, 3, 3, device=DEVICE)
    y0 = corrmm.corr2d(x0, w0, algo=algo)
    assert y0.shape == (2, 5, 4, 4) and not y0.any()
    # zero filters: an empty output, and a zero input gradient
    wk = torch.randn(0, 4, 3, 3, device=DEVICE)
    assert corrmm.corr2d(torch.randn(2, 4, 6, 6, device=DEVICE), wk, algo=algo).shape == (2, 0, 4, 4)
    gx = corrmm.corr2d_grad_input(wk, torch.randn(2, 0, 4, 4, device=DEVICE), (6, 6), algo=algo)
    assert gx.shape == (2, 4, 6, 6) and not gx.any()


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed"])
@serves
def test_memory_layouts(algo, layout):
    gen = seeded_generator("layout", algo, layout)
    x64, w64 = randn((3, 4, 11, 10), gen), randn((6, 2, 3, 3), gen)
    dy64 = randn((3, 6, 6, 4), gen)
    kw = dict(border_mode=(1, 0), subsample=2, num_groups=2, algo=algo)
    if layout == "channels_last":
        x, w, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x64, w64, dy64))
    elif layout == "sliced":  # every other element of a larger tensor
        x = randn((3, 8, 11, 20), gen)[:, ::2, :, ::2].copy_(x64)
        w, dy = w64, randn((3, 6, 12, 4), gen)[:, :, ::2].copy_(dy64)
    else:  # spatial dims stored transposed
        x = x64.transpose(2, 3).contiguous().transpose(2, 3)
        w, dy = w64.transpose(2, 3).contiguous().transpose(2, 3), dy64
    assert layout == "channels_last" or not x.is_contiguous()
    y = corrmm.corr2d(x, w, **kw)
    gx = corrmm.corr2d_grad_input(w, dy, (11, 10), **kw)
    gw = corrmm.corr2d_grad_weight(x, dy, (3, 3), **kw)
    ref = reference_passes(x64.cpu(), w64.cpu(), dy64.cpu(), [(1, 1), (0, 0)], (2, 2), (1, 1), 2)
    for ours, r in zip((y, gx, gw), ref):
        assert torch.allclose(ours.cpu(), r, atol=1e-10)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert gx.is_contiguous(memory_format=torch.channels_last)
        assert gw.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous() and gx.is_contiguous() and gw.is_contiguous()


@pytest.mark.parametrize("algo", ALGOS)
@serves
def test_channels_last_3d(algo):
    gen = seeded_generator("cl3d", algo)
    x = randn((2, 3, 5, 6, 4), gen).contiguous(memory_format=torch.channels_last_3d)
    w = randn((4, 3, 2, 2, 2), gen)
    y = corrmm.corr3d(x, w, algo=algo)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(y.cpu(), torch.nn.functional.conv3d(x.cpu(), w.cpu()), atol=1e-10)


@pytest.mark.parametrize("algo", ALGOS)
@serves
def test_poisoned_outputs_are_fully_written_and_deterministic(algo):
    gen = seeded_generator("poison", algo)
    x, w = randn((3, 4, 9, 7), gen, torch.float32), randn((5, 4, 3, 2), gen, torch.float32)
    dy = randn((3, 5, 5, 3), gen, torch.float32)
    kw = dict(border_mode="half", subsample=(2, 3), algo=algo)
    with corrmm.poison_outputs():
        first = [corrmm.corr2d(x, w, **kw), corrmm.corr2d_grad_input(w, dy, (9, 7), **kw),
                 corrmm.corr2d_grad_weight(x, dy, (3, 2), **kw)]
        second = [corrmm.corr2d(x, w, **kw), corrmm.corr2d_grad_input(w, dy, (9, 7), **kw),
                  corrmm.corr2d_grad_weight(x, dy, (3, 2), **kw)]
    for a, b in zip(first, second):
        assert not torch.isnan(a).any()
        assert torch.equal(a, b), "two runs differ"


@pytest.mark.parametrize("algo", [a for a in ("im2col", "swapped") if a in ALGOS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_workspace_cap_chunks_without_changing_results(algo, dtype):
    gen = seeded_generator("workspace", algo, dtype)
    x64, w64 = randn((7, 6, 10, 9), gen), randn((4, 3, 3, 3), gen)
    dy64 = randn((7, 4, 8, 7), gen)
    x, w, dy = x64.to(dtype), w64.to(dtype), dy64.to(dtype)
    kw = dict(num_groups=2, algo=algo)
    with corrmm.config.workspace_limit_set_to(1):  # one image (or channel) per chunk
        chunked = [corrmm.corr2d(x, w, **kw), corrmm.corr2d_grad_input(w, dy, (10, 9), **kw),
                   corrmm.corr2d_grad_weight(x, dy, (3, 3), **kw)]
    assert_passes_match_reference(chunked, (x64, w64, dy64), (x, w, dy), [(0, 0)] * 2, (1, 1), (1, 1), 2, dtype,
                                  "chunked")
    with pytest.raises(ValueError, match="positive"):
        corrmm.set_workspace_limit(0)


def test_weight_gradient_takes_the_weights_strides():
    # a 1x1 channels_last weight is also plain-contiguous; its gradient must still match its strides
    x = torch.randn(2, 8, 5, 5, device=DEVICE).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 8, 1, 1, device=DEVICE).contiguous(memory_format=torch.channels_last).requires_grad_()
    corrmm.corr2d(x, w).sum().backward()
    assert w.grad.stride() == w.stride()


def test_public_functions_follow_autocast():
    x, w = torch.randn(2, 3, 6, 6, device=DEVICE), torch.randn(4, 3, 3, 3, device=DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        y = corrmm.corr2d(x, w)
        expected = torch.nn.functional.conv2d(x, w)
    assert y.dtype == expected.dtype == torch.bfloat16
    # bf16 rounding: ours within twice torch's own autocast error against float64, plus one ulp
    exact = torch.nn.functional.conv2d(x.double(), w.double())
    assert rel_err(y, exact) <= 2 * rel_err(expected, exact) + 2.0**-8
