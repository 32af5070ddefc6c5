"""Checkpoints: last.ckpt is the latest state, saves are atomic, resume and eval are checked."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from spec_align.train import ConfigError, evaluate, resolve_ckpt_path, run
from spec_align.utils.checkpoint_io import AtomicCheckpointIO, checkpoint_problem
from tests.e2e.test_eval import _eval_cfg
from tests.helpers import CONF_DIR

SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


class _WorseEachEpoch(L.LightningModule):
    """Logs val/loss = epoch, so the best checkpoint is the first epoch's."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)))

    val_dataloader = train_dataloader


def _callbacks(dirpath: Path) -> list:
    """The project's default checkpoint callbacks, monitoring val/loss."""
    nodes = [
        OmegaConf.load(CONF_DIR / "callbacks" / f"{name}.yaml")[name]
        for name in ("model_checkpoint", "last_checkpoint")
    ]
    for node in nodes:
        node.dirpath = str(dirpath)
    nodes[0].monitor = "val/loss"
    return [instantiate(node) for node in nodes]


def test_last_ckpt_holds_the_latest_step_when_the_best_was_earlier(tmp_path):
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=_callbacks(tmp_path),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(_WorseEachEpoch())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    best = torch.load(tmp_path / "epoch_000.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 24)
    assert best["global_step"] == 8


class _Unpicklable:
    def __reduce__(self):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path):
    io, target = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"weights": torch.arange(10_000.0)}, target)
    before = target.read_bytes()
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"weights": torch.zeros(10_000), "late": _Unpicklable()}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no partial file left"
    assert checkpoint_problem(target) is None


def test_truncated_last_ckpt_resumes_from_the_newest_that_loads(compose_train, tmp_path, caplog):
    runs = tmp_path / "logs" / "train" / "runs"
    first = runs / "first"
    run(compose_train(*SHORT, "trainer.max_epochs=2", output_dir=first))
    last = first / "checkpoints" / "last.ckpt"
    (best,) = (first / "checkpoints").glob("epoch_*.ckpt")
    data = last.read_bytes()
    last.write_bytes(data[: len(data) * 2 // 3])  # what a full disk left before atomic saves
    assert checkpoint_problem(last) is not None

    cfg = compose_train(*SHORT, "trainer.max_epochs=3", "ckpt_path=last", output_dir=runs / "b")
    with caplog.at_level(logging.WARNING, logger="spec_align.train"):
        _, objects = run(cfg)
    assert f"{last} (" in caplog.text, "the skipped checkpoint is named"
    assert (runs / "b" / "resumed_from.txt").read_text().strip() == str(best.resolve())
    assert objects["trainer"].global_step == 6, "continued from the best epoch's end to epoch 3"


def test_ckpt_path_last_resumes_the_run_of_the_same_experiment(compose_train, tmp_path):
    runs = tmp_path / "logs" / "train" / "runs"
    run(compose_train(*SHORT, "loss.spectral.weight=0", output_dir=runs / "lambda0"))
    run(compose_train(*SHORT, "loss.spectral.weight=1", output_dir=runs / "lambda1"))

    # The newer lambda=1 run is not this experiment: the lambda=0 one is resumed.
    cfg = compose_train(*SHORT, "loss.spectral.weight=0", "ckpt_path=last", output_dir=runs / "c")
    resumed = Path(resolve_ckpt_path(cfg))
    assert resumed == (runs / "lambda0" / "checkpoints" / "last.ckpt").resolve()

    cfg = compose_train(*SHORT, "loss.spectral.weight=3", "ckpt_path=last", output_dir=runs / "d")
    with pytest.raises(ConfigError, match=r"differs in: loss\.spectral\.weight: 1 -> 3") as err:
        resolve_ckpt_path(cfg)
    assert "ckpt_force=true" in str(err.value)

    other = runs / "lambda1" / "checkpoints" / "last.ckpt"
    mismatch = [*SHORT, "loss.spectral.weight=0", f"ckpt_path={other}"]
    with pytest.raises(ConfigError, match=r"different experiment config.*weight: 1 -> 0"):
        resolve_ckpt_path(compose_train(*mismatch, output_dir=runs / "e"))
    forced = compose_train(*mismatch, "ckpt_force=true", output_dir=runs / "f")
    assert resolve_ckpt_path(forced) == str(other.resolve())


def test_a_foreign_run_config_beside_a_checkpoint_runs_nothing(compose_train, tmp_path, data_root):
    run_dir = tmp_path / "run"
    # Two validation batches: the whole probe set, as eval sees it.
    short = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=2"]
    metrics, _ = run(compose_train(*short, "trainer.max_epochs=1", output_dir=run_dir))
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    planted = tmp_path / "planted.txt"
    hydra_dir = run_dir / ".hydra"

    # A config.yaml that names code is never instantiated: the run is composed again from
    # the project's configs and its overrides.
    evil = {"data": {"_target_": "builtins.open", "_args_": [str(planted), "w"]}}
    OmegaConf.save(
        OmegaConf.merge(OmegaConf.load(hydra_dir / "config.yaml"), evil), hydra_dir / "config.yaml"
    )
    evaluated = evaluate(_eval_cfg(tmp_path, data_root, f"ckpt_path={checkpoint}"))
    assert not planted.exists()
    assert evaluated["val/spec_diff"] == pytest.approx(metrics["val/spec_diff"], abs=1e-6)

    overrides = list(OmegaConf.load(hydra_dir / "overrides.yaml"))
    for bad in (
        f"+data.extra={{_target_: builtins.open, _args_: [{planted}, w]}}",
        "data._target_=builtins.print",
        "model.encoder=\"${oc.create:'{_target_: builtins.print}'}\"",
        "hydra.searchpath=[file:///tmp]",
    ):
        OmegaConf.save(OmegaConf.create([*overrides, bad]), hydra_dir / "overrides.yaml")
        with pytest.raises(ConfigError, match="names code or Hydra settings"):
            evaluate(_eval_cfg(tmp_path, data_root, f"ckpt_path={checkpoint}"))
        assert not planted.exists()
