"""DDP: `trainer=ddp_sim` (2 CPU processes over gloo) trains; the penalty sees the global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spec_align.encoders import TINY_CLIP, ClipEncoder
from spec_align.losses import ContrastiveLoss, SpectralPenalty
from spec_align.modules import SpecAlignModule
from spec_align.utils.distributed import gather_uneven, gather_with_grad

ROOT = Path(__file__).resolve().parents[2]


def _global_penalty_grad(
    rank: int, world: int, port: int, z: torch.Tensor, ref: torch.Tensor, out: str
) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        rows = slice(rank * len(z) // world, (rank + 1) * len(z) // world)
        local = z[rows].clone().requires_grad_(True)
        penalty = SpectralPenalty(rff_dim=32, sigma_encoder=0.7, sigma_ref=0.9)
        penalty.bind(z.shape[1], ref.shape[1])
        value = penalty(gather_with_grad(local), ref)
        # What DDP does with parameter gradients: average over ranks.
        value.backward()
        grad = local.grad / world
        parts = [torch.empty_like(grad) for _ in range(world)]
        dist.all_gather(parts, grad)
        if rank == 0:
            torch.save({"value": value.detach(), "grad": torch.cat(parts)}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gather_with_grad_gives_the_global_batch_gradient(tmp_path):
    """Two ranks holding half a batch each get the full-batch SPEC-diff and its gradient."""
    torch.manual_seed(0)
    z, ref = torch.randn(16, 8, dtype=torch.float64), torch.randn(16, 5, dtype=torch.float64)
    port = 29500 + int(torch.randint(0, 1000, ()))
    out = str(tmp_path / "grad.pt")
    mp.spawn(_global_penalty_grad, args=(2, port, z, ref, out), nprocs=2, join=True)
    result = torch.load(out)

    single = z.clone().requires_grad_(True)
    penalty = SpectralPenalty(rff_dim=32, sigma_encoder=0.7, sigma_ref=0.9)
    penalty.bind(8, 5)
    value = penalty(single, ref)
    value.backward()
    torch.testing.assert_close(result["value"], value.detach())
    torch.testing.assert_close(result["grad"], single.grad)


@pytest.mark.slow
def test_ddp_sim_trains_with_two_processes(tmp_path, train_cli_args, subprocess_env):
    command = [
        sys.executable,
        "train.py",
        *train_cli_args,
        "trainer=ddp_sim",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "task_name=ddp",
        "model.probe_size=128",  # the whole validation set: both ranks' halves
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "ddp" / "runs").iterdir()
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 2
    assert not [k for k in checkpoint["state_dict"] if k.startswith("ref.")]
    metrics = (run_dir / "csv" / "metrics.csv").read_text()
    assert "val/spec_diff" in metrics and "train/spec_diff_step" in metrics
    assert "val/probe/texture_knn" in metrics and "val/probe_ref/texture_linear" in metrics
    # The cluster callback ran on both ranks: the baseline and the end of the epoch, each on
    # the probe gathered from the two ranks' halves of the 128 validation samples.
    assert "clusters/spec_diff" in metrics
    history = (run_dir / "clusters" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in history] == [0, 2]
    final = json.loads((run_dir / "clusters" / "step_0000002" / "modes.json").read_text())
    assert final["num_samples"] == 128 and final["modes"]


def _probe_rows(seed: int, rows: int) -> dict[str, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "enc": [torch.randn(rows, 64, generator=generator)],
        "ref": [torch.randn(rows, 12, generator=generator)],
        "text": [torch.nn.functional.normalize(torch.randn(rows, 64, generator=generator))],
        "caption": [torch.arange(rows)],
    }


def _probe_labels(rows: int) -> list[tuple]:
    """Per probe row its attribute values (the module's default: the class label)."""
    return [(i % 3,) for i in range(rows)]


def _probe_module() -> SpecAlignModule:
    torch.manual_seed(0)
    return SpecAlignModule(
        encoder=ClipEncoder(TINY_CLIP, pretrained=None),
        task_loss=ContrastiveLoss(),
        penalty=SpectralPenalty(rff_dim=16),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        ref_dim=12,
        probe_size=64,
    )


def _validation_end(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),  # a rank left out of a collective fails, not hangs
    )
    try:
        module, logged = _probe_module(), {}
        module.log = lambda name, value, **kwargs: logged.setdefault(name, float(value))
        # Rank 1's share of the validation stream held no probe rows.
        module._probe = _probe_rows(0, 40) if rank == 0 else {k: [] for k in _probe_rows(0, 1)}
        module._probe_values = _probe_labels(40) if rank == 0 else []
        module.on_validation_epoch_end()
        # What the cluster callback gathers: a rank without rows does not know their width.
        rows, images = torch.arange(15.0).view(3, 5), torch.ones(2, 3, 4, 4, dtype=torch.uint8)
        if rank == 1:
            rows, images = torch.empty(0, 0), torch.empty(0, 0, 0, 0, dtype=torch.uint8)
        gathered = {"rows": gather_uneven(rows), "images": gather_uneven(images)}
        torch.save({"logged": logged, **gathered}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_validation_end_with_a_rank_that_has_no_probe_rows(tmp_path):
    port = 29500 + int(torch.randint(1000, 2000, ()))
    out = str(tmp_path / "logged")
    mp.spawn(_validation_end, args=(2, port, out), nprocs=2, join=True)
    single, logged = _probe_module(), {}
    single.log = lambda name, value, **kwargs: logged.setdefault(name, float(value))
    single._probe = _probe_rows(0, 40)
    single._probe_values = _probe_labels(40)
    single.on_validation_epoch_end()
    expected = {"val/spec_diff", "val/spec_diff_features", "val/t2i_r1", "val/probe/label_knn"}
    assert expected | {"val/probe_ref/label_linear"} <= set(logged)
    for rank in (0, 1):  # both ranks log the metrics of the 40 rows that exist
        result = torch.load(f"{out}.{rank}")
        assert result["logged"] == pytest.approx(logged)
        assert torch.equal(result["rows"], torch.arange(15.0).view(3, 5))
        assert result["images"].shape == (2, 3, 4, 4)
