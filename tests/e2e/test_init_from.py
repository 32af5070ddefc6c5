"""`model.init_from`: a run starts from an earlier run's checkpoint or a state_dict file;
resume and eval do not need the file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from spec_align.modules.init_weights import EncoderWeightsError, read_encoder_state
from spec_align.train import ConfigError, evaluate, run
from spec_align.utils.resolvers import launch_dir
from tests.helpers import CONF_DIR

SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.max_epochs=1"]
FROZEN = "model.optimizer.lr=0.0"  # AdamW (decoupled decay scaled by lr) leaves weights as is


def _encoder_state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.encoder.state_dict().items()}


def _assert_same(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def _other_weights(cfg, path: Path, seed: int = 123) -> dict[str, torch.Tensor]:
    """A differently initialised encoder of the same config, saved as a plain state_dict."""
    torch.manual_seed(seed)
    state = instantiate(cfg.model.encoder).state_dict()
    torch.save(state, path)
    return state


@pytest.mark.slow
def test_init_from_an_earlier_runs_checkpoint(compose_train, tmp_path):
    first_dir = tmp_path / "first"
    _, first = run(compose_train(*SHORT, output_dir=first_dir))
    ckpt = first_dir / "checkpoints" / "last.ckpt"
    expected = read_encoder_state(ckpt)
    cfg = compose_train(*SHORT, FROZEN, f"model.init_from={ckpt}", output_dir=tmp_path / "b")
    _, second = run(cfg)
    module = second["model"]
    _assert_same(_encoder_state(module), expected)
    assert module.hparams.init_from == str(ckpt.resolve())
    assert module.init_source.path == str(ckpt.resolve())
    # Not trivially equal: without init_from the run starts from the seeded fresh init.
    L.seed_everything(cfg.seed)
    fresh = instantiate(cfg.model.encoder).state_dict()
    assert not torch.equal(fresh["model.visual.proj"], expected["model.visual.proj"])


def test_init_from_a_state_dict_relative_to_the_launch_directory(
    compose_train, tmp_path, monkeypatch
):
    cfg = compose_train(*SHORT, FROZEN)
    weights = tmp_path / "weights.pt"
    expected = _other_weights(cfg, weights)
    relative = os.path.relpath(weights, launch_dir())
    monkeypatch.chdir(tmp_path / "output")  # the job may run elsewhere: not cwd-relative
    _, objects = run(compose_train(*SHORT, FROZEN, f"model.init_from={relative}"))
    _assert_same(_encoder_state(objects["model"]), expected)
    # Recorded in the run: the file in the hparams, its hash beside it.
    (hparams,) = (tmp_path / "output" / "csv").glob("**/hparams.yaml")
    recorded = OmegaConf.load(hparams)
    digest = objects["model"].init_source.sha256
    assert recorded.init_from == str(weights.resolve()) and recorded.init_from_sha256 == digest
    assert digest == hashlib.sha256(weights.read_bytes()).hexdigest()[:12]


class _Snapshots(L.Callback):
    """The encoder's weights when the sanity check and the fit start."""

    def __init__(self) -> None:
        self.states: dict[str, dict] = {}

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self.states["sanity_check"] = _encoder_state(pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        self.states["fit_start"] = _encoder_state(pl_module)


def test_init_weights_are_in_place_before_anything_sees_the_encoder(compose_train, tmp_path):
    """Sanity check and fit start see them; a second fit continues from the trained weights."""
    cfg = compose_train()
    weights = tmp_path / "weights.pt"
    expected = _other_weights(cfg, weights)
    module = instantiate(cfg.model, init_from=str(weights))
    built = _encoder_state(module)  # not loaded at construction
    assert not torch.equal(built["model.visual.proj"], expected["model.visual.proj"])

    def fit() -> _Snapshots:
        snapshots = _Snapshots()
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=1,
            limit_train_batches=2,
            limit_val_batches=1,
            num_sanity_val_steps=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[snapshots],
        )
        trainer.fit(module, datamodule=instantiate(cfg.data))
        return snapshots

    first = fit()
    _assert_same(first.states["sanity_check"], expected)
    _assert_same(first.states["fit_start"], expected)
    trained = _encoder_state(module)
    second = fit()
    _assert_same(second.states["fit_start"], trained)


@pytest.mark.slow
def test_resume_and_eval_do_not_apply_or_need_init_from(compose_train, tmp_path, data_root):
    cfg = compose_train(*SHORT)
    weights = tmp_path / "weights.pt"
    _other_weights(cfg, weights)
    first_dir = tmp_path / "first"
    init = f"model.init_from={weights}"
    run(compose_train(*SHORT, init, output_dir=first_dir))
    ckpt = first_dir / "checkpoints" / "last.ckpt"
    weights.unlink()  # the init file has moved since

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        eval_cfg = compose(
            "eval",
            overrides=[
                f"ckpt_path={ckpt}",
                f"paths.root_dir={tmp_path}",
                f"paths.data_dir={data_root}",
                f"paths.log_dir={tmp_path / 'logs'}",
                f"paths.output_dir={tmp_path / 'eval'}",
                "accelerator=cpu",
            ],
        )
    assert "val/probe/texture_knn" in evaluate(eval_cfg)

    resumed_cfg = compose_train(
        *SHORT[:-1], "trainer.max_epochs=2", init, f"ckpt_path={ckpt}", output_dir=tmp_path / "r"
    )
    _, resumed = run(resumed_cfg)
    assert resumed["trainer"].global_step == 4
    assert resumed["model"].init_source is None


def test_init_from_errors(compose_train, tmp_path):
    with pytest.raises(ConfigError, match=r"model.init_from=.*none.pt is not a file"):
        run(compose_train(*SHORT, f"model.init_from={tmp_path / 'none.pt'}"))
    cfg = compose_train(*SHORT)
    state = _other_weights(cfg, tmp_path / "other.pt")
    del state["model.visual.proj"]
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(EncoderWeightsError, match=r"missing \(1\): model.visual.proj"):
        run(compose_train(*SHORT, f"model.init_from={tmp_path / 'other.pt'}"))
