"""Losses: the contrastive loss is CLIP's symmetric InfoNCE with a clamped temperature; the
divergence checks name what went non-finite; the penalty's state is finite before fitting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spec_align.losses import ClassificationLoss, ContrastiveLoss, NoTaskLoss, SpectralPenalty
from spec_align.losses.divergence import DivergenceError, check_finite_losses, check_finite_state


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
    assert list(value) == list(loss.term_names) == ["contrastive_loss"]
    torch.testing.assert_close(value["contrastive_loss"], expected, rtol=1e-12, atol=0)


def test_task_terms_are_weighted():
    """open_clip's output_dict convention: each returned term already carries the weight."""
    generator = torch.Generator().manual_seed(0)
    image, text = torch.randn(2, 6, 4, generator=generator, dtype=torch.float64)
    scale = torch.tensor(2.0, dtype=torch.float64)
    one, three = ContrastiveLoss(weight=1.0), ContrastiveLoss(weight=3.0)
    base = one(image, text_features=text, logit_scale=scale)["contrastive_loss"]
    weighted = three(image, text_features=text, logit_scale=scale)["contrastive_loss"]
    torch.testing.assert_close(weighted, 3 * base, rtol=1e-12, atol=0)
    classify = ClassificationLoss(num_classes=3, weight=0.5)
    classify.head = torch.nn.Linear(4, 3).double()
    labels = torch.tensor([0, 1, 2, -1, 1, 0])
    terms = classify(image, labels=labels)
    expected = F.cross_entropy(classify.logits(image), labels, ignore_index=-1)
    assert list(terms) == list(classify.term_names) == ["classification_loss"]
    torch.testing.assert_close(terms["classification_loss"], 0.5 * expected)
    assert NoTaskLoss()(image) == {} and NoTaskLoss.term_names == ()


def test_contrastive_loss_needs_text_and_temperature():
    with pytest.raises(ValueError, match="needs text_features and logit_scale"):
        ContrastiveLoss()(torch.randn(2, 3))


def test_a_nonfinite_term_is_named_with_the_step():
    terms = {
        "task_loss": torch.tensor(1.5),
        "spec_diff": torch.tensor(float("inf")),
        "loss": torch.tensor(float("inf")),
    }
    with pytest.raises(DivergenceError, match="at step 7: the spectral penalty train/spec_diff"):
        check_finite_losses(terms, step=7)
    assert issubclass(DivergenceError, FloatingPointError)
    check_finite_losses({"task_loss": torch.tensor(1.5), "loss": torch.tensor(1.5)}, step=7)


def test_a_nonfinite_task_term_is_named_not_the_totals():
    nan = torch.tensor(float("nan"))
    terms = {
        "task_loss": nan,
        "task/contrastive_loss": nan,
        "spec_diff": torch.ones(()),
        "loss": nan,
    }
    with pytest.raises(DivergenceError, match=r"the task term train/task/contrastive_loss is non"):
        check_finite_losses(terms, step=2)


def test_a_state_with_nan_names_its_tensors():
    state = {
        "state_dict": {"encoder.w": torch.ones(2), "encoder.b": torch.tensor([0.0, math.nan])}
    }
    with pytest.raises(DivergenceError, match=r"by step 3: .*\(encoder\.b\)"):
        check_finite_state(state, step=3)
    state["state_dict"]["encoder.b"].zero_()
    check_finite_state(state, step=3)


@pytest.mark.parametrize("kernel", ["gaussian", "cosine"])
def test_an_unfitted_penalty_has_a_finite_state(kernel):
    """The cosine kernel never fits its bandwidths: a NaN marker went into every checkpoint."""
    penalty = SpectralPenalty(kernel=kernel, rff_dim=8)
    penalty.bind(4, 3)
    assert penalty.fitted == (kernel == "cosine")
    assert all(value.isfinite().all() for value in penalty.state_dict().values())


def test_an_older_nan_bandwidth_marker_loads_as_unfitted():
    penalty = SpectralPenalty(rff_dim=8)
    penalty.bind(4, 3)
    state = penalty.state_dict()
    state["sigma_encoder_value"] = torch.tensor(math.nan, dtype=torch.float64)
    penalty.load_state_dict(state)
    assert not penalty.fitted and float(penalty.sigma_encoder_value) == 0.0
    penalty.fit(torch.randn(10, 4), torch.randn(10, 3))
    assert penalty.fitted and float(penalty.sigma_encoder_value) > 0


def test_penalty_arguments_are_checked_as_the_core_checks_them():
    with pytest.raises(ValueError, match="unknown kernel 'rbf'; choose one of gaussian, cosine"):
        SpectralPenalty(kernel="rbf")
    with pytest.raises(ValueError, match="eta must be a finite float >= 0"):
        SpectralPenalty(eta=-1.0)
    with pytest.raises(ValueError, match="sigma_encoder must be a positive finite float"):
        SpectralPenalty(sigma_encoder=0.0)
    with pytest.raises(ValueError, match="rff_dim must be a positive int"):
        SpectralPenalty(rff_dim=0)
    penalty = SpectralPenalty(rff_dim=np.int64(16), every_n_steps=np.int64(2), sigma_ref=0.5)
    assert (penalty.rff_dim, penalty.every_n_steps) == (16, 2)
    assert float(penalty.sigma_ref_value) == 0.5
    assert SpectralPenalty(kernel="cosine", rff_dim=0).rff_dim == 0  # unused by cosine
