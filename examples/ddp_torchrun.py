"""DoPr under DDP or FSDP2: run with `torchrun --standalone --nproc_per_node 2 examples/ddp_torchrun.py [--fsdp2]`.

Each rank sees its share of the batch; DoPr all-reduces the activation second moments once per
refresh, so every rank preconditions with the Sigma of the whole batch. With FSDP2 each rank
preconditions its own rows of every weight.
"""

from __future__ import annotations

import argparse
import gc

import torch
import torch.distributed as dist
from torch import nn

from dopr import DoPr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fsdp2", action="store_true")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 4))
    if args.fsdp2:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        model = fully_shard(model, mesh=mesh)
    else:
        model = nn.parallel.DistributedDataParallel(model)
    opt = DoPr(model, base="adamw", lr=1e-3)
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(16, 4, generator=g)
    for step in range(args.steps):
        x = torch.randn(64, 16, generator=g) * torch.logspace(1, -2, 16)
        y = torch.tanh(x @ teacher)
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]  # this rank's share of the global batch
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        if rank == 0 and step % 10 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    if rank == 0:
        print(f"final loss {loss.item():.4f}")
    # release what holds the process group (DDP's reducer, DoPr's hooks) before destroying it, not at interpreter
    # exit: gloo's threads torn down during shutdown can abort the process after a finished run
    opt.remove()
    del opt, model
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
