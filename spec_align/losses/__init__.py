"""Training losses: the task term, the alignment penalties (SPEC-diff, KUEA-style kernel
matching), the anchor to the initial encoder; divergence checks."""

from spec_align.losses.anchor import AnchorLoss
from spec_align.losses.divergence import DivergenceError
from spec_align.losses.spectral import KernelMatchingPenalty, SpectralPenalty
from spec_align.losses.task import ClassificationLoss, ContrastiveLoss, NoTaskLoss, TaskLoss

__all__ = [
    "AnchorLoss",
    "ClassificationLoss",
    "ContrastiveLoss",
    "DivergenceError",
    "KernelMatchingPenalty",
    "NoTaskLoss",
    "SpectralPenalty",
    "TaskLoss",
]
