"""What every ``corrmm`` subcommand shares: the usage error and the checks of common options."""
from __future__ import annotations

import math
import os
import sys

import torch


class UsageError(Exception):
    """A bad command-line argument: ``corrmm`` prints it as one line and exits with status 2."""


def device(text: str) -> torch.device:
    """``--device``: cpu, cuda or cuda:N, and only a device this machine has."""
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text!r} is not a device: expected cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {text!r}: expected cpu, cuda or cuda:N")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}, but torch sees no CUDA GPU here (use --device cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}, but torch sees {torch.cuda.device_count()} GPU(s)")
    return parsed


def at_least(option: str, value, minimum):
    if value < minimum:
        raise UsageError(f"{option} must be at least {minimum}, got {value}")
    return value


def positive(option: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{option} must be a positive number, got {value}")
    return value


def writable_file(option: str, path: str) -> str:
    """An output file whose folder exists and is writable (checked before a long run, not after it)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a folder, expected a file name")
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path}: the folder {folder} is not writable")
    return path


def torch_threads(count) -> None:
    """``--threads``: torch's CPU thread count (``torch.set_num_threads``), at least 1; None leaves it."""
    if count is not None:
        torch.set_num_threads(at_least("--threads", count, 1))


def plot_or_say_why(path: str, draw) -> None:
    """``--plot``: ``draw(path)`` writes the figure; without matplotlib the run goes on and says so."""
    try:
        draw(path)
        print(f"wrote {path}")
    except ImportError as err:
        print(f"corrmm bench: no plot ({err}); install matplotlib", file=sys.stderr)
