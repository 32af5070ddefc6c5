"""A short SPEC-align run with ClusterLogCallback and an offline W&B logger: the offline run
holds the tracked-eigenvalue chart, grids keyed by tracked id, one incremental table and the
metric keys; the run directory holds the same artefacts."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from spec_align.callbacks import ClusterLogCallback
from spec_align.data import WdsDataModule
from spec_align.encoders import ClipEncoder
from spec_align.losses import ContrastiveLoss, SpectralPenalty
from spec_align.modules import SpecAlignModule

DATA = dict(num_train=128, num_val=96, image_size=32, samples_per_shard=32)


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "wandb_home"
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(root))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return root


def _module() -> SpecAlignModule:
    return SpecAlignModule(
        ClipEncoder("tiny_clip", pretrained=None),
        ContrastiveLoss(),
        SpectralPenalty(rff_dim=64),
        functools.partial(torch.optim.AdamW, lr=1e-3),
        ref=ClipEncoder("tiny_clip", pretrained=None),
        probe_size=64,
    )


def _fit(root: Path, callbacks: list, logger=False, max_steps: int = 4) -> SpecAlignModule:
    L.seed_everything(0)
    module = _module()
    data = WdsDataModule(
        dataset="synthetic",
        data_dir=root.parent / "data",
        batch_size=32,
        num_workers=0,
        image_size=32,
        dataset_kwargs=DATA,
    )
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        precision="32-true",
        default_root_dir=root,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=data)
    module.trainer_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return module


def _callback(root: Path) -> ClusterLogCallback:
    return ClusterLogCallback(
        every_n_steps=2,
        probe_size=96,
        top_k=3,
        grid_modes=2,
        grid_samples=8,
        cluster_size=12,
        dirpath=root / "clusters",
    )


def _wandb_records(run_dir: Path) -> list[dict]:
    """The records of an offline run's .wandb file, read by wandb's own reader (`wandb leet
    inspect --json`: one JSON record per line, history items flattened to dotted keys)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_offline_run_has_the_chart_grids_by_tracked_id_and_one_incremental_table(
    tmp_path, offline_wandb
):
    import wandb

    root = tmp_path / "run"
    logger = WandbLogger(project="spec_align_tests", save_dir=str(root), offline=True)
    try:
        _fit(root, [_callback(root)], logger=logger)
    finally:
        wandb.finish()

    (run_dir,) = (root / "wandb").glob("offline-run-*")
    records = _wandb_records(run_dir)
    evaluations = {}  # trainer step -> the history items the callback logged there
    for record in records:
        if record["type"] == "history" and "clusters/spec_diff" in record["history"]["item"]:
            items = record["history"]["item"]
            evaluations[int(items["trainer/global_step"])] = items
    assert sorted(evaluations) == [0, 2, 4]
    on_disk = {
        step: json.loads((root / "clusters" / f"step_{step:07d}" / "modes.json").read_text())
        for step in evaluations
    }
    history = [
        json.loads(line) for line in (root / "clusters" / "history.jsonl").read_text().splitlines()
    ]

    # One line-series chart of all tracked modes (wandb keeps its spec in the run config and
    # its data as a table); the last table holds every tracked eigenvalue of the run.
    charts = [
        r["config"]["update"]["_wandb.visualize.clusters/tracked_eigenvalues"]
        for r in records
        if r["type"] == "config"
        and "_wandb.visualize.clusters/tracked_eigenvalues" in r["config"]["update"]
    ]
    assert charts and charts[-1]["panel_config"]["panelDefId"] == "wandb/lineseries/v0"
    last_chart = evaluations[4]["clusters/tracked_eigenvalues_table.path"]
    chart = json.loads((run_dir / "files" / last_chart).read_text())
    assert chart["columns"] == ["step", "lineKey", "lineVal"]
    plotted = {(step, key.split()[1], value) for step, key, value in chart["data"]}
    expected = {
        (h["step"], str(mode_id), value)
        for h in history
        for mode_id, value in h["tracked"].items()
    }
    assert plotted == expected and len(chart["data"]) == len(expected)
    assert len({key for _, key, _ in chart["data"]}) >= 2  # one line per tracked id

    for step, items in evaluations.items():
        modes = on_disk[step]["modes"]
        # Grids keyed by tracked id (the grid_modes=2 strongest of each direction), none by
        # rank slot; the caption names the id.
        gridded = {m["tracked_id"] for m in modes if m["rank"] < 2}
        grid_keys = {k[: -len("._type")] for k in items if k.endswith("/grid._type")}
        assert grid_keys == {f"clusters/mode/{i}/grid" for i in gridded}, step
        for i in gridded:
            assert items[f"clusters/mode/{i}/grid.caption"].startswith(f"tracked id {i}:")
            assert (run_dir / "files" / items[f"clusters/mode/{i}/grid.path"]).is_file()
        assert not [k for k in items if "/mode_" in k]
        assert items["clusters/spectrum._type"] == items["clusters/map._type"] == "image-file"

    # One incremental table: each evaluation appends its rows to the same table.
    tables = [evaluations[step] for step in sorted(evaluations)]
    assert {t["clusters/modes._type"] for t in tables} == {"incremental-table-file"}
    assert [int(t["clusters/modes.increment_num"]) for t in tables] == [0, 1, 2]
    counts = [len(on_disk[step]["modes"]) for step in sorted(evaluations)]
    assert [int(t["clusters/modes.nrows"]) for t in tables] == list(np.cumsum(counts))
    rows = []
    for items, count in zip(tables, counts, strict=True):
        increment = json.loads((run_dir / "files" / items["clusters/modes.path"]).read_text())
        assert {"step", "tracked_id", "eigenvalue", "match_similarity", "dominant"} <= set(
            increment["columns"]
        )
        assert len(increment["data"]) == count  # only this evaluation's rows
        column = {name: i for i, name in enumerate(increment["columns"])}
        rows += [(r[column["step"]], r[column["tracked_id"]]) for r in increment["data"]]
    assert rows == [(s, m["tracked_id"]) for s in sorted(evaluations) for m in on_disk[s]["modes"]]
    # Offline, a table's images are staged (for `wandb sync`) under WANDB_DATA_DIR.
    staged = [f for f in offline_wandb.rglob("*") if f.is_file()]
    assert any(f.read_bytes()[:4] == b"\x89PNG" for f in staged)

    # The scalars, and the same artefacts on disk, readable without W&B.
    expected_keys = {
        "clusters/spec_diff",
        "clusters/enc_minus_ref/eig_0",
        "clusters/ref_minus_enc/eig_2",
        "clusters/tracked/0/eigenvalue",
    }
    assert expected_keys <= set().union(*evaluations.values())
    for step, record in on_disk.items():
        folder = root / "clusters" / f"step_{step:07d}"
        assert record["step"] == step and record["num_samples"] == 96
        # synthetic metadata gives every mode a dominant attribute.
        assert all(
            m["dominant"].split("=")[0] in {"shape", "colour", "side", "texture"}
            for m in record["modes"]
        )
        names = {p.name for p in folder.glob("*.png")}
        assert {"spectrum.png", "map.png", "enc_minus_ref_mode_0.png"} <= names
        for png in folder.glob("*.png"):
            with Image.open(png) as image:
                image.verify()
    assert (root / "clusters" / "tracks.png").is_file()


@pytest.mark.slow
def test_callback_does_not_change_spec_align_training(tmp_path):
    plain = _fit(tmp_path / "plain", [])
    watched = _fit(tmp_path / "watched", [_callback(tmp_path / "watched")])
    assert (tmp_path / "watched" / "clusters" / "step_0000004").is_dir()
    # Everything but the wall-clock data-wait time.
    timing = {k for k in plain.trainer_metrics if "data_wait" in k}
    for key in set(plain.trainer_metrics) - timing:
        assert watched.trainer_metrics[key] == plain.trainer_metrics[key], key
    for p, q in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(p, q)
