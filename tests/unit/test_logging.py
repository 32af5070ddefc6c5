"""quiet_third_party_messages drops the messages it names, and nothing else."""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from spec_align.utils.logging import quiet_third_party_messages

RESULT_MODULE = "lightning.pytorch.trainer.connectors.logger_connector.result"
DATA_MODULE = "lightning.pytorch.utilities.data"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _sync_advice(name: str) -> str:
    return (
        f"It is recommended to use `self.log({name!r}, ..., sync_dist=True)` when logging on "
        "epoch level in distributed setting to accumulate the metric across devices."
    )


def test_only_the_named_warnings_are_ignored():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party_messages()
        emitted = [
            ("Your `IterableDataset` has `__len__` defined.", UserWarning, DATA_MODULE),
            (_sync_advice("train/loss"), PossibleUserWarning, RESULT_MODULE),
            (_sync_advice("val/spec_diff"), PossibleUserWarning, RESULT_MODULE),
            # Kept: a rank-local metric, and other messages of the same modules.
            (_sync_advice("train/samples_skipped"), PossibleUserWarning, RESULT_MODULE),
            ("Total length of `DataLoader` across ranks is zero.", UserWarning, DATA_MODULE),
        ]
        for message, category, module in emitted:
            warnings.warn_explicit(message, category, f"{module}.py", 1, module=module)
    assert [str(w.message) for w in caught] == [emitted[3][0], emitted[4][0]]


def test_only_the_named_log_records_are_dropped():
    quiet_third_party_messages()
    root, records = logging.getLogger(), _Records()
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    root.addHandler(records)
    lightning_log.addHandler(records)
    old_levels = root.level, lightning_log.level
    root.setLevel(logging.INFO)
    lightning_log.setLevel(logging.INFO)
    try:
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing [litlogger]")
        rank_zero_info("GPU available: False, used: False")
        open_clip_file = "/site-packages/open_clip/factory.py"
        for level, message in [
            (logging.INFO, "Parsing model identifier. Schema: None"),
            (logging.WARNING, "No pretrained weights loaded for model 'tiny_clip'."),
        ]:
            root.handle(logging.LogRecord("root", level, open_clip_file, 1, message, None, None))
        logging.getLogger("spec_align.train").info("fitting (ckpt_path=None)")
    finally:
        root.removeHandler(records)
        lightning_log.removeHandler(records)
        root.setLevel(old_levels[0])
        lightning_log.setLevel(old_levels[1])
    kept = set(records.messages)  # a record may reach the handler on both loggers
    assert kept == {
        "GPU available: False, used: False",
        "No pretrained weights loaded for model 'tiny_clip'.",
        "fitting (ckpt_path=None)",
    }
