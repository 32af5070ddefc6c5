"""`gather_rows` over two gloo processes: uneven row counts, an empty rank, any dimension."""

import datetime
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spec_align.spectrum.distributed import gather_rows
from spec_align.utils.distributed import gather_uneven
from tests.helpers import free_port


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(
        "gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )
    try:
        rows = torch.arange(12.0).view(3, 4) if rank == 0 else torch.empty(0, 0)
        labels = torch.tensor([1, 2]) if rank == 0 else torch.tensor([3])
        images = torch.full((rank + 1, 2, 3, 3), float(rank))
        torch.save(
            {
                "rows": gather_rows(rows),
                "labels": gather_uneven(labels),
                "images": gather_rows(images),
            },
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_uneven_and_empty_ranks_gather_in_rank_order(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(got["rows"], torch.arange(12.0).view(3, 4)), "the empty rank adds none"
        assert got["labels"].tolist() == [1, 2, 3]
        assert got["images"].shape == (3, 2, 3, 3)
        assert got["images"][:, 0, 0, 0].tolist() == [0.0, 1.0, 1.0]
