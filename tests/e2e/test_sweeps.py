"""Multirun: one output directory and one W&B run per job, grouped, no run leaking into another."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_multirun_gives_one_dir_and_one_wandb_run_per_job(
    tmp_path, train_cli_args, subprocess_env
):
    command = [
        sys.executable,
        "train.py",
        "-m",
        *train_cli_args,
        "loss.spectral.weight=0,1",
        "seed=1,2",
        "logger=wandb",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "task_name=sweep",
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "logs" / "sweep" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]

    settings, run_ids = set(), set()
    for job in jobs:
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        settings.add((cfg.loss.spectral.weight, cfg.seed))
        assert cfg.logger.wandb.group == "sweep"
        run_id = (job / "wandb_id.txt").read_text().strip()
        runs = list((job / "wandb").glob("offline-run-*"))
        assert [r.name.rsplit("-", 1)[1] for r in runs] == [run_id], "exactly this job's run"
        assert (job / "checkpoints" / "last.ckpt").is_file()
        run_ids.add(run_id)
    assert settings == {(0.0, 1), (0.0, 2), (1.0, 1), (1.0, 2)}
    assert len(run_ids) == 4
