"""LightningDataModule over webdataset shards."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from spec_align.data import digits, synthetic, textures
from spec_align.data.samples import SkipCounter
from spec_align.data.shard_sources import SharedEpoch
from spec_align.data.shards import ShardSpec, check_shard_count, expand_shards, read_sizes
from spec_align.data.transforms import ImageTransform, ResizeToTensor
from spec_align.data.wds import build_eval_pipeline, build_train_pipeline

__all__ = ["DATASETS", "WdsDataModule"]

# Built-in datasets: name -> prepare(data_dir) returning shard patterns (see each module).
DATASETS: dict[str, Callable[..., dict]] = {
    "synthetic": synthetic.prepare,
    "digits": digits.prepare,
    "textures": textures.prepare,
}


def _identity(batch: dict) -> dict:
    return batch


class _EpochLoader(DataLoader):
    """DataLoader that calls `on_iter` before each pass, to advance the shared epoch."""

    def __init__(self, dataset: Any, *, on_iter: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._on_iter = on_iter

    def __iter__(self):
        self._on_iter()
        return super().__iter__()


class WdsDataModule(LightningDataModule):
    """Train/val batches from webdataset shards (local patterns, lists, `pipe:`/http URLs).

    Training resamples shards with replacement, so an epoch is a fixed number of batches
    (`train_samples_per_epoch`, split evenly over ranks and workers) and never runs dry; the
    stream is deterministic given `seed`, the world size and `num_workers`, and changes every
    epoch. Validation reads every val shard once in order, split by rank then worker.
    Both loaders have a length (batches per epoch on this rank) where it is known, so progress
    bars show totals: always for training, and for validation when sizes.json lists every
    val shard (built-in datasets and `scripts/make_shards.py` output do).

    Batches (dict):
        image: (B, 3, H, W) as `train_transform` / `eval_transform` return it: uint8 from
            the default `ResizeToTensor` (scale on the device with `images_to_float`).
        text: list[str] captions, "" where a sample has none.
        label: long (B,), -1 where a sample has no `cls`.
        key: list[str] sample keys.
        meta: list[dict | None] per-sample json metadata.
        ref: float (B, d) reference embeddings, only when the shards carry `ref.npy` or
            `ref_cache` is given (the cache wins).
        samples_skipped: long scalar, samples lost so far by this rank's loader of that
            split (all workers, whole run): 1 per corrupt sample, and for a shard read that
            fails, the shard's sizes.json count minus the samples it yielded (nothing for a
            shard that sizes.json does not list: a lower bound then). See `SkipCounter`.
        shard_errors: long scalar, shard reads that failed so far on the same loader (with
            resampling, one shard can fail on each read). Both also in `skip_counts`.

    Data-wait time is logged by the `DataWaitTimer` callback.

    Args:
        train_shards: shard spec of the training split (None: from `dataset`).
        val_shards: shard spec of the validation split (None: from `dataset`, else no val).
        dataset: a built-in dataset ("synthetic", "digits", "textures") generated into
            `data_dir` by `prepare_data`; supplies the shards not given explicitly.
        data_dir: root directory of built-in datasets.
        batch_size: samples per batch per rank.
        val_batch_size: samples per validation batch (default `batch_size`).
        num_workers: DataLoader workers per rank; each needs its own shard.
        train_samples_per_epoch: samples per epoch over all ranks (default: the size of the
            training shards from sizes.json; required when that is unknown).
        val_samples: read at most about this many validation samples (None: all).
        shuffle_buffer: samples in each worker's shuffle buffer (<= 1: no shuffling).
        seed: seed of shard resampling and shuffling.
        ref_cache: directory of a reference cache (`spec_align.data.ref_cache`).
        train_transform: PIL image -> (3, H, W) tensor for training (the encoder's
            preprocess_train); default `ResizeToTensor(image_size)`.
        eval_transform: same for validation (preprocess_val).
        image_size: side of the default transforms' output.
        persistent_workers: keep workers alive between epochs.
        pin_memory: pin batches for faster host-to-GPU copies (default: CUDA available).
        dataset_kwargs: extra arguments of the built-in dataset's prepare().
    """

    def __init__(
        self,
        train_shards: ShardSpec | None = None,
        val_shards: ShardSpec | None = None,
        *,
        dataset: str | None = None,
        data_dir: str | os.PathLike = "data",
        batch_size: int = 256,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        train_samples_per_epoch: int | None = None,
        val_samples: int | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        ref_cache: str | os.PathLike | None = None,
        train_transform: ImageTransform | None = None,
        eval_transform: ImageTransform | None = None,
        image_size: int = 32,
        persistent_workers: bool = False,
        pin_memory: bool | None = None,
        dataset_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if dataset is not None and dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; built-in: {sorted(DATASETS)}")
        if train_shards is None and dataset is None:
            raise ValueError("give train_shards or a built-in dataset name")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}"
            )
        counts = {"train_samples_per_epoch": train_samples_per_epoch, "val_samples": val_samples}
        for name, value in counts.items():
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        self.train_shards, self.val_shards = train_shards, val_shards
        self.dataset, self.data_dir = dataset, data_dir
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.train_samples_per_epoch = train_samples_per_epoch
        self.val_samples = val_samples
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.ref_cache = None if ref_cache is None else os.fspath(ref_cache)
        self.train_transform = train_transform or ResizeToTensor(image_size)
        self.eval_transform = eval_transform or ResizeToTensor(image_size)
        self.persistent_workers = persistent_workers and num_workers > 0
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.dataset_info: dict | None = None
        self.train_urls: list[str] = []
        self.val_urls: list[str] = []
        self._epochs_started = 0
        # Shared-memory state is created in setup(): ddp_spawn pickles the module before it.
        self._epoch: SharedEpoch | None = None
        self._train_skips: SkipCounter | None = None
        self._val_skips: SkipCounter | None = None

    def prepare_data(self) -> None:
        """Generate the built-in dataset once (runs on one process per node)."""
        if self.dataset is not None:
            DATASETS[self.dataset](self.data_dir, **self.dataset_kwargs)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def setup(self, stage: str | None = None) -> None:
        """Resolve and validate the shards (existence, shards >= workers x world size)."""
        if self.dataset is not None:
            # Idempotent: returns the cached copy written by prepare_data.
            self.dataset_info = DATASETS[self.dataset](self.data_dir, **self.dataset_kwargs)
        world_size, _ = self._world()
        train = self.train_shards or (self.dataset_info or {}).get("train")
        val = self.val_shards or (self.dataset_info or {}).get("val")
        if stage in (None, "fit"):
            self.train_urls = expand_shards(train)
            check_shard_count(len(self.train_urls), self.num_workers, world_size, "train")
            if self.train_samples_per_epoch is None:
                self.train_samples_per_epoch = read_sizes(self.train_urls)
                if self.train_samples_per_epoch is None:
                    raise ValueError(
                        "train_samples_per_epoch is required: the training shards have no "
                        "sizes.json to count their samples"
                    )
        if val is not None and stage in (None, "fit", "validate"):
            self.val_urls = expand_shards(val)
            check_shard_count(len(self.val_urls), self.num_workers, world_size, "val")
        if self._epoch is None:
            self._epoch = SharedEpoch()
            self._train_skips, self._val_skips = SkipCounter(), SkipCounter()

    @property
    def skip_counts(self) -> dict[str, dict[str, int]]:
        """Corrupt data skipped so far on this rank: split -> `SkipCounter.counts()`."""
        if self._train_skips is None:
            none = {"samples_skipped": 0, "shard_errors": 0}
            return {"train": dict(none), "val": dict(none)}
        return {"train": self._train_skips.counts(), "val": self._val_skips.counts()}

    @property
    def batches_per_epoch(self) -> int:
        """Training batches per epoch on each rank (all workers together)."""
        world_size, _ = self._world()
        readers = max(self.num_workers, 1)
        samples = self.train_samples_per_epoch
        return math.ceil(samples / (self.batch_size * world_size * readers)) * readers

    def _next_epoch(self) -> None:
        # overfit_batches promises the same batches every epoch: the shard draw is not reseeded.
        overfitting = self.trainer is not None and self.trainer.overfit_batches > 0
        self._epoch.set(0 if overfitting else self._epochs_started)
        self._epochs_started += 1

    def _loader_kwargs(self) -> dict:
        return {
            "batch_size": None,  # batches are built inside the workers
            # Batches are final; the default per-batch conversion walks every meta dict.
            "collate_fn": _identity,
            "num_workers": self.num_workers,
            "persistent_workers": self.persistent_workers,
            "pin_memory": self.pin_memory,
        }

    def train_dataloader(self) -> DataLoader:
        if not self.train_urls:
            self.setup("fit")
        world_size, rank = self._world()
        pipeline = build_train_pipeline(
            self.train_urls,
            transform=self.train_transform,
            batch_size=self.batch_size,
            samples_per_epoch=self.train_samples_per_epoch,
            num_workers=self.num_workers,
            world_size=world_size,
            rank=rank,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            epoch=self._epoch,
            counter=self._train_skips,
            ref_cache=self.ref_cache,
        )
        return _EpochLoader(pipeline, on_iter=self._next_epoch, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_urls:
            if self.val_shards is None and self.dataset is None:
                return []
            self.setup("validate")
        world_size, rank = self._world()
        pipeline = build_eval_pipeline(
            self.val_urls,
            transform=self.eval_transform,
            batch_size=self.val_batch_size,
            world_size=world_size,
            rank=rank,
            max_samples=self.val_samples,
            num_workers=self.num_workers,
            counter=self._val_skips,
            ref_cache=self.ref_cache,
        )
        return DataLoader(pipeline, **self._loader_kwargs())

    def state_dict(self) -> dict[str, Any]:
        """Epochs started, so a resumed run continues the same shard/shuffle sequence."""
        return {"epochs_started": self._epochs_started}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._epochs_started = int(state_dict["epochs_started"])
