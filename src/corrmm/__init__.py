"""corrmm: GEMM-based convolution for PyTorch.

Theano's GpuCorrMM family rebuilt on PyTorch: correlation and convolution in 1,
2 and 3 spatial dimensions, their input and weight gradients as ops of their
own (differentiable to any order), several GEMM algorithms and a rule that
picks one.

    >>> import torch, corrmm
    >>> x, w = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3)
    >>> corrmm.corr2d(x, w, border_mode="half").shape
    torch.Size([2, 4, 9, 9])
"""
from . import ops  # registers the torch.library ops  # noqa: F401
from .algorithms import algorithms
from .config import poison_outputs, set_workspace_limit, workspace_limit
from .functional import *  # noqa: F401,F403
from .functional import __all__ as _functional_all
from .geometry import ConvGeometry

__version__ = "0.1.0"

__all__ = [*_functional_all, "algorithms", "ConvGeometry", "set_workspace_limit", "workspace_limit",
           "poison_outputs"]

# integrations: drop-in layers, model conversion, the torch.compile backends (registered on import)
from . import compile, nn  # noqa: E402,F401
from .convert import convert  # noqa: E402

__all__ += ["nn", "convert", "compile"]
