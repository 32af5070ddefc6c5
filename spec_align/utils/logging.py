"""Rank-zero logging, sending the run config to every experiment logger, a quiet console."""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["get_logger", "log_config", "quiet_third_party_messages"]

# Metrics that SpecAlignModule computes from gathered (global-batch or probe) tensors: equal on
# every rank, so Lightning's advice to sync them across ranks does not apply.
_RANK_IDENTICAL_METRICS = (
    "train/loss",
    "train/task_loss",
    "train/spec_diff",
    "train/kuea",
    "train/kuea_frobenius",
    "train/anchor",
    "val/spec_diff",
    "val/spec_diff_features",
    "val/spec_diff_median",
    "val/spec_diff_best",
    "val/i2t_r1",
    "val/t2i_r1",
)
# Families of such metrics: one key per task term, one per probed attribute.
_RANK_IDENTICAL_PREFIXES = ("train/task/", "val/probe/", "val/probe_ref/")


class _RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return rank_zero_only.rank == 0


class _DropLightningTips(logging.Filter):
    """Drops Lightning's "💡 Tip:" adverts (litlogger, litmodels); it has no switch for them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


class _DropOpenClipInfo(logging.Filter):
    """Drops open_clip's INFO lines: it logs every model-building step on the root logger."""

    _package = f"{os.sep}open_clip{os.sep}"

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "root"
            and record.levelno < logging.WARNING
            and self._package in record.pathname
        )


def get_logger(name: str) -> logging.Logger:
    """A standard logger that stays silent on every process but global rank zero."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _RankZeroFilter) for f in logger.filters):
        logger.addFilter(_RankZeroFilter())
    return logger


def _add_filter_once(logger: logging.Logger, kind: type[logging.Filter]) -> None:
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())


def quiet_third_party_messages() -> None:
    """Silence the third-party console messages that do not apply to this project's runs.

    Each filter names one message of one library, so everything else still shows: other
    warnings, open_clip's warnings, Lightning's other info lines. Idempotent; the entry points
    call it before Hydra starts (Hydra's logging setup keeps logger filters), and DDP child
    processes run the same entry point.
    """
    # A logger's filters see only the records created on it: attach to the emitting loggers.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        _add_filter_once(logging.getLogger(name), _DropLightningTips)
    _add_filter_once(logging.getLogger(), _DropOpenClipInfo)
    # torch 2.14 deprecated LeafSpec; Lightning 2.6.6 still builds one for every combined loader.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    # WdsDataModule's loaders have exact lengths: batches on this rank, all workers together.
    warnings.filterwarnings(
        "ignore",
        message=r"Your `IterableDataset` has `__len__` defined",
        category=UserWarning,
        module=r"lightning\.pytorch\.utilities\.data",
    )
    names = "|".join(
        [re.escape(name) for name in _RANK_IDENTICAL_METRICS]
        + [re.escape(prefix) + "[^']+" for prefix in _RANK_IDENTICAL_PREFIXES]
    )
    warnings.filterwarnings(
        "ignore",
        message=rf"It is recommended to use `self\.log\('({names})', \.\.\., sync_dist=True\)`",
        module=r"lightning\.pytorch\.trainer\.connectors\.logger_connector\.result",
    )


def log_config(trainer: Trainer, config: Mapping[str, Any]) -> None:
    """Record the full resolved config as hyperparameters of every logger of `trainer`.

    Args:
        trainer: the trainer whose loggers receive it.
        config: plain (resolved, container) run config.
    """
    for logger in trainer.loggers:
        logger.log_hyperparams(dict(config))
