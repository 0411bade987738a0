#!/usr/bin/env python
"""Data-parallel ResNet-18 training throughput with corrmm convolutions (or torch's, with --torch).

    torchrun --nproc_per_node=8 scripts/train_ddp.py                  # corrmm, bf16 autocast, NCCL
    torchrun --nproc_per_node=8 scripts/train_ddp.py --torch          # the same with torch's convolutions
    torchrun --nproc_per_node=2 scripts/train_ddp.py --image-size 32 --batch 2 --steps 2   # CPU, gloo

The model is torchvision's ResNet-18 when torchvision imports, else the
definition in tests/integrations/resnet.py (same layers, same names), with its
convolutions swapped by ``corrmm.convert``. Every process trains on its own
fixed batch of synthetic 224x224 images (no data loading in the measurement),
under bf16 autocast on GPUs, wrapped in DistributedDataParallel (NCCL on GPUs,
gloo on the CPU). After the first step the script gathers a checksum of every
gradient from every rank and checks they are identical (DDP's all-reduce must
leave all replicas with the same gradients); then it times ``--steps`` steps
after ``--warmup`` untimed ones and prints one summary line on rank 0. The exit
status is 1 when the gradients differ across ranks.
"""
import os

# NVLink SHARP / multicast stays off on the shared machines: set before torch (and NCCL) load
for _name, _value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                      ("NVSHMEM_DISABLE_NVLS", "1")):
    os.environ.setdefault(_name, _value)

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import corrmm  # noqa: E402

LOCAL_RESNET = Path(__file__).resolve().parents[1] / "tests" / "integrations" / "resnet.py"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch", action="store_true", help="keep torch's convolutions (the baseline)")
    parser.add_argument("--algo", default="auto", help="corrmm algorithm for every layer (default auto)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64, help="images per process and step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (the first one checks gradients)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                        help="bf16 autocast or plain fp32 (default: bf16 on GPUs, fp32 on the CPU)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last images and weights")
    parser.add_argument("--compile", metavar="BACKEND", default=None,
                        help="torch.compile the model with this backend (e.g. corrmm, inductor)")
    return parser.parse_args(argv)


def resnet18():
    """(model, where it came from): torchvision's when it imports, else the local copy."""
    try:
        import torchvision

        return torchvision.models.resnet18(num_classes=1000), "torchvision"
    except Exception:  # not installed, or installed for another torch
        spec = importlib.util.spec_from_file_location("corrmm_local_resnet", LOCAL_RESNET)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.resnet18(num_classes=1000), "local"


def grads_equal_across_ranks(model, device):
    """All-gather one float64 checksum per parameter gradient; True when every rank holds the same values."""
    checksums = torch.stack([p.grad.double().sum() for p in model.parameters() if p.grad is not None]).to(device)
    gathered = [torch.empty_like(checksums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksums)
    worst = max((g - gathered[0]).abs().max().item() for g in gathered)
    return all(torch.equal(g, gathered[0]) for g in gathered), worst


def main(argv=None) -> int:
    args = parse_args(argv)
    if "RANK" not in os.environ:
        raise SystemExit("launch with torchrun, e.g. torchrun --nproc_per_node=2 scripts/train_ddp.py")
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    precision = args.precision or ("bf16" if cuda else "fp32")

    torch.manual_seed(0)  # same initial weights on every rank (DDP broadcasts rank 0's anyway)
    model, source = resnet18()
    if not args.torch:
        corrmm.convert(model, algo=args.algo)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    ddp = DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
    step_model = torch.compile(ddp, backend=args.compile) if args.compile else ddp
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    g = torch.Generator().manual_seed(1000 + rank)  # each rank its own data, as in real data parallelism
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g)
    images = images.to(device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step(check_grads=False):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(step_model(images), labels)
        loss.backward()
        result = grads_equal_across_ranks(model, device) if check_grads else None
        optimizer.step()
        return loss, result

    _, (grads_equal, worst) = step(check_grads=True)
    for _ in range(args.warmup - 1):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss, _ = step()
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    # the slowest rank sets the pace
    elapsed_all = torch.tensor([elapsed], dtype=torch.float64, device=device)
    dist.all_reduce(elapsed_all, op=dist.ReduceOp.MAX)
    elapsed = elapsed_all.item()

    if rank == 0:
        images_per_s = args.steps * args.batch * world / elapsed if args.steps else float("nan")
        convs = "torch" if args.torch else f"corrmm(algo={args.algo})"
        print(f"train_ddp: resnet18 ({source}) convs={convs} world={world} device={device.type} {precision}"
              f"{' channels_last' if args.channels_last else ''}{f' compile={args.compile}' if args.compile else ''}"
              f" image={args.image_size} batch={args.batch}/rank steps={args.steps}: "
              f"{images_per_s:.1f} images/s ({images_per_s / world:.1f} per rank), "
              f"{1e3 * elapsed / max(args.steps, 1):.1f} ms/step, loss {loss.item():.3f}, "
              f"grads equal across ranks: {'yes' if grads_equal else f'NO (max checksum diff {worst:.3g})'}",
              flush=True)
    dist.destroy_process_group()
    return 0 if grads_equal else 1


if __name__ == "__main__":
    sys.exit(main())
