"""Process-group set-up for `torchrun` (DDP): NCCL on GPUs, gloo on CPUs; a no-op for one process."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from lappdeploy.errors import ConfigError

__all__ = ["DistContext", "init_distributed", "resolve_device"]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None when not distributed

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.is_distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if `flag` is True on any rank (to fail all processes together)."""
        if not self.is_distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (a decision made once, e.g. which channels to prune)."""
        if not self.is_distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def shutdown(self) -> None:
        if self.is_distributed and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(request: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when CUDA is available, else cpu; 'cuda' needs a GPU."""
    if request == "auto":
        request = "cuda" if torch.cuda.is_available() else "cpu"
    if request.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was requested but no CUDA GPU is visible; use --device cpu")
        if request == "cuda":
            return torch.device("cuda", local_rank)
        index = int(request.split(":")[1])
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {request}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device(request)
    return torch.device("cpu")


def init_distributed(device_request: str = "auto") -> DistContext:
    """Join the process group that `torchrun` describes in the environment (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_request, local_rank)
    if world_size == 1:
        return DistContext(device=device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    # Share the cores between the processes of this node rather than oversubscribing them.
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device, backend=backend)
