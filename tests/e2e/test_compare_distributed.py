"""Two gloo processes give the same SPEC result as one process reading all rows."""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spec_align import compare
from spec_align.explain import compare_embeddings
from tests.helpers import free_port

N, RFF_DIM = 600, 40  # n > 2 * 2 * RFF_DIM, so one process also takes the covariance path


def _data():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 4, N)
    a = rng.normal(size=(4, 5))[groups] * 3 + rng.normal(size=(N, 5))
    b = rng.normal(size=(4, 7))[groups] * 3 + rng.normal(size=(N, 7))
    b[groups == 3] = b[groups == 2].mean(0) + rng.normal(size=((groups == 3).sum(), 7))
    return a, b


CASES = [dict(kernel="gaussian", rff_dim=RFF_DIM, top_k=3), dict(kernel="cosine", top_k=3)]


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        a, b = _data()
        for case, kwargs in enumerate(CASES):  # one spawn for all cases: start-up dominates
            result = compare_embeddings(a, b, batch_size=64, **kwargs)
            torch.save(
                {
                    "eigenvalues": result.eigenvalues,
                    "modes": result.mode_eigenvalues,
                    "scores": result.scores,
                    "sigma": (result.sigma_x, result.sigma_y),
                },
                f"{out}/case{case}_rank{rank}.pt",
            )
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = _data()
    for case, kwargs in enumerate(CASES):
        single = compare(a, b, batch_size=64, names=("a", "b"), **kwargs)
        for rank in range(2):
            got = torch.load(tmp_path / f"case{case}_rank{rank}.pt", weights_only=True)
            if kwargs["kernel"] == "gaussian":
                assert got["sigma"] == pytest.approx((single.sigma_x, single.sigma_y), rel=1e-12)
            assert got["modes"].tolist() == pytest.approx(
                single.mode_eigenvalues.tolist(), abs=1e-12
            )
            assert torch.allclose(got["eigenvalues"], single.eigenvalues, atol=1e-12)
            assert torch.allclose(got["scores"], single.scores, atol=1e-9)


def test_distributed_needs_a_process_group():
    with pytest.raises(ValueError, match="initialised torch.distributed process group"):
        compare(lambda: iter([]), kernel="cosine", distributed=True)
