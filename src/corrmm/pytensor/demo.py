"""``corrmm demo --frontend pytensor``: the digits CNN as a PyTensor graph, on corrmm's ops and on signal.convolve2d.

The network is written the Theano way: symbolic inputs, ``pytensor.grad``,
SGD-with-momentum updates inside ``pytensor.function``. It is built twice from
one definition, once with ``corrmm.pytensor.conv2d`` and once with what
PyTensor offers today, ``pytensor.tensor.signal.convolve2d`` broadcast over
images, filters and channels and summed over the channels (compiled with the
``corrmm_signal_convolve`` rewrite excluded, so it stays a signal graph). A
third run compiles the signal graph with the rewrite on: it turns into corrmm
ops in the forward pass. All runs start from the same weights and see the
same batches, in PyTensor's default mode. The signal networks take seconds per
step, so they train only ``baseline_steps`` steps; every network's mean loss
over its first ``baseline_steps`` steps is reported too (the three agree to
float32 rounding: one trajectory).

    8x8 -> 3x3 conv (16) -> 3x3 stride-2 conv (32) -> 3x3 conv (32) -> global average -> 10 classes
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, Dict, List

import numpy as np


def _corrmm_conv(x, w, stride: int):
    from . import conv2d

    return conv2d(x, w, border_mode="half", subsample=(stride, stride))


def _signal_conv(x, w, stride: int):
    """The same convolution from single-channel ones: (N, 1, C, H, W) * (1, K, C, kh, kw), summed over C."""
    from pytensor.tensor.signal import convolve2d

    full = convolve2d(x[:, None, :, :, :], w[None, :, :, :, :], mode="full").sum(axis=2)
    # "half" padding is the centre of the full result (mode="same" pads the input with an op that loses the
    # broadcast pattern Blockwise needs); the stride keeps every other position
    return full[:, :, 1:-1:stride, 1:-1:stride]


LAYERS = [(1, 16, 1), (16, 32, 2), (32, 32, 1)]  # (in channels, out channels, stride), 3x3 kernels


def initial_weights(seed: int) -> List[np.ndarray]:
    """He-initialised convolution kernels, then the dense layer's weight and bias (float32)."""
    rng = np.random.default_rng(seed)
    weights = [(rng.standard_normal((k, c, 3, 3)) * np.sqrt(2.0 / (c * 9))).astype("float32") for c, k, _ in LAYERS]
    weights.append((rng.standard_normal((LAYERS[-1][1], 10)) * np.sqrt(1.0 / LAYERS[-1][1])).astype("float32"))
    weights.append(np.zeros(10, dtype="float32"))
    return weights


def build(conv: Callable, weights: List[np.ndarray], lr: float, momentum: float, mode=None):
    """(train step, predict, reset) for the network with convolution ``conv``; reset() restores ``weights``."""
    import pytensor
    import pytensor.tensor as pt

    params = [pytensor.shared(w.copy(), name=f"w{i}", shape=w.shape) for i, w in enumerate(weights)]
    velocities = [pytensor.shared(np.zeros_like(w), name=f"v{i}") for i, w in enumerate(weights)]
    x = pt.tensor4("x", dtype="float32", shape=(None, 1, 8, 8))
    y = pt.ivector("y")

    h = x
    for (_, _, stride), w in zip(LAYERS, params):
        h = pt.maximum(conv(h, w, stride), np.float32(0))
    logits = h.mean(axis=(2, 3)) @ params[-2] + params[-1]
    loss = -pt.mean(pt.special.log_softmax(logits, axis=1)[pt.arange(y.shape[0]), y])
    grads = pytensor.grad(loss, params)
    updates = []
    for p, v, g in zip(params, velocities, grads):
        v_new = np.float32(momentum) * v - np.float32(lr) * g.astype(p.dtype)
        updates += [(v, v_new), (p, p + v_new)]
    with warnings.catch_warnings():
        # PyTensor's signal convolution has no Numba implementation; it says so once per compile
        warnings.filterwarnings("ignore", message="Numba will use object mode to run Convolve")
        train = pytensor.function([x, y], loss, updates=updates, mode=mode)
        predict = pytensor.function([x], pt.argmax(logits, axis=1), mode=mode)

    def reset():
        for p, v, w in zip(params, velocities, weights):
            p.set_value(w.copy())
            v.set_value(np.zeros_like(w))

    return train, predict, reset


def _count_ops(function, names) -> int:
    return sum(type(getattr(node.op, "core_op", node.op)).__name__ in names for node in function.maker.fgraph.apply_nodes)


def train_all(epochs: int = 10, batch_size: int = 32, lr: float = 0.05, momentum: float = 0.9, seed: int = 0,
              baseline_steps: int = 10, mode=None, log: Callable[[str], None] = print) -> Dict[str, dict]:
    """Train the variants; returns per variant: losses, accuracies, seconds, ms per step, op counts.

    The corrmm network trains for ``epochs``; the signal.convolve2d networks (seconds per step) train for
    ``baseline_steps`` steps, and every network's mean loss over its first ``baseline_steps`` steps is
    reported, so the three can be compared on one stretch of the same trajectory. ``mode``: a PyTensor
    mode (default: PyTensor's default mode).
    """
    import pytensor

    from ..digits import load_digits_tensors

    x_train, y_train, x_test, y_test = (t.numpy() for t in load_digits_tensors(seed, "cpu"))
    x_train, x_test = x_train.astype("float32"), x_test.astype("float32")
    y_train, y_test = y_train.astype("int32"), y_test.astype("int32")
    weights = initial_weights(seed)
    default = pytensor.compile.mode.get_mode(mode) if mode is not None else \
        pytensor.compile.mode.get_default_mode()
    batches = -(-len(x_train) // batch_size)
    variants = {
        "corrmm": (_corrmm_conv, default, epochs * batches),
        "signal.convolve2d": (_signal_conv, default.excluding("corrmm_signal_convolve"), baseline_steps),
        "signal + corrmm rewrite": (_signal_conv, default, baseline_steps),
    }
    log(f"corrmm demo, PyTensor {pytensor.__version__} ({type(default.linker).__name__}): 8x8 digits, "
        f"{len(x_train)} training / {len(x_test)} test images, batches of {batch_size}, SGD lr={lr} "
        f"momentum={momentum}; the signal.convolve2d networks train {baseline_steps} steps")
    results = {}
    for name, (conv, mode, total_steps) in variants.items():
        start = time.perf_counter()
        train, predict, reset = build(conv, weights, lr, momentum, mode)
        train(x_train[:2], y_train[:2])  # the first call compiles (Numba); not timed, and the step is undone
        predict(x_test[:2])
        reset()
        compile_seconds = time.perf_counter() - start
        order_rng = np.random.default_rng(seed + 1)
        losses, seconds, steps, first_losses = [], 0.0, 0, []
        while steps < total_steps:
            order = order_rng.permutation(len(x_train))  # the same batches in the same order for every variant
            total, seen = 0.0, 0
            for i in range(0, len(order), batch_size):
                if steps == total_steps:
                    break
                index = order[i:i + batch_size]
                start = time.perf_counter()
                loss = train(x_train[index], y_train[index])
                seconds += time.perf_counter() - start
                total, seen, steps = total + float(loss) * len(index), seen + len(index), steps + 1
                if steps <= baseline_steps:
                    first_losses.append(float(loss))
            losses.append(total / seen)
        accuracy = float((predict(x_test) == y_test).mean())
        results[name] = r = dict(
            losses=losses, accuracy=accuracy, first_loss=float(np.mean(first_losses)), seconds=seconds, steps=steps,
            ms_per_step=1e3 * seconds / max(steps, 1), compile_seconds=compile_seconds,
            corrmm_ops=_count_ops(train, {"CorrMM", "CorrMM_gradInputs", "CorrMM_gradWeights"}),
            signal_ops=_count_ops(train, {"Convolve2d"}))
        log(f"  {name:<24} {steps:>4} steps, {seconds:7.2f} s ({r['ms_per_step']:8.1f} ms/step), test accuracy "
            f"{accuracy:6.1%}, mean loss of the first {baseline_steps} steps {r['first_loss']:.5f}; graph: "
            f"{r['corrmm_ops']} corrmm ops, {r['signal_ops']} signal convolutions")
    base = results["signal.convolve2d"]["ms_per_step"]
    for name in ("corrmm", "signal + corrmm rewrite"):
        log(f"  {name}: training step {base / results[name]['ms_per_step']:.1f}x faster than signal.convolve2d")
    return results


def run(args) -> int:
    train_all(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    return 0
