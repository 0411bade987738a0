"""``corrmm demo``: one epoch on the CPU, through the command line, progress bar and all."""
from __future__ import annotations

import re

from corrmm.cli import main


def test_demo_one_epoch(capsys):
    assert main(["demo", "--epochs", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out

    losses = re.search(r"^\s*1\s+([\d.]+)\s+([\d.]+)\s*$", out, re.MULTILINE)
    assert losses, out
    corrmm_loss, torch_loss = map(float, losses.groups())
    # same weights, same batches: the two networks differ only by float32 rounding
    assert abs(corrmm_loss - torch_loss) <= 0.02 * torch_loss + 1e-3, out

    accuracies = dict(re.findall(r"^(corrmm|torch)\s+([\d.]+)%", out, re.MULTILINE))
    assert accuracies.keys() == {"corrmm", "torch"}, out
    for name, percent in accuracies.items():
        assert float(percent) > 30.0, f"{name} is no better than guessing (10%): {out}"
    assert re.search(r"^corrmm\s+[\d.]+%\s+[\d.]+ s$", out, re.MULTILINE), out
