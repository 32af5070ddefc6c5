"""Where a pipeline's samples come from, and in what order: shard streams and shuffling.

Determinism: every random choice (which shard to read next, the shuffle buffer) comes from a
`random.Random` seeded with (seed, rank, worker, epoch), where the epoch is read from a
`SharedEpoch` at the start of each pass. The same seed, world size and worker count therefore
give the same batches, also with persistent workers; only the interleaving of several workers'
batches relies on the DataLoader's round-robin order (which is fixed).
"""

from __future__ import annotations

import multiprocessing as mp
import random
from collections.abc import Iterator, Sequence

import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.utils import make_seed

__all__ = [
    "ResampledShards",
    "SeededShuffle",
    "SharedEpoch",
    "SplitShards",
    "reader_shards",
    "stream_seed",
    "worker_id",
]


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


def worker_id() -> tuple[int, int]:
    """(worker index, number of workers) of this DataLoader worker; (0, 1) outside one."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def stream_seed(*parts: int) -> int:
    """A seed from ints, the same in every process."""
    # webdataset's make_seed hashes ints, which is stable across processes (no PYTHONHASHSEED).
    return make_seed(*parts)


class ResampledShards(IterableDataset):
    """Endless stream of dict(url=...) drawn with replacement, seeded per rank/worker/epoch."""

    def __init__(self, urls: Sequence[str], seed: int, rank: int, epoch: SharedEpoch) -> None:
        super().__init__()
        self.urls = list(urls)
        self.seed, self.rank, self.epoch = seed, rank, epoch

    def __iter__(self) -> Iterator[dict]:
        worker, _ = worker_id()
        rng = random.Random(stream_seed(self.seed, self.rank, worker, self.epoch.get(), 1))
        while True:
            yield {"url": self.urls[rng.randrange(len(self.urls))]}


def reader_shards(
    urls: Sequence[str], rank: int, world_size: int, worker: int, num_workers: int
) -> list[str]:
    """The shards one reader (worker `worker` of `num_workers` on `rank`) reads in one pass."""
    return list(urls[rank::world_size][worker :: max(num_workers, 1)])


class SplitShards(IterableDataset):
    """Each shard once, split across ranks then workers (rank r, worker w of W on rank r).

    Built for `num_workers` DataLoader workers (0: the main process), and refuses to run in
    another number: the pipeline's length and per-reader sample limit are computed for it.
    """

    def __init__(self, urls: Sequence[str], rank: int, world_size: int, num_workers: int) -> None:
        super().__init__()
        self.urls = list(urls)
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = worker_id()
        if num_workers != max(self.num_workers, 1):
            raise ValueError(
                f"this evaluation pipeline was built for num_workers={self.num_workers} but "
                f"runs in {num_workers} DataLoader worker(s); pass the DataLoader's "
                "num_workers to build_eval_pipeline"
            )
        for url in reader_shards(self.urls, self.rank, self.world_size, worker, num_workers):
            yield {"url": url}


class SeededShuffle:
    """Shuffle buffer whose generator is seeded per rank/worker/epoch (webdataset's own uses
    time unless given a fixed seed, which would repeat the same order every epoch)."""

    def __init__(self, bufsize: int, seed: int, rank: int, epoch: SharedEpoch) -> None:
        self.bufsize, self.seed, self.rank, self.epoch = bufsize, seed, rank, epoch

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        worker, _ = worker_id()
        rng = random.Random(stream_seed(self.seed, self.rank, worker, self.epoch.get(), 2))
        yield from wds.filters._shuffle(src, self.bufsize, initial=self.bufsize, rng=rng)
