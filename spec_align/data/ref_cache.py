"""Reference feature cache: a frozen encoder's embedding of every sample, stored by sample key.

Training with a cache never runs the reference network: the data pipeline looks up each
sample's `__key__` and puts the row into the batch as "ref". A cache is an embedding cache
directory (`spec_align.data.embedding_cache`):

    embeddings.npy   (n, d) float16 or float32, memory-mapped when read
    keys.jsonl       the n sample keys, row i belongs to line i
    meta.json        num_samples, dim, dtype, the shards and the encoder that produced it

Pairing is by exact key, never by position, so worker order, shuffling and resampling
cannot misalign embeddings and samples. Caches are built by `build_ref_cache`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from spec_align.data.embedding_cache import EmbeddingCache, EmbeddingCacheWriter

__all__ = [
    "RefCache",
    "RefCacheMissError",
    "ref_cache_meta",
    "ref_cache_writer",
    "write_ref_cache",
]


class RefCacheMissError(KeyError):
    """A sample key has no entry in the reference cache (the cache does not match the shards)."""


class RefCache(EmbeddingCache):
    """Read-only view of a reference cache directory, by sample key.

    Args:
        path: the cache directory written by `write_ref_cache` or `build_ref_cache`.

    Shapes:
        cache[key] -> (d,) float32; cache.embeddings -> (n, d)
    """

    kind = "reference cache"
    how_to_build = "create one with scripts/precompute_ref.py"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self.embeddings = self.array("embeddings")
        keys = self.keys()
        self.index = {key: row for row, key in enumerate(keys)}
        if len(self.index) != len(keys) or len(keys) != self.embeddings.shape[0]:
            raise ValueError(
                f"corrupt reference cache {self.path}: {len(keys)} keys ({len(self.index)} "
                f"unique) for {self.embeddings.shape[0]} embeddings"
            )

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def __getitem__(self, key: str) -> np.ndarray:
        row = self.index.get(key)
        if row is None:
            raise RefCacheMissError(
                f"sample {key!r} is not in the reference cache {self.path} ({len(self)} keys); "
                "the cache was computed from other shards: rerun scripts/precompute_ref.py"
            )
        return np.asarray(self.embeddings[row], dtype=np.float32)


def ref_cache_writer(path: str | os.PathLike, dtype: str = "float16") -> EmbeddingCacheWriter:
    """A writer of reference caches: unique keys, `embeddings` stored as `dtype`."""
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    return EmbeddingCacheWriter(path, {"embeddings": dtype}, unique_keys=True)


def ref_cache_meta(writer: EmbeddingCacheWriter, meta: dict | None = None) -> dict:
    """meta.json of a reference cache: dim and dtype (what `ref_cache_dim` reads), then `meta`."""
    (dim,) = writer.shapes["embeddings"]
    return {"dim": int(dim), "dtype": writer.dtypes["embeddings"], **(meta or {})}


def write_ref_cache(
    path: str | os.PathLike,
    keys: Sequence[str],
    embeddings: np.ndarray | Tensor,
    *,
    dtype: str = "float16",
    meta: dict | None = None,
) -> RefCache:
    """Store embeddings by key as a cache directory (replaced if it exists).

    Args:
        path: output directory.
        keys: sample keys, unique.
        embeddings: (n, d), row i for keys[i].
        dtype: stored precision, "float16" (half the disk and page cache) or "float32".
        meta: extra provenance merged into meta.json.
    """
    if isinstance(embeddings, Tensor):
        embeddings = embeddings.detach().cpu().float().numpy()
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(keys):
        raise ValueError(f"embeddings {embeddings.shape} do not match {len(keys)} keys as (n, d)")
    with ref_cache_writer(path, dtype) as writer:
        writer.append(keys, {"embeddings": embeddings})
        return RefCache(writer.close(ref_cache_meta(writer, meta)))
