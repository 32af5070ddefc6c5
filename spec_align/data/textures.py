"""`textures`: 2000 simulated textile images from the PyPI package `conformal-clip-data`.

The package ships 250 x 250 JPEGs in `conformal_clip_data/data/textile_images/simulated/`
under `nominal/` (1000), `local/` (500, localised weave defects) and `global/` (500, weave
parameters shifted by 5%). They are stored unchanged (original JPEG bytes). `cls`: 0 nominal,
1 local defect, 2 global defect; captions from `CAPTIONS`. The split is seeded and stratified
(`val_fraction` of each class). Keys are `textile_<class>_<file number>`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spec_align.data._prepare import prepare_once
from spec_align.data._progress import progress
from spec_align.data.shards import write_shards

__all__ = ["CAPTIONS", "CLASSES", "prepare"]

VERSION = 1

CLASSES = ("nominal", "local", "global")
CAPTIONS = {
    "nominal": "a simulated textile with a regular weave",
    "local": "a simulated textile with a local defect",
    "global": "a simulated textile with a global defect",
}


def prepare(
    data_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    samples_per_shard: int = 100,
    seed: int = 0,
) -> dict:
    """Write `textures` as shards into `data_dir` on first use; later calls reuse it.

    Args:
        data_dir: root data directory; the dataset goes into a subdirectory of it.
        val_fraction: fraction of each class held out for validation.
        samples_per_shard: samples per tar file (default 16 train / 4 val shards).
        seed: seed of the split and of the order within shards.

    Returns:
        dict with "train"/"val" shard patterns, "train_samples"/"val_samples", "root",
        "classes".

    Raises:
        ImportError: conformal-clip-data is not installed.
    """
    try:
        import conformal_clip_data
    except ImportError as exn:
        raise ImportError(
            "the textures dataset needs `pip install conformal-clip-data==0.1.4`"
        ) from exn

    def build(tmp: Path) -> dict:
        root = conformal_clip_data.textile_simulated_root()
        rng = np.random.default_rng(seed)
        splits: dict[str, list[tuple[Path, int]]] = {"train": [], "val": []}
        for label, name in enumerate(CLASSES):
            files = sorted((root / name).glob("*.jpg"))
            if not files:
                raise FileNotFoundError(f"no images in {root / name}")
            files = [files[i] for i in rng.permutation(len(files))]
            num_val = round(len(files) * val_fraction)
            splits["val"] += [(f, label) for f in files[:num_val]]
            splits["train"] += [(f, label) for f in files[num_val:]]
        info = {"name": "textures", "version": VERSION, "seed": seed}
        for split, items in splits.items():
            items = [items[i] for i in rng.permutation(len(items))]
            samples = (
                {
                    "__key__": f"textile_{CLASSES[label]}_{path.stem.rsplit('_', 1)[-1]}",
                    "jpg": path.read_bytes(),
                    "txt": CAPTIONS[CLASSES[label]],
                    "cls": label,
                    "json": {"class": CLASSES[label], "file": f"{CLASSES[label]}/{path.name}"},
                }
                for path, label in items
            )
            shards = write_shards(
                progress(samples, desc=f"writing textures {split}", total=len(items)),
                tmp,
                prefix=split,
                samples_per_shard=samples_per_shard,
            )
            info[split] = os.path.basename(shards.pattern)
            info[f"{split}_samples"] = shards.num_samples
        info["classes"] = list(CLASSES)
        return info

    name = f"textures-v{VERSION}-val{val_fraction:g}-s{samples_per_shard}-seed{seed}"
    return prepare_once(Path(data_dir) / name, build)
