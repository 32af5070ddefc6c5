"""Data layer: webdataset pipelines, the Lightning datamodule, built-in datasets, ref caches."""

from spec_align.data.embedding_cache import EmbeddingCache, EmbeddingCacheWriter
from spec_align.data.ref_builder import build_ref_cache, compute_ref_cache
from spec_align.data.ref_cache import RefCache, RefCacheMissError, write_ref_cache
from spec_align.data.samples import SkipCounter, collate, decode_sample
from spec_align.data.shard_sources import SharedEpoch
from spec_align.data.shards import (
    ShardSet,
    check_shard_count,
    expand_shards,
    images_from_csv,
    images_from_folder,
    make_shards,
    read_sizes,
    shard_sizes,
    write_shards,
)
from spec_align.data.transforms import ResizeToTensor, ViewAdapter, images_to_float
from spec_align.data.wds import build_eval_pipeline, build_train_pipeline

__all__ = [
    "DATASETS",
    "EmbeddingCache",
    "EmbeddingCacheWriter",
    "RefCache",
    "RefCacheMissError",
    "ResizeToTensor",
    "ShardSet",
    "SharedEpoch",
    "SkipCounter",
    "ViewAdapter",
    "WdsDataModule",
    "build_eval_pipeline",
    "build_ref_cache",
    "build_train_pipeline",
    "check_shard_count",
    "collate",
    "compute_ref_cache",
    "decode_sample",
    "expand_shards",
    "images_from_csv",
    "images_from_folder",
    "images_to_float",
    "make_shards",
    "read_sizes",
    "shard_sizes",
    "write_ref_cache",
    "write_shards",
]

_LAZY = {"DATASETS": "datamodule", "WdsDataModule": "datamodule"}


def __getattr__(name: str) -> object:
    # The datamodule pulls in Lightning (seconds to import); shard tools and
    # scripts do not need it, so they are imported on first access.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"spec_align.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
