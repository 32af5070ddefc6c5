"""Shared fixtures: offline environment, a small synthetic dataset, composed train configs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from spec_align.utils import register_resolvers
from tests.helpers import CONF_DIR, SMALL_SYNTHETIC

# Offline, CPU-only, tiny and fast: every test config starts from these overrides.
BASE_OVERRIDES = [
    "encoder=tiny",
    "ref=tiny",
    "data=synthetic",
    f"data.dataset_kwargs={SMALL_SYNTHETIC}",
    "data.batch_size=32",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
    "model.probe_size=64",
    "model.scheduler.warmup_steps=1",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No downloads, W&B offline and writing only under the test's temporary directory."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    register_resolvers()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data directory shared by the session, so the small synthetic set is generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def user_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DATA_ROOT for commands run as users type them: full-size datasets, built once."""
    return tmp_path_factory.mktemp("user_data")


@pytest.fixture
def compose_train(data_root: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose conf/train.yaml as `python train.py <overrides>` would, with test paths.

    The `hydra` node is registered as the current HydraConfig, so `${hydra:...}`
    interpolations resolve as in a real run.
    """

    def _compose(*overrides: str, base: bool = True, output_dir: Path | None = None) -> DictConfig:
        output_dir = output_dir or tmp_path / "output"
        paths = [
            f"paths.root_dir={tmp_path}",
            f"paths.data_dir={data_root}",
            f"paths.log_dir={tmp_path / 'logs'}",
            f"paths.output_dir={output_dir}",
        ]
        all_overrides = [*(BASE_OVERRIDES if base else []), *paths, *overrides]
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=all_overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
        HydraConfig.instance().set_config(cfg)
        # As in a real run: the task function's config has no `hydra` node, and Hydra has
        # written the job's config and overrides into its output directory.
        with open_dict(cfg):
            del cfg["hydra"]
        (output_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create(all_overrides), output_dir / ".hydra" / "overrides.yaml")
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def subprocess_env(tmp_path: Path, user_data_root: Path) -> dict[str, str]:
    """Environment for `python train.py` subprocesses: offline, quiet, single-threaded BLAS,
    data under the session's DATA_ROOT."""
    env = dict(os.environ)
    env.update(
        DATA_ROOT=str(user_data_root),
        HF_HUB_OFFLINE="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        env[name] = str(tmp_path / "wandb_home")
    return env


@pytest.fixture
def user_env(subprocess_env: dict[str, str]) -> dict[str, str]:
    """`subprocess_env` as a user's shell has it: Python's warnings are shown."""
    return {k: v for k, v in subprocess_env.items() if k != "PYTHONWARNINGS"}


@pytest.fixture
def train_cli_args(tmp_path: Path, data_root: Path) -> list[str]:
    """The base overrides plus test paths, as command-line arguments of train.py."""
    return [
        *BASE_OVERRIDES,
        f"paths.data_dir={data_root}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
