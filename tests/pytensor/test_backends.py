"""The ported Theano grids through ``pytensor.function`` in every installed backend, all three ops.

Each (backend, rank) compiles ONE function holding a batch of cases (Numba and
torch.compile compile slowly, so cases share a compilation); every case's
forward pass, input gradient and weight gradient is compared with the numpy
reference. Half the cases give the graph static shapes through Theano's
``input_shape``/``filter_shape`` hints, half leave every shape to run time.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytensor = pytest.importorskip("pytensor")
import pytensor.tensor as pt  # noqa: E402

from corrmm.pytensor import CorrMM, CorrMM_gradInputs, CorrMM_gradWeights  # noqa: E402

from .numpy_reference import grid_1d, grid_2d, grid_3d, reference, rng, tolerance  # noqa: E402

# torch.compile (the PYTORCH backend) imports inductor, which triggers torch's own deprecation warning, and
# PyTensor's PYTORCH linker hands torch read-only constants
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:The given NumPy array is not writable:UserWarning")]

GRIDS = {1: grid_1d(), 2: grid_2d(), 3: grid_3d()}

HAS_JAX = importlib.util.find_spec("jax") is not None

#: backend -> (mode, every how many-th case of each grid it runs, float32 too)
#: the Python and C linkers (cheap to compile) run every case; Numba (about half a second of compilation
#: per node here), torch.compile and JAX run a spread of the grids: strides, dilations, groups, empty
#: batches, kernels larger than the image all appear in each subset.
BACKENDS = {
    "python": ("FAST_COMPILE", 1),
    "cvm": ("CVM", 4),
    "numba": ("NUMBA", 15),
    "pytorch": ("PYTORCH", 20),
    "jax": ("JAX", 4),
}


def _cases(ndim: int, stride: int):
    cases = GRIDS[ndim]
    return cases[::stride] if stride > 1 else cases


def _build(case, index: int, dtype: str):
    """The three ops on fresh variables; odd cases carry static-shape hints."""
    g = case.geometry
    hinted = index % 2 == 1
    tensor = pt.TensorType(dtype, shape=(None,) * (case.ndim + 2))
    x, w, dy = tensor(f"x{index}"), tensor(f"w{index}"), tensor(f"dy{index}")
    props = dict(ndim=case.ndim, border_mode=case.border_mode, subsample=case.subsample,
                 filter_dilation=case.dilation, num_groups=case.groups, filter_flip=case.flip,
                 imshp=case.image if hinted else None, kshp=case.kernel if hinted else None)
    outputs = [CorrMM(**props)(x, w), CorrMM_gradInputs(**props)(w, dy, g.in_size),
               CorrMM_gradWeights(**props)(x, dy, g.kernel)]
    if hinted:
        assert outputs[0].type.shape == g.output_shape
        assert outputs[1].type.shape == g.input_shape and outputs[2].type.shape == g.weight_shape
    return [x, w, dy], outputs


_RESULTS = {}


def _run(backend: str, ndim: int):
    """Compile and run one backend's batch for one rank (once per session); returns [(case, dtype, outs, refs)]."""
    key = (backend, ndim)
    if key not in _RESULTS:
        mode, stride = BACKENDS[backend]
        inputs, outputs, values, expected = [], [], [], []
        for index, case in enumerate(_cases(ndim, stride)):
            dtype = "float32" if index % 3 == 2 else "float64"
            variables, outs = _build(case, index, dtype)
            r = rng(repr(case))
            g = case.geometry
            x, w, dy = (r.standard_normal(s) for s in (g.input_shape, g.weight_shape, g.output_shape))
            inputs += variables
            outputs += outs
            values += [a.astype(dtype) for a in (x, w, dy)]
            expected.append((case, dtype, reference(case, x, w, dy)))
        function = pytensor.function(inputs, outputs, mode=mode)
        results = function(*values)
        _RESULTS[key] = [(case, dtype, results[3 * i:3 * i + 3], refs) for i, (case, dtype, refs) in
                         enumerate(expected)]
    return _RESULTS[key]


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_grid_matches_numpy(backend, ndim):
    if backend == "jax" and not HAS_JAX:
        pytest.skip("jax is not installed (optional: pip install jax)")
    failures = []
    results = _run(backend, ndim)
    for case, dtype, outs, refs in results:
        g = case.geometry
        reductions = (g.channels_per_group * np.prod(g.kernel), g.filters_per_group * np.prod(g.kernel),
                      g.batch * np.prod(g.out_size))
        for name, out, ref, reduction in zip(("forward", "grad_input", "grad_weight"), outs, refs, reductions):
            if out.shape != ref.shape or out.dtype != np.dtype(dtype):
                failures.append(f"{case} {name}: got {out.shape} {out.dtype}, expected {ref.shape} {dtype}")
                continue
            error = float(np.abs(out - ref).max(initial=0.0))
            if not error <= tolerance(dtype, int(reduction)):
                failures.append(f"{case} {name} {dtype}: max error {error:.3g}")
    assert not failures, "\n".join(failures)
    assert len(results) >= 2
