"""Evaluation across processes started by ``torchrun`` (one per GPU, or several CPU processes).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; when
WORLD_SIZE is above 1 the process group is joined (NCCL for CUDA devices, gloo otherwise), each
rank scores its contiguous shard of the listing, and the counts are summed with one all_reduce
of an int64 vector. Without those variables everything here is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from senet.errors import UsageError

# Rank 0 may convert a large caffemodel while the others wait at a barrier.
_TIMEOUT = timedelta(hours=2)


@dataclass
class Group:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str | None = None  # None: single process, no process group

    @property
    def active(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, count: int) -> range:
        """This rank's contiguous part of ``count`` items (sizes differ by at most one)."""
        base, extra = divmod(count, self.world)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (1 if self.rank < extra else 0))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer") from None


def from_env() -> Group:
    """The process's place in a torchrun launch (a single-process Group outside one)."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Group()
    return Group(rank=_env_int("RANK", 0), world=world, local_rank=_env_int("LOCAL_RANK", 0),
                 local_world=_env_int("LOCAL_WORLD_SIZE", world))


def join(group: Group, device: str) -> Group:
    """Initialise torch.distributed for ``group`` (gloo on CPU, NCCL for CUDA devices)."""
    if group.world <= 1:
        return group
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        raise UsageError("a multi-process run (WORLD_SIZE > 1) needs torch") from None
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        kwargs = {}
        if backend == "nccl":
            torch.cuda.set_device(torch.device(device))
            kwargs["device_id"] = torch.device(device)
        dist.init_process_group(backend, init_method="env://", rank=group.rank,
                                world_size=group.world, timeout=_TIMEOUT, **kwargs)
    group.backend = backend
    return group


def _tensor_device(group: Group):
    import torch
    return torch.device("cuda", torch.cuda.current_device()) if group.backend == "nccl" \
        else torch.device("cpu")


def sum_vector(group: Group, vector: np.ndarray) -> np.ndarray:
    """Element-wise sum of an int64 vector over all ranks."""
    if not group.active:
        return vector
    import torch
    import torch.distributed as dist
    tensor = torch.from_numpy(np.ascontiguousarray(vector, np.int64)).to(_tensor_device(group))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def gather(group: Group, value) -> list:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if not group.active:
        return [value]
    import torch.distributed as dist
    out = [None] * group.world
    dist.all_gather_object(out, value)
    return out


def barrier(group: Group) -> None:
    if group.active:
        import torch.distributed as dist
        if group.backend == "nccl":
            import torch
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def leave(group: Group) -> None:
    if group.active:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
        group.backend = None
