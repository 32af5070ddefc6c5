"""Rank-zero logging and sending the resolved run config to every experiment logger."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["get_logger", "log_config"]


class _RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return rank_zero_only.rank == 0


def get_logger(name: str) -> logging.Logger:
    """A standard logger that stays silent on every process but global rank zero."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _RankZeroFilter) for f in logger.filters):
        logger.addFilter(_RankZeroFilter())
    return logger


def log_config(trainer: Trainer, config: Mapping[str, Any]) -> None:
    """Record the full resolved config as hyperparameters of every logger of `trainer`.

    Args:
        trainer: the trainer whose loggers receive it.
        config: plain (resolved, container) run config.
    """
    for logger in trainer.loggers:
        logger.log_hyperparams(dict(config))
