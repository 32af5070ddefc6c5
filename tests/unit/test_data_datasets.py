"""Built-in datasets: deterministic generation, contents, and SPEC's recovery of `synthetic`'s
known differential clusters."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from spec_align import compare
from spec_align.data import (
    ResizeToTensor,
    build_eval_pipeline,
    digits,
    expand_shards,
    synthetic,
    textures,
)

SMALL = dict(num_train=600, num_val=64, image_size=32, samples_per_shard=100)


@pytest.fixture(scope="module")
def small_synthetic(tmp_path_factory) -> dict:
    return synthetic.prepare(tmp_path_factory.mktemp("data"), **SMALL)


def _digest(pattern: str) -> str:
    sha = hashlib.sha256()
    for path in expand_shards(pattern):
        sha.update(Path(path).read_bytes())
    return sha.hexdigest()


def _read(pattern: str) -> list[dict]:
    pipeline = build_eval_pipeline(
        expand_shards(pattern), transform=ResizeToTensor(32), batch_size=1000
    )
    return list(pipeline)


def test_synthetic_generation_is_deterministic_and_cached(small_synthetic, tmp_path):
    again = synthetic.prepare(tmp_path, **SMALL)
    for split in ("train", "val"):
        assert _digest(again[split]) == _digest(small_synthetic[split])
    assert again["train_samples"] == 600 and len(expand_shards(again["train"])) == 6
    # A second call reuses the cached copy instead of regenerating it.
    stamp = Path(expand_shards(again["train"])[0]).stat().st_mtime_ns
    assert synthetic.prepare(tmp_path, **SMALL)["root"] == again["root"]
    assert Path(expand_shards(again["train"])[0]).stat().st_mtime_ns == stamp
    other = synthetic.prepare(tmp_path, **{**SMALL, "seed": 1})
    assert _digest(other["train"]) != _digest(again["train"])


def test_synthetic_captions_labels_and_metadata_match_the_ground_truth(small_synthetic):
    attributes = synthetic.load_attributes(small_synthetic)
    (batch,) = _read(small_synthetic["train"])
    assert len(batch["key"]) == 600
    for key, text, label, meta in zip(
        batch["key"], batch["text"], batch["label"].tolist(), batch["meta"], strict=True
    ):
        attrs = attributes[key]
        assert meta == attrs
        for said in ("shape", "colour", "side"):
            assert attrs[said] in text
        assert not any(texture in text for texture in synthetic.TEXTURES)
        assert synthetic.CLASSES[label] == f"{attrs['colour']} {attrs['shape']}"
    counts = Counter(attributes[k]["texture"] for k in batch["key"])
    for texture, frequency in zip(synthetic.TEXTURES, synthetic.TEXTURE_FREQUENCIES, strict=True):
        assert abs(counts[texture] / 600 - frequency) < 0.06
    # Images show the attributes: the shape's colour dominates its side of the image.
    image = batch["image"][0].float()
    attrs = attributes[batch["key"][0]]
    half = image[:, :, :16] if attrs["side"] == "left" else image[:, :, 16:]
    channel = synthetic.COLOURS.index(attrs["colour"])
    assert (
        half[channel].mean() > half[[c for c in range(3) if c != channel]].mean(dim=(1, 2)).max()
    )


def _purity(indices, attributes: list[dict], name: str) -> tuple[float, str]:
    value, count = Counter(attributes[i][name] for i in indices).most_common(1)[0]
    return count / len(indices), value


def _attribute_embeddings(small_synthetic, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list]:
    """Stand-ins for the two encoders of the ground truth (module docstring of synthetic):
    reference = shape, colour, texture (no position); caption encoder = shape, colour, side."""
    attributes = synthetic.load_attributes(small_synthetic)
    rows = [attributes[k] for k in sorted(attributes) if k.startswith("syn_train")]

    def onehot(name: str, values: tuple[str, ...]) -> np.ndarray:
        return np.array([[row[name] == v for v in values] for row in rows], dtype=np.float64)

    shape, colour = onehot("shape", synthetic.SHAPES), onehot("colour", synthetic.COLOURS)
    rng = np.random.default_rng(seed)
    ref = np.hstack([shape, colour, onehot("texture", synthetic.TEXTURES)])
    caption = np.hstack([shape, colour, onehot("side", synthetic.SIDES)])
    # Noise so that samples within a group are not identical, as real embeddings are not.
    ref += 0.1 * rng.standard_normal(ref.shape)
    caption += 0.1 * rng.standard_normal(caption.shape)
    return ref, caption, rows


def _check_ground_truth(result, rows: list[dict], m: int = 25) -> None:
    # Thresholds: chance purity is 0.4 for texture (largest group) and 0.5 for side; with m=25
    # a pure pole is unmistakable at 0.9 and a chance-level one stays below 0.75 (2.5 sd).
    num_textures = len(synthetic.TEXTURES)
    assert result.num_positive >= num_textures - 1
    found = set()
    for mode in range(num_textures - 1):
        poles = [result.top_samples(mode, m, largest=pole).tolist() for pole in (True, False)]
        texture = [_purity(p, rows, "texture") for p in poles]
        assert max(p for p, _ in texture) >= 0.9, (mode, texture)
        found |= {value for p, value in texture if p >= 0.9}
        assert all(_purity(p, rows, "side")[0] <= 0.75 for p in poles)
    # Texture contrasts between all four groups, not one group found repeatedly.
    assert found == set(synthetic.TEXTURES)
    side_mode = result.num_positive  # the strongest cluster the caption encoder forms alone
    for pole in (True, False):
        top = result.top_samples(side_mode, m, largest=pole).tolist()
        assert _purity(top, rows, "side")[0] >= 0.95
        assert _purity(top, rows, "texture")[0] <= 0.75


def test_spec_recovers_synthetic_differential_clusters_cosine(small_synthetic):
    ref, caption, rows = _attribute_embeddings(small_synthetic)
    result = compare(ref, caption, kernel="cosine", top_k=4, names=("ref", "caption"))
    _check_ground_truth(result, rows)


@pytest.mark.slow
def test_spec_recovers_synthetic_differential_clusters_gaussian(small_synthetic):
    ref, caption, rows = _attribute_embeddings(small_synthetic, seed=1)
    result = compare(ref, caption, kernel="gaussian", top_k=4, names=("ref", "caption"))
    _check_ground_truth(result, rows)


def test_digits_are_real_scans_with_captions_and_labels(tmp_path):
    info = digits.prepare(tmp_path)
    assert info["train_samples"] + info["val_samples"] == 1797
    assert abs(info["val_samples"] - 297) <= 5
    assert len(expand_shards(info["val"])) >= 4  # enough for 4 workers
    (val,) = _read(info["val"])
    labels = val["label"].tolist()
    assert set(labels) == set(range(10))
    assert all(str(d) in text for d, text in zip(labels, val["text"], strict=True))
    assert {m["digit"] for m in val["meta"]} == set(range(10))
    train_keys = {k for b in _read(info["train"]) for k in b["key"]}
    assert not train_keys & set(val["key"])
    assert val["image"].shape[1:] == (3, 32, 32)
    assert _digest(info["train"]) == _digest(digits.prepare(tmp_path / "again")["train"])


def test_textures_ship_2000_labelled_images(tmp_path):
    info = textures.prepare(tmp_path)
    assert (info["train_samples"], info["val_samples"]) == (1600, 400)
    (val,) = _read(info["val"])
    counts = Counter(val["label"].tolist())
    assert counts == {0: 200, 1: 100, 2: 100}
    assert all(
        textures.CAPTIONS[m["class"]] == t for m, t in zip(val["meta"], val["text"], strict=True)
    )
