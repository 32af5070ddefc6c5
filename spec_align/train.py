"""Training entry point: `run(cfg)` builds everything from a composed Hydra config and fits.

This is the only library module that sees a DictConfig; everything it builds gets plain
keyword arguments through `hydra.utils.instantiate`.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from spec_align.data.shards import check_shard_count, expand_shards
from spec_align.utils.logging import get_logger, log_config

__all__ = [
    "ConfigError",
    "evaluate",
    "resolve_ckpt_path",
    "run",
    "validate_config",
    "world_size_of",
]

log = get_logger(__name__)

WANDB_ID_FILE = "wandb_id.txt"  # in the run's output dir: lets a resumed run continue the W&B run


class ConfigError(ValueError):
    """The composed config cannot be run; the message lists every problem found."""


def world_size_of(trainer_cfg: DictConfig) -> int:
    """Number of processes the trainer config asks for (devices x num_nodes).

    "auto"/-1 devices count the visible GPUs when the accelerator may be a GPU, else 1.
    """
    devices = trainer_cfg.get("devices", "auto")
    nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    if isinstance(devices, list | ListConfig):
        count = len(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    elif (
        isinstance(devices, int | str) and str(devices).lstrip("-").isdigit() and int(devices) > 0
    ):
        count = int(devices)
    else:
        accelerator = str(trainer_cfg.get("accelerator", "auto"))
        gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        count = torch.cuda.device_count() if gpu else 1
    return count * nodes


def validate_config(cfg: DictConfig) -> None:
    """Check the composed config before anything is built; raise `ConfigError` listing problems.

    Checks: shard paths exist, shards >= workers x world size, global batch sizes divisible by
    the world size, a precomputed reference has a cache and the deterministic view, the run
    has something to train, `ckpt_path` exists, the optimized metric is a train/ or val/ key.
    """
    problems: list[str] = []
    data, world = cfg.data, world_size_of(cfg.trainer)
    for key in ("batch_size", "val_batch_size"):
        size = data.get(key)
        if size is not None and size % world:
            problems.append(
                f"data.{key}={size} is the global batch and must be divisible by the world size "
                f"{world} (trainer.devices x trainer.num_nodes); "
                f"try {max(size // world, 1) * world}"
            )
    if data.get("train_shards") is None and data.get("dataset") is None:
        problems.append(
            "data.train_shards is required (a shard pattern) unless data.dataset is set"
        )
    for split in ("train", "val"):
        spec = data.get(f"{split}_shards")
        if spec is None:
            continue
        spec = list(spec) if isinstance(spec, ListConfig) else spec
        try:
            urls = expand_shards(spec)
            check_shard_count(len(urls), int(data.get("num_workers", 0)), world, split)
        except (FileNotFoundError, ValueError) as err:
            problems.append(f"data.{split}_shards: {err}")

    ref = cfg.ref
    precomputed = ref.get("encoder") is None and ref.get("embed_dim") is not None
    if precomputed and data.get("ref_cache") is None:
        problems.append(
            "the reference is precomputed (ref.encoder=null) but data.ref_cache is null; set "
            "ref.cache_dir (or data.ref_cache) to a cache made by scripts/precompute_ref.py"
        )
    if precomputed and data.get("train_transform") != data.get("eval_transform"):
        problems.append(
            "a precomputed reference embeds the deterministic eval view, so training must see "
            "that same view: set data.train_transform=${data.eval_transform} (no augmentation)"
        )

    task, spectral = cfg.loss.task, cfg.loss.spectral
    task_weight = task.get("weight", 1.0) if "NoTaskLoss" not in task._target_ else 0.0
    has_ref = ref.get("encoder") is not None or ref.get("embed_dim") is not None
    if task_weight == 0 and (not has_ref or spectral.weight == 0):
        problems.append(
            "nothing to train: task=none (or weight 0) needs a reference and "
            "loss.spectral.weight > 0"
        )
    if task_weight == 0 and spectral.get("every_n_steps", 1) != 1:
        problems.append("task=none trains on the penalty alone: loss.spectral.every_n_steps=1")

    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path not in (None, "last") and not Path(ckpt_path).is_file():
        problems.append(f"ckpt_path {ckpt_path} is not a file (or use ckpt_path=last)")
    metric = cfg.get("optimized_metric")
    if metric is not None and not str(metric).startswith(("train/", "val/")):
        problems.append(f"optimized_metric={metric} must be a train/... or val/... key")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path`, with "last" meaning the newest checkpoints/last.ckpt of this task's runs."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path != "last":
        return ckpt_path
    root = Path(cfg.paths.log_dir) / cfg.task_name
    candidates = sorted(root.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError(f"ckpt_path=last: no checkpoints/last.ckpt under {root}")
    return str(candidates[-1])


def _ensure_ref_cache(cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """Build the reference cache of `ref.builder` over the data once, if it does not exist.

    The builder embeds exactly what the module's reference would: the datamodule's eval view
    through the same `ViewAdapter` (resize + the builder's normalisation).
    """
    from spec_align.data.ref_cache import compute_ref_cache
    from spec_align.encoders.base import FrozenEncoder
    from spec_align.modules import ViewAdapter

    builder_cfg, cache_dir = cfg.ref.get("builder"), cfg.ref.get("cache_dir")
    if builder_cfg is None or cache_dir is None or (Path(cache_dir) / "keys.json").exists():
        return
    if rank_zero_only.rank != 0:
        raise ConfigError(f"reference cache {cache_dir} is missing on rank {rank_zero_only.rank}")
    builder = instantiate(builder_cfg)
    network = nn.Sequential(ViewAdapter.for_encoder(builder), FrozenEncoder(builder))
    datamodule.prepare_data()
    datamodule.setup("fit")
    urls = datamodule.train_urls + datamodule.val_urls
    log.info("building reference cache %s over %d shards", cache_dir, len(urls))
    # Written beside the target and renamed: an interrupted build leaves no partial cache.
    tmp = f"{cache_dir}.tmp-{os.getpid()}"
    try:
        compute_ref_cache(
            urls,
            network,
            tmp,
            transform=datamodule.eval_transform,
            meta={"builder": OmegaConf.to_container(builder_cfg, resolve=True)},
        )
        os.replace(tmp, cache_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _wandb_overrides(cfg: DictConfig, ckpt_path: str | None) -> dict[str, Any]:
    """W&B run id (new, or the resumed run's, persisted beside its checkpoints) and resume."""
    output_dir = Path(cfg.paths.output_dir)
    previous = Path(ckpt_path).parent.parent / WANDB_ID_FILE if ckpt_path else None
    if previous is not None and previous.is_file():
        run_id, resume = previous.read_text().strip(), "allow"
    else:
        run_id, resume = cfg.logger.wandb.get("id") or secrets.token_hex(6), None
    if rank_zero_only.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / WANDB_ID_FILE).write_text(run_id + "\n")
    return {"id": run_id, "resume": resume}


def _instantiate_dict(nodes: DictConfig | None, overrides: dict | None = None) -> list[Any]:
    """Objects of a keyed group (callbacks, logger); entries without _target_ are skipped."""
    overrides = overrides or {}
    return [
        instantiate(node, **overrides.get(key, {}))
        for key, node in (nodes or {}).items()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


def _finish_wandb() -> None:
    # One W&B run per job: a multirun's next job must not log into this one.
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def run(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Validate the config, build data, module, callbacks, loggers and trainer, then fit.

    Args:
        cfg: the composed train config (conf/train.yaml).

    Returns:
        The final logged metrics (floats) and the built objects by name.
    """
    validate_config(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    ckpt_path = resolve_ckpt_path(cfg)
    world = world_size_of(cfg.trainer)

    val_batch = cfg.data.get("val_batch_size")
    datamodule = instantiate(
        cfg.data,
        batch_size=cfg.data.batch_size // world,
        val_batch_size=None if val_batch is None else val_batch // world,
    )
    # Building the cache draws random numbers (the builder's init); it must not shift the
    # model's initialisation, or a run's result would depend on whether the cache existed.
    with torch.random.fork_rng(devices=[]):
        _ensure_ref_cache(cfg, datamodule)
    module = instantiate(cfg.model)
    metric = cfg.get("optimized_metric")
    if metric is not None and metric not in module.metric_names:
        raise ConfigError(
            f"optimized_metric={metric} is not logged by this configuration; it logs "
            f"{module.metric_names}"
        )

    logger_cfg = cfg.get("logger") or {}
    overrides = {"wandb": _wandb_overrides(cfg, ckpt_path)} if "wandb" in logger_cfg else {}
    try:
        callbacks = _instantiate_dict(cfg.get("callbacks"))
        loggers = _instantiate_dict(logger_cfg, overrides)
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        objects = {
            "cfg": cfg,
            "datamodule": datamodule,
            "model": module,
            "callbacks": callbacks,
            "loggers": loggers,
            "trainer": trainer,
        }
        log_config(trainer, OmegaConf.to_container(cfg, resolve=True))
        if cfg.get("train", True):
            log.info("fitting (ckpt_path=%s)", ckpt_path)
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    finally:
        _finish_wandb()
    return metrics, objects


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Validate a checkpoint with the data and model of the run that wrote it.

    The run's saved `.hydra/config.yaml` (beside `checkpoints/`) rebuilds datamodule and module,
    with this config's paths; the reference is rebuilt from it as on resume (seeded like the
    run, so a random-init reference comes out the same).

    Args:
        cfg: the composed eval config (conf/eval.yaml): ckpt_path, run_config, paths.

    Returns:
        The validation metrics (floats).
    """
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise ConfigError(f"ckpt_path {ckpt_path} is not a file")
    run_config = Path(cfg.get("run_config") or ckpt_path.parent.parent / ".hydra" / "config.yaml")
    if not run_config.is_file():
        raise ConfigError(f"no run config at {run_config}; pass run_config=<its config.yaml>")
    run_cfg = OmegaConf.load(run_config)
    run_cfg.paths = cfg.paths
    if run_cfg.get("seed") is not None:
        # As in run(): a random-init reference (not in the checkpoint) is rebuilt identically.
        L.seed_everything(run_cfg.seed, workers=True)
    datamodule = instantiate(run_cfg.data)  # one process: the global batch size as is
    module = instantiate(run_cfg.model)
    trainer = L.Trainer(
        accelerator=cfg.get("accelerator", "auto"),
        devices=1,
        precision=run_cfg.trainer.get("precision", "32-true"),
        logger=False,
        enable_progress_bar=False,
    )
    (metrics,) = trainer.validate(module, datamodule=datamodule, ckpt_path=str(ckpt_path))
    return {k: float(v) for k, v in metrics.items()}
