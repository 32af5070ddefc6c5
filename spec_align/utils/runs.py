"""Run directories: what identifies an experiment, which run `ckpt_path=last` resumes, and
which saved run configs may be rebuilt.

A run directory (`logs/<task_name>/runs/<time>` or `.../multiruns/<time>/<job>`) holds
`.hydra/config.yaml` (the composed config, unresolved), `.hydra/overrides.yaml` (what was
typed) and `checkpoints/`. Everything read from one is treated as data: YAML is parsed, never
instantiated as is, and checkpoints are checked as zip files before they are unpickled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from spec_align.utils.checkpoint_io import checkpoint_problem

__all__ = [
    "CONFIG_FILE",
    "NOT_EXPERIMENT",
    "OVERRIDES_FILE",
    "RunDirError",
    "checked_overrides",
    "experiment_differences",
    "find_resumable",
    "flatten_config",
    "own_checkpoint",
    "is_experiment_key",
    "newest_loadable",
    "run_config_of",
    "run_name",
]

log = logging.getLogger(__name__)

CONFIG_FILE = Path(".hydra") / "config.yaml"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"

# Config keys (with everything below them) that do not change what is trained: where and how
# long it runs (a resumed run may raise max_epochs), how it is logged and checkpointed, and
# how the data is read.
NOT_EXPERIMENT = (
    "ckpt_path",
    "ckpt_force",
    "train",
    "trainer",
    "logger",
    "callbacks",
    "debug",
    "paths",
    "hydra",
    "task_name",
    "tags",
    "optimized_metric",
    "data.num_workers",
    "data.persistent_workers",
    "data.data_dir",
    "data.val_batch_size",
)


class RunDirError(ValueError):
    """A run directory or checkpoint cannot be used as asked; the message says how to fix it."""


def is_experiment_key(key: str) -> bool:
    """Whether a dotted config key can change what is trained (see NOT_EXPERIMENT)."""
    return not any(key == k or key.startswith(k + ".") for k in NOT_EXPERIMENT)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_name(overrides: Iterable[str]) -> str | None:
    """A run's display name: the overrides that define its experiment, seed left out.

    Seeds are left out so that the runs of one setting share a name. None when nothing is
    overridden (the default experiment).
    """
    kept = [
        str(o)
        for o in overrides
        if is_experiment_key(_override_key(str(o))) and _override_key(str(o)) != "seed"
    ]
    return ",".join(sorted(kept)) or None


def flatten_config(node: Any, prefix: str = "") -> dict[str, Any]:
    """A plain config as dotted keys (`prefix` ends with "." or is empty) -> leaf values."""
    if isinstance(node, Mapping):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten_config(value, f"{prefix}{key}."))
        return flat or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _experiment_config(cfg: DictConfig | Mapping) -> dict[str, Any]:
    plain = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    return {k: v for k, v in flatten_config(plain).items() if is_experiment_key(k)}


def experiment_differences(saved: DictConfig, current: DictConfig) -> list[str]:
    """Experiment keys whose (unresolved) values differ, as 'key: saved -> current' lines."""
    before, after = _experiment_config(saved), _experiment_config(current)
    missing = "(absent)"
    return [
        f"{key}: {before.get(key, missing)!r} -> {after.get(key, missing)!r}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key, missing) != after.get(key, missing)
    ]


def run_config_of(checkpoint: str | Path) -> Path:
    """The saved config of the run that wrote `checkpoint` (<run>/checkpoints/x.ckpt)."""
    return Path(checkpoint).resolve().parent.parent / CONFIG_FILE


def find_resumable(
    log_root: str | Path, cfg: DictConfig, exclude: Sequence[str | Path] = ()
) -> tuple[Path, list[str]]:
    """The checkpoint `ckpt_path=last` resumes, and the checkpoints skipped on the way.

    Rule: among the run directories under `log_root` (this task's runs and multirun jobs)
    whose experiment config equals `cfg`'s (every key but NOT_EXPERIMENT), the newest
    checkpoint file that loads: normally the newest such run's last.ckpt; a truncated or
    corrupt one is skipped (and named) in favour of the next newest. Runs under `exclude`
    (this job, and the current multirun, so its jobs never chain) are not considered.

    Raises:
        RunDirError: no run of this experiment, or none with a loadable checkpoint.
    """
    root = Path(log_root)
    excluded = [Path(p).resolve() for p in exclude]
    matching: list[Path] = []
    newest_other: tuple[float, Path, list[str]] | None = None
    for config_file in root.glob(f"**/{CONFIG_FILE}"):
        run_dir = config_file.parent.parent
        checkpoints = list((run_dir / "checkpoints").glob("*.ckpt"))
        if not checkpoints or any(run_dir.resolve().is_relative_to(p) for p in excluded):
            continue
        differences = experiment_differences(OmegaConf.load(config_file), cfg)
        if not differences:
            matching.extend(checkpoints)
            continue
        mtime = max(c.stat().st_mtime for c in checkpoints)
        if newest_other is None or mtime > newest_other[0]:
            newest_other = (mtime, run_dir, differences)
    checkpoint, skipped = newest_loadable(matching)
    if checkpoint is not None:
        return checkpoint, skipped
    if skipped:
        raise RunDirError(
            "ckpt_path=last: no checkpoint of this experiment loads: " + "; ".join(skipped)
        )
    message = f"ckpt_path=last: no earlier run under {root} has this experiment's config"
    if newest_other is not None:
        _, run_dir, differences = newest_other
        message += (
            f". The newest other run, {run_dir}, differs in: {'; '.join(differences)}. To "
            f"resume it anyway: ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'} ckpt_force=true"
        )
    raise RunDirError(message)


def own_checkpoint(run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest loadable checkpoint in a job's own directory, and the ones skipped.

    A job whose directory already holds checkpoints is running again in the same place: a
    SLURM job requeued after preemption or a timeout (submitit reruns it with the same
    output directory), or a relaunch into the same `hydra.sweep.dir`/`hydra.run.dir`. It
    continues from its own progress. Fresh runs get a new timestamped directory, so this
    never applies to them.
    """
    return newest_loadable((Path(run_dir) / "checkpoints").glob("*.ckpt"))


def newest_loadable(checkpoints: Iterable[Path]) -> tuple[Path | None, list[str]]:
    """The newest (by mtime) of `checkpoints` that loads, and 'path (problem)' for each newer
    one that does not."""
    skipped: list[str] = []
    for checkpoint in sorted(checkpoints, key=lambda p: p.stat().st_mtime, reverse=True):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint, skipped
        skipped.append(f"{checkpoint} ({problem})")
    return None, skipped


# Keys that make Hydra import and call code, or change where configs are found.
_CODE_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")


def _names_code(value: Any) -> bool:
    if isinstance(value, str):  # also inside interpolations such as ${oc.create:...}
        return any(k in value for k in _CODE_KEYS)
    if isinstance(value, Mapping):
        return any(str(k) in _CODE_KEYS or _names_code(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_names_code(v) for v in value)
    return False


def checked_overrides(overrides: Sequence[str], source: str | Path) -> list[str]:
    """`overrides` from a saved run, if they only choose among the project's own options.

    A saved run (possibly downloaded) may pick config options and set values; it may not name
    code (`_target_` and the other instantiate keys, in a key or anywhere in a value) or change
    Hydra's settings or config search path.

    Raises:
        RunDirError: naming the offending override and `source`.
    """
    try:
        parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    except OverrideParseException as err:
        raise RunDirError(
            f"{source}: cannot parse the overrides ({err}). Nothing was run."
        ) from None
    for text, override in zip(overrides, parsed, strict=True):
        key = override.key_or_group
        parts = key.replace("/", ".").split(".")
        value = override.value() if not override.is_delete() else None
        if key.startswith("hydra") or any(p in _CODE_KEYS for p in parts) or _names_code(value):
            raise RunDirError(
                f"{source}: the override {text!r} names code or Hydra settings; a saved run may "
                "only choose the project's config options and set plain values. Nothing was run."
            )
    return list(overrides)
