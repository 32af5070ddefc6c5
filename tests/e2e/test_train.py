"""End to end: `run(cfg)` trains, logs the documented keys, writes a reference-free checkpoint."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from spec_align.train import run

SHORT = [
    "trainer.limit_train_batches=3",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=2",
    "trainer.max_epochs=1",
]


def test_fast_dev_run(compose_train):
    metrics, objects = run(compose_train("debug=fdr"))
    assert objects["trainer"].global_step == 1
    for key in ("train/loss", "train/task_loss", "train/spec_diff", "val/spec_diff"):
        assert math.isfinite(metrics[key]), key
    assert objects["model"].penalty.fitted


def test_short_run_logs_metrics_and_checkpoints(compose_train, tmp_path):
    cfg = compose_train(*SHORT)
    metrics, objects = run(cfg)
    output = tmp_path / "output"
    with open(output / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = {key for row in rows for key, value in row.items() if value}
    expected = {
        "train/loss_step",
        "train/task_loss_step",
        "train/task/contrastive_loss_step",
        "train/spec_diff_step",
        "train/data_wait_s_step",
        "train/samples_skipped",
        "train/shard_errors",
        "val/spec_diff",
        "val/spec_diff_best",
        "val/zero_shot_acc",
        "val/i2t_r1",
        "val/t2i_r1",
        "val/task_loss",
        "val/task/contrastive_loss",
    }
    assert expected <= logged, expected - logged
    assert 0.0 <= metrics["val/zero_shot_acc"] <= 1.0
    checkpoint = torch.load(output / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3
    assert not [k for k in checkpoint["state_dict"] if k.startswith("ref.")]
    assert cfg.optimized_metric in metrics


def test_precomputed_reference_from_the_cache(compose_train, tmp_path):
    """ref=efficientnet_cached: the cache is built once by run(), then read by the pipeline."""
    cfg = compose_train(
        *SHORT,
        "ref=efficientnet_cached",
        "ref.builder.pretrained=false",
        "ref.builder.image_size=32",
    )
    metrics, objects = run(cfg)
    assert objects["model"].ref is None and objects["model"].ref_dim == 1280
    assert (tmp_path / "output").exists()
    assert math.isfinite(metrics["val/spec_diff"])


def test_building_the_reference_cache_does_not_change_the_model_init(compose_train, tmp_path):
    """A run's result must not depend on whether its reference cache already existed."""
    cfg = compose_train(
        *SHORT,
        "ref=efficientnet_cached",
        "ref.builder.pretrained=false",
        "ref.builder.image_size=32",
        f"ref.cache_dir={tmp_path / 'ref_cache'}",  # not the session's shared cache
        "train=false",
    )
    cache = Path(cfg.ref.cache_dir)
    assert not cache.exists()
    _, built = run(cfg)  # builds the cache
    assert (cache / "keys.jsonl").is_file()
    _, read = run(cfg)  # reads it
    first, second = built["model"].state_dict(), read["model"].state_dict()
    # Bitwise equal; the bandwidth buffers are still NaN (fixed later, from data).
    torch.testing.assert_close(second, first, rtol=0, atol=0, equal_nan=True)
