"""A run's starting weights made by an earlier training run, built once (conf/start/).

A start is the trainable encoder as a task-only run on the same data left it: the state a
user's pretrained encoder is in before SPEC-align (it knows what its task taught it, nothing
of the reference). It is built the first time a config asks for it, under
`<start.dir>/<start.name>-<fingerprint>/`, and reaches the module as `model.init_from`:

    encoder.pt   the encoder's state dict (what `model.init_from` loads)
    info.json    the start run's experiment config, final metrics and recipe
    run/         the start run's own output (CSV metrics, last.ckpt)

The fingerprint hashes what the start run's weights depend on (the experiment keys of the
encoder, data, task loss, optimizer and schedule, the seed, epochs and precision), so a
different encoder, dataset or recipe gets its own start and a start is never taken from a run
with other settings.
The directory is renamed into place only when complete: an interrupted build leaves nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from spec_align.utils.logging import get_logger
from spec_align.utils.runs import flatten_config, is_experiment_key

__all__ = ["ENCODER_FILE", "ensure_start", "start_config", "start_dir"]

log = get_logger(__name__)

ENCODER_FILE = "encoder.pt"
INFO_FILE = "info.json"
# Trainer settings that decide how much a run trains: the start run takes the recipe's, not the
# ones of the run that asked for it (a shortened test run must not cache a shortened start).
_FULL_LENGTH = {
    "max_steps": -1,
    "limit_train_batches": None,
    "limit_val_batches": None,
    "fast_dev_run": False,
    "overfit_batches": 0.0,
}


# What a task-only run's weights depend on: not the reference, the alignment terms (off) or
# what validation measures.
_TRAINED_BY = (
    "seed",
    "encoder",
    "data",
    "loss.task",
    "model.optimizer",
    "model.scheduler",
    "trainer.max_epochs",
    "trainer.precision",
)


def start_config(cfg: DictConfig, output_dir: str | Path) -> DictConfig:
    """The config of the start run for `cfg`: the same encoder, data and task, no reference.

    Args:
        cfg: the composed train config whose `start` node names the recipe.
        output_dir: where the start run writes its checkpoints and metrics.

    Returns:
        A train config: task only (no reference, so no penalty and no reference cache), the
        recipe's epochs and seed at full length, the last checkpoint and CSV metrics only.
    """
    start = cfg.start
    run_cfg = copy.deepcopy(cfg)
    OmegaConf.set_struct(run_cfg, False)
    output_dir = str(output_dir)
    run_cfg.merge_with(
        {
            "start": {"epochs": None},
            "seed": start.seed,
            "task_name": "start",
            "ckpt_path": None,
            "ckpt_force": False,
            "train": True,
            "optimized_metric": None,
            "ref": {"encoder": None, "embed_dim": None, "cache_dir": None, "builder": None},
            "paths": {"output_dir": output_dir},
            "trainer": {"max_epochs": start.epochs, "devices": 1, "num_nodes": 1, **_FULL_LENGTH},
        }
    )
    if "strategy" in run_cfg.trainer:
        run_cfg.trainer.strategy = "auto"  # one device: the start is built by one process
    run_cfg.model.init_from = None
    run_cfg.loss.spectral.weight = 0.0  # no reference: the alignment term is off anyway
    if "anchor" in run_cfg.loss:
        run_cfg.loss.anchor.weight = 0.0
    run_cfg.callbacks = {
        "last_checkpoint": {
            "_target_": "spec_align.callbacks.LastCheckpoint",
            "dirpath": f"{output_dir}/checkpoints",
        }
    }
    run_cfg.logger = {
        "csv": {
            "_target_": "lightning.pytorch.loggers.CSVLogger",
            "save_dir": output_dir,
            "name": "csv",
            "version": "",
        }
    }
    OmegaConf.set_struct(run_cfg, True)
    return run_cfg


def _fingerprint(run_cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    trained_by = {}
    for key in _TRAINED_BY:
        node = OmegaConf.select(run_cfg, key)
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        # Data loading keys (workers, where the files are) do not change the weights.
        trained_by.update(
            (k, v)
            for k, v in flatten_config(value, f"{key}.").items()
            if key != "data" or is_experiment_key(k)
        )
    text = json.dumps(trained_by, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12], trained_by


def start_dir(cfg: DictConfig) -> Path:
    """Where the start that `cfg` asks for lives (built or not)."""
    fingerprint, _ = _fingerprint(start_config(cfg, "unused"))
    return Path(cfg.start.dir) / f"{cfg.start.name}-{fingerprint}"


def ensure_start(
    cfg: DictConfig, fit: Callable[[DictConfig], tuple[dict[str, float], Any]]
) -> Path | None:
    """The encoder weights `cfg.start` asks for, built with `fit` (the train entry) if missing.

    Args:
        cfg: the composed train config.
        fit: runs a train config and returns its final metrics (`spec_align.train.run`).

    Returns:
        The path of the start's encoder state dict, or None when `cfg` asks for no start.

    Raises:
        RuntimeError: the start is missing and this is one process of several (build it
            once, in a single process, first).
    """
    start = cfg.get("start")
    if start is None or start.get("epochs") is None:
        return None
    target = start_dir(cfg)
    weights = target / ENCODER_FILE
    if weights.is_file():
        return weights
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError(
            f"the start {target} is missing, and building it in every process would train it "
            "once per process: build it first in one process (the same command with "
            "trainer=default train=false), then launch the distributed run"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        run_cfg = start_config(cfg, staging / "run")
        fingerprint, experiment = _fingerprint(run_cfg)
        log.info(
            "building the start %s: a task-only run of %d epochs (once; later runs reuse it)",
            target,
            start.epochs,
        )
        # The start run seeds itself; this run's random state must not depend on whether the
        # start existed already.
        with torch.random.fork_rng(devices=[]):
            metrics, _ = fit(run_cfg)
        checkpoint = torch.load(
            staging / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
        )
        encoder = {
            key.removeprefix("encoder."): value
            for key, value in checkpoint["state_dict"].items()
            if key.startswith("encoder.")
        }
        torch.save(encoder, staging / ENCODER_FILE)
        info = {
            "fingerprint": fingerprint,
            "experiment": experiment,
            "epochs": start.epochs,
            "final_metrics": metrics,
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=1, default=str) + "\n")
        try:
            os.rename(staging, target)
        except OSError:
            # Another job finished the same start first: its copy is the one used.
            if not weights.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return weights
