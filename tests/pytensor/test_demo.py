"""``corrmm demo --frontend pytensor``: the three networks follow one trajectory; the corrmm one learns."""
from __future__ import annotations

import pytest

pytest.importorskip("pytensor")
pytest.importorskip("sklearn")


def test_demo_networks_agree_and_learn():
    from corrmm.pytensor.demo import train_all

    lines = []
    # the Python linker: no Numba compilation of three training graphs (the demo itself uses the default mode)
    results = train_all(epochs=1, batch_size=16, baseline_steps=1, mode="FAST_COMPILE", log=lines.append)
    corrmm, signal, rewritten = results["corrmm"], results["signal.convolve2d"], results["signal + corrmm rewrite"]
    # same weights, same batches, the same mathematics: float32 rounding apart, the same losses
    for other in (signal, rewritten):
        assert abs(other["first_loss"] - corrmm["first_loss"]) <= 1e-4 * corrmm["first_loss"], lines
    assert corrmm["accuracy"] > 0.3, lines  # one epoch, ten classes: well above guessing
    assert corrmm["signal_ops"] == 0 and corrmm["corrmm_ops"] == 8
    assert signal["corrmm_ops"] == 0 and signal["signal_ops"] == 8
    assert rewritten["corrmm_ops"] >= 2  # the forward convolutions over several channels
    assert any("faster than signal.convolve2d" in line for line in lines)


def test_cli_frontend_option_reaches_the_pytensor_demo(monkeypatch):
    import corrmm.pytensor.demo as demo
    from corrmm.cli import main

    calls = []
    monkeypatch.setattr(demo, "train_all", lambda **kwargs: calls.append(kwargs))
    assert main(["demo", "--frontend", "pytensor", "--epochs", "2", "--seed", "3"]) == 0
    assert calls == [dict(epochs=2, batch_size=32, seed=3)]
