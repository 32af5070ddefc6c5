"""Learning-rate schedules built from the trainer's step count."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_cosine_schedule"]


def warmup_cosine_schedule(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warm-up to the base learning rate, then cosine decay to `min_lr_ratio` of it.

    Args:
        optimizer: the optimizer whose learning rates are scaled.
        total_steps: optimizer steps of the whole run (the module passes
            `trainer.estimated_stepping_batches`).
        warmup_steps: steps of linear warm-up, capped at `total_steps`.
        min_lr_ratio: final learning rate as a fraction of the base one.
    """
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(max(int(warmup_steps), 0), total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return min_lr_ratio + (1.0 - min_lr_ratio) * cosine

    return LambdaLR(optimizer, factor)
