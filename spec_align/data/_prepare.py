"""Build a dataset directory once, atomically, and describe it in info.json."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

INFO_FILE = "info.json"


def prepare_once(target: Path, build: Callable[[Path], dict]) -> dict:
    """Return the info of `target`, building it first with `build(tmp_dir)` if missing.

    `build` writes shards into a temporary sibling directory and returns a JSON-able info dict
    whose "train" and (if the dataset has one) "val" entries are shard patterns relative to
    the directory. The directory is renamed into place only when complete, so an interrupted
    run leaves no half dataset and concurrent builders (several ranks without a shared
    prepare step) agree on one result.

    Returns:
        The info dict with "root" and absolute shard patterns.
    """
    if not (target / INFO_FILE).exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            info = build(tmp)
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
            try:
                os.rename(tmp, target)
            except OSError:
                # Another process finished first; its copy is identical (deterministic build).
                if not (target / INFO_FILE).exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    info = json.loads((target / INFO_FILE).read_text())
    info["root"] = str(target)
    for split in ("train", "val"):
        if split in info:
            info[split] = str(target / info[split])
    return info
