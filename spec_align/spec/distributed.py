"""Collectives for SPEC over several processes (torch.distributed, any backend)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from spec_align.spec.linalg import JointCovariance

__all__ = ["all_reduce_covariance", "gather_rows", "is_distributed"]


def is_distributed() -> bool:
    """Whether a torch.distributed process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_covariance(accumulator: JointCovariance) -> JointCovariance:
    """The accumulator of all ranks' rows: sums and sample counts added over the group."""
    total = accumulator.unnormalized.clone()
    count = torch.tensor([accumulator.num_samples], dtype=torch.int64, device=total.device)
    dist.all_reduce(total)
    dist.all_reduce(count)
    merged = JointCovariance(accumulator.dim_x, accumulator.dim_y, accumulator.eta, total.device)
    merged.merge_(total, int(count))
    return merged


def gather_rows(local: Tensor) -> Tensor:
    """Every rank's rows concatenated in rank order (ranks may hold different row counts).

    Shapes:
        local: (n_rank, d) -> (sum of n_rank, d), on every rank
    """
    world = dist.get_world_size()
    size = torch.tensor([local.shape[0]], dtype=torch.int64, device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    # all_gather needs equal shapes: pad every block to the longest, then trim.
    padded = local.new_zeros(int(max(sizes)), local.shape[1])
    padded[: local.shape[0]] = local
    blocks = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(blocks, padded)
    return torch.cat([block[: int(s)] for block, s in zip(blocks, sizes, strict=True)])
