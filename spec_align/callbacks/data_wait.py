"""A callback that logs how long each training step waited for its batch."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

__all__ = ["DataWaitTimer"]


class DataWaitTimer(Callback):
    """Logs `train/data_wait_s`: seconds the training loop waited for each batch.

    The gap between the end of one step and the start of the next is where Lightning
    fetches the next batch, so it is data-wait time plus a little loop bookkeeping; the first
    batch of an epoch includes worker start-up. Logged per step and as the epoch mean
    (`train/data_wait_s_step`, `train/data_wait_s_epoch`), each rank's own wait averaged over
    ranks. Training does not depend on it (`callbacks=none` drops it).
    """

    def __init__(self) -> None:
        self._mark = time.perf_counter()

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._mark = time.perf_counter()

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        wait = time.perf_counter() - self._mark
        pl_module.log(
            "train/data_wait_s",
            wait,
            on_step=True,
            on_epoch=True,
            sync_dist=True,
            batch_size=batch["image"].shape[0],
        )

    @override
    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._mark = time.perf_counter()
