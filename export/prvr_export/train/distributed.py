"""Data-parallel training under ``torchrun``: process group, sampler, DDP wrapper, rank-0 helpers.

Launch any training entry point with torchrun and it runs data-parallel; without torchrun nothing here
does anything. For the CLI (the ``prvr`` console script is a Python file torchrun can run)::

    torchrun --standalone --nproc_per_node=2 "$(which prvr)" train --model amdnet --dataset demo ...

The backend is NCCL when CUDA is present and gloo otherwise. ``config.batch_size`` stays the *global*
batch: each of the ``W`` ranks loads ``batch_size / W`` videos per step (a ``DistributedSampler`` shard)
and DDP averages the gradients, which equals one process on the whole batch whenever the loss is a mean
over equally sized shards. Contrastive losses (InfoNCE, triplets over the batch) see only the rank's
shard, so a query's negatives are the videos of its own shard; upstream trains PRVR models on one GPU
(or DataParallel, which gathers the whole batch), and MUSE all-gathers features across GPUs, which is
not reproduced here. Compare runs at equal per-rank batch when that matters.
Evaluation, checkpoints, logs and the progress bar run on rank 0 only; rank 0 then broadcasts its
early-stopping decision so all ranks leave the loop together.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from prvr_sdk.errors import InvalidInputError

__all__ = ["DistInfo", "LossModule", "broadcast_flag", "cleanup", "current", "init_distributed", "wrap_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` (1 and 0 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> DistInfo:
    """The process group's view, or the single-process default when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group that torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``PORT``); a no-op returning the single-process ``DistInfo`` without them.

    Args:
        backend: "gloo" or "nccl"; default NCCL when CUDA is available, else gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or not dist.is_available():
        return DistInfo()
    if dist.is_initialized():
        return current()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    info = current()
    logger.info("distributed: rank %d of %d (backend %s)", info.rank, info.world_size, backend)
    return info


def cleanup() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(global_batch: int, info: DistInfo) -> int:
    """``global_batch / world_size``.

    Raises:
        InvalidInputError: the global batch does not split evenly over the ranks.
    """
    if global_batch % info.world_size:
        raise InvalidInputError(
            f"batch_size {global_batch} does not split evenly over {info.world_size} processes; "
            f"choose a multiple of {info.world_size}"
        )
    return global_batch // info.world_size


class LossModule(nn.Module):
    """``forward(batch, epoch) = model.loss(batch, epoch)``: DDP synchronises gradients only for work done
    inside its ``forward``, and models expose the training objective as ``loss``, not ``forward``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any], epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.loss(batch, epoch)


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``LossModule(model)``, inside ``DistributedDataParallel`` when ``info.enabled``.

    ``find_unused_parameters`` is taken from the model's ``find_unused_parameters`` attribute (MUSE and
    any model with training-only or conditional branches set it); default False.
    """
    module = LossModule(model)
    if not info.enabled:
        return module
    find_unused = bool(getattr(model, "find_unused_parameters", False))
    device_ids = (
        [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    )
    return nn.parallel.DistributedDataParallel(
        module, device_ids=device_ids, find_unused_parameters=find_unused
    )


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's ``flag`` on every rank (identity without a process group)."""
    if not info.enabled:
        return flag
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    value = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())
