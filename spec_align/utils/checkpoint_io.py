"""Checkpoint files that are either whole or untouched, and a check that one is whole."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from typing_extensions import override

__all__ = ["AtomicCheckpointIO", "checkpoint_problem"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save beside the target, fsync, then rename over it.

    Lightning's own save opens the target for writing before the bytes are in place, so a full
    disk or a kill mid-write leaves a truncated file where the previous good checkpoint was.
    Here the target is replaced only by a complete file; a failed save leaves it as it was and
    removes the partial one. Remote (fsspec URL) targets keep Lightning's behaviour.
    """

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        # The rename itself is durable once the directory entry is on disk.
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the checkpoint file at `path` cannot be loaded, or None if it is whole.

    Checks the zip container torch.save writes (central directory and every member's CRC)
    without unpickling anything.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (OSError, zipfile.BadZipFile) as err:
        return f"{type(err).__name__}: {err}"
    return None if broken is None else f"member {broken} is corrupt"
