"""Streaming two encoders over a data loader into an on-disk feature cache.

A feature cache is an embedding cache directory (`spec_align.data.embedding_cache`):

    x.npy, y.npy   (n, d_x), (n, d_y) float32 embeddings, row i = sample i; memory-mapped
    labels.npy     (n,) int64, -1 where unknown
    keys.jsonl     the sample keys
    texts.jsonl    the sample texts (captions; "" where none)
    attributes.jsonl  per sample its metadata dict as a JSON string ("null" where none)
    meta.json      n, dims, the `layout` version and the `fingerprint` (encoders, data) it
                   was computed for

Features are appended batch by batch, so memory does not grow with n. A second comparison
with the same fingerprint (other bandwidths, kernel, eta) reads the cache and skips the
encoders. A cache of another layout (e.g. the a.npy/b.npy files of earlier versions) does not
match any fingerprint, so `compare.py` recomputes it; opening one directly is a clear error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from spec_align.data.embedding_cache import EmbeddingCache, EmbeddingCacheWriter

__all__ = ["FEATURE_CACHE_LAYOUT", "FeatureCache", "PairTransform", "extract_features"]

# Version of the files above; 2: x/y arrays and attributes (1 had a.npy/b.npy, no attributes).
FEATURE_CACHE_LAYOUT = 2


class PairTransform:
    """One image -> both encoders' preprocessed inputs, flattened into one tensor.

    The data pipeline stacks one tensor per sample; two encoders usually want different
    sizes and normalisations, so both inputs travel concatenated and `split` restores them.

    Args:
        transform_x: PIL image -> tensor of `shape_x` (encoder x's eval transform).
        transform_y: PIL image -> tensor of `shape_y` (encoder y's).
        shape_x: (3, H_x, W_x).
        shape_y: (3, H_y, W_y).
    """

    def __init__(
        self,
        transform_x: Callable,
        transform_y: Callable,
        shape_x: tuple[int, ...],
        shape_y: tuple[int, ...],
    ) -> None:
        self.transform_x, self.transform_y = transform_x, transform_y
        self.shape_x, self.shape_y = tuple(shape_x), tuple(shape_y)

    def __call__(self, image: object) -> Tensor:
        return torch.cat([self.transform_x(image).flatten(), self.transform_y(image).flatten()])

    def split(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """(B, size_x + size_y) -> (B, *shape_x), (B, *shape_y)."""
        size_x = int(np.prod(self.shape_x))
        return (
            batch[:, :size_x].reshape(-1, *self.shape_x),
            batch[:, size_x:].reshape(-1, *self.shape_y),
        )


class FeatureCache(EmbeddingCache):
    """Read side of a feature cache directory (see the module docstring).

    Args:
        path: the cache directory.

    Attributes:
        x, y: memory-mapped (n, d_x) and (n, d_y) embeddings (the first and second encoder).
        labels: (n,) int64 memory map.
        meta: the contents of meta.json.
    """

    kind = "feature cache"
    how_to_build = "compute one with extract_features"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        layout = self.meta.get("layout", 1)
        if layout != FEATURE_CACHE_LAYOUT:
            raise FileNotFoundError(
                f"{self.path} is a {self.kind} of layout {layout} (an earlier version's files); "
                f"this version reads layout {FEATURE_CACHE_LAYOUT}: delete it, or point "
                "compare.py's cache_dir at it to have it recomputed"
            )
        self.x, self.y, self.labels = (self.array(name) for name in ("x", "y", "labels"))

    def texts(self) -> list[str]:
        """The n sample texts, in row order ("" where a sample has none)."""
        return self.lines("texts")

    def attributes(self) -> list[dict | None]:
        """The n samples' metadata dicts, in row order (None where a sample has none)."""
        return [json.loads(line) for line in self.lines("attributes")]

    @classmethod
    def matches(cls, path: str | os.PathLike, fingerprint: dict) -> bool:
        """Whether `path` holds a complete cache computed for `fingerprint`."""
        if not cls.is_complete(path):
            return False
        meta = EmbeddingCache(path).meta
        return (
            meta.get("layout") == FEATURE_CACHE_LAYOUT and meta.get("fingerprint") == fingerprint
        )


@torch.no_grad()
def extract_features(
    batches: Iterable[dict],
    encoder_x: nn.Module,
    encoder_y: nn.Module,
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
        batches: dict batches with "image" (B, ...) and optionally "key", "label", "text",
            "meta" (the datamodule's format).
        encoder_x: images -> (B, d_x), the first side (positive modes: clusters it forms).
        encoder_y: images -> (B, d_y), the second side.
        cache_dir: output directory (replaced if it exists).
        split: batch["image"] -> (images for x, images for y), e.g. `PairTransform.split`;
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
    encoder_x.eval().to(device)
    encoder_y.eval().to(device)
    dtypes = {"x": np.float32, "y": np.float32, "labels": np.int64}
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
            images_x, images_y = (split or (lambda t: (t, t)))(batch["image"])
            features = {
                "x": encoder_x(images_x.to(device, non_blocking=True)),
                "y": encoder_y(images_y.to(device, non_blocking=True)),
            }
            count = features["x"].shape[0]
            arrays = {name: value.float().cpu().numpy() for name, value in features.items()}
            labels = batch.get("label")
            arrays["labels"] = np.full(count, -1) if labels is None else np.asarray(labels)
            keys = batch.get("key") or [str(writer.rows + i) for i in range(count)]
            attributes = [json.dumps(m) for m in batch.get("meta") or [None] * count]
            writer.append(
                keys,
                arrays,
                {"texts": batch.get("text") or [""] * count, "attributes": attributes},
            )
            bar.update(count if num_samples is not None else 1)
        if not writer.rows:
            raise ValueError("the data loader yielded no batches; nothing to compare")
        meta = {
            "layout": FEATURE_CACHE_LAYOUT,
            "dim_x": writer.shapes["x"][0],
            "dim_y": writer.shapes["y"][0],
            "fingerprint": fingerprint or {},
        }
        return FeatureCache(writer.close(meta))


def _length(batches: Iterable) -> int | None:
    """len(batches) where defined (a DataLoader over a sized dataset), else None."""
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None
