"""Every option of every config group composes and instantiates; config errors are readable."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from lightning.pytorch import Trainer

from spec_align.data.ref_cache import write_ref_cache
from spec_align.encoders import WeightsUnavailableError
from spec_align.modules import SpecAlignModule
from spec_align.train import ConfigError, run, validate_config

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# Overrides that make an option instantiable offline on this CPU: random init instead of
# downloaded weights, the CPU instead of GPUs.
_RUNNABLE = {
    ("encoder", "clip"): ["encoder.pretrained=null"],
    ("encoder", "tiny"): ["encoder.pretrained=null"],
    ("ref", "clip"): ["ref.encoder.pretrained=null"],
    ("ref", "dinov2"): ["ref.encoder.pretrained=null", "+ref.encoder.depth=1"],
    ("ref", "efficientnet_cached"): ["ref.builder.pretrained=false"],
    ("trainer", "gpu"): ["trainer.accelerator=cpu"],
    ("trainer", "ddp"): ["trainer.accelerator=cpu", "trainer.devices=1"],
    # No reference, so no val/spec_diff: monitor a metric this configuration logs.
    ("ref", "none"): ["optimized_metric=val/zero_shot_acc"],
}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# Random-init ViT-B models take seconds each to build on a small CPU.
_SLOW = {("encoder", "clip"), ("ref", "clip"), ("experiment", "clip_b32_dinov2_b14")}

GROUP_OPTIONS = [
    pytest.param(group, option, marks=[pytest.mark.slow] if (group, option) in _SLOW else [])
    for group in (
        "encoder",
        "ref",
        "task",
        "loss",
        "model",
        "data",
        "trainer",
        "callbacks",
        "logger",
        "paths",
        "hydra",
        "debug",
        "experiment",
    )
    for option in _options(group)
]


@pytest.fixture(scope="module")
def shards(data_root: Path) -> str:
    """Train shard pattern of the small synthetic set (for data=wds and experiments)."""
    from spec_align.data import synthetic

    info = synthetic.prepare(data_root, num_train=256, num_val=128, samples_per_shard=32)
    return info["train"]


@pytest.fixture
def ref_cache(tmp_path: Path) -> Path:
    """A random 16-d reference cache keyed like the small synthetic set."""
    keys = [
        f"syn_{split}_{i:06d}" for split, n in (("train", 256), ("val", 128)) for i in range(n)
    ]
    return write_ref_cache(tmp_path / "cache", keys, np.random.rand(len(keys), 16)).path


# Experiments choose their own groups, so they are composed without the test base overrides.
_EXPERIMENTS = {
    "clip_b32_dinov2_b14": [
        "data.num_workers=0",
        "encoder.pretrained=null",
        "ref.encoder.pretrained=null",
        "+ref.encoder.depth=1",
        "trainer.accelerator=cpu",
    ],
    "synthetic_efficientnet": ["ref.builder.pretrained=false"],
}


def _overrides(group: str, option: str, shards: str, ref_cache: Path) -> list[str]:
    overrides = [f"{group}={option}", *_RUNNABLE.get((group, option), [])]
    if (group, option) == ("data", "wds") or option == "clip_b32_dinov2_b14":
        overrides.append(f"data.train_shards='{shards}'")
    if (group, option) == ("ref", "precomputed"):
        overrides.append(f"ref.cache_dir={ref_cache}")
    return overrides + _EXPERIMENTS.get(option, []) if group == "experiment" else overrides


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_group_option_composes_and_instantiates(
    compose_train, shards, ref_cache, group, option
):
    overrides = _overrides(group, option, shards, ref_cache)
    cfg = compose_train(*overrides, base=group != "experiment")
    validate_config(cfg)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model)
    assert isinstance(module, SpecAlignModule)
    assert cfg.optimized_metric in module.metric_names
    for node in (cfg.get("callbacks") or {}).values():
        instantiate(node)
    for node in (cfg.get("logger") or {}).values():
        instantiate(node)
    trainer = instantiate(cfg.trainer)
    assert isinstance(trainer, Trainer)
    assert datamodule.batch_size == cfg.data.batch_size


def test_default_config_is_the_documented_offline_run(compose_train):
    cfg = compose_train(base=False)
    choices = HydraConfig.get().runtime.choices
    assert (choices.encoder, choices.start, choices.ref, choices.task, choices.data) == (
        "tiny_captions",
        "captions_only",
        "efficientnet_cached",
        "contrastive",
        "synthetic",
    )
    assert cfg.trainer.precision == "32-true"
    assert cfg.trainer.accelerator == "cpu"


def test_unknown_group_option_names_the_choices(compose_train):
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose_train("encoder=nope")
    assert "tiny" in str(err.value) and "clip" in str(err.value)


def test_clip_dinov2_composes_and_fails_fast_offline(compose_train):
    cfg = compose_train("encoder=clip", "ref=dinov2", base=False)
    assert cfg.model.encoder.model_name == "ViT-B-32"
    assert cfg.ref.encoder.model_name.startswith("vit_base_patch14_dinov2")
    validate_config(cfg)
    start = time.perf_counter()
    with pytest.raises(InstantiationException) as err:
        instantiate(cfg.model)
    assert time.perf_counter() - start < 15.0
    assert isinstance(err.value.__cause__, WeightsUnavailableError)
    message = str(err.value.__cause__)
    assert "ViT-B-32/openai" in message and "HF_HUB_OFFLINE" in message
    assert "pretrained=null" in message and "checkpoint_path" in message


def test_missing_shards_are_reported(compose_train):
    cfg = compose_train("data=wds", "data.train_shards='/nonexistent/train-{000000..000003}.tar'")
    with pytest.raises(ConfigError, match="4 of 4 shards do not exist"):
        validate_config(cfg)


def test_batch_not_divisible_by_world_size_is_reported(compose_train):
    cfg = compose_train("trainer=ddp_sim", "data.batch_size=33")
    with pytest.raises(ConfigError, match="divisible by the world size 2"):
        validate_config(cfg)


def test_fewer_shards_than_readers_is_reported(compose_train, shards):
    cfg = compose_train(
        "data=wds", f"data.train_shards='{shards}'", "data.num_workers=5", "trainer=ddp_sim"
    )
    with pytest.raises(ConfigError, match="8 shards cannot feed 5 dataloader workers x 2 ranks"):
        validate_config(cfg)


def test_precomputed_reference_needs_the_deterministic_view(compose_train, shards, ref_cache):
    cfg = compose_train(
        "data=wds",
        f"data.train_shards='{shards}'",
        "ref=precomputed",
        f"ref.cache_dir={ref_cache}",
    )
    with pytest.raises(ConfigError, match="train_transform"):
        validate_config(cfg)


def test_nothing_to_train_is_reported(compose_train):
    cfg = compose_train("task=none", "ref=none")
    with pytest.raises(ConfigError, match="nothing to train"):
        validate_config(cfg)


def test_optimized_metric_must_be_logged(compose_train):
    cfg = compose_train("ref=none", "train=false")
    with pytest.raises(ConfigError, match="optimized_metric=val/spec_diff is not logged"):
        run(cfg)
    cfg = compose_train("ref=none", "train=false", "optimized_metric=val/zero_shot_acc")
    metrics, objects = run(cfg)
    assert objects["model"].penalty is None
