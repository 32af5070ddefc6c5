"""Collectives for losses that need the global batch.

`gather_with_grad` concatenates every rank's rows and sends gradients back to their owners.
Each rank then evaluates the same global loss L; the backward all-reduce gives every rank
sum_r dL_r/dz_own = world_size * dL/dz_own, and DDP's gradient averaging divides by the world
size again, so the parameters receive exactly dL/dtheta of the global-batch loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from spec_align.spectrum.distributed import gather_rows

__all__ = [
    "all_ranks",
    "any_rank",
    "gather_chunks",
    "gather_uneven",
    "gather_with_grad",
    "world_size",
]


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_ranks(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether `flag` is true on every rank: a collective, so every rank must call it.

    `device` is where the backend reduces (CUDA for NCCL, CPU for gloo).
    """
    if world_size() == 1:
        return flag
    value = torch.tensor(int(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value)


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether `flag` is true on some rank: a collective, so every rank must call it."""
    return not all_ranks(not flag, device)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # all_reduce + slice instead of reduce_scatter: gloo (CPU) has no reduce_scatter.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Rows of all ranks in rank order, differentiable; identity when not distributed.

    Every rank must pass the same number of rows (training batches are equal-sized).

    Shapes:
        tensor: (b, ...) -> (world_size * b, ...)
    """
    if world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def gather_uneven(tensor: Tensor) -> Tensor:
    """Rows of all ranks in rank order, without gradient (`spec.distributed.gather_rows`);
    identity when not distributed.

    Shapes:
        tensor: (b_rank, ...) -> (sum of b_rank, ...)
    """
    return tensor if world_size() == 1 else gather_rows(tensor)


def gather_chunks(
    chunks: Sequence[Tensor],
    ndim: int = 2,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """`gather_uneven` of this rank's chunks, concatenated; a rank without any sends an empty
    `ndim`-dimensional `dtype` tensor on `device` (its other sizes come from the other ranks).

    Shapes:
        chunks: [(b_i, ...)] -> (sum over ranks of sum b_i, ...)
    """
    if chunks:
        local = torch.cat(list(chunks))
    else:
        local = torch.empty((0,) * ndim, dtype=dtype, device=device)
    return gather_uneven(local)
