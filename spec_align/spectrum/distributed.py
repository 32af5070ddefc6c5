"""Collectives for SPEC over several processes (torch.distributed, any backend)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from spec_align.spectrum.linalg import JointCovariance

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

    A rank with no rows still takes part: it passes an empty tensor with the same number of
    dimensions, whose other sizes may be anything (e.g. (0, 0) when it cannot know the width).

    Shapes:
        local: (n_rank, ...) -> (sum of n_rank, ...), on every rank
    """
    world = dist.get_world_size()
    shape = torch.tensor(local.shape, dtype=torch.int64, device=local.device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    # all_gather needs equal shapes: pad every block to the largest size in each dimension.
    largest = [int(size) for size in torch.stack(shapes).amax(dim=0)]
    padded = local.new_zeros(largest)
    padded[tuple(slice(0, size) for size in local.shape)] = local
    blocks = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(blocks, padded)
    filled = [
        block[tuple(slice(0, int(size)) for size in block_shape)]
        for block, block_shape in zip(blocks, shapes, strict=True)
        if block_shape[0] > 0
    ]
    return torch.cat(filled) if filled else local
