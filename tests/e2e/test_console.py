"""What `python train.py ...` prints and writes: no third-party noise that does not apply, and
debug configs that do what they say."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import SMALL_SYNTHETIC

ROOT = Path(__file__).resolve().parents[2]

# Small and fast, as a user would shrink a run; no override of what a debug config sets.
SMALL = [
    "encoder=tiny",
    "ref=tiny",
    "data=synthetic",
    f"data.dataset_kwargs={SMALL_SYNTHETIC}",
    "data.batch_size=32",
    "data.num_workers=0",
    "model.probe_size=64",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture
def small_env(user_env: dict[str, str], data_root: Path) -> dict[str, str]:
    """A user's environment with the session's small synthetic data set."""
    return dict(user_env, DATA_ROOT=str(data_root))


def _train(args: list[str], env: dict[str, str], log_dir: Path) -> str:
    """Run `python train.py <args>` in the repository root; its console output (both streams)."""
    result = subprocess.run(
        [sys.executable, "train.py", *args, f"paths.log_dir={log_dir}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:]
    return result.stdout


def _run_dir(log_dir: Path) -> Path:
    (run_dir,) = log_dir.glob("*/runs/*")
    return run_dir


@pytest.mark.slow
def test_fdr_prints_no_inapplicable_notices_and_writes_no_checkpoint(tmp_path, small_env):
    log_dir = tmp_path / "logs"
    output = _train(["debug=fdr", *SMALL], small_env, log_dir)

    assert "fast_dev_run" in output  # Lightning's own info lines are captured and kept
    for notice in ("litlogger", "LeafSpec", "limit_train_batches", "limit_val_batches"):
        assert notice not in output
    assert "IterableDataset` has `__len__`" not in output
    assert "Parsing model identifier" not in output  # open_clip's INFO lines
    # open_clip's warnings still show: the filter drops its INFO lines only.
    assert "No pretrained weights loaded for model 'tiny_clip'" in output

    run_dir = _run_dir(log_dir)
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert not list(tmp_path.rglob("*.ckpt"))
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / "csv").exists()  # logger=many: neither csv nor W&B output
    assert not (run_dir / "wandb").exists()


@pytest.mark.slow
def test_ddp_sim_prints_no_sync_dist_advice(tmp_path, small_env):
    args = [
        "trainer=ddp_sim",
        *SMALL,
        "logger=csv",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
    ]
    output = _train(args, small_env, tmp_path / "logs")

    assert "MEMBER: 2/2" in output  # both processes ran
    assert "sync_dist" not in output
    assert "LeafSpec" not in output  # also silenced in the second process


@pytest.mark.slow
def test_overfit_drives_the_training_loss_far_down(tmp_path, small_env):
    # A training split of exactly one batch: every epoch sees the same samples.
    one_batch = "data.dataset_kwargs={num_train: 32, num_val: 128, samples_per_shard: 32}"
    log_dir = tmp_path / "logs"
    output = _train(
        ["debug=overfit", *SMALL, one_batch, "logger=csv"], log_dir=log_dir, env=small_env
    )

    assert "smaller than the logging interval" not in output
    with open(_run_dir(log_dir) / "csv" / "metrics.csv", newline="") as file:
        losses = [
            float(row["train/loss_epoch"])
            for row in csv.DictReader(file)
            if row["train/loss_epoch"]
        ]
    assert losses[-1] < 0.5 * losses[0], losses
