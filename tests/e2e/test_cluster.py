"""Cluster runs: the SLURM launcher config, Hydra's submitit launcher on this machine (a job
preempted and requeued continues from its last.ckpt), DDP started by torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from tests.helpers import CONF_DIR, free_port

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


def _launcher(*overrides: str) -> dict:
    """hydra.launcher resolved against the whole composed config, as the launcher sees it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    finally:
        GlobalHydra.instance().clear()


def test_slurm_launcher_asks_one_task_per_gpu_on_every_node():
    launcher = _launcher(
        "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"
    )
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert launcher["max_num_timeout"] > 0  # timed-out jobs are requeued (and resume)
    cpu = _launcher("hydra/launcher=slurm", "trainer=ddp_sim")
    assert (cpu["nodes"], cpu["tasks_per_node"], cpu["gpus_per_node"]) == (1, 2, None)
    listed = _launcher("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=[0,1]")
    assert listed["tasks_per_node"] == 2


def test_slurm_launcher_refuses_a_device_count_it_cannot_submit():
    with pytest.raises(Exception, match=r"needs trainer.devices as a number .* not 'auto'"):
        _launcher("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=auto")


def _task_pid(job_dir: Path) -> int:
    """The process running a submitit job: the one holding its Hydra log open."""
    log_file = str(job_dir / "train.log")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd) == log_file for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no process has {log_file} open")


@pytest.mark.slow
def test_preempted_local_job_is_requeued_and_continues_from_its_last_checkpoint(
    tmp_path, train_cli_args, subprocess_env
):
    """SIGUSR2 is what SLURM sends before preempting a submitit job; the local executor
    requeues it like SLURM does. The rerun, in the same directory, resumes its own last.ckpt."""
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        "train.py",
        "-m",
        "hydra/launcher=submitit_local",
        f"hydra.sweep.dir={sweep}",
        *train_cli_args,
        *SHORT,
        "trainer.max_epochs=6",
        "~callbacks.cluster_log",
        "logger=many",
        "loss.spectral.weight=0,1",
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 600
        while not last.is_file():
            assert process.poll() is None, process.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "job 0 wrote no checkpoint"
            time.sleep(0.05)
        wandb_id = (sweep / "0" / "wandb_id.txt").read_text()
        os.kill(_task_pid(sweep / "0"), signal.SIGUSR2)
        at_signal = torch.load(last, weights_only=True)["global_step"]
        output, _ = process.communicate(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output.decode()[-3000:]
    logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs
    assert at_signal < 12
    for job in ("0", "1"):
        final = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)
        assert final["global_step"] == 12 and final["epoch"] == 5
    assert (sweep / "0" / "resumed_from.txt").read_text().strip() == str(last.resolve())
    assert not (sweep / "1" / "resumed_from.txt").exists()
    assert (sweep / "0" / "wandb_id.txt").read_text() == wandb_id  # the same W&B run
    assert "continuing it (requeued or relaunched)" in (sweep / "0" / "train.log").read_text()


def _history(run_dir: Path) -> list[dict]:
    lines = (run_dir / "clusters" / "history.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_torchrun_ddp_sees_the_global_probe_as_one_process(
    tmp_path, train_cli_args, subprocess_env
):
    """torchrun's rendezvous variables (TorchElastic environment), 2 CPU ranks over gloo: the
    cluster callback's first evaluation (before any step, so the same weights) and the
    validation metrics of the gathered probe equal those of one process."""
    common = [
        *train_cli_args,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "model.probe_size=128",  # the whole validation set: both ranks' halves
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run(
        [sys.executable, "train.py", *common, "trainer=cpu", f"hydra.run.dir={one}"],
        cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        "train.py",
    ]
    ddp = subprocess.run(
        [*torchrun, *common, "trainer=ddp_sim", f"hydra.run.dir={two}"],
        cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ddp.returncode == 0, (ddp.stdout + ddp.stderr)[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in ddp.stdout + ddp.stderr
    start_one, start_two = _history(one)[0], _history(two)[0]
    assert start_one["step"] == start_two["step"] == 0
    first = json.loads((one / "clusters" / "step_0000000" / "modes.json").read_text())
    second = json.loads((two / "clusters" / "step_0000000" / "modes.json").read_text())
    assert first["num_samples"] == second["num_samples"] == 128
    for key in ("spec_diff", "sigma_encoder", "sigma_reference"):
        assert second[key] == pytest.approx(first[key], rel=1e-5), key
    for key in ("spectrum_top", "spectrum_bottom"):
        assert second[key] == pytest.approx(first[key], abs=1e-6), key
