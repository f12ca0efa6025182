"""Data-parallel training with ``torch.distributed`` (launched by ``torchrun``).

:func:`graphode.training.train` reads the ``torchrun`` environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``…) through :class:`DistributedContext`:
with more than one process it initialises the process group (NCCL on GPUs, gloo on CPU),
wraps the model in ``DistributedDataParallel`` (gradients all-reduced and averaged), shards
the data with ``DistributedSampler`` (each process takes ``batch_size / world_size`` of every
global batch), sums metrics across processes, and lets only rank 0 print and write files.
One process is the plain case: nothing is initialised.

Launch on one machine with 4 GPUs::

    torchrun --nproc-per-node 4 -m graphode train --device cuda --batch-size 256

and on a cluster (every node runs the same command)::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 --rdzv-id myjob -m graphode train ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

__all__ = ["DistributedContext", "all_reduce_sum", "all_reduce_max"]


@dataclass
class DistributedContext:
    """Rank, world size and device of this process; ``enabled`` when world size > 1.

    Shapes:
        each process takes ``batch_size / world_size`` samples of every global batch.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    enabled: bool = False

    @classmethod
    def from_env(cls, backend: str | None = None, device: str = "auto") -> "DistributedContext":
        """Read ``torchrun``'s environment; with ``WORLD_SIZE > 1`` initialise the process group.

        ``device``: ``auto`` (one GPU per process, ``cuda:LOCAL_RANK``, when CUDA is
        available, else CPU), ``cuda`` / ``cuda:K`` (always ``cuda:LOCAL_RANK``) or ``cpu``.
        The backend defaults to NCCL on GPUs and gloo on CPU.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            use_cuda = torch.cuda.is_available() and backend != "gloo"
        else:
            use_cuda = torch.device(device).type == "cuda"
        if use_cuda:
            torch.cuda.set_device(local_rank)
            dev = torch.device("cuda", local_rank)
        else:
            dev = torch.device("cpu")
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, enabled=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)`` when distributed, else the model itself."""
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def print(self, *args, **kwargs) -> None:
        if self.is_main:
            print(*args, **kwargs, flush=True)

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every process (any picklable object; ``obj`` itself when alone)."""
        if not self.enabled:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def close(self) -> None:
        if self.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _all_reduce(t: torch.Tensor, op: str) -> torch.Tensor:
    if torch_dist.is_available() and torch_dist.is_initialized():
        t = t.clone(memory_format=torch.contiguous_format)
        torch_dist.all_reduce(t, op=getattr(torch_dist.ReduceOp, op))
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes (a no-op without a process group); not differentiable.

    Shapes:
        ``t`` of any shape → the same shape.
    """
    return _all_reduce(t, "SUM")


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``t`` over all processes (a no-op without a process group).

    Shapes:
        ``t`` of any shape → the same shape.
    """
    return _all_reduce(t, "MAX")



