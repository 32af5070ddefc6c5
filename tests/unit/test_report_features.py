"""Feature extraction through two encoders into the on-disk cache, and reading it back."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from spec_align.explain import compare_embeddings
from spec_align.explain.extract import FeatureCache, PairTransform, extract_features


def _batches(n=50, batch=16):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 8, 8, generator=generator)
    for start in range(0, n, batch):
        rows = range(start, min(start + batch, n))
        yield {
            "image": images[start : start + batch],
            "key": [f"k{i}" for i in rows],
            "label": torch.tensor([i % 3 for i in rows]),
            "text": [f"text\n{i}" for i in rows],
        }


def _encoder(dim, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, dim), nn.Dropout(0.5))


def test_cache_round_trip_matches_in_memory_features(tmp_path):
    enc_x, enc_y = _encoder(5, 0), _encoder(7, 1)
    cache = extract_features(
        _batches(), enc_x, enc_y, tmp_path / "cache", fingerprint={"x": "lin5"}, progress=False
    )
    assert not enc_x.training  # eval mode: dropout off, features deterministic
    images = torch.cat([b["image"] for b in _batches()])
    with torch.no_grad():
        expected_x, expected_y = enc_x(images), enc_y(images)
    assert isinstance(cache.x, np.memmap) and cache.x.shape == (50, 5) and len(cache) == 50
    # The cache embeds batches of 16, the reference all 50 at once: float32 BLAS rounds the
    # two differently (a few ulp), which a relative tolerance alone fails near zero.
    np.testing.assert_allclose(cache.x, expected_x.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cache.y, expected_y.numpy(), rtol=1e-6, atol=1e-6)
    assert cache.labels.tolist() == [i % 3 for i in range(50)]
    assert cache.keys()[:2] == ["k0", "k1"] and cache.texts()[3] == "text\n3"
    assert FeatureCache.matches(tmp_path / "cache", {"x": "lin5"})
    assert not FeatureCache.matches(tmp_path / "cache", {"x": "other"})
    assert not list(tmp_path.glob("cache.partial*"))
    from_cache = compare_embeddings(cache.x, cache.y, kernel="cosine", top_k=2)
    in_memory = compare_embeddings(
        expected_x.double(), expected_y.double(), kernel="cosine", top_k=2
    )
    assert from_cache.mode_eigenvalues.tolist() == pytest.approx(
        in_memory.mode_eigenvalues.tolist(), abs=1e-6
    )
    assert json.loads((tmp_path / "cache" / "meta.json").read_text())["num_samples"] == 50


def test_pair_transform_round_trips_two_sizes():
    pair = PairTransform(lambda im: im[:, :4, :4] * 2, lambda im: im, (3, 4, 4), (3, 8, 8))
    images = torch.rand(2, 3, 8, 8)
    flat = torch.stack([pair(im) for im in images])
    x, y = pair.split(flat)
    assert torch.equal(x, images[:, :, :4, :4] * 2) and torch.equal(y, images)


def test_empty_loader_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no batches"):
        extract_features([], _encoder(2, 0), _encoder(2, 1), tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


def test_cache_keeps_attributes_and_refuses_an_earlier_layout(tmp_path):
    def with_meta():
        for i, batch in enumerate(_batches(n=20)):
            count = len(batch["key"])
            yield {**batch, "meta": [{"texture": "dots", "batch": i}] * (count - 1) + [None]}

    cache = extract_features(
        with_meta(), _encoder(3, 0), _encoder(4, 1), tmp_path / "cache", progress=False
    )
    attributes = cache.attributes()
    assert attributes[0] == {"texture": "dots", "batch": 0} and attributes[15] is None
    assert len(attributes) == 20
    # An earlier version's cache (a.npy / b.npy, no layout): never matched, a clear error.
    meta_file = tmp_path / "cache" / "meta.json"
    meta = json.loads(meta_file.read_text())
    del meta["layout"]
    meta_file.write_text(json.dumps(meta))
    assert not FeatureCache.matches(tmp_path / "cache", meta["fingerprint"])
    with pytest.raises(FileNotFoundError, match="layout 1 .*recomputed"):
        FeatureCache(tmp_path / "cache")
