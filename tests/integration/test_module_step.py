"""The LightningModule: one step trains only what is trainable; penalty, pairing, checkpoints."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import Trainer

from spec_align.data import ViewAdapter
from spec_align.encoders import TINY_CLIP, ClipEncoder, FrozenEncoder
from spec_align.losses import (
    ContrastiveLoss,
    DivergenceError,
    NoTaskLoss,
    SpectralPenalty,
    TaskLoss,
)
from spec_align.modules import SpecAlignModule

BATCH = 16


def _batch(seed: int = 0, size: int = 48) -> dict:
    generator = torch.Generator().manual_seed(seed)
    captions = ["a red circle on the left", "a blue square on the right", "a green triangle"]
    return {
        "image": torch.rand(BATCH, 3, size, size, generator=generator),
        "text": [captions[i % 3] for i in range(BATCH)],
        "label": torch.arange(BATCH) % 9,
        "key": [f"k{i}" for i in range(BATCH)],
        "num_skipped": torch.tensor(0),
    }


def _module(ref: torch.nn.Module | None = None, **penalty_kwargs) -> SpecAlignModule:
    torch.manual_seed(0)
    encoder = ClipEncoder(TINY_CLIP, pretrained=None)
    if ref is None:
        ref = ClipEncoder(TINY_CLIP, pretrained=None)
    return SpecAlignModule(
        encoder=encoder,
        task_loss=ContrastiveLoss(),
        penalty=SpectralPenalty(**{"rff_dim": 64, **penalty_kwargs}),
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        ref=ref,
        class_names=["red circle", "blue square"],
    )


def test_one_step_changes_only_trainable_parameters():
    module = _module()
    optimizer = module.configure_optimizers()
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    buffers = {name: b.clone() for name, b in module.named_buffers() if name.startswith("ref.")}
    out = module.compute_losses(_batch(), step=0)
    assert set(out) == {"loss", "task_loss", "task/contrastive_loss", "spec_diff"}
    # The task total is the sum of its weighted terms; the total adds the weighted penalty.
    assert torch.equal(out["task_loss"], out["task/contrastive_loss"])
    torch.testing.assert_close(
        out["loss"], out["task_loss"] + module.penalty.weight * out["spec_diff"]
    )
    assert {"train/task/contrastive_loss", "val/task/contrastive_loss"} <= set(module.metric_names)
    out["loss"].backward()
    optimizer.step()

    for name, p in module.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        if name.startswith("ref."):
            assert not p.requires_grad and p.grad is None and not changed, name
        else:
            assert p.requires_grad and changed, f"trainable parameter {name} did not change"
    for name, b in module.named_buffers():
        if name.startswith("ref."):
            assert torch.equal(buffers[name], b), name
    assert not any(m.training for m in module.ref.modules())
    module.train()
    assert not any(m.training for m in module.ref.modules()) and module.encoder.training


class _TwoTermTask(TaskLoss):
    """A task of two weighted terms (as open_clip's CoCaLoss): the contrastive one and a norm."""

    term_names = ("contrastive_loss", "norm_loss")
    needs_text = True

    def __init__(self, weight: float) -> None:
        super().__init__(weight)
        self.contrastive = ContrastiveLoss(weight)

    def forward(self, image_features, *, text_features=None, labels=None, logit_scale=None):
        terms = self.contrastive(
            image_features, text_features=text_features, logit_scale=logit_scale
        )
        return {**terms, "norm_loss": self.weight * image_features.norm(dim=-1).mean()}


def test_a_multi_term_task_is_summed_into_the_task_total_and_logged_term_by_term():
    torch.manual_seed(0)
    module = SpecAlignModule(
        encoder=ClipEncoder(TINY_CLIP, pretrained=None),
        task_loss=_TwoTermTask(weight=2.5),
        penalty=SpectralPenalty(rff_dim=64),
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        ref=ClipEncoder(TINY_CLIP, pretrained=None),
    )
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    loss = module.training_step(_batch(), 0)

    terms = ("train/task/contrastive_loss", "train/task/norm_loss")
    assert set(terms) <= set(logged) and set(terms) <= set(module.metric_names)
    assert {"val/task/contrastive_loss", "val/task/norm_loss"} <= set(module.metric_names)
    # The logged task total is the sum of the (already weighted) terms, and the total loss
    # adds the weighted penalty to it: the module applies no second task weight.
    torch.testing.assert_close(logged["train/task_loss"], logged[terms[0]] + logged[terms[1]])
    torch.testing.assert_close(
        loss, logged["train/task_loss"] + module.penalty.weight * logged["train/spec_diff"]
    )


def test_tasks_without_text_freeze_the_text_tower():
    torch.manual_seed(0)
    module = SpecAlignModule(
        encoder=ClipEncoder(TINY_CLIP, pretrained=None),
        task_loss=NoTaskLoss(),
        penalty=SpectralPenalty(rff_dim=32),
        optimizer=partial(torch.optim.SGD, lr=0.1),
        ref=ClipEncoder(TINY_CLIP, pretrained=None),
    )
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.model.visual.") for n in trainable)
    out = module.compute_losses(_batch(), step=0)
    out["loss"].backward()
    assert all(p.grad is not None for n, p in module.named_parameters() if n in trainable)


@pytest.mark.parametrize("kernel", ["gaussian", "cosine"])
def test_penalty_is_zero_when_encoder_equals_reference(kernel):
    torch.manual_seed(0)
    encoder = ClipEncoder(TINY_CLIP, pretrained=None)
    module = _module(ref=copy.deepcopy(encoder), kernel=kernel)
    module.encoder.load_state_dict(encoder.state_dict())
    out = module.compute_losses(_batch(), step=0)
    # Not bitwise 0: with gradients on, torch's attention takes another float32 code path
    # than the reference's no-grad forward. Bitwise-equal inputs give 0 exactly (below).
    assert float(out["spec_diff"]) == pytest.approx(0.0, abs=1e-6)
    if kernel == "gaussian":
        penalty = module.penalty
        assert float(penalty.sigma_encoder_value) == pytest.approx(float(penalty.sigma_ref_value))


def test_rows_must_be_the_same_samples():
    """The authors' bug: pairing a sample's embedding with another sample's reference."""
    torch.manual_seed(0)
    encoder = ClipEncoder(TINY_CLIP, pretrained=None)
    module = _module(ref=copy.deepcopy(encoder))
    module.encoder.load_state_dict(encoder.state_dict())
    batch = _batch()
    z = module(batch["image"])
    module.penalty.fit(z, z)
    shuffled = z[torch.randperm(BATCH, generator=torch.Generator().manual_seed(1))]
    assert float(module.penalty(z, z)) == pytest.approx(0.0, abs=1e-9)
    assert float(module.penalty(z, shuffled)) > 0.05


def test_both_encoders_see_the_same_view():
    module = _module(ref=FrozenEncoder(ClipEncoder(TINY_CLIP, pretrained=None)))
    images = _batch()["image"]
    adapted = module.encoder_view(images)
    assert adapted.shape[-1] == module.encoder.image_size
    # Same pixels, resized and normalised with the encoder's own statistics.
    expected = torch.nn.functional.interpolate(
        images, size=(32, 32), mode="bilinear", antialias=True, align_corners=False
    )
    mean = torch.tensor(module.encoder.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(module.encoder.image_std).view(1, 3, 1, 1)
    torch.testing.assert_close(adapted, (expected - mean) / std)
    assert isinstance(module.ref_view, ViewAdapter)
    # uint8 batches (the default transform's) are the same pixels scaled by 1/255.
    pixels = (images * 255).round().to(torch.uint8)
    torch.testing.assert_close(module.encoder_view(pixels), module.encoder_view(pixels / 255))


def test_penalty_bandwidths_are_fixed_once_from_data():
    module = _module()
    module.compute_losses(_batch(0), step=0)
    sigmas = (float(module.penalty.sigma_encoder_value), float(module.penalty.sigma_ref_value))
    assert all(0 < s < 2 for s in sigmas)  # unit-normalised embeddings: distances <= 2
    module.compute_losses(_batch(1), step=1)
    assert sigmas == (
        float(module.penalty.sigma_encoder_value),
        float(module.penalty.sigma_ref_value),
    )


def test_every_n_steps_skips_the_penalty():
    module = _module(every_n_steps=3)
    assert "spec_diff" in module.compute_losses(_batch(), step=0)
    assert "spec_diff" not in module.compute_losses(_batch(), step=1)
    assert "spec_diff" in module.compute_losses(_batch(), step=3)


def test_checkpoint_has_no_reference_and_loads_strictly(compose_train, tmp_path):
    cfg = compose_train()
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    keys = checkpoint["state_dict"].keys()
    assert not [k for k in keys if k.startswith("ref.")]
    assert {"penalty.sigma_encoder_value", "penalty.map_encoder.frequencies"} <= set(keys)

    fresh = instantiate(cfg.model)  # a new reference from the config, new random init
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    assert fresh.penalty.fitted
    torch.testing.assert_close(
        fresh.penalty.map_ref.frequencies, module.penalty.map_ref.frequencies
    )
    assert fresh.penalty.map_encoder.sigma == float(module.penalty.sigma_encoder_value)
    for name, p in fresh.encoder.state_dict().items():
        torch.testing.assert_close(p, module.encoder.state_dict()[name])


@pytest.mark.parametrize("weights_only", [False, True], ids=["full", "weights_only"])
def test_a_checkpoint_with_nonfinite_weights_is_not_written(compose_train, tmp_path, weights_only):
    """Lightning runs the module's on_save_checkpoint before it writes, weights-only too."""
    cfg = compose_train()
    module = instantiate(cfg.model)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=instantiate(cfg.data))
    with torch.no_grad():
        module.encoder.model.visual.proj.fill_(float("inf"))
    path = tmp_path / "model.ckpt"
    with pytest.raises(DivergenceError, match=r"by step 2: .*\(encoder\.model\.visual\.proj\)"):
        trainer.save_checkpoint(path, weights_only=weights_only)
    assert not path.exists()


@pytest.mark.parametrize("fitted", [False, True], ids=["first_step", "later_step"])
def test_a_diverged_encoder_is_reported_before_the_penalty_sees_its_output(fitted):
    """The penalty took NaN embeddings for bad samples ("remove or repair those samples"), or
    for a fit that never happened ("the bandwidths are not fixed yet")."""
    module = _module()
    if fitted:
        module.compute_losses(_batch(), step=0)
    with torch.no_grad():
        module.encoder.model.visual.proj.fill_(float("nan"))
    with pytest.raises(DivergenceError, match="non-finite on 16 of 16 rows of the training batch"):
        module.compute_losses(_batch(), step=1)


def test_overflowing_finite_weights_are_not_blamed_on_a_mask():
    """open_clip's attention mask is -inf by design; it is no diverged weight."""
    module = _module()
    with torch.no_grad():
        module.encoder.model.visual.proj.fill_(3e38)  # finite, but its products overflow
    with pytest.raises(DivergenceError, match="its weights are finite but its activations"):
        module.compute_losses(_batch(), step=0)
