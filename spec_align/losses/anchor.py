"""Stay close to the start: mean squared distance to a frozen copy of the initial encoder."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["AnchorLoss"]


class AnchorLoss(nn.Module):
    """mean_i ||z_i - z0_i||^2: trainable embeddings against the encoder as training began.

    KUEA's L2 term (Gong et al., ICML 2025): it keeps the image embedding compatible with a
    frozen text tower while another term reshapes its kernel. `snapshot(encoder)` stores a
    frozen copy of the image tower only (a CLIP-style encoder's text tower never produces
    image embeddings); the module takes it when fitting starts, after any initial weights
    are loaded, and the copy is part of the state dict, so a resumed run anchors to the
    same start. The copy has no trainable parameters (never in the optimizer) and stays in
    eval mode.

    Args:
        weight: multiplier of the term in the total loss; 0 turns it off (no copy is made).

    Shapes:
        forward: z (n, d), z_start (n, d) -> ()
    """

    name = "anchor"  # the term's key: train/anchor

    def __init__(self, weight: float = 0.0) -> None:
        super().__init__()
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"anchor weight must be a finite float >= 0, got {weight}")
        self.weight = float(weight)
        self.start: nn.Module | None = None

    @property
    def enabled(self) -> bool:
        return self.weight > 0

    def snapshot(self, encoder: nn.Module) -> None:
        """Keep a frozen copy of `encoder`'s image tower as the start state (once)."""
        if self.start is None:
            self.start = copy.deepcopy(_image_tower(encoder)).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> AnchorLoss:
        super().train(mode)
        if self.start is not None:
            self.start.eval()  # batch-norm statistics and dropout of the start must not change
        return self

    @torch.no_grad()
    def start_embeddings(self, images: Tensor) -> Tensor:
        """Embeddings of the start encoder, without gradient.

        Shapes:
            images: (B, 3, H, W), already in the encoder's view -> (B, d)
        """
        if self.start is None:
            raise RuntimeError("AnchorLoss.snapshot(encoder) must be called first")
        return self.start(images)

    def forward(self, z: Tensor, z_start: Tensor) -> Tensor:
        return (z - z_start.detach().to(z.dtype)).square().sum(dim=1).mean()

    def adapt_state(
        self, state: Mapping[str, Tensor], prefix: str, encoder: nn.Module, encoder_prefix: str
    ) -> dict[str, Tensor]:
        """A checkpoint's state dict made loadable into this anchor (before strict loading).

        A checkpoint written without the anchor (older runs, or weight 0) gets the start
        copy from its own encoder weights: training resumes anchored to where it resumes.
        """
        state = dict(state)
        self.snapshot(encoder)  # the copy's structure, for load_from_checkpoint
        if any(key.startswith(prefix) for key in state):
            return state
        tower = _image_tower(encoder)
        tower_prefix = encoder_prefix + _tower_path(encoder, tower)
        for key in self.start.state_dict(prefix=prefix + "start."):
            state[key] = state[tower_prefix + key.removeprefix(prefix + "start.")]
        return state


def _image_tower(encoder: nn.Module) -> nn.Module:
    # open_clip models embed images with `model.visual` alone (encode_image without
    # normalisation); other encoders are image-only.
    visual = getattr(getattr(encoder, "model", None), "visual", None)
    return visual if getattr(encoder, "has_text", False) and visual is not None else encoder


def _tower_path(encoder: nn.Module, tower: nn.Module) -> str:
    if tower is encoder:
        return ""
    for name, module in encoder.named_modules():
        if module is tower:
            return name + "."
    raise ValueError("the image tower is not a submodule of the encoder")
