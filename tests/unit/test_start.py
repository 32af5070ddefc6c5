"""Starts (conf/start/): the start run's config, its fingerprint, building once, reuse."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from spec_align.start import ENCODER_FILE, ensure_start, start_config, start_dir
from tests.conftest import BASE_OVERRIDES

# The test data and trainer, with the default encoder (which asks for the captions-only start).
STARTED = [o for o in BASE_OVERRIDES if not o.startswith("encoder=")] + ["encoder=tiny_captions"]


def _compose(compose_train, *overrides: str) -> DictConfig:
    return compose_train(*STARTED, *overrides, base=False)


def test_the_default_encoder_asks_for_the_captions_only_start(compose_train):
    assert _compose(compose_train).start.name == "captions_only"
    assert compose_train().start.name == "none"  # encoder=tiny: the random init
    assert _compose(compose_train, "start=none").start.epochs is None


def test_the_start_run_is_task_only_at_its_own_length(compose_train, tmp_path):
    cfg = _compose(compose_train, "trainer.limit_train_batches=2", "trainer.max_steps=5", "seed=7")
    run_cfg = start_config(cfg, tmp_path / "run")
    assert run_cfg.ref.encoder is None and run_cfg.model.ref is None  # no reference
    assert run_cfg.model.ref_dim is None and run_cfg.data.ref_cache is None
    assert run_cfg.loss.spectral.weight == 0.0
    assert run_cfg.trainer.max_epochs == cfg.start.epochs
    assert run_cfg.trainer.limit_train_batches is None and run_cfg.trainer.max_steps == -1
    assert run_cfg.seed == cfg.start.seed != 7
    assert run_cfg.model.init_from is None and run_cfg.start.epochs is None
    assert list(run_cfg.callbacks) == ["last_checkpoint"] and list(run_cfg.logger) == ["csv"]
    assert run_cfg.paths.output_dir == str(tmp_path / "run")


def test_the_fingerprint_follows_what_the_weights_depend_on(compose_train):
    base = start_dir(_compose(compose_train))
    # Not: this run's length, seed, reference, penalty, loggers or data loading.
    for same in (
        ["trainer.max_epochs=3", "trainer.limit_train_batches=2", "seed=5"],
        ["ref=none", "loss=kuea", "logger=many", "data.num_workers=1"],
    ):
        assert start_dir(_compose(compose_train, *same)) == base
    # But: the recipe, the data, the encoder and the optimiser.
    for different in (
        ["start.epochs=2"],
        ["start.seed=1"],
        ["data.batch_size=16"],
        ["model.optimizer.lr=0.01"],
        ["encoder.cache_dir=elsewhere"],
    ):
        assert start_dir(_compose(compose_train, *different)) != base
    assert base.name.startswith("captions_only-")


def _fake_fit(calls: list):
    """A start run that writes the checkpoint a real one would (module and encoder keys)."""

    def fit(run_cfg: DictConfig):
        calls.append(run_cfg)
        checkpoints = Path(run_cfg.paths.output_dir) / "checkpoints"
        checkpoints.mkdir(parents=True)
        state = {"encoder.w": torch.full((2,), float(len(calls))), "penalty.x": torch.ones(1)}
        torch.save({"state_dict": state}, checkpoints / "last.ckpt")
        return {"val/task_loss": 1.5}, {}

    return fit


def test_a_start_is_built_once_and_holds_the_encoder_only(compose_train, tmp_path):
    cfg = _compose(compose_train, f"start.dir={tmp_path / 'starts'}")
    calls: list = []
    weights = ensure_start(cfg, _fake_fit(calls))
    assert weights == start_dir(cfg) / ENCODER_FILE and len(calls) == 1
    assert torch.load(weights, weights_only=True).keys() == {"w"}
    assert ensure_start(cfg, _fake_fit(calls)) == weights and len(calls) == 1  # reused
    assert (weights.parent / "info.json").is_file()
    assert [p.name for p in weights.parent.parent.iterdir()] == [weights.parent.name]


def test_a_failed_start_run_leaves_nothing(compose_train, tmp_path):
    cfg = _compose(compose_train, f"start.dir={tmp_path / 'starts'}")

    def failing(run_cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_start(cfg, failing)
    assert list((tmp_path / "starts").iterdir()) == []  # no start, no staging directory


def test_no_start_asked_or_distributed_without_one(compose_train, monkeypatch, tmp_path):
    assert ensure_start(compose_train(), _fake_fit([])) is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="build it first in one process"):
        ensure_start(_compose(compose_train, f"start.dir={tmp_path}"), _fake_fit([]))
