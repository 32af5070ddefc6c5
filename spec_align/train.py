"""Training entry point: `run(cfg)` builds everything from a composed Hydra config and fits.

This is the only library module that sees a DictConfig; everything it builds gets plain
keyword arguments through `hydra.utils.instantiate`.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

from spec_align.data.shards import check_shard_count, expand_shards
from spec_align.encoders.hub import WeightsUnavailableError
from spec_align.utils.logging import get_logger, log_config
from spec_align.utils.resolvers import launch_dir
from spec_align.utils.runs import (
    CONFIG_FILE,
    OVERRIDES_FILE,
    RunDirError,
    checked_overrides,
    experiment_differences,
    find_resumable,
    own_checkpoint,
    run_config_of,
)

__all__ = [
    "ConfigError",
    "evaluate",
    "recompose_run_config",
    "resolve_ckpt_path",
    "run",
    "validate_config",
    "world_size_of",
]

log = get_logger(__name__)

WANDB_ID_FILE = "wandb_id.txt"  # in the run's output dir: lets a resumed run continue the W&B run
RESUMED_FILE = "resumed_from.txt"  # in the run's output dir: the checkpoint it resumed
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the project's configs (editable install)


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
    has something to train, a GPU exists where one is asked for, `ckpt_path` exists, the
    optimized metric is a train/ or val/ key. `run()` adds what only building reveals
    (missing pretrained weights, resume problems, a missing
    `model.init_from` file) to the same list.
    """
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(_problem_list(problems))


def _problem_list(problems: list[str]) -> str:
    return f"invalid config ({len(problems)} problems):\n  - " + "\n  - ".join(problems)


def config_problems(cfg: DictConfig) -> list[str]:
    """Every problem `validate_config` finds, as messages (empty when the config is fine)."""
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

    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        problems.append(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible here: use "
            "trainer=cpu (or trainer.accelerator=cpu trainer.precision=32-true)"
        )
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path not in (None, "last") and not Path(ckpt_path).is_file():
        problems.append(f"ckpt_path {ckpt_path} is not a file (or use ckpt_path=last)")
    metric = cfg.get("optimized_metric")
    if metric is not None and not str(metric).startswith(("train/", "val/")):
        problems.append(f"optimized_metric={metric} must be a train/... or val/... key")
    return problems


def _current_multirun_dir() -> Path | None:
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.sweep.dir) if hydra_cfg.mode == RunMode.MULTIRUN else None


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint to resume, checked against this run's experiment config.

    A job whose own directory already holds a loadable checkpoint (a requeued SLURM job, a
    relaunch into the same directory) continues from it, whatever `ckpt_path` says.
    Otherwise `ckpt_path=last` picks the newest loadable checkpoint of the most recent earlier
    run of this task (`logs/<task_name>/`) with the same experiment config, never one of the
    current multirun (see `spec_align.utils.runs.find_resumable`). An explicit path whose run had a
    different experiment config is refused unless `ckpt_force=true`.

    Raises:
        ConfigError: nothing to resume, a config mismatch, or two jobs of one multirun
            resuming the same run.
    """
    ckpt_path = cfg.get("ckpt_path")
    output_dir, multirun_dir = Path(cfg.paths.output_dir), _current_multirun_dir()
    own, skipped = own_checkpoint(output_dir)
    if skipped:
        log.warning("skipped checkpoints of this job that do not load: %s", skipped)
    if own is None and ckpt_path is None:
        return None
    try:
        if own is not None:
            log.info("this job's directory has %s: continuing it (requeued or relaunched)", own)
            checkpoint = own
        elif ckpt_path == "last":
            exclude = [output_dir] + ([multirun_dir] if multirun_dir else [])
            root = Path(cfg.paths.log_dir) / cfg.task_name
            checkpoint, skipped = find_resumable(root, cfg, exclude=exclude)
            if skipped:
                log.warning("ckpt_path=last skipped checkpoints that do not load: %s", skipped)
        else:
            checkpoint = Path(ckpt_path)
            saved = run_config_of(checkpoint)
            differences = (
                experiment_differences(OmegaConf.load(saved), cfg) if saved.is_file() else []
            )
            if differences and not cfg.get("ckpt_force", False):
                raise RunDirError(
                    f"ckpt_path={ckpt_path} was written by a run with a different experiment "
                    f"config ({saved}): {'; '.join(differences)}. Resume with that config, or "
                    "pass ckpt_force=true to resume it under this one"
                )
    except RunDirError as err:
        raise ConfigError(str(err)) from None
    checkpoint = checkpoint.resolve()
    if multirun_dir is not None:
        for claim in multirun_dir.glob(f"*/{RESUMED_FILE}"):
            if claim.parent.resolve() != output_dir.resolve() and (
                claim.read_text().strip() == str(checkpoint)
            ):
                raise ConfigError(
                    f"job {claim.parent.name} of this multirun already resumes {checkpoint}: the "
                    "jobs differ only in keys that do not define the experiment; give each job "
                    "its own ckpt_path"
                )
    if rank_zero_only.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / RESUMED_FILE).write_text(f"{checkpoint}\n")
    return str(checkpoint)


def _ensure_ref_cache(cfg: DictConfig, datamodule: L.LightningDataModule) -> None:
    """Build the reference cache of `ref.builder` over the data once, if it does not exist.

    With `build_ref_cache`, which embeds exactly what the module's reference would: the
    datamodule's eval view through the builder's `ViewAdapter`.
    """
    from spec_align.data import RefCache, build_ref_cache

    builder_cfg, cache_dir = cfg.ref.get("builder"), cfg.ref.get("cache_dir")
    if builder_cfg is None or cache_dir is None or RefCache.is_complete(cache_dir):
        return
    if rank_zero_only.rank != 0:
        raise ConfigError(f"reference cache {cache_dir} is missing on rank {rank_zero_only.rank}")
    builder = instantiate(builder_cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    urls = datamodule.train_urls + datamodule.val_urls
    log.info("building reference cache %s over %d shards", cache_dir, len(urls))
    # Written beside the target and renamed by the cache writer: no partial cache is left.
    build_ref_cache(
        urls,
        builder,
        cache_dir,
        view=datamodule.eval_transform,
        meta={"builder": OmegaConf.to_container(builder_cfg, resolve=True)},
    )


def _apply_start(cfg: DictConfig) -> None:
    """Point `model.init_from` at the start `cfg.start` asks for, building it if missing."""
    from spec_align.start import ensure_start

    if cfg.get("start") is None or cfg.start.get("epochs") is None:
        return
    if cfg.model.get("init_from") is not None:
        log.info(
            "model.init_from=%s is given: start=%s is not used",
            cfg.model.init_from,
            cfg.start.name,
        )
        return
    try:
        weights = ensure_start(cfg, run)
    except RuntimeError as err:
        raise ConfigError(str(err)) from None
    log.info("the encoder starts from %s (start=%s)", weights, cfg.start.name)
    cfg.model.init_from = str(weights)


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


def _build_networks(cfg: DictConfig) -> tuple[dict[str, Any], list[str]]:
    """The trainable encoder and the reference network (when there is one), built once.

    Built one at a time, so that every network that cannot be built (e.g. pretrained weights
    that are not cached offline) is reported, not only the first.
    """
    networks, problems = {}, []
    nodes = {"encoder": cfg.model.encoder, "ref": cfg.model.get("ref")}
    for name, node in nodes.items():
        if node is None:
            continue
        try:
            networks[name] = instantiate(node)
        except InstantiationException as err:
            # What the user can fix (weights, files, arguments); anything else is a bug.
            if not isinstance(err.__cause__, WeightsUnavailableError | OSError | ValueError):
                raise
            problems.append(
                f"{'encoder' if name == 'encoder' else 'ref.encoder'}: {err.__cause__}"
            )
    return networks, problems


def _init_from(cfg: DictConfig, ckpt_path: str | None) -> tuple[str | None, list[str]]:
    """`model.init_from` as the module gets it, and the problem with it, if any.

    Relative to the launch directory (Hydra may run the job elsewhere); None when resuming,
    since the checkpoint restores the encoder's weights (the file need not exist any more).
    """
    init_from = cfg.model.get("init_from")
    if init_from is None:
        return None, []
    if ckpt_path is not None:
        log.info("resuming %s: model.init_from=%s is not applied", ckpt_path, init_from)
        return None, []
    path = (Path(launch_dir()) / Path(init_from).expanduser()).resolve()
    if not path.is_file():
        return None, [f"model.init_from={init_from}: {path} is not a file"]
    return str(path), []


def run(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Validate the config, build data, module, callbacks, loggers and trainer, then fit.

    Every problem found before fitting (config checks, networks that cannot be built, the
    checkpoint to resume) is reported together in one `ConfigError`. The end of a run logs
    its outcome (`summarize_run`).

    Args:
        cfg: the composed train config (conf/train.yaml).

    Returns:
        The final logged metrics (floats) and the built objects by name.
    """
    problems = config_problems(cfg)
    ckpt_path = None
    try:
        ckpt_path = resolve_ckpt_path(cfg)
    except ConfigError as err:
        problems.append(str(err))
    if not problems and ckpt_path is None:
        # After the resume check (which compares the config as composed) and before seeding
        # (the start run seeds itself); a resumed run restores its weights, needing no start.
        _apply_start(cfg)
    init_from, init_problems = _init_from(cfg, ckpt_path)
    problems += init_problems
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    world = world_size_of(cfg.trainer)

    val_batch = cfg.data.get("val_batch_size")
    datamodule = instantiate(
        cfg.data,
        batch_size=cfg.data.batch_size // world,
        val_batch_size=None if val_batch is None else val_batch // world,
    )
    if not problems:
        # Building the cache draws random numbers (the builder's init); it must not shift the
        # model's initialisation, or a run's result would depend on whether the cache existed.
        with torch.random.fork_rng(devices=[]):
            _ensure_ref_cache(cfg, datamodule)
    networks, build_problems = _build_networks(cfg)
    problems += build_problems
    if problems:
        raise ConfigError(_problem_list(problems))
    module = instantiate(cfg.model, **networks, init_from=init_from)
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
            # weights_only: a checkpoint is data; unpickling it must not run code.
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("train", True) and trainer.is_global_zero:  # W&B's run is on rank 0 only
            log.info("%s", summarize_run(trainer, metrics, metric, Path(cfg.paths.output_dir)))
    finally:
        _finish_wandb()
    return metrics, objects


def summarize_run(
    trainer: L.Trainer, metrics: dict[str, float], metric: str | None, output_dir: Path
) -> str:
    """What a finished (or stopped) fit produced: metrics, checkpoints, run dir, W&B sync."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from spec_align.callbacks import LastCheckpoint

    lines = [
        f"run finished at epoch {trainer.current_epoch}, step {trainer.global_step}"
        + (" (interrupted)" if trainer.interrupted else "")
    ]
    best = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    if metric is not None and metric in metrics:
        line = f"  {metric} (optimized): final {metrics[metric]:.4f}"
        if best is not None and best.monitor == metric and best.best_model_score is not None:
            line += f", best {float(best.best_model_score):.4f}"
        lines.append(line)
    shown = sorted(k for k in metrics if k.startswith("val/") and k != metric)
    lines += [f"  {key}: {metrics[key]:.4f}" for key in shown]
    if best is not None and best.best_model_path:
        lines.append(f"  best checkpoint: {best.best_model_path}")
    for callback in trainer.callbacks:
        if isinstance(callback, LastCheckpoint) and callback.path.is_file():
            lines.append(f"  last checkpoint: {callback.path}")
    lines.append(f"  run dir: {output_dir}")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger.experiment.offline:
            lines.append(f"  W&B (offline): wandb sync {logger.experiment.settings.sync_dir}")
    return "\n".join(lines)


def _compose_run_config(overrides: list[str]) -> DictConfig:
    """conf/train.yaml with a saved run's overrides, inside Hydra's app or outside of it."""
    if GlobalHydra.instance().is_initialized():
        return compose("train", overrides=overrides)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def recompose_run_config(run_dir: Path, *extra: str) -> DictConfig:
    """A run's train config, composed again from the project's configs and the run's recorded
    overrides (`.hydra/overrides.yaml`, refused if one names code), plus `extra` overrides.

    Raises:
        ConfigError: the directory has no overrides file, or one of them names code.
    """
    overrides_file = run_dir / OVERRIDES_FILE
    if not overrides_file.is_file():
        raise ConfigError(
            f"no run overrides at {overrides_file}; pass run_dir=<the directory of the run that "
            "wrote the checkpoint>"
        )
    try:
        overrides = checked_overrides(list(OmegaConf.load(overrides_file)), overrides_file)
    except RunDirError as err:
        raise ConfigError(str(err)) from None
    return _compose_run_config([*overrides, *extra])


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Validate a checkpoint with the data and model of the run that wrote it.

    The run's config is composed again from the project's configs and the run's recorded
    overrides (`.hydra/overrides.yaml`), which may choose options and set values but never
    name code: nothing from a (possibly downloaded) run directory is instantiated as is. Paths
    are this config's. The reference is rebuilt as on resume (seeded like the run, so a
    random-init reference comes out the same).

    Args:
        cfg: the composed eval config (conf/eval.yaml): ckpt_path, run_dir, paths.

    Returns:
        The validation metrics (floats).
    """
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise ConfigError(f"ckpt_path {ckpt_path} is not a file")
    run_dir = Path(cfg.get("run_dir") or ckpt_path.resolve().parent.parent)
    run_cfg = recompose_run_config(run_dir)
    saved = run_dir / CONFIG_FILE
    if saved.is_file():
        differences = experiment_differences(OmegaConf.load(saved), run_cfg)
        if differences:
            log.warning(
                "%s differs from what its overrides compose to now (edited, or the project "
                "changed since); evaluating the composed config. Differences: %s",
                saved,
                "; ".join(differences),
            )
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
    (metrics,) = trainer.validate(
        module, datamodule=datamodule, ckpt_path=str(ckpt_path), weights_only=True
    )
    return {k: float(v) for k, v in metrics.items()}
