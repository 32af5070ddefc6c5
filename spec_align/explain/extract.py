"""Streaming two encoders over a data loader into an on-disk feature cache.

A feature cache is an embedding cache directory (`spec_align.data.embedding_cache`):

    a.npy, b.npy   (n, d_a), (n, d_b) float32 embeddings, row i = sample i; memory-mapped
    labels.npy     (n,) int64, -1 where unknown
    keys.jsonl     the sample keys
    texts.jsonl    the sample texts ("" where none)
    meta.json      n, dims, and the `fingerprint` (encoders, data) it was computed for

Features are appended batch by batch, so memory does not grow with n. A second comparison
with the same fingerprint (other bandwidths, kernel, eta) reads the cache and skips the
encoders.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from spec_align.data.embedding_cache import EmbeddingCache, EmbeddingCacheWriter

__all__ = ["FeatureCache", "PairTransform", "extract_features"]


class PairTransform:
    """One image -> both encoders' preprocessed inputs, flattened into one tensor.

    The data pipeline stacks one tensor per sample; two encoders usually want different
    sizes and normalisations, so both inputs travel concatenated and `split` restores them.

    Args:
        transform_a: PIL image -> tensor of `shape_a` (encoder A's eval transform).
        transform_b: PIL image -> tensor of `shape_b`.
        shape_a: (3, H_a, W_a).
        shape_b: (3, H_b, W_b).
    """

    def __init__(
        self,
        transform_a: Callable,
        transform_b: Callable,
        shape_a: tuple[int, ...],
        shape_b: tuple[int, ...],
    ) -> None:
        self.transform_a, self.transform_b = transform_a, transform_b
        self.shape_a, self.shape_b = tuple(shape_a), tuple(shape_b)

    def __call__(self, image: object) -> Tensor:
        return torch.cat([self.transform_a(image).flatten(), self.transform_b(image).flatten()])

    def split(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """(B, size_a + size_b) -> (B, *shape_a), (B, *shape_b)."""
        size_a = int(np.prod(self.shape_a))
        return (
            batch[:, :size_a].reshape(-1, *self.shape_a),
            batch[:, size_a:].reshape(-1, *self.shape_b),
        )


class FeatureCache(EmbeddingCache):
    """Read side of a feature cache directory (see the module docstring).

    Args:
        path: the cache directory.

    Attributes:
        a, b: memory-mapped (n, d) embeddings.
        labels: (n,) int64 memory map.
        meta: the contents of meta.json.
    """

    kind = "feature cache"
    how_to_build = "compute one with extract_features"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self.a, self.b, self.labels = (self.array(name) for name in ("a", "b", "labels"))

    def texts(self) -> list[str]:
        """The n sample texts, in row order ("" where a sample has none)."""
        return self.lines("texts")

    @classmethod
    def matches(cls, path: str | os.PathLike, fingerprint: dict) -> bool:
        """Whether `path` holds a complete cache computed for `fingerprint`."""
        if not cls.is_complete(path):
            return False
        return EmbeddingCache(path).meta.get("fingerprint") == fingerprint


@torch.no_grad()
def extract_features(
    batches: Iterable[dict],
    encoder_a: nn.Module,
    encoder_b: nn.Module,
    cache_dir: str | os.PathLike,
    *,
    split: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    fingerprint: dict | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    total: int | None = None,
    num_samples: int | None = None,
) -> FeatureCache:
    """Embed every batch with both encoders and append the features to `cache_dir`.

    The encoders run in eval mode under no_grad, on the GPU when there is one. The cache is
    written beside `cache_dir` and renamed when complete, so an interrupted run never leaves
    a directory that looks like a finished cache.

    Args:
        batches: dict batches with "image" (B, ...) and optionally "key", "label", "text"
            (the datamodule's format).
        encoder_a: images -> (B, d_a).
        encoder_b: images -> (B, d_b).
        cache_dir: output directory (replaced if it exists).
        split: batch["image"] -> (images for A, images for B), e.g. `PairTransform.split`;
            None feeds the same images to both.
        fingerprint: JSON-ready description of encoders and data, stored for cache lookups.
        device: where the encoders run (default: CUDA if available, else CPU).
        progress: show a tqdm progress bar (stderr).
        total: number of batches, for the progress bar (default: `len(batches)` if it has
            one).
        num_samples: number of samples, if known: the bar then counts samples (with an
            ETA) instead of batches.

    Returns:
        The written `FeatureCache`.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder_a.eval().to(device)
    encoder_b.eval().to(device)
    dtypes = {"a": np.float32, "b": np.float32, "labels": np.int64}
    with (
        EmbeddingCacheWriter(cache_dir, dtypes) as writer,
        tqdm(
            total=num_samples if num_samples is not None else total or _length(batches),
            unit="sample" if num_samples is not None else "batch",
            disable=not progress,
            desc="features",
        ) as bar,
    ):
        for batch in batches:
            images_a, images_b = (split or (lambda t: (t, t)))(batch["image"])
            features = {
                "a": encoder_a(images_a.to(device, non_blocking=True)),
                "b": encoder_b(images_b.to(device, non_blocking=True)),
            }
            count = features["a"].shape[0]
            arrays = {name: value.float().cpu().numpy() for name, value in features.items()}
            labels = batch.get("label")
            arrays["labels"] = np.full(count, -1) if labels is None else np.asarray(labels)
            keys = batch.get("key") or [str(writer.rows + i) for i in range(count)]
            writer.append(keys, arrays, {"texts": batch.get("text") or [""] * count})
            bar.update(count if num_samples is not None else 1)
        if not writer.rows:
            raise ValueError("the data loader yielded no batches; nothing to compare")
        dim_a, dim_b = writer.shapes["a"][0], writer.shapes["b"][0]
        meta = {"dim_a": dim_a, "dim_b": dim_b, "fingerprint": fingerprint or {}}
        return FeatureCache(writer.close(meta))


def _length(batches: Iterable) -> int | None:
    """len(batches) where defined (a DataLoader over a sized dataset), else None."""
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None
