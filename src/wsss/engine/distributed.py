"""Process-group set-up and rank helpers; every function is a no-op in a single process.

Reads the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK). NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device, *, timeout_s: float = 600.0) -> bool:
    """Initialise the default process group when launched by torchrun.

    Returns:
        True when a process group with more than one rank is now active.
    """
    if is_initialized():
        return world_size() > 1
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized() and world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (and return it); identity in one process.

    Integer tensors are reduced exactly; on gloo they are reduced on the CPU.
    """
    if is_initialized() and world_size() > 1:
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            moved = tensor.cuda()
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            tensor.copy_(moved.cpu())
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard(items: Sequence[T]) -> list[T]:
    """This rank's items: every `world_size`-th item starting at `rank` (stride split)."""
    return list(items[rank() :: world_size()])


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (identity in one process)."""
    if not (is_initialized() and world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every plain `nn.BatchNorm2d` (one that updates its statistics) by `SyncBatchNorm`.

    Frozen-statistics BatchNorm subclasses (IRN/AMN's fixed BN) are kept as they are, unlike
    `nn.SyncBatchNorm.convert_sync_batchnorm`, which would convert them too.
    """
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = nn.SyncBatchNorm(child.num_features, eps=child.eps, momentum=child.momentum,
                                    affine=child.affine,
                                    track_running_stats=child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child)
    return module
