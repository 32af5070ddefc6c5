"""`last.ckpt` that always holds the latest training state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

__all__ = ["LastCheckpoint"]


class LastCheckpoint(Checkpoint):
    """Write `<dirpath>/last.ckpt` at every training-epoch end, every n steps, and at the end.

    Lightning's `ModelCheckpoint(save_last=True)` rewrites last.ckpt only when it also saves a
    top-k checkpoint, so with a monitored metric last.ckpt stays at the best epoch: resuming
    would retrain finished epochs. This callback saves the latest state unconditionally; keep a
    `ModelCheckpoint` (without save_last) for the best one. It saves nothing under
    `fast_dev_run`, in the sanity check, or twice for the same optimizer step, and nothing on
    an exception (an interrupted step may have left the weights half-updated).

    Args:
        dirpath: the run's checkpoint directory.
        every_n_train_steps: also save every n optimizer steps; None: epoch ends only.
    """

    FILENAME = "last.ckpt"

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None) -> None:
        if every_n_train_steps is not None and int(every_n_train_steps) < 1:
            raise ValueError(
                f"every_n_train_steps must be >= 1 or None, got {every_n_train_steps}"
            )
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = (
            None if every_n_train_steps is None else int(every_n_train_steps)
        )
        self._saved_step: int | None = None
        self.last_model_path = ""  # as ModelCheckpoint's: the file once written

    @property
    def path(self) -> Path:
        """Where the latest state is written."""
        return self.dirpath / self.FILENAME

    @override
    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        steps = self.every_n_train_steps
        if steps is not None and trainer.global_step % steps == 0:
            self._save(trainer)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # max_steps or a requested stop can end fitting mid-epoch.
        self._save(trainer)

    def _save(self, trainer: Trainer) -> None:
        skip = (
            bool(trainer.fast_dev_run)
            or trainer.sanity_checking
            or trainer.state.fn != TrainerFn.FITTING
            or self._saved_step == trainer.global_step
        )
        if skip:
            return
        # A collective (every rank calls it; rank zero writes).
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume
        self._saved_step = trainer.global_step
        self.last_model_path = str(self.path)
