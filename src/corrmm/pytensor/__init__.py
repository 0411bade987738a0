"""corrmm on PyTensor: Theano's convolution API and CorrMM ops on PyTensor graphs.

    >>> import pytensor, pytensor.tensor as pt
    >>> from corrmm.pytensor import conv2d
    >>> x, w = pt.tensor4("x"), pt.tensor4("w")
    >>> f = pytensor.function([x, w], conv2d(x, w, border_mode="half"))

The ops run on every PyTensor backend: the default (Numba) and C/Python
linkers call corrmm's CPU path through a zero-copy numpy <-> torch hand-off,
``mode="PYTORCH"`` calls corrmm's torch functions (so graphs on a GPU run
corrmm's kernels), and ``mode="JAX"`` lowers to ``jax.lax.conv_general_dilated``.
Importing this package also registers graph rewrites (see ``rewrites``).
Requires ``pip install corrmm[pytensor]``.
"""
from .conv import (conv1d, conv1d_grad_wrt_inputs, conv1d_grad_wrt_weights, conv2d, conv2d_grad_wrt_inputs,
                   conv2d_grad_wrt_weights, conv3d, conv3d_grad_wrt_inputs, conv3d_grad_wrt_weights)
from .ops import (BaseCorrMM, Corr1dMM, Corr1dMM_gradInputs, Corr1dMM_gradWeights, Corr3dMM, Corr3dMMGradInputs,
                  Corr3dMMGradWeights, CorrMM, CorrMM_gradInputs, CorrMM_gradWeights)
from . import dispatch  # noqa: E402,F401  (backend registrations)
from . import rewrites  # noqa: E402,F401  (graph rewrites)

__all__ = [
    "conv1d", "conv2d", "conv3d",
    "conv1d_grad_wrt_inputs", "conv2d_grad_wrt_inputs", "conv3d_grad_wrt_inputs",
    "conv1d_grad_wrt_weights", "conv2d_grad_wrt_weights", "conv3d_grad_wrt_weights",
    "BaseCorrMM", "CorrMM", "CorrMM_gradInputs", "CorrMM_gradWeights",
    "Corr1dMM", "Corr1dMM_gradInputs", "Corr1dMM_gradWeights",
    "Corr3dMM", "Corr3dMMGradInputs", "Corr3dMMGradWeights",
]
