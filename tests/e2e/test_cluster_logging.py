"""A short SPEC-align run with ClusterLogCallback and an offline W&B logger: the offline run
holds the media, the table and the metric keys; the run directory holds the same artefacts."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import lightning as L
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


def _wandb_records(path: Path):
    """Records of a .wandb file: a LevelDB-style log of 32 KiB blocks after a 7-byte header,
    each chunk = crc (4) + length (2, little-endian) + type (1: full, 2/3/4: first/mid/last)."""
    from wandb.proto import wandb_internal_pb2

    data, position, pending = path.read_bytes(), 7, b""
    while position + 7 <= len(data):
        room = 32768 - position % 32768
        kind = data[position + 6] if room >= 7 else 0
        if kind == 0:  # block trailer / padding
            position += room
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_offline_run_has_media_table_and_metric_keys(tmp_path, offline_wandb):
    import wandb

    root = tmp_path / "run"
    logger = WandbLogger(project="spec_align_tests", save_dir=str(root), offline=True)
    try:
        _fit(root, [_callback(root)], logger=logger)
    finally:
        wandb.finish()

    (run_dir,) = (root / "wandb").glob("offline-run-*")
    media = run_dir / "files" / "media"
    images = media / "images" / "clusters"
    for key in ("enc_minus_ref/mode_0", "enc_minus_ref/mode_1", "ref_minus_enc/mode_0"):
        assert len(list(images.glob(f"{key}_*.png"))) == 3  # one per evaluation: 0, 2, 4
    assert list(images.glob("spectrum_*.png")) and list(images.glob("map_*.png"))
    tables = sorted((media / "table" / "clusters").glob("modes_*.table.json"))
    assert len(tables) == 3
    table = json.loads(tables[-1].read_text())
    assert {"direction", "eigenvalue", "tracked_id", "dominant", "thumbnails"} <= set(
        table["columns"]
    )
    last = json.loads((root / "clusters" / "step_0000004" / "modes.json").read_text())
    assert len(table["data"]) == len(last["modes"]) >= 2  # one row per mode
    # Offline, a table's images are staged (for `wandb sync`) under WANDB_DATA_DIR.
    staged = [f for f in offline_wandb.rglob("*") if f.is_file()]
    assert any(f.read_bytes()[:4] == b"\x89PNG" for f in staged)

    keys, steps = set(), set()
    for record in _wandb_records(next(run_dir.glob("*.wandb"))):
        # The last rows of a run may still be a partial-history request when the file is
        # written (the handler turns them into history records only as steps advance).
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
        elif (
            record.WhichOneof("record_type") == "request"
            and record.request.WhichOneof("request_type") == "partial_history"
        ):
            items = record.request.partial_history.item
        else:
            continue
        values = {(i.key or "/".join(i.nested_key)): i.value_json for i in items}
        keys.update(values)
        if "clusters/spec_diff" in values:
            steps.add(json.loads(values["trainer/global_step"]))
    assert steps == {0, 2, 4}
    expected = {
        "clusters/spec_diff",
        "clusters/enc_minus_ref/eig_0",
        "clusters/ref_minus_enc/eig_2",
        "clusters/tracked/0/eigenvalue",
        "clusters/modes/_type",
        "clusters/enc_minus_ref/mode_0/_type",
        "clusters/map/_type",
    }
    assert expected <= keys

    # The same artefacts on disk, readable without W&B.
    for step in (0, 2, 4):
        folder = root / "clusters" / f"step_{step:07d}"
        record = json.loads((folder / "modes.json").read_text())
        assert record["step"] == step and record["num_samples"] == 96
        # synthetic metadata gives every mode a dominant attribute.
        assert all(
            m["dominant"].split("=")[0] in {"shape", "colour", "side", "texture"}
            for m in record["modes"]
        )
        for png in folder.glob("*.png"):
            with Image.open(png) as image:
                image.verify()


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
