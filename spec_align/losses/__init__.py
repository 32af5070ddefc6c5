"""Training losses: the task term and the spectral (SPEC-diff) penalty; divergence checks."""

from spec_align.losses.divergence import DivergenceError
from spec_align.losses.spectral import SpectralPenalty
from spec_align.losses.task import ClassificationLoss, ContrastiveLoss, NoTaskLoss, TaskLoss

__all__ = [
    "ClassificationLoss",
    "ContrastiveLoss",
    "DivergenceError",
    "NoTaskLoss",
    "SpectralPenalty",
    "TaskLoss",
]
