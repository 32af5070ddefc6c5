"""ClusterLogCallback on a toy module: training unchanged, artefacts on disk, logged keys,
resume keeps tracked ids, config node instantiates."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from spec_align.callbacks import ClusterLogCallback

CONF = Path(__file__).resolve().parents[2] / "conf" / "callbacks" / "cluster_log.yaml"
GROUPS = ("red", "green", "blue", "grey")


class _Planted(Dataset):
    """8 px images of four colour groups; metadata names the group."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.groups = torch.randint(len(GROUPS), (n,), generator=g)
        centres = torch.rand(len(GROUPS), 3, 1, 1, generator=g)
        noise = 0.15 * torch.rand(n, 3, 8, 8, generator=g)
        self.images = (centres[self.groups] + noise).clamp(0, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        group = GROUPS[int(self.groups[i])]
        return {
            "image": self.images[i],
            "text": f"a {group} square",
            "label": self.groups[i],
            "key": f"k{i:04d}",
            "meta": {"group": group},
        }


def _collate(rows: list[dict]) -> dict:
    return {
        "image": torch.stack([r["image"] for r in rows]),
        "label": torch.stack([r["label"] for r in rows]),
        **{k: [r[k] for r in rows] for k in ("text", "key", "meta")},
    }


class _Toy(L.LightningModule):
    """forward/reference like SpecAlignModule; dropout and shuffling draw from the RNGs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(192, 32), nn.Dropout(0.3), nn.Linear(32, 8)
        )
        self.frozen = nn.Linear(192, 6).requires_grad_(False).eval()
        self.losses: list[float] = []
        self.flags: list[tuple[bool, bool]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def reference(self, batch: dict) -> torch.Tensor:
        return self.frozen(batch["image"].flatten(1))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.flags.append((self.net.training, self.frozen.training))
        z, r = self(batch["image"]), self.reference(batch)
        loss = (z[:, :6] - r).pow(2).mean() + 1e-3 * torch.rand(()).item()
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Planted(96, 0), batch_size=16, shuffle=True, collate_fn=_collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Planted(80, 1), batch_size=32, collate_fn=_collate)


def _fit(tmp_path: Path, callbacks: list, max_steps: int = 8, **kwargs) -> _Toy:
    L.seed_everything(0)
    module = _Toy()
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        precision="32-true",
        default_root_dir=tmp_path,
        callbacks=callbacks,
        logger=kwargs.pop("logger", False),
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, **kwargs)
    return module


def _callback(tmp_path: Path, **kwargs) -> ClusterLogCallback:
    options = dict(
        every_n_steps=3,
        probe_size=64,
        top_k=3,
        grid_modes=2,
        grid_samples=8,
        cluster_size=10,
        dirpath=tmp_path / "clusters",
    )
    return ClusterLogCallback(**{**options, **kwargs})


def test_callback_does_not_change_training(tmp_path):
    plain = _fit(tmp_path / "a", [])
    watched = _fit(tmp_path / "b", [_callback(tmp_path / "b")])
    assert (tmp_path / "b" / "clusters" / "step_0000003").is_dir()
    assert watched.losses == plain.losses
    for p, q in zip(plain.parameters(), watched.parameters(), strict=True):
        assert torch.equal(p, q)
    # The trainable part trains, the frozen part stays in eval throughout.
    assert set(watched.flags) == {(True, False)}


def test_artefacts_on_disk_are_readable_and_scalars_reach_every_logger(tmp_path):
    callback = _callback(tmp_path)
    _fit(tmp_path, [callback], logger=CSVLogger(tmp_path / "csv"))
    root = tmp_path / "clusters"
    steps = sorted(p.name for p in root.glob("step_*"))
    assert steps == ["step_0000000", "step_0000003", "step_0000006"]
    for folder in root.glob("step_*"):
        names = {p.name for p in folder.iterdir()}
        assert {
            "spectrum.png",
            "map.png",
            "modes.json",
            "enc_minus_ref_mode_0.png",
            "ref_minus_enc_mode_1.png",
        } <= names
        for png in folder.glob("*.png"):
            with Image.open(png) as image:
                image.verify()
        record = json.loads((folder / "modes.json").read_text())
        assert record["num_samples"] == 64 and len(record["modes"]) >= 2
        mode = record["modes"][0]
        assert mode["direction"] == "enc_minus_ref" and len(mode["top_keys"]) == 8
        assert mode["dominant"].startswith("group=") and 0 < mode["purity"] <= 1
        assert isinstance(mode["tracked_id"], int)
    history = [json.loads(line) for line in (root / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 3, 6]
    with Image.open(root / "tracks.png") as image:
        assert image.size[0] > 100

    with open(next((tmp_path / "csv").rglob("metrics.csv"))) as handle:
        columns = set(csv.DictReader(handle).fieldnames)
    expected = {
        "clusters/spec_diff",
        "clusters/enc_minus_ref/eig_2",
        "clusters/ref_minus_enc/eig_0",
        "clusters/enc_minus_ref/num_modes",
        "clusters/tracked/0/eigenvalue",
    }
    assert expected <= columns


def test_resume_keeps_tracked_ids_and_history(tmp_path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = _callback(tmp_path)
    _fit(tmp_path, [first, checkpoints], max_steps=6, enable_checkpointing=True)
    before = copy.deepcopy(first.state_dict())
    # Every matchable mode travels with its eigenvector over the probe set.
    assert before["tracker"]["known"] and all(
        len(k["scores"]) == 64 for k in before["tracker"]["known"]
    )
    second = _callback(tmp_path)
    loaded = {}
    load = second.load_state_dict

    def load_and_record(state):
        load(state)
        loaded.update(copy.deepcopy(second.tracker.state_dict()))

    second.load_state_dict = load_and_record
    _fit(tmp_path, [second], max_steps=9, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert loaded == before["tracker"]  # the checkpoint restores the tracker exactly
    # Step 6 is not evaluated twice; step 9 continues the ids and the history.
    assert [h["step"] for h in second.history] == [0, 3, 6, 9]
    assert second.history[:3] == before["history"]
    old_ids = set(before["history"][-1]["tracked"])
    new_ids = set(second.history[-1]["tracked"])
    assert old_ids & new_ids
    assert (
        min(new_ids - old_ids, default=before["tracker"]["next_id"])
        >= before["tracker"]["next_id"]
    )


def test_every_n_epochs_and_argument_validation(tmp_path):
    callback = _callback(tmp_path, every_n_steps=None, every_n_epochs=2, at_start=False)
    _fit(tmp_path, [callback], max_steps=24)  # 6 batches per epoch: 4 epochs
    assert [h["step"] for h in callback.history] == [12, 24]
    with pytest.raises(ValueError, match="not both"):
        ClusterLogCallback(every_n_steps=1, every_n_epochs=1)
    with pytest.raises(ValueError, match="every_n_steps"):
        ClusterLogCallback(every_n_steps=0)
    with pytest.raises(ValueError, match="grid_modes"):
        ClusterLogCallback(top_k=2, grid_modes=3)
    with pytest.raises(ValueError, match="map_method"):
        ClusterLogCallback(map_method="umap")


def test_config_node_instantiates(tmp_path):
    node = OmegaConf.load(CONF)
    context = {"paths": {"output_dir": str(tmp_path)}, "seed": 3, "model": {"probe_size": 96}}
    callback = instantiate(OmegaConf.merge(context, node).cluster_log)
    assert isinstance(callback, ClusterLogCallback)
    assert callback.dirpath == tmp_path / "clusters" and callback.seed == 3
    assert callback.probe_size == 96, "the module's probe"
    assert (callback.tracker.threshold, callback.tracker.memory) == (0.3, 2)


def test_stability_resamples_report_reappearance_and_the_noise_floor(tmp_path):
    callback = _callback(tmp_path, stability_resamples=4)
    _fit(tmp_path, [callback], logger=CSVLogger(tmp_path / "csv"))
    for folder in (tmp_path / "clusters").glob("step_*"):
        modes = json.loads((folder / "modes.json").read_text())["modes"]
        assert all(0.0 <= m["reappearance"] <= 1.0 for m in modes)
    with open(next((tmp_path / "csv").rglob("metrics.csv"))) as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("clusters/spec_diff")]
    for direction in ("enc_minus_ref", "ref_minus_enc"):
        assert all(float(r[f"clusters/{direction}/noise_floor"]) > 0 for r in rows)
    with pytest.raises(ValueError, match="stability_resamples must be an int >= 0"):
        _callback(tmp_path, stability_resamples=-1)


def test_stability_is_off_by_default(tmp_path):
    callback = _callback(tmp_path)
    _fit(tmp_path, [callback])
    (folder,) = sorted((tmp_path / "clusters").glob("step_*"))[:1]
    assert all(
        m["reappearance"] is None for m in json.loads((folder / "modes.json").read_text())["modes"]
    )
