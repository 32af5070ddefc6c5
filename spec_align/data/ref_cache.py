"""Reference feature cache: a frozen encoder's embedding of every sample, stored by sample key.

Training with a cache never runs the reference network: the data pipeline looks up each
sample's `__key__` and puts the row into the batch as "ref". A cache is a directory:

    embeddings.npy   (n, d) float16 or float32, memory-mapped when read
    keys.json        the n sample keys, row i belongs to keys[i]
    meta.json        n, dim, dtype, the shards and the encoder that produced it

Pairing is by exact key, never by position, so worker order, shuffling and resampling
cannot misalign embeddings and samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["RefCache", "RefCacheMissError", "compute_ref_cache", "write_ref_cache"]


class RefCacheMissError(KeyError):
    """A sample key has no entry in the reference cache (the cache does not match the shards)."""


class RefCache:
    """Read-only view of a reference cache directory.

    Args:
        path: the cache directory written by `write_ref_cache`.

    Shapes:
        cache[key] -> (d,) float32; cache.embeddings -> (n, d)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        for name in ("embeddings.npy", "keys.json"):
            if not (self.path / name).exists():
                raise FileNotFoundError(
                    f"{self.path} is not a reference cache (no {name}); create one with "
                    "scripts/precompute_ref.py"
                )
        self.embeddings = np.load(self.path / "embeddings.npy", mmap_mode="r")
        keys = json.loads((self.path / "keys.json").read_text())
        self.index = {key: row for row, key in enumerate(keys)}
        if len(self.index) != len(keys) or len(keys) != self.embeddings.shape[0]:
            raise ValueError(
                f"corrupt reference cache {self.path}: {len(keys)} keys ({len(self.index)} "
                f"unique) for {self.embeddings.shape[0]} embeddings"
            )
        meta_file = self.path / "meta.json"
        self.meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def keys(self) -> list[str]:
        return list(self.index)

    def __getitem__(self, key: str) -> np.ndarray:
        row = self.index.get(key)
        if row is None:
            raise RefCacheMissError(
                f"sample {key!r} is not in the reference cache {self.path} ({len(self)} keys); "
                "the cache was computed from other shards: rerun scripts/precompute_ref.py"
            )
        return np.asarray(self.embeddings[row], dtype=np.float32)

    def get_batch(self, keys: Sequence[str]) -> np.ndarray:
        """Embeddings of `keys` in order, (len(keys), d) float32."""
        return np.stack([self[key] for key in keys])


def write_ref_cache(
    path: str | os.PathLike,
    keys: Sequence[str],
    embeddings: np.ndarray | Tensor,
    *,
    dtype: str = "float16",
    meta: dict | None = None,
) -> RefCache:
    """Store embeddings by key as a cache directory (overwritten if it exists).

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
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dupes = [k for k in keys if k in seen or seen.add(k)]
        raise ValueError(f"duplicate sample keys cannot be paired exactly: {dupes[:5]}")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "embeddings.npy", embeddings.astype(dtype), allow_pickle=False)
    (path / "keys.json").write_text(json.dumps(list(keys)))
    info = {"num_samples": len(keys), "dim": int(embeddings.shape[1]), "dtype": dtype}
    (path / "meta.json").write_text(json.dumps({**info, **(meta or {})}, indent=1) + "\n")
    return RefCache(path)


@torch.no_grad()
def compute_ref_cache(
    shards: str | Sequence[str],
    encoder: Callable[[Tensor], Tensor],
    path: str | os.PathLike,
    *,
    transform: Callable | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    dtype: str = "float16",
    meta: dict | None = None,
) -> RefCache:
    """Run a frozen encoder once over every sample of `shards` and cache the embeddings.

    Corrupt samples are skipped as in training (they would be skipped there too); meta.json
    records the `SkipCounter` counts (`samples_skipped`, `shard_errors`). Progress goes to a
    tqdm bar on stderr, with a total from sizes.json where it lists every shard.

    Args:
        shards: shard spec (pattern, list or URLs; see `expand_shards`).
        encoder: images (B, 3, H, W) -> (B, d); an nn.Module is put in eval mode.
        path: output cache directory.
        transform: PIL image -> (3, H, W) tensor, the encoder's eval preprocessing
            (default `ResizeToTensor(224)`).
        batch_size: images per forward pass.
        num_workers: DataLoader workers decoding images (at most one per shard is used).
        device: where the encoder runs.
        dtype: stored precision (see `write_ref_cache`).
        meta: extra provenance for meta.json (e.g. the encoder's name).

    Returns:
        The written cache.
    """
    # Imported here: the pipeline module imports this one for RefCache.
    from spec_align.data._progress import progress
    from spec_align.data.shards import expand_shards, read_sizes
    from spec_align.data.transforms import ResizeToTensor, images_to_float
    from spec_align.data.wds import SkipCounter, build_eval_pipeline

    urls = expand_shards(shards)
    num_workers = min(num_workers, len(urls))
    counter = SkipCounter()
    pipeline = build_eval_pipeline(
        urls,
        transform=transform or ResizeToTensor(224),
        batch_size=batch_size,
        num_workers=num_workers,
        counter=counter,
    )
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=num_workers)
    if isinstance(encoder, torch.nn.Module):
        encoder.eval().to(device)
    keys: list[str] = []
    chunks: list[np.ndarray] = []
    with progress(desc="reference cache", total=read_sizes(urls)) as bar:
        for batch in loader:
            features = encoder(images_to_float(batch["image"].to(device)))
            chunks.append(features.float().cpu().numpy())
            keys.extend(batch["key"])
            bar.update(len(batch["key"]))
    if not keys:
        raise ValueError(f"no decodable samples in {len(urls)} shards")
    info = {"shards": urls, **counter.counts(), **(meta or {})}
    return write_ref_cache(path, keys, np.concatenate(chunks), dtype=dtype, meta=info)
