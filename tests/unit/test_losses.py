"""Task losses: the contrastive loss is CLIP's symmetric InfoNCE with a clamped temperature."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spec_align.losses import ContrastiveLoss


def _symmetric_infonce(image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    image_to_text = (logits.logsumexp(dim=1) - logits.diag()).mean()
    text_to_image = (logits.logsumexp(dim=0) - logits.diag()).mean()
    return (image_to_text + text_to_image) / 2


@pytest.mark.parametrize("log_scale", [2.0, math.log(1000.0)], ids=["free", "clamped"])
def test_contrastive_loss_is_symmetric_infonce_on_unit_features(log_scale):
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    text = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    loss = ContrastiveLoss(max_logit_scale=100.0)
    # Feature norms do not matter; the scale is exp(logit_scale), at most 100.
    value = loss(
        3 * image, text_features=text / 2, logit_scale=torch.tensor(log_scale, dtype=torch.float64)
    )
    expected = _symmetric_infonce(image, text, min(math.exp(log_scale), 100.0))
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)


def test_contrastive_loss_needs_text_and_temperature():
    with pytest.raises(ValueError, match="needs text_features and logit_scale"):
        ContrastiveLoss()(torch.randn(2, 3))
