"""Task losses of the trainable encoder: CLIP contrastive, linear-head classification, none.

Every task loss takes the (global-batch) image embeddings and whatever else it needs by
keyword, and returns its named terms, each already multiplied by the loss's `weight`, as
open_clip's losses do with `output_dict=True`: a task of several terms (a captioning term
next to the contrastive one, say) needs no change in the module, which sums the terms into
train/task_loss and logs each as train/task/<name>.
"""

from __future__ import annotations

import torch.nn.functional as F
from open_clip import ClipLoss
from torch import Tensor, nn

from spec_align.encoders.base import ImageEncoder

__all__ = ["ClassificationLoss", "ContrastiveLoss", "NoTaskLoss", "TaskLoss"]


class TaskLoss(nn.Module):
    """Base class: `bind` adapts the loss to the encoder, `forward` computes it.

    Args:
        weight: multiplier of every term `forward` returns, >= 0 (the module adds the terms
            to the total loss as they are).

    Attributes:
        term_names: the keys `forward` returns.
        needs_text: whether `forward` needs text embeddings (the batch's captions).
        needs_labels: whether `forward` needs integer labels.
    """

    term_names: tuple[str, ...] = ()
    needs_text: bool = False
    needs_labels: bool = False

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"task weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def bind(self, encoder: ImageEncoder) -> None:
        """Create encoder-dependent parameters or check the encoder fits (default: nothing)."""

    def forward(
        self,
        image_features: Tensor,
        *,
        text_features: Tensor | None = None,
        labels: Tensor | None = None,
        logit_scale: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The weighted terms by name (`term_names`), scalars."""
        raise NotImplementedError


class ContrastiveLoss(TaskLoss):
    """Symmetric InfoNCE of CLIP between images and their captions, learnable temperature.

    open_clip's `ClipLoss` on unit-normalised features. The temperature is the encoder's own
    `logit_scale` (a log inverse temperature), so a pretrained CLIP keeps its value; it is
    clamped at `max_logit_scale` as in CLIP training. Under DDP the module passes features
    already gathered with their gradients, so negatives come from the global batch and
    `ClipLoss` runs as on one process.

    Args:
        weight: multiplier of the returned term (see `TaskLoss`).
        max_logit_scale: upper bound of exp(logit_scale).
    """

    term_names = ("contrastive_loss",)
    needs_text = True

    def __init__(self, weight: float = 1.0, max_logit_scale: float = 100.0) -> None:
        super().__init__(weight)
        self.max_logit_scale = float(max_logit_scale)
        self.clip_loss = ClipLoss()

    def bind(self, encoder: ImageEncoder) -> None:
        if not encoder.has_text or not hasattr(encoder, "logit_scale"):
            raise ValueError(
                f"task=contrastive needs an encoder with a text tower and a logit_scale; "
                f"{type(encoder).__name__} has none (use task=classification or task=none)"
            )

    def forward(
        self,
        image_features: Tensor,
        *,
        text_features: Tensor | None = None,
        labels: Tensor | None = None,
        logit_scale: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """contrastive_loss: weight x the mean of the image->text and text->image
        cross-entropies.

        Shapes:
            image_features: (B, D), text_features: (B, D), logit_scale: () -> ()
        """
        if text_features is None or logit_scale is None:
            raise ValueError("ContrastiveLoss needs text_features and logit_scale")
        scale = logit_scale.exp().clamp(max=self.max_logit_scale)
        loss = self.clip_loss(
            F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1), scale
        )
        return {"contrastive_loss": self.weight * loss}


class ClassificationLoss(TaskLoss):
    """Cross-entropy of a linear head on the embeddings; samples with label -1 are ignored.

    Args:
        num_classes: number of classes.
        weight: multiplier of the returned term (see `TaskLoss`).
    """

    term_names = ("classification_loss",)
    needs_labels = True

    def __init__(self, num_classes: int, weight: float = 1.0) -> None:
        super().__init__(weight)
        if num_classes is None or num_classes < 2:
            raise ValueError(
                f"task=classification needs num_classes >= 2, got {num_classes} (set "
                "loss.task.num_classes for datasets that are not built in)"
            )
        self.num_classes = int(num_classes)
        self.head: nn.Linear | None = None

    def bind(self, encoder: ImageEncoder) -> None:
        self.head = nn.Linear(encoder.embed_dim, self.num_classes)

    def logits(self, image_features: Tensor) -> Tensor:
        """Class scores of the head.

        Shapes:
            image_features: (B, D) -> (B, num_classes)
        """
        if self.head is None:
            raise RuntimeError("ClassificationLoss.bind(encoder) must be called first")
        return self.head(image_features)

    def forward(
        self,
        image_features: Tensor,
        *,
        text_features: Tensor | None = None,
        labels: Tensor | None = None,
        logit_scale: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """classification_loss: weight x the mean cross-entropy over labelled samples (0
        with a gradient path if none are).

        Shapes:
            image_features: (B, D), labels: (B,) long -> ()
        """
        if labels is None:
            raise ValueError("ClassificationLoss needs labels")
        logits = self.logits(image_features)
        if bool((labels < 0).all()):
            loss = logits.sum() * 0.0
        else:
            loss = F.cross_entropy(logits, labels, ignore_index=-1)
        return {"classification_loss": self.weight * loss}


class NoTaskLoss(TaskLoss):
    """No task: pure alignment, the total loss is the spectral penalty alone."""

    def __init__(self) -> None:
        super().__init__(weight=0.0)

    def forward(
        self,
        image_features: Tensor,
        *,
        text_features: Tensor | None = None,
        labels: Tensor | None = None,
        logit_scale: Tensor | None = None,
    ) -> dict[str, Tensor]:
        return {}
