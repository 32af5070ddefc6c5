"""OmegaConf resolvers: the only logic the YAML configs may call.

${dataset_classes:synthetic}      class names of a built-in dataset (null for others)
${dataset_prompts:synthetic}      zero-shot prompt templates for those classes
${dataset_num_classes:digits}     number of classes (null for unknown datasets)
${dataset_attributes:synthetic}   attributes the probes decode ("label" = the class label)
${ref_cache_dim:/path/to/cache}   embedding width stored in a reference cache's meta
${run_name:${hydra:overrides.task}}   a run's name: its experiment's overrides, minus seed
${launch_dir:}                    the directory the command was started in
${slurm_tasks:${trainer.devices}}    SLURM tasks per node: one per device (hydra/launcher=slurm)
${slurm_gpus:${trainer.accelerator},${trainer.devices}}   GPUs per node (null on CPU)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import ListConfig, OmegaConf

from spec_align.utils.runs import run_name

__all__ = [
    "dataset_attributes",
    "dataset_classes",
    "dataset_num_classes",
    "dataset_prompts",
    "launch_dir",
    "ref_cache_dim",
    "register_resolvers",
    "slurm_gpus",
    "slurm_tasks",
]

_LAUNCH_DIR = os.getcwd()

# Templates for zero-shot classification, worded like each dataset's captions.
_PROMPTS = {
    "synthetic": ["a {}", "a photo of a {}"],
    "digits": ["a photo of the digit {}", "a handwritten {}"],
    "textures": ["a simulated textile, {}", "a photo of a {} textile"],
}


def dataset_classes(name: str | None) -> list[str] | None:
    """Class names of a built-in dataset in label order; None when unknown."""
    if name == "synthetic":
        from spec_align.data.synthetic import CLASSES

        return list(CLASSES)
    if name == "digits":
        return [str(d) for d in range(10)]
    if name == "textures":
        from spec_align.data.textures import CLASSES

        return list(CLASSES)
    return None


def dataset_prompts(name: str | None) -> list[str]:
    """Zero-shot prompt templates ("... {} ...") for a dataset's class names."""
    return list(_PROMPTS.get(name, ["a photo of a {}"]))


def dataset_num_classes(name: str | None) -> int | None:
    """Number of classes of a built-in dataset; None when unknown."""
    classes = dataset_classes(name)
    return None if classes is None else len(classes)


def dataset_attributes(name: str | None) -> list[str]:
    """Attributes the probes decode: synthetic's json metadata ones, else the class label."""
    if name == "synthetic":
        from spec_align.data.synthetic import ATTRIBUTES

        return list(ATTRIBUTES)
    return ["label"]


def launch_dir() -> str:
    """The directory the command was started in (see `register_resolvers`)."""
    return _LAUNCH_DIR


def ref_cache_dim(path: str) -> int:
    """Embedding width of a reference cache (from meta.json, else the embeddings' header)."""
    cache = Path(path)
    meta = cache / "meta.json"
    if meta.is_file():
        return int(json.loads(meta.read_text())["dim"])
    embeddings = cache / "embeddings.npy"
    if not embeddings.is_file():
        raise FileNotFoundError(
            f"reference cache {cache} does not exist; create it with scripts/precompute_ref.py "
            "or set ref.embed_dim explicitly"
        )
    import numpy as np

    return int(np.load(embeddings, mmap_mode="r").shape[1])


def slurm_tasks(devices: Any) -> int:
    """SLURM tasks per node for `trainer.devices`: one per device, so that Lightning's SLURM
    environment takes each process's rank from SLURM (`SLURM_PROCID`, `SLURM_LOCALID`).

    Accepts a positive count, a list of device ids or a "0,1"-style string; anything else
    ("auto", -1, 0) is refused, since the job's size must be known when it is submitted.
    """
    if isinstance(devices, ListConfig | list | tuple):
        count = len(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    elif (
        isinstance(devices, int)
        and not isinstance(devices, bool)
        or (isinstance(devices, str) and devices.isdigit())
    ):
        count = int(devices)
    else:
        count = 0
    if count < 1:
        raise ValueError(
            f"hydra/launcher=slurm needs trainer.devices as a number of devices per node (one "
            f"SLURM task each), not {devices!r}: e.g. trainer=ddp trainer.devices=4"
        )
    return count


def slurm_gpus(accelerator: str, devices: Any) -> int | None:
    """GPUs per node to request for `trainer.devices` (None: a CPU trainer requests none)."""
    tasks = slurm_tasks(devices)
    return None if str(accelerator) == "cpu" else tasks


def _config_valued(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` with list results as ListConfig.

    OmegaConf's in-place resolve (`--cfg job --resolve`, `instantiate`) cannot store a plain
    list returned by a resolver in a value node; a ListConfig it can.
    """

    def resolver(*args: Any) -> Any:
        value = function(*args)
        return ListConfig(value) if isinstance(value, list) else value

    return resolver


def register_resolvers() -> None:
    """Register every resolver above; safe to call more than once.

    `launch_dir` is the working directory when this module was imported (by the entry points,
    before Hydra runs): unlike `${hydra:runtime.cwd}` it also resolves where no HydraConfig is
    set, as when a multirun launcher resolves `hydra.sweep.dir`.
    """
    resolvers = {
        "dataset_classes": _config_valued(dataset_classes),
        "dataset_prompts": _config_valued(dataset_prompts),
        "dataset_num_classes": dataset_num_classes,
        "dataset_attributes": _config_valued(dataset_attributes),
        "ref_cache_dim": ref_cache_dim,
        "run_name": run_name,
        "launch_dir": launch_dir,
        "slurm_tasks": slurm_tasks,
        "slurm_gpus": slurm_gpus,
    }
    for name, function in resolvers.items():
        OmegaConf.register_new_resolver(name, function, replace=True)
