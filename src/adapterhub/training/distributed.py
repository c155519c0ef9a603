"""Running under ``torchrun`` / ``accelerate launch``: process group, device, DistributedDataParallel.

Both launchers set ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a world size above one starts a process group
(``nccl`` when each process has a GPU, ``gloo`` on CPU) unless the caller started one already. Each process
trains on its own shard of every epoch (``DistributedSampler``, seeded), gradients are averaged by DDP, and
every process evaluates the whole dev set, so all ranks take the same early-stopping decisions with no extra
communication. Only rank 0 writes files and shows progress bars.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    started_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> DistInfo:
    """Read the launcher's environment, start the process group if needed and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    if device is not None:
        chosen = torch.device(device)
    elif torch.cuda.is_available():
        chosen = torch.device("cuda", local_rank % torch.cuda.device_count())
    else:
        chosen = torch.device("cpu")
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    started = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
        started = True
    return DistInfo(rank, world_size, local_rank, chosen, started)


def wrap(model: nn.Module, info: DistInfo, find_unused_parameters: bool) -> nn.Module:
    """``model`` wrapped in ``DistributedDataParallel`` when running distributed (only trainable parameters are
    synchronised; frozen ones get no gradient and no communication)."""
    if not info.enabled:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def teardown(info: DistInfo) -> None:
    if info.started_here and dist.is_initialized():
        dist.destroy_process_group()
