"""Where training runs: the process group torchrun sets up (DDP over gloo on CPUs, NCCL on GPUs), the device,
and the seeds."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group torchrun set up (RANK / WORLD_SIZE / LOCAL_RANK); a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def seed_all(seed: int) -> None:
    """Seed every generator a run draws from; call it before building the model so init is repeatable."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str, d: Dist | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("device 'cuda' asked for but no GPU is visible; set device=cpu or device=auto")
        if d is not None and d.world > 1:
            return torch.device("cuda", d.local_rank)
    elif name != "cpu":
        raise UserError(f"unknown device '{name}'; use auto, cpu or cuda")
    return torch.device(name)
