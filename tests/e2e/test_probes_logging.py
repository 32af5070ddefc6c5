"""Attribute probes in training runs: the keys users see, once for the reference."""

from __future__ import annotations

import csv
import math

from spec_align.data.synthetic import ATTRIBUTES
from spec_align.train import run

PROBES = [f"val/probe/{a}_{p}" for a in ATTRIBUTES for p in ("knn", "linear")]
REF_PROBES = [key.replace("val/probe/", "val/probe_ref/") for key in PROBES]


def test_fast_dev_run_logs_every_attribute_probe(compose_train):
    metrics, objects = run(compose_train("debug=fdr", "optimized_metric=val/probe/texture_knn"))
    for key in PROBES + REF_PROBES:
        assert key in objects["model"].metric_names, key
        assert 0.0 <= metrics[key] <= 1.0 and math.isfinite(metrics[key]), key


def test_probes_every_validation_and_the_reference_once(compose_train, tmp_path):
    cfg = compose_train(
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "trainer.max_epochs=2"
    )
    run(cfg)
    with open(tmp_path / "output" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for key in PROBES:
        assert sum(bool(row.get(key)) for row in rows) == 2, key
    for key in REF_PROBES:
        assert sum(bool(row.get(key)) for row in rows) == 1, key


def test_probes_switch_off(compose_train):
    metrics, objects = run(compose_train("debug=fdr", "model.probes=false"))
    assert not [key for key in metrics if key.startswith("val/probe")]
    assert not [key for key in objects["model"].metric_names if key.startswith("val/probe")]
    assert math.isfinite(metrics["val/spec_diff"])
