"""Train a small CNN made of corrmm layers on 8x8 digits, beside the same CNN made of torch layers.

The data set is scikit-learn's handwritten digits (1797 images of 8x8 pixels,
10 classes), which ships inside scikit-learn: nothing is downloaded. Both
networks start from the same weights (a state_dict copy), see the same batches
in the same order, and train on the GPU when there is one, else on the CPU.
The command prints each epoch's mean training loss for both, then their test
accuracy and training time.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Dict

import torch
from torch import nn

import corrmm

from ..algorithms import CHOOSERS
from ..digits import load_digits_tensors
from . import usage


def add_arguments(parser) -> None:
    parser.add_argument("--epochs", type=int, default=10, help="passes over the training set (default 10)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per training step (default 32)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 0.003)")
    parser.add_argument("--algo", default="auto", choices=[*CHOOSERS, *corrmm.algorithms()], metavar="ALGO",
                        help=f"corrmm algorithm for every layer: {', '.join([*CHOOSERS, *corrmm.algorithms()])} "
                             "(default auto)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the data split (default 0)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (it is drawn on stderr, and only when stderr is a terminal)")
    parser.add_argument("--frontend", choices=("torch", "pytensor"), default="torch",
                        help="torch: corrmm.nn layers beside torch's (default); pytensor: the network as a "
                             "PyTensor graph on corrmm.pytensor, beside signal.convolve2d")


def build_model(conv: Callable[..., nn.Module]) -> nn.Sequential:
    """The network, with ``conv`` as its convolution class (corrmm.nn.Conv2d or torch.nn.Conv2d).

    8x8 -> 3x3 conv -> 3x3 stride-2 conv -> 3x3 conv -> 1x1 conv -> global average -> 10 classes.
    """
    return nn.Sequential(
        conv(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        conv(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        conv(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        conv(64, 128, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_epoch(model, optimizer, x, y, order, batch_size, bar) -> tuple:
    model.train()
    device = x.device
    _sync(device)
    start = time.perf_counter()
    total = torch.zeros((), device=device)
    for i in range(0, len(order), batch_size):
        index = order[i:i + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x[index]), y[index])
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(index)  # no .item() per batch: the GPU keeps going
        if bar is not None:
            bar.update(1)
    _sync(device)
    return (total / len(order)).item(), time.perf_counter() - start


@torch.no_grad()
def _accuracy(model, x, y) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def train_both(epochs: int = 10, device: str = "cpu", batch_size: int = 32, lr: float = 3e-3, algo: str = "auto",
               seed: int = 0, progress: bool = True, log: Callable[[str], None] = print) -> Dict[str, object]:
    """Train the corrmm and torch networks side by side; returns losses, accuracies and times for both."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    x_train, y_train, x_test, y_test = load_digits_tensors(seed, device)
    torch.manual_seed(seed)
    models = {"corrmm": build_model(lambda *a, **k: corrmm.nn.Conv2d(*a, algo=algo, **k)).to(device),
              "torch": build_model(nn.Conv2d).to(device)}
    models["torch"].load_state_dict(models["corrmm"].state_dict())  # same starting point
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=lr) for name, m in models.items()}
    results = {name: {"losses": [], "seconds": 0.0} for name in models}
    batches = -(-len(x_train) // batch_size)
    order_generator = torch.Generator().manual_seed(seed + 1)

    log(f"corrmm demo: 8x8 digits, {len(x_train)} training / {len(x_test)} test images, {device}, "
        f"{epochs} epochs of {batches} batches of {batch_size}")
    # the bar lives on stderr, and only on a terminal: redirected output stays one clean line per row
    progress = progress and sys.stderr.isatty()
    bar = tqdm(total=epochs * batches * len(models), unit="batch", leave=False, disable=not progress,
               file=sys.stderr)
    write = (lambda line: bar.write(line, file=sys.stdout)) if progress else log
    write(f"{'epoch':>5}  {'corrmm loss':>11}  {'torch loss':>10}")
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x_train), generator=order_generator).to(device)  # shared by both models
        for name, model in models.items():
            bar.set_description(name)
            loss, seconds = _train_epoch(model, optimizers[name], x_train, y_train, order, batch_size, bar)
            results[name]["losses"].append(loss)
            results[name]["seconds"] += seconds
        write(f"{epoch:>5}  {results['corrmm']['losses'][-1]:>11.4f}  {results['torch']['losses'][-1]:>10.4f}")
    bar.close()

    log(f"{'model':<6}  {'test accuracy':>13}  {'train time':>10}")
    for name, model in models.items():
        results[name]["accuracy"] = _accuracy(model, x_test, y_test)
        log(f"{name:<6}  {results[name]['accuracy']:>13.1%}  {results[name]['seconds']:>8.2f} s")
    results["train_size"], results["test_size"] = len(x_train), len(x_test)
    return results


def check_algo_serves_the_network(algo: str, device: torch.device) -> None:
    """A forced algorithm must serve every layer and pass of the network (fft, e.g., has no stride 2)."""
    if algo in CHOOSERS:
        return
    model = build_model(lambda *a, **k: corrmm.nn.Conv2d(*a, algo=algo, **k)).to(device)
    try:
        model(torch.zeros(2, 1, 8, 8, device=device)).sum().backward()
    except ValueError as err:
        raise usage.UsageError(f"--algo {algo} cannot train this network: {err}") from None


def run(args) -> int:
    usage.at_least("--epochs", args.epochs, 1)
    usage.at_least("--batch-size", args.batch_size, 1)
    usage.positive("--lr", args.lr)
    if args.frontend == "pytensor":
        from ..pytensor.demo import run as run_pytensor
        return run_pytensor(args)
    device = usage.device(args.device)
    check_algo_serves_the_network(args.algo, device)
    train_both(epochs=args.epochs, device=device, batch_size=args.batch_size, lr=args.lr, algo=args.algo,
               seed=args.seed, progress=not args.no_progress)
    return 0
