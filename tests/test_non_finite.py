"""NaN and ±Inf: every algorithm puts them where torch's own convolution does (float64 reference).

One or two elements of one operand are spoiled (NaN, +Inf, -Inf, or +Inf and -Inf
together) and each output element is classified as NaN, +Inf, -Inf or finite; the
classes must equal torch's, element for element. The documented exceptions keep
a weaker promise (non-finite wherever torch is, and every extra is NaN):

* in the input gradient, a non-finite *weight* element meets the zero border of
  grad_output in swapped's and implicit's full correlation (0 · Inf = NaN), so
  those two return NaN at extra border positions;
* implicit's packed-group tiles (small groups share one GEMM whose weight tile is
  zero between groups) and its row-column input-gradient kernel (1-4 input
  channels: weight rows zero where a tap does not apply) multiply a NaN or Inf by
  those zeros, so NaN can reach other outputs of the same tile.
"""
import itertools

import pytest
import torch

import corrmm
from corrmm.algorithms import REGISTRY
from corrmm.algorithms.non_finite import all_finite
from corrmm.geometry import make_geometry

from tests.reference import DEVICE, INTERPRETED, reference_corr, seeded_generator

INF = float("inf")
NAN = float("nan")

CASES = [
    ((2, 4, 7, 6), (6, 4, 3, 2), dict()),
    ((2, 4, 9, 8), (6, 2, 3, 3), dict(border_mode=((1, 2), (2, 0)), num_groups=2)),
    ((2, 3, 9, 9), (4, 3, 3, 3), dict(border_mode=1, subsample=2)),
    ((2, 3, 9, 9), (4, 3, 2, 3), dict(border_mode=(2, 1), filter_dilation=2)),
    ((2, 3, 8, 8), (4, 3, 1, 1), dict()),
]
SPOILS = {"nan": (NAN,), "-inf": (-INF,), "both-infs": (INF, -INF)}
#: (algorithm, pass, spoiled operand) that keep only the weaker promise (see the module docstring)
BORDER_NAN = {("swapped", "grad_input", "weight"), ("implicit", "grad_input", "weight"),
              ("implicit", "forward", "input"), ("implicit", "grad_input", "grad_output")}


def classes(t: torch.Tensor) -> torch.Tensor:
    return torch.stack([t.isnan(), t == INF, t == -INF])


def spoil(t: torch.Tensor, values, gen) -> torch.Tensor:
    t = t.clone()
    flat = t.view(-1)
    for index, value in zip(torch.randperm(flat.numel(), generator=gen)[:len(values)].tolist(), values):
        flat[index] = value
    return t


def _run(name, pass_name, x, w, dy, in_shape, w_shape, kw):
    if pass_name == "forward":
        return corrmm.corr2d(x, w, algo=name, **kw)
    if pass_name == "grad_input":
        return corrmm.corr2d_grad_input(w, dy, in_shape[2:], algo=name, **kw)
    return corrmm.corr2d_grad_weight(x, dy, w_shape[2:], algo=name, **kw)


OPERANDS = {"forward": ("input", "weight"), "grad_input": ("weight", "grad_output"),
            "grad_weight": ("input", "grad_output")}


@pytest.mark.parametrize("spoiled_kind", list(SPOILS))
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("pass_name", list(OPERANDS))
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in Triton's interpreter
def test_nan_and_inf_land_where_torch_puts_them(pass_name, case, spoiled_kind):
    in_shape, w_shape, kw = CASES[case]
    g = make_geometry(in_shape, w_shape, kw.get("border_mode", "valid"), kw.get("subsample", 1),
                      kw.get("filter_dilation", 1), kw.get("num_groups", 1))
    checked = 0
    for operand in OPERANDS[pass_name]:
        gen = seeded_generator("non-finite", pass_name, case, spoiled_kind, operand)
        x, w, dy = (torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE)
                    for shape in (in_shape, w_shape, g.output_shape))
        x, w, dy = (spoil(t, SPOILS[spoiled_kind], gen) if name == operand else t
                    for name, t in (("input", x), ("weight", w), ("grad_output", dy)))
        xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
        y_ref = reference_corr(xr, wr, g.padding, g.stride, g.dilation, g.groups)
        reference = {"forward": y_ref.detach()}
        reference["grad_input"], reference["grad_weight"] = torch.autograd.grad(y_ref, (xr, wr), dy)
        expected = classes(reference[pass_name])
        assert expected.any(), "the spoiled element reaches no output: the case tests nothing"
        for name, algorithm in REGISTRY.items():
            if algorithm.not_supported_reasons(g, pass_name, DEVICE, torch.float64):
                continue
            ours = _run(name, pass_name, x, w, dy, in_shape, w_shape, kw)
            got = classes(ours)
            if (name, pass_name, operand) in BORDER_NAN:
                torch_non_finite, ours_non_finite = expected.any(0), got.any(0)
                assert not (torch_non_finite & ~ours_non_finite).any(), name
                assert got[0][ours_non_finite & ~torch_non_finite].all(), name  # the extras are NaN
            else:
                assert torch.equal(got, expected), (
                    f"{name} {pass_name} with {spoiled_kind} in {operand}: {int(got.sum())} non-finite outputs, "
                    f"torch has {int(expected.sum())}")
            finite = ~expected.any(0) & ~got.any(0)
            torch.testing.assert_close(ours[finite], reference[pass_name][finite])
            checked += 1
    assert checked


def test_the_finiteness_check_sees_every_kind_of_value():
    finite = torch.randn(3, 4, dtype=torch.float64)
    assert all_finite(finite, finite.float(), finite.half())
    for value in (NAN, INF, -INF):
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            spoiled = finite.clone()
            spoiled[1, 2] = value
            assert not all_finite(finite.to(dtype), spoiled.to(dtype))
    big = torch.full((4,), 6e4, dtype=torch.float16)  # its float16 sum would overflow; the check's does not
    assert all_finite(big)


@pytest.mark.parametrize("algo", ["auto", "tune"])
def test_auto_and_tune_give_torch_placement_whatever_they_pick(algo, tmp_path, monkeypatch):
    """A 9x9 kernel, where fft is a contender: a NaN lands where torch puts it whichever algorithm wins."""
    monkeypatch.setenv("CORRMM_CACHE_DIR", str(tmp_path))
    gen = seeded_generator("non-finite", algo)
    x = torch.randn(2, 3, 12, 12, generator=gen, dtype=torch.float64).to(DEVICE)
    w = torch.randn(4, 3, 9, 9, generator=gen, dtype=torch.float64).to(DEVICE)
    x[0, 1, 5, 6] = NAN
    ours = corrmm.corr2d(x, w, algo=algo)
    expected = reference_corr(x, w, ((0, 0), (0, 0)), (1, 1), (1, 1), 1)
    assert torch.equal(classes(ours), classes(expected)) and int(ours.isnan().sum()) == 4 * 4 * 4


def test_fft_on_finite_operands_still_computes_in_frequency(monkeypatch):
    """The detour is taken only for non-finite operands (the control of the test above)."""
    from corrmm.algorithms import non_finite

    calls = []
    direct = non_finite.DIRECT

    class Spy:
        def forward(self, *args):
            calls.append(args)
            return direct.forward(*args)

    monkeypatch.setattr(non_finite, "DIRECT", Spy())
    x, w = torch.randn(1, 2, 8, 8, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    corrmm.corr2d(x, w, algo="fft")
    assert not calls
    x[0, 0, 0, 0] = NAN
    corrmm.corr2d(x, w, algo="fft")
    assert len(calls) == 1
