"""A corrmm CNN under DistributedDataParallel (gloo, 2 CPU processes) matches one process on the whole batch.

torch.distributed does all the communication; corrmm's ops are ordinary
autograd ops, so DDP's gradient hooks see them like any other layer. The model
has no batch norm: its statistics are per process under DDP, which would make
the two runs differ for reasons that have nothing to do with corrmm.
"""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import corrmm

WORLD = 2
STEPS = 2
BATCH = 8  # split evenly over the processes


def _model() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights everywhere (DDP would broadcast rank 0's anyway)
    return nn.Sequential(
        corrmm.nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        corrmm.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2), nn.ReLU(),
        corrmm.nn.Conv2d(8, 16, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    ).double()


def _data():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 3, 10, 10, generator=g, dtype=torch.float64),
             torch.randint(0, 4, (BATCH,), generator=g)) for _ in range(STEPS)]


def _train(model, batches, shard=slice(None)):
    """SGD on each batch's ``shard``; returns the gradients seen at each step and the final parameters."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    grads = []
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[shard]), y[shard]).backward()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
        optimizer.step()
    return grads, [p.detach().clone() for p in model.parameters()]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = DistributedDataParallel(_model())
        per_rank = BATCH // WORLD
        grads, params = _train(model, _data(), slice(rank * per_rank, (rank + 1) * per_rank))
        torch.save({"grads": grads, "params": params}, os.path.join(out_dir, f"rank{rank}.pt"))
        # both ranks done before either tears gloo down: a rank that destroys the group while its peer
        # is still in the last all-reduce can abort the peer ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    expected_grads, expected_params = _train(_model(), _data())

    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        for step, (got, expected) in enumerate(zip(result["grads"], expected_grads)):
            for i, (g, e) in enumerate(zip(got, expected)):
                torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12,
                                           msg=lambda m: f"rank {rank}, step {step}, parameter {i}: {m}")
        for i, (p, e) in enumerate(zip(result["params"], expected_params)):
            torch.testing.assert_close(p, e, rtol=1e-10, atol=1e-12, msg=lambda m: f"rank {rank}, parameter {i}: {m}")
