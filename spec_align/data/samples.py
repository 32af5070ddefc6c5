"""Samples from shard bytes to batches: tar reading, decoding, collation, corrupt-data counts.

Corrupt data: a shard that cannot be opened or is truncated, a sample without an image or
with an undecodable image is logged as a warning, counted in a `SkipCounter` shared by all
workers of the process, and skipped: it counts the samples lost and, separately, the shard
reads that failed. A reference-cache miss is not corrupt data: it raises.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing as mp
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from spec_align.data.ref_cache import RefCache, RefCacheMissError
from spec_align.data.shards import IMAGE_EXTENSIONS
from spec_align.data.tar_reader import tar_samples
from spec_align.data.transforms import ImageTransform

__all__ = ["Batch", "Decode", "SkipCounter", "TarSamples", "collate", "decode_sample"]

log = logging.getLogger(__name__)


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


class TarSamples:
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


class Decode:
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


class Batch:
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
