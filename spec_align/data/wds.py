"""Webdataset pipelines: resampled training streams, ordered evaluation passes, batches.

Batches are dicts (see `samples.collate`). Decoding and batching run inside the DataLoader
workers, so the loader is built with `batch_size=None`. The stages come from `shard_sources`
(which shards, in what order: seeded per rank, worker and epoch) and `samples` (tar reading,
decoding, collation; corrupt data is counted and skipped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import webdataset as wds
from torch.utils.data import IterableDataset

from spec_align.data.samples import Batch, Decode, SkipCounter, TarSamples
from spec_align.data.shard_sources import (
    ResampledShards,
    SeededShuffle,
    SharedEpoch,
    SplitShards,
    reader_shards,
)
from spec_align.data.shards import ShardSpec, expand_shards, shard_sizes
from spec_align.data.transforms import ImageTransform

__all__ = ["build_eval_pipeline", "build_train_pipeline"]


class _Pipeline(wds.DataPipeline):
    """DataPipeline with an optional exact `__len__` (batches per rank) for progress bars."""

    def __init__(self, *stages: Any, length: int | None = None) -> None:
        super().__init__(*stages)
        self.num_batches = length

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this pipeline has no fixed length")
        return self.num_batches


def _sample_stages(
    shard_source: IterableDataset,
    transform: ImageTransform,
    counter: SkipCounter,
    sizes: dict[str, int],
    ref_cache: str | None,
) -> tuple[list, list]:
    return [shard_source, TarSamples(counter, sizes)], [
        wds.map(Decode(transform, ref_cache), handler=counter)
    ]


def _eval_batches(
    urls: Sequence[str],
    sizes: dict[str, int],
    rank: int,
    world_size: int,
    readers: int,
    share: int | None,
    batch_size: int,
) -> int | None:
    """Batches one evaluation pass yields on `rank` from intact shards (None: sizes unknown)."""
    total = 0
    for worker in range(readers):
        shards = reader_shards(urls, rank, world_size, worker, readers)
        if any(url not in sizes for url in shards):
            return None
        samples = sum(sizes[url] for url in shards)
        total += math.ceil((samples if share is None else min(samples, share)) / batch_size)
    return total


def build_train_pipeline(
    urls: ShardSpec,
    *,
    transform: ImageTransform,
    batch_size: int,
    samples_per_epoch: int,
    num_workers: int,
    world_size: int = 1,
    rank: int = 0,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    epoch: SharedEpoch | None = None,
    counter: SkipCounter | None = None,
    ref_cache: str | None = None,
) -> _Pipeline:
    """Endless resampled stream cut into epochs of a fixed number of batches per worker.

    Each worker yields ceil(samples_per_epoch / (batch_size * world_size * workers)) full
    batches per epoch, so an epoch holds at least `samples_per_epoch` samples over all ranks.

    Args:
        urls: shard spec (pattern, list or URLs; see `expand_shards`).
        transform: PIL image -> (3, H, W) tensor.
        batch_size: samples per batch (per rank).
        samples_per_epoch: samples per epoch over all ranks and workers.
        num_workers: DataLoader workers per rank (0: the main process reads).
        world_size: number of ranks.
        rank: this process's rank.
        shuffle_buffer: samples held in the shuffle buffer (0 or 1: no shuffle).
        seed: base seed.
        epoch: shared epoch read at the start of each pass (new one at 0 if None).
        counter: skip counter/handler (new one if None).
        ref_cache: path of a reference cache (see `RefCache`).

    Returns:
        An IterableDataset of batches whose `len()` is the batches per epoch on this rank.
    """
    if samples_per_epoch < 1:
        raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
    urls = expand_shards(urls)
    epoch = epoch or SharedEpoch()
    counter = counter or SkipCounter()
    readers = max(num_workers, 1)
    per_worker = math.ceil(samples_per_epoch / (batch_size * world_size * readers))
    source, decode = _sample_stages(
        ResampledShards(urls, seed, rank, epoch), transform, counter, shard_sizes(urls), ref_cache
    )
    shuffle = [SeededShuffle(shuffle_buffer, seed, rank, epoch)] if shuffle_buffer > 1 else []
    pipeline = _Pipeline(
        *source,
        *shuffle,
        *decode,
        Batch(batch_size, False, counter),
        length=per_worker * readers,
    )
    return pipeline.with_epoch(nbatches=per_worker)


def build_eval_pipeline(
    urls: ShardSpec,
    *,
    transform: ImageTransform,
    batch_size: int,
    world_size: int = 1,
    rank: int = 0,
    max_samples: int | None = None,
    num_workers: int = 0,
    counter: SkipCounter | None = None,
    ref_cache: str | None = None,
) -> _Pipeline:
    """One ordered pass over the shards, split by rank then worker, last batch partial.

    The pipeline must run in `num_workers` DataLoader workers (it raises otherwise). When
    sizes.json lists every shard of this rank, `len()` is the exact number of batches this
    rank yields from intact shards (each reader ends on its own partial batch), so
    progress bars show a total; corrupt data can only make the pass shorter. Otherwise
    `len()` raises TypeError, as for any IterableDataset without a length.

    Args:
        urls: shard spec (pattern, list or URLs; see `expand_shards`).
        transform: PIL image -> (3, H, W) tensor.
        batch_size: samples per batch.
        world_size: number of ranks.
        rank: this process's rank.
        max_samples: stop after about this many samples over all ranks and workers (each
            reader takes an equal share, rounded up); None reads everything.
        num_workers: DataLoader workers per rank that will run the pipeline (0: the main
            process).
        counter: skip counter/handler (new one if None).
        ref_cache: path of a reference cache.
    """
    urls = expand_shards(urls)
    counter = counter or SkipCounter()
    sizes = shard_sizes(urls)
    readers = max(num_workers, 1)
    source, decode = _sample_stages(
        SplitShards(urls, rank, world_size, num_workers), transform, counter, sizes, ref_cache
    )
    share = None if max_samples is None else math.ceil(max_samples / (world_size * readers))
    limit = [] if share is None else [wds.slice(share)]
    length = _eval_batches(urls, sizes, rank, world_size, readers, share, batch_size)
    return _Pipeline(*source, *decode, *limit, Batch(batch_size, True, counter), length=length)
