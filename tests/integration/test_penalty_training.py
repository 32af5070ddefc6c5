"""Penalty options and the anchor inside training: resume is exact (fresh frequencies draw
from (seed, step), no hidden state), the anchor's copy is the start state, survives
save/resume and stays out of the optimizer; every new option runs a fast_dev_run step."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from spec_align.encoders import TINY_CLIP, ClipEncoder
from spec_align.losses import AnchorLoss, ContrastiveLoss, KernelMatchingPenalty, SpectralPenalty
from spec_align.modules import SpecAlignModule
from spec_align.train import run

BATCH, STEPS_PER_EPOCH = 16, 3


def _batches() -> DataLoader:
    """The same three batches every epoch, in order."""
    generator = torch.Generator().manual_seed(0)
    captions = ["a red circle on the left", "a blue square on the right", "a green triangle"]
    batches = [
        {
            "image": torch.rand(BATCH, 3, 32, 32, generator=generator),
            "text": [captions[(i + b) % 3] for i in range(BATCH)],
            "label": torch.arange(BATCH) % 3,
        }
        for b in range(STEPS_PER_EPOCH)
    ]
    return DataLoader(batches, batch_size=None)


def _module(penalty: torch.nn.Module, anchor_weight: float = 0.0) -> SpecAlignModule:
    torch.manual_seed(0)
    encoder = ClipEncoder(TINY_CLIP, pretrained=None)
    ref = ClipEncoder(TINY_CLIP, pretrained=None)
    return SpecAlignModule(
        encoder=encoder,
        task_loss=ContrastiveLoss(),
        penalty=penalty,
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        ref=ref,
        anchor=AnchorLoss(weight=anchor_weight),
    )


class _Record(Callback):
    """Every logged loss term of every training step, as exact floats."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.steps.append({"loss": float(outputs["loss"])})


def _trainer(epochs: int, record: Callback) -> Trainer:
    return Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )


PENALTIES = {
    "fresh": lambda: SpectralPenalty(rff_dim=32, frequencies="fresh", seed=5),
    "fresh_batch": lambda: SpectralPenalty(
        rff_dim=32, frequencies="fresh", bandwidth="batch", seed=5
    ),
    "exact": lambda: SpectralPenalty(rff_dim=32, estimator="exact"),
    "kuea": lambda: KernelMatchingPenalty(weight=10.0),
}


# Three fits each: fresh + batch (the most state-dependent variant) stays in the fast suite.
RESUMED = [
    pytest.param(option, marks=[] if option == "fresh_batch" else [pytest.mark.slow])
    for option in sorted(PENALTIES)
]


@pytest.mark.parametrize("option", RESUMED)
def test_resume_at_an_epoch_boundary_repeats_the_uninterrupted_run(option, tmp_path):
    whole = _Record()
    uninterrupted = _module(PENALTIES[option](), anchor_weight=1.0)
    _trainer(2, whole).fit(uninterrupted, train_dataloaders=_batches())

    first_half = _module(PENALTIES[option](), anchor_weight=1.0)
    _trainer(1, _Record()).fit(first_half, train_dataloaders=_batches())
    path = tmp_path / "half.ckpt"
    trainer = first_half.trainer
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert any(key.startswith("anchor.start.") for key in checkpoint["state_dict"])

    torch.manual_seed(123)  # the resumed run's own init must not matter
    resumed = _module(PENALTIES[option](), anchor_weight=1.0)
    second = _Record()
    _trainer(2, second).fit(resumed, train_dataloaders=_batches(), ckpt_path=path)
    assert second.steps == whole.steps[STEPS_PER_EPOCH:], "losses differ after resume"
    for name, value in uninterrupted.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_anchor_copy_is_the_start_state_and_is_never_trained(tmp_path):
    module = _module(SpectralPenalty(rff_dim=32), anchor_weight=1.0)
    start = {k: v.clone() for k, v in module.encoder.model.visual.state_dict().items()}
    record = _Record()
    trainer = _trainer(1, record)
    trainer.fit(module, train_dataloaders=_batches())

    copy = module.anchor.start.state_dict()
    assert copy.keys() == start.keys(), "the copy is the image tower, not the text tower"
    assert all(torch.equal(copy[k], start[k]) for k in start)
    trained = module.encoder.model.visual.state_dict()
    assert not all(torch.equal(trained[k], start[k]) for k in start)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(p) in optimized for p in module.anchor.parameters())
    assert not any(p.requires_grad for p in module.anchor.parameters())
    assert not module.anchor.start.training

    # The first step measures the distance to itself: 0 up to float32 rounding (the copy is
    # in eval mode, where torch's attention takes another kernel).
    fresh = _module(SpectralPenalty(rff_dim=32), anchor_weight=1.0)
    fresh.setup("fit")
    batch = next(iter(_batches()))
    out = fresh.compute_losses(batch, step=0)
    scale = float(fresh(batch["image"]).square().sum(dim=1).mean())
    assert 0.0 <= float(out["anchor"].detach()) < 1e-10 * scale
    assert "train/anchor" in fresh.metric_names


def test_a_checkpoint_without_the_anchor_loads_with_it_on(tmp_path):
    """Older checkpoints (or weight 0): the start copy comes from the file's own encoder."""
    plain = _module(SpectralPenalty(rff_dim=32))
    _trainer(1, _Record()).fit(plain, train_dataloaders=_batches())
    path = tmp_path / "plain.ckpt"
    plain.trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert not any(key.startswith("anchor.") for key in checkpoint["state_dict"])

    anchored = _module(SpectralPenalty(rff_dim=32), anchor_weight=1.0)
    anchored.on_load_checkpoint(checkpoint)
    anchored.load_state_dict(checkpoint["state_dict"], strict=True)
    for name, value in anchored.anchor.start.state_dict().items():
        assert torch.equal(value, plain.encoder.model.visual.state_dict()[name]), name

    # And back: an anchored checkpoint loads strictly into a module without the anchor.
    anchored_ckpt = {"state_dict": dict(anchored.state_dict())}
    off = _module(SpectralPenalty(rff_dim=32))
    off.on_load_checkpoint(anchored_ckpt)
    off.load_state_dict(anchored_ckpt["state_dict"], strict=True)


# What a user types for each new option (conf/loss/*.yaml keys and loss= options).
NEW_OPTIONS = {
    "fixed_frequencies": ["loss.spectral.frequencies=fixed"],
    "batch_bandwidth": ["loss.spectral.bandwidth=batch"],
    "exact": ["loss.spectral.estimator=exact"],
    "kuea": ["loss=kuea"],
    "kuea_frobenius": ["loss=kuea_frobenius"],
    "anchor": ["loss.anchor.weight=1"],
}


@pytest.mark.parametrize("option", sorted(NEW_OPTIONS))
def test_every_new_option_runs_a_fast_dev_run_step(compose_train, option):
    metrics, objects = run(compose_train("debug=fdr", *NEW_OPTIONS[option]))
    module = objects["model"]
    assert objects["trainer"].global_step == 1
    term = "train/anchor" if option == "anchor" else f"train/{module.penalty.name}"
    for key in ("train/loss", term, "val/spec_diff", "val/spec_diff_median"):
        assert math.isfinite(metrics[key]), key
    assert {term, "val/spec_diff_median"} <= set(module.metric_names)
