"""Webdataset pipelines: resampled training streams, ordered evaluation passes, batches.

Batches are dicts (see `collate`). Decoding and batching run inside the DataLoader workers,
so the loader is built with `batch_size=None`.

Determinism: every random choice (which shard to read next, the shuffle buffer) comes from a
`random.Random` seeded with (seed, rank, worker, epoch), where the epoch is read from a
`SharedEpoch` at the start of each pass. The same seed, world size and worker count therefore
give the same batches, also with persistent workers; only the interleaving of several workers'
batches relies on the DataLoader's round-robin order (which is fixed).

Corrupt data: a shard that cannot be opened or is truncated, a sample without an image or
with an undecodable image is logged as a warning, counted in a `SkipCounter` shared by all
workers of the process, and skipped: it counts the samples lost and, separately, the shard
reads that failed. A reference-cache miss is not corrupt data: it raises.
"""

from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing as mp
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, default_collate, get_worker_info
from webdataset.utils import make_seed

from spec_align.data.ref_cache import RefCache, RefCacheMissError
from spec_align.data.shards import IMAGE_EXTENSIONS, ShardSpec, expand_shards, shard_sizes
from spec_align.data.tar_reader import tar_samples
from spec_align.data.transforms import ImageTransform

__all__ = [
    "SharedEpoch",
    "SkipCounter",
    "build_eval_pipeline",
    "build_train_pipeline",
    "collate",
    "decode_sample",
]

log = logging.getLogger(__name__)


class SharedEpoch:
    """An epoch number shared between the main process and its DataLoader workers.

    The underlying `multiprocessing.Value` travels to workers when they start (fork or spawn),
    so persistent workers also see updates made by the main process. Create it in the process
    that owns the DataLoader: a `Value` cannot be pickled other than into a child process.
    """

    def __init__(self, epoch: int = 0) -> None:
        self._value = mp.Value("i", epoch)

    def set(self, epoch: int) -> None:
        self._value.value = epoch

    def get(self) -> int:
        return self._value.value


class SkipCounter:
    """Webdataset exception handler that logs, counts and skips corrupt samples and shards.

    Two counts, cumulative over the whole run, in shared memory (all DataLoader workers of one
    process add to them and the main process reads them):

        samples_skipped: samples lost. A sample without an image or with an undecodable one
            counts 1 (as handler of a sample stage: `counter(exn)`). A shard read that fails
            counts the samples its sizes.json entry lists minus those the read yielded
            before the failure (`shard_failed`); a shard that sizes.json does not list (a
            remote one, or none written) adds nothing here, so the count is then a lower
            bound.
        shard_errors: shard reads that failed (cannot be opened, truncated, damaged). With
            resampled shards the same shard can fail, and lose its samples, on every read.

    Configuration errors (`RefCacheMissError`) are re-raised instead of skipped.
    """

    def __init__(self) -> None:
        # One array, so that both counts change under one lock and are read consistently.
        self._counts = mp.Array("q", 2)

    @property
    def samples_skipped(self) -> int:
        return self._counts[0]

    @property
    def shard_errors(self) -> int:
        return self._counts[1]

    def counts(self) -> dict[str, int]:
        """{"samples_skipped": ..., "shard_errors": ...} read together."""
        with self._counts.get_lock():
            return {"samples_skipped": self._counts[0], "shard_errors": self._counts[1]}

    def __call__(self, exn: Exception) -> bool:
        return self._skip(exn, samples=1, shard_errors=0)

    def shard_failed(self, exn: Exception, samples_lost: int | None) -> bool:
        """Count a failed shard read that lost `samples_lost` samples (None: unknown)."""
        return self._skip(exn, samples=samples_lost, shard_errors=1)

    def _skip(self, exn: Exception, samples: int | None, shard_errors: int) -> bool:
        if isinstance(exn, RefCacheMissError):
            raise exn
        with self._counts.get_lock():
            self._counts[0] += samples or 0
            self._counts[1] += shard_errors
            total, errors = self._counts[0], self._counts[1]
        if not shard_errors:
            what = "skipped a corrupt sample"
        elif samples is None:
            what = "a shard read failed (samples lost unknown: sizes.json does not list it)"
        else:
            what = f"a shard read failed, losing {samples} samples"
        log.warning(
            "%s (so far %d samples skipped, %d shard errors): %r", what, total, errors, exn
        )
        return True


def _worker_id() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _seed(*parts: int) -> int:
    # webdataset's make_seed hashes ints, which is stable across processes (no PYTHONHASHSEED).
    return make_seed(*parts)


class _ResampledShards(IterableDataset):
    """Endless stream of dict(url=...) drawn with replacement, seeded per rank/worker/epoch."""

    def __init__(self, urls: Sequence[str], seed: int, rank: int, epoch: SharedEpoch) -> None:
        super().__init__()
        self.urls = list(urls)
        self.seed, self.rank, self.epoch = seed, rank, epoch

    def __iter__(self) -> Iterator[dict]:
        worker, _ = _worker_id()
        rng = random.Random(_seed(self.seed, self.rank, worker, self.epoch.get(), 1))
        while True:
            yield {"url": self.urls[rng.randrange(len(self.urls))]}


def _reader_shards(
    urls: Sequence[str], rank: int, world_size: int, worker: int, num_workers: int
) -> list[str]:
    """The shards one reader (worker `worker` of `num_workers` on `rank`) reads in one pass."""
    return list(urls[rank::world_size][worker :: max(num_workers, 1)])


class _SplitShards(IterableDataset):
    """Each shard once, split across ranks then workers (rank r, worker w of W on rank r).

    Built for `num_workers` DataLoader workers (0: the main process), and refuses to run in
    another number: the pipeline's length and per-reader sample limit are computed for it.
    """

    def __init__(self, urls: Sequence[str], rank: int, world_size: int, num_workers: int) -> None:
        super().__init__()
        self.urls = list(urls)
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker_id()
        if num_workers != max(self.num_workers, 1):
            raise ValueError(
                f"this evaluation pipeline was built for num_workers={self.num_workers} but "
                f"runs in {num_workers} DataLoader worker(s); pass the DataLoader's "
                "num_workers to build_eval_pipeline"
            )
        for url in _reader_shards(self.urls, self.rank, self.world_size, worker, num_workers):
            yield {"url": url}


class _Shuffle:
    """Shuffle buffer whose generator is seeded per rank/worker/epoch (webdataset's own uses
    time unless given a fixed seed, which would repeat the same order every epoch)."""

    def __init__(self, bufsize: int, seed: int, rank: int, epoch: SharedEpoch) -> None:
        self.bufsize, self.seed, self.rank, self.epoch = bufsize, seed, rank, epoch

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        worker, _ = _worker_id()
        rng = random.Random(_seed(self.seed, self.rank, worker, self.epoch.get(), 2))
        yield from wds.filters._shuffle(src, self.bufsize, initial=self.bufsize, rng=rng)


class _Decode:
    """Sample dict of bytes -> decoded fields; raises on any unusable sample."""

    def __init__(self, transform: ImageTransform, ref_cache: str | None) -> None:
        self.transform = transform
        self.ref_cache_path = ref_cache
        self._ref_cache: RefCache | None = None

    def __call__(self, sample: dict) -> dict:
        if self.ref_cache_path is not None and self._ref_cache is None:
            # Opened in the worker: a memory map must not be pickled into each worker.
            self._ref_cache = RefCache(self.ref_cache_path)
        return decode_sample(sample, self.transform, self._ref_cache)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ref_cache": None}


def decode_sample(
    sample: dict, transform: ImageTransform, ref_cache: RefCache | None = None
) -> dict:
    """Decode one raw webdataset sample.

    Args:
        sample: dict with `__key__`, an image under one of IMAGE_EXTENSIONS, and optionally
            `txt`, `cls`, `json`, `ref.npy` (bytes).
        transform: PIL image -> (3, H, W) tensor.
        ref_cache: reference embeddings by key; overrides a `ref.npy` in the sample.

    Returns:
        dict with image, text, label, key, meta and (when available) ref.

    Raises:
        ValueError: no image in the sample; PIL errors for undecodable images.
        RefCacheMissError: `ref_cache` has no entry for the key.
    """
    key = sample["__key__"]
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        present = sorted(k for k in sample if not k.startswith("__"))
        raise ValueError(f"sample {key!r} from {sample.get('__url__')} has no image: {present}")
    try:
        with Image.open(io.BytesIO(sample[ext])) as image:
            # load() forces full decoding here, so truncated files fail inside the handler.
            image.load()
            pixels = transform(image if image.mode == "RGB" else image.convert("RGB"))
    except Exception as exn:
        url = sample.get("__url__")
        raise ValueError(f"undecodable image {key}.{ext} in {url}: {exn}") from exn
    out: dict[str, Any] = {
        "image": pixels,
        "text": sample["txt"].decode("utf-8") if "txt" in sample else "",
        "label": int(sample["cls"]) if "cls" in sample else -1,
        "key": key,
        "meta": json.loads(sample["json"]) if "json" in sample else None,
    }
    if ref_cache is not None:
        out["ref"] = ref_cache[key]
    elif "ref.npy" in sample:
        out["ref"] = np.load(io.BytesIO(sample["ref.npy"]), allow_pickle=False)
    return out


def collate(
    samples: list[dict], samples_skipped: int = 0, shard_errors: int = 0
) -> dict[str, Any]:
    """Stack decoded samples into a batch.

    Returns:
        image: (B, 3, H, W), as the transform returns it (uint8 from the default one: see
        `images_to_float`); text: list[str] ("" where absent); label: long (B,) (-1
        where absent); key: list[str]; meta: list[dict | None]; ref: float (B, d), present only
        when every sample has one; samples_skipped and shard_errors: long scalars, the
        counts of the loader's `SkipCounter` when the batch was made (samples lost and
        failed shard reads so far, all workers of the process together, whole run).

    Raises:
        ValueError: some samples of the batch have a reference embedding and others not.
    """
    batch: dict[str, Any] = {
        # In a DataLoader worker, default_collate stacks straight into shared memory, which
        # saves the copy into shared memory that sending the batch would otherwise make.
        "image": default_collate([s["image"] for s in samples]),
        "text": [s["text"] for s in samples],
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "key": [s["key"] for s in samples],
        "meta": [s["meta"] for s in samples],
    }
    with_ref = sum("ref" in s for s in samples)
    if with_ref == len(samples):
        batch["ref"] = torch.from_numpy(np.stack([s["ref"] for s in samples])).float()
    elif with_ref:
        missing = [s["key"] for s in samples if "ref" not in s][:5]
        raise ValueError(
            f"{len(samples) - with_ref} of {len(samples)} samples lack a ref embedding "
            f"(e.g. {missing}); store ref.npy for every sample or pass a complete ref cache"
        )
    batch["samples_skipped"] = torch.tensor(samples_skipped, dtype=torch.long)
    batch["shard_errors"] = torch.tensor(shard_errors, dtype=torch.long)
    return batch


class _Batch:
    """Batches samples; attaches the current skip counts to each batch."""

    def __init__(self, batch_size: int, partial: bool, counter: SkipCounter) -> None:
        self.batch_size, self.partial, self.counter = batch_size, partial, counter

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        buffer: list[dict] = []
        for sample in src:
            buffer.append(sample)
            if len(buffer) == self.batch_size:
                yield collate(buffer, **self.counter.counts())
                buffer = []
        if buffer and self.partial:
            yield collate(buffer, **self.counter.counts())


class _Pipeline(wds.DataPipeline):
    """DataPipeline with an optional exact `__len__` (batches per rank) for progress bars."""

    def __init__(self, *stages: Any, length: int | None = None) -> None:
        super().__init__(*stages)
        self.num_batches = length

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this pipeline has no fixed length")
        return self.num_batches


class _TarSamples:
    """dict(url=...) stream -> raw samples (dict of extension -> bytes) grouped by key.

    Read with `tar_samples` (not webdataset's tar expansion: see `spec_align.data.tar_reader`).
    Any read error drops the sample being assembled and the rest of the shard, reported once
    through `counter.shard_failed` with the samples lost: the shard's count in `sizes` minus
    the samples this read yielded.
    """

    def __init__(self, counter: SkipCounter, sizes: dict[str, int]) -> None:
        self.counter, self.sizes = counter, sizes

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        for source in src:
            url = source["url"]
            yielded = 0
            try:
                for sample in tar_samples(url):
                    yield sample
                    yielded += 1
            except Exception as exn:
                exn.args = (*exn.args, url)
                expected = self.sizes.get(url)
                lost = None if expected is None else max(expected - yielded, 0)
                if not self.counter.shard_failed(exn, lost):
                    return


def _sample_stages(
    shard_source: IterableDataset,
    transform: ImageTransform,
    counter: SkipCounter,
    sizes: dict[str, int],
    ref_cache: str | None,
) -> tuple[list, list]:
    return [shard_source, _TarSamples(counter, sizes)], [
        wds.map(_Decode(transform, ref_cache), handler=counter)
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
        shards = _reader_shards(urls, rank, world_size, worker, readers)
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
        _ResampledShards(urls, seed, rank, epoch), transform, counter, shard_sizes(urls), ref_cache
    )
    shuffle = [_Shuffle(shuffle_buffer, seed, rank, epoch)] if shuffle_buffer > 1 else []
    pipeline = _Pipeline(
        *source,
        *shuffle,
        *decode,
        _Batch(batch_size, False, counter),
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
        _SplitShards(urls, rank, world_size, num_workers), transform, counter, sizes, ref_cache
    )
    share = None if max_samples is None else math.ceil(max_samples / (world_size * readers))
    limit = [] if share is None else [wds.slice(share)]
    length = _eval_batches(urls, sizes, rank, world_size, readers, share, batch_size)
    return _Pipeline(*source, *decode, *limit, _Batch(batch_size, True, counter), length=length)
