"""The demos' data: scikit-learn's 8x8 handwritten digits (shipped inside scikit-learn, nothing to download),
as standardised tensors. The torch demo (``corrmm demo``) and the PyTensor one (``corrmm demo --frontend
pytensor``) train on the same split."""
from __future__ import annotations

import torch


def load_digits_tensors(seed: int, device: torch.device, test_fraction: float = 0.2):
    """(x_train, y_train, x_test, y_test): images (N, 1, 8, 8) standardised with the training statistics."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return x[train].to(device), y[train].to(device), x[test].to(device), y[test].to(device)
