"""Processes and devices: one process per GPU (or several on the CPU) with torch.distributed.

``torchrun --nproc_per_node N`` and ``accelerate launch --multi_gpu`` both set ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; with ``WORLD_SIZE > 1`` we
join a process group (nccl on CUDA, gloo on the CPU) and wrap the network in
DistributedDataParallel. Without them the run is a single process and nothing here is used.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from patchforcing.errors import ConfigError


@dataclass(frozen=True)
class Processes:
    """Where this process sits: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file and prints; the others only train."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def check_batch_split(batch_size: int) -> None:
    """The global batch must split evenly over the launcher's processes (checked before joining)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if batch_size % world_size:
        raise ConfigError(
            f"--batch-size {batch_size} (the global batch) does not split over {world_size} processes; "
            f"use a multiple of {world_size}, e.g. {world_size * max(1, round(batch_size / world_size))}"
        )


def setup(device: str) -> Processes:
    """Read the launcher's environment, pick the device and join the process group if there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = _pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise ConfigError(
                f"WORLD_SIZE={world_size} but MASTER_ADDR is not set; start many processes with "
                "`torchrun --nproc_per_node N -m patchforcing train ...` or `accelerate launch --multi_gpu`"
            )
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(minutes=30))
    return Processes(rank, world_size, local_rank, dev)


def teardown(procs: Processes) -> None:
    if procs.distributed and dist.is_initialized():
        dist.destroy_process_group()


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda, but PyTorch sees no CUDA device here; use --device cpu (or auto)")
        if device == "cuda":  # one GPU per process, chosen by the launcher's LOCAL_RANK
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(device)


def wrap(net: nn.Module, procs: Processes, compile: bool) -> nn.Module:  # noqa: A002
    """The module the training step calls: DDP around the network when distributed, then compiled."""
    model: nn.Module = net
    if procs.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [procs.device.index] if procs.device.type == "cuda" else None
        model = DDP(net, device_ids=ids)
    if compile:
        # The network's modulation-sharing shortcut branches on the values of t (a graph break); training
        # times are per patch and mostly distinct, so its per-token path is the one taken anyway.
        net.share_modulation = False
        # torch 2.13 replays cached AOT-autograd graphs of this network with garbage output-view shapes
        # (RuntimeError "shape '[94070143522283, ...]' is invalid", or a segfault) from the second run on.
        import torch._functorch.config as functorch_config

        functorch_config.enable_autograd_cache = False
        model = torch.compile(model)
    return model


def all_reduce_mean(values: torch.Tensor, procs: Processes) -> torch.Tensor:
    """Average a tensor over processes (a no-op in a single process)."""
    if procs.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= procs.world_size
    return values


def all_reduce_min(values: torch.Tensor, procs: Processes) -> torch.Tensor:
    if procs.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return values


def barrier(procs: Processes) -> None:
    if procs.distributed:
        dist.barrier()
