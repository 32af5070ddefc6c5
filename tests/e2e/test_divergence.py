"""Divergence: a non-finite loss, weight or embedding stops the run with a message naming the
step and the term, and no checkpoint with NaN or inf tensors is ever written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback, Trainer

from spec_align.losses import DivergenceError
from spec_align.train import run

REPO = Path(__file__).resolve().parents[2]
SHORT = [
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
]


def _nonfinite(obj, name: str = "") -> list[str]:
    """Names of the floating-point tensors with NaN or inf inside a loaded checkpoint."""
    if isinstance(obj, torch.Tensor):
        return [name] if obj.is_floating_point() and not obj.isfinite().all() else []
    if isinstance(obj, dict):
        return [n for key, value in obj.items() for n in _nonfinite(value, f"{name}.{key}")]
    if isinstance(obj, list | tuple):
        return [n for i, value in enumerate(obj) for n in _nonfinite(value, f"{name}[{i}]")]
    return []


def _checkpoints(root: Path) -> dict[Path, list[str]]:
    """Every checkpoint file under root, with its non-finite weights, buffers and optimizer
    state (callback states hold infinite sentinels, e.g. ModelCheckpoint's kth_value)."""
    found = {}
    for path in sorted(root.rglob("*.ckpt")):
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        found[path] = _nonfinite(checkpoint["state_dict"], "state_dict")
        found[path] += _nonfinite(checkpoint.get("optimizer_states", []), "optimizer_states")
    return found


def _diverge(module) -> None:
    """NaN in every encoder weight, as a diverged optimizer step leaves them."""
    with torch.no_grad():
        for parameter in module.encoder.parameters():
            parameter.fill_(float("nan"))


class _PlantNaN(Callback):
    """Stands in for an optimizer step that leaves NaN weights behind a finite loss."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            _diverge(pl_module)


@pytest.mark.slow
def test_users_command_stops_at_the_nonfinite_loss(subprocess_env):
    """The issue's command, as typed: it exited 0 and saved a last.ckpt of NaN weights."""
    logs = REPO / "logs"
    before = set(logs.rglob("*.ckpt"))
    command = (
        f"{sys.executable} train.py model.optimizer.lr=1e9 loss.spectral.weight=0 "
        "debug=limit trainer.limit_val_batches=0 '~callbacks.cluster_log'"
    )
    result = subprocess.run(
        command, shell=True, cwd=REPO, env=subprocess_env, capture_output=True, text=True
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "error: training diverged at step 1" in output, output[-3000:]
    assert "Traceback" not in output
    assert "the task term train/task/contrastive_loss is non-finite" in output
    assert "Last good checkpoint: none" in output
    new = {path: bad for path, bad in _checkpoints(logs).items() if path not in before}
    assert not [path for path, bad in new.items() if bad], new


def test_nonfinite_loss_stops_the_run_before_any_checkpoint(compose_train, tmp_path):
    cfg = compose_train(
        *SHORT, "model.optimizer.lr=1e9", "loss.spectral.weight=0", "~callbacks.cluster_log"
    )
    task_term = r"at step 1: the task term train/task/contrastive_loss"
    with pytest.raises(DivergenceError, match=task_term):
        run(cfg)
    assert _checkpoints(tmp_path) == {}


def test_weights_diverging_after_a_finite_loss_keep_the_last_good_checkpoint(
    compose_train, tmp_path
):
    """NaN weights after the last optimizer step of epoch 1 (step 6), its loss finite: epoch
    1's checkpoint is refused and epoch 0's last.ckpt, named in the message, stays as it was."""
    cfg = compose_train(
        *SHORT,
        "trainer.limit_val_batches=0",
        "callbacks.model_checkpoint.monitor=null",  # no val metric: keep the latest epoch
        "~callbacks.cluster_log",
    )
    last = tmp_path / "output" / "checkpoints" / "last.ckpt"
    with pytest.raises(DivergenceError, match="by step 6: not writing a checkpoint") as error:
        _fit(cfg, _PlantNaN(at_step=6))
    assert "encoder." in str(error.value)
    assert f"Last good checkpoint: {last}" in str(error.value)
    checkpoints = _checkpoints(tmp_path)
    assert last in checkpoints and not [p for p, bad in checkpoints.items() if bad], checkpoints
    assert torch.load(last, weights_only=False)["global_step"] == 3


def test_a_resumed_run_names_the_checkpoint_it_resumed_from(compose_train, tmp_path):
    """A resumed run writes to a new directory; until it has written one, the good checkpoint
    is the one it started from."""
    first = tmp_path / "first"
    run(compose_train(*SHORT, "trainer.max_epochs=1", "~callbacks.cluster_log", output_dir=first))
    start = first / "checkpoints" / "last.ckpt"
    cfg = compose_train(*SHORT, "~callbacks.cluster_log", output_dir=tmp_path / "resumed")
    with pytest.raises(DivergenceError, match="by step 4: the encoder's output") as error:
        _fit(cfg, _PlantNaN(at_step=4), ckpt_path=str(start))
    assert f"resume with ckpt_path={start}" in str(error.value)


def _fit(cfg, extra_callback: Callback, ckpt_path: str | None = None) -> None:
    """As run() fits, with one more callback."""
    callbacks = [instantiate(node) for node in cfg.callbacks.values() if "_target_" in node]
    trainer = instantiate(
        cfg.trainer, callbacks=[*callbacks, extra_callback], logger=instantiate(cfg.logger.csv)
    )
    trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data), ckpt_path=ckpt_path)


def test_validation_reports_a_diverged_encoder_not_bad_data(compose_train):
    """NaN weights used to surface as "x contains NaN ... remove or repair those samples"."""
    cfg = compose_train()
    module = instantiate(cfg.model)
    _diverge(module)
    trainer = Trainer(
        accelerator="cpu", limit_val_batches=2, logger=False, enable_progress_bar=False
    )
    with pytest.raises(DivergenceError, match="encoder's output is non-finite") as error:
        trainer.validate(module, datamodule=instantiate(cfg.data))
    assert "the validation probe" in str(error.value)
    assert "weight tensors are NaN or inf (encoder." in str(error.value)


def test_cluster_probe_reports_a_diverged_encoder(compose_train):
    cfg = compose_train("trainer.num_sanity_val_steps=0", "trainer.limit_train_batches=1")
    module = instantiate(cfg.model)
    _diverge(module)
    callbacks = [instantiate(cfg.callbacks.cluster_log)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    with pytest.raises(DivergenceError, match="non-finite on .* rows of the cluster probe"):
        trainer.fit(module, datamodule=instantiate(cfg.data))


def test_a_finite_run_is_unaffected(compose_train, tmp_path):
    """The cosine kernel never fits a bandwidth: its marker used to be a NaN buffer."""
    metrics, objects = run(compose_train(*SHORT, "loss=cosine", "~callbacks.cluster_log"))
    assert objects["trainer"].global_step == 6
    checkpoints = _checkpoints(tmp_path / "output")
    assert len(checkpoints) >= 2, checkpoints
    assert not [p for p, bad in checkpoints.items() if bad], checkpoints


@pytest.mark.slow
def test_ddp_ranks_stop_together_at_the_nonfinite_loss(tmp_path, train_cli_args, subprocess_env):
    """Both ranks raise at the same step: none waits in a collective for the other."""
    command = [
        sys.executable,
        "train.py",
        *train_cli_args,
        "trainer=ddp_sim",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "model.optimizer.lr=1e9",
        "loss.spectral.weight=0",
        "~callbacks.cluster_log",
        "task_name=ddp_divergence",
    ]
    # The timeout only turns a hang into a failure.
    result = subprocess.run(
        command, cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    expected = "training diverged at step 1: the task term train/task/contrastive_loss"
    assert expected in output, output[-3000:]
    assert not [path for path, bad in _checkpoints(tmp_path).items() if bad]
