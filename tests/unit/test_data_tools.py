"""scripts/make_shards.py and scripts/precompute_ref.py end to end (in-process)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spec_align.data import ResizeToTensor, build_eval_pipeline

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _image(path: Path, value: int, size=(12, 10), fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 3)).save(path, format=fmt)


def _read_all(pattern: str) -> dict:
    (batch,) = list(build_eval_pipeline([pattern], transform=ResizeToTensor(8), batch_size=100))
    return batch


def test_make_shards_from_class_folders_skips_unreadable_images(tmp_path, capsys):
    root = tmp_path / "pets"
    for i in range(5):
        _image(root / "black_cat" / f"{i}.jpg", i)
        _image(root / "dog" / f"{i}.png", 100 + i)
    _image(root / "dog" / "old.bmp", 200, fmt="BMP")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "shards"
    splits = _script("make_shards").main(
        ["--folder", str(root), "--out", str(out), "--samples-per-shard", "4"]
    )
    train = splits["train"]
    assert train.num_samples == 11 and len(train.paths) == 3
    assert json.loads((out / "sizes.json").read_text()) == {
        "train-000000.tar": 4,
        "train-000001.tar": 4,
        "train-000002.tar": 3,
    }
    skipped = json.loads((out / "skipped.json").read_text())
    assert [Path(s["path"]).name for s in skipped] == ["broken.jpg"]
    captured = capsys.readouterr()
    assert "skipped 1 unreadable images" in captured.out
    # A progress bar with the total on stderr: 12 sources, the unreadable one included.
    assert "writing train shards: 100%" in captured.err and "12/12" in captured.err
    assert json.loads((out / "classes.json").read_text()) == ["black_cat", "dog"]
    batch = _read_all(train.pattern)
    by_source = {
        m["source"]: (t, int(label))
        for m, t, label in zip(batch["meta"], batch["text"], batch["label"], strict=True)
    }
    assert by_source["black_cat/3.jpg"] == ("a photo of a black cat.", 0)
    assert by_source["dog/old.bmp"] == ("a photo of a dog.", 1)
    assert len(by_source) == 11
    # Keys follow the sorted source list, whatever the shuffle: stable across re-runs.
    key_of = dict(zip((m["source"] for m in batch["meta"]), batch["key"], strict=True))
    assert key_of["black_cat/0.jpg"] == "000000000"


def test_make_shards_from_csv_with_val_split_and_resize(tmp_path):
    rows = ["filepath,caption"]
    for i in range(10):
        _image(tmp_path / "img" / f"{i}.jpg", 20 * i, size=(64, 32))
        rows.append(f"img/{i}.jpg,caption number {i}")
    rows.append("img/missing.jpg,gone")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    splits = _script("make_shards").main(
        [
            "--csv",
            str(tmp_path / "data.csv"),
            "--out",
            str(out),
            "--val-fraction",
            "0.3",
            "--max-size",
            "16",
            "--samples-per-shard",
            "100",
        ]
    )
    assert splits["train"].num_samples + splits["val"].num_samples == 10
    assert splits["val"].num_samples == 3
    assert len(splits["val"].skipped) + len(splits["train"].skipped) == 1
    batch = _read_all(splits["train"].pattern)
    for meta, text in zip(batch["meta"], batch["text"], strict=True):
        assert text == f"caption number {Path(meta['source']).stem}"
        assert (meta["width"], meta["height"]) == (16, 8)
        assert int(batch["label"][0]) == -1


class _MeanColour(torch.nn.Module):
    """Toy reference encoder: mean colour plus a constant feature."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        # What the cache builder's ViewAdapter is made of: 8 px, no normalisation.
        self.image_size, self.image_mean, self.image_std = 8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.mean(dim=(2, 3)) * self.scale
        return torch.cat([mean, torch.ones(len(images), 1)], dim=1)


def test_precompute_ref_caches_an_importable_encoder(tmp_path, monkeypatch, capsys):
    root = tmp_path / "imgs"
    for i in range(6):
        _image(root / "a" / f"{i}.png", 40 * i)
    out = tmp_path / "shards"
    splits = _script("make_shards").main(
        ["--folder", str(root), "--out", str(out), "--samples-per-shard", "2"]
    )
    # Importable as module:attribute, as a user's encoder would be.
    module = type(sys)("toy_ref_encoder")
    module.MeanColour = _MeanColour
    monkeypatch.setitem(sys.modules, "toy_ref_encoder", module)
    cache = _script("precompute_ref").main(
        [
            "--shards",
            splits["train"].pattern,
            "--encoder",
            "toy_ref_encoder:MeanColour",
            "--encoder-kwargs",
            '{"scale": 255.0}',
            "--out",
            str(tmp_path / "ref"),
            "--num-workers",
            "2",
            "--batch-size",
            "4",
            "--dtype",
            "float32",
        ]
    )
    assert len(cache) == 6 and cache.dim == 4
    progress = capsys.readouterr().err
    assert "reference cache: 100%" in progress and "6/6" in progress
    assert cache.meta["encoder"] == "toy_ref_encoder:MeanColour"
    batch = _read_all(splits["train"].pattern)
    for key, meta in zip(batch["key"], batch["meta"], strict=True):
        value = 40 * int(Path(meta["source"]).stem)
        np.testing.assert_allclose(cache[key], [value, 255 - value, 3, 1], atol=1e-3)
