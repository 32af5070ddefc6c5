"""Resume: `ckpt_path=last` continues step, optimizer, feature maps, bandwidths and W&B run."""

from __future__ import annotations

import torch

from spec_align.train import run

TASK = "resume"
SHORT = [
    "trainer.limit_train_batches=3",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=1",
    f"task_name={TASK}",
]


def test_resume_from_last_continues_the_run(compose_train, tmp_path):
    runs = tmp_path / "logs" / TASK / "runs"
    first_dir, second_dir = runs / "first", runs / "second"
    _, first = run(
        compose_train(*SHORT, "trainer.max_epochs=1", "logger=many", output_dir=first_dir)
    )
    penalty = first["model"].penalty
    first_ckpt = torch.load(first_dir / "checkpoints" / "last.ckpt", weights_only=False)

    cfg = compose_train(
        *SHORT, "trainer.max_epochs=2", "ckpt_path=last", "logger=many", output_dir=second_dir
    )
    _, second = run(cfg)
    assert second["trainer"].global_step == 6
    assert second["trainer"].current_epoch == 2
    resumed = second["model"].penalty
    assert torch.equal(resumed.sigma_encoder_value, penalty.sigma_encoder_value)
    assert torch.equal(resumed.map_ref.frequencies, penalty.map_ref.frequencies)

    last = torch.load(second_dir / "checkpoints" / "last.ckpt", weights_only=False)
    steps = {float(s["step"]) for s in last["optimizer_states"][0]["state"].values()}
    assert steps == {6.0}, "the optimizer state continued from step 3"
    assert first_ckpt["optimizer_states"][0]["state"]
    run_id = (first_dir / "wandb_id.txt").read_text()
    assert (second_dir / "wandb_id.txt").read_text() == run_id
    assert list((second_dir / "wandb").glob(f"offline-run-*-{run_id.strip()}"))
