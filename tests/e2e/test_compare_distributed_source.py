"""Distributed SPEC: a source that changes between passes on one rank fails on every rank."""

import datetime
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spec_align import compare
from spec_align.spectrum import SourceChangedError
from tests.helpers import clustered_pair, free_port


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A short timeout: a rank left waiting in a collective fails the test instead of hanging.
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
    try:
        x, y = clustered_pair(n=400, seed=rank)
        batches = [(x[i : i + 50], y[i : i + 50]) for i in range(0, 400, 50)]
        calls = []

        def source():
            calls.append(1)
            if rank == 1 and len(calls) == 2:
                return iter(batches[::-1])  # rank 1 reads its block in another order
            return iter(batches)

        stable = compare(lambda: iter(batches), rff_dim=8, top_k=2, distributed=True)
        outcome = {"stable_rows": stable.num_samples}
        try:
            compare(source, rff_dim=8, top_k=2, distributed=True)
            outcome["error"] = None
        except SourceChangedError as err:
            outcome["error"] = str(err)
        torch.save(outcome, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_a_changed_source_on_one_rank_fails_every_rank(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    outcomes = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [o["stable_rows"] for o in outcomes] == [800, 800]  # no false alarm
    assert "on rank 1 changed between passes: batch 0" in outcomes[1]["error"]
    assert "on another rank" in outcomes[0]["error"] and "shuffle=False" in outcomes[0]["error"]
