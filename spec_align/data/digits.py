"""`digits`: scikit-learn's handwritten digits (1797 real 8x8 scans, shipped with the package).

Images are upscaled to `image_size` (bicubic, dark ink on white, RGB PNG) so that encoders'
preprocessing does not have to blow up 8 px. Captions come from five templates ("a photo of
the digit 3", "a handwritten 3", ...); `cls` is the digit. The split is seeded and stratified:
about `num_val` images (default 297, about 30 per digit) for validation, the rest for training.
Keys are `digit_<index in load_digits>`; json metadata holds the digit and that index.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from spec_align.data._prepare import prepare_once
from spec_align.data._progress import progress
from spec_align.data.shards import write_shards

__all__ = ["caption_for", "prepare"]

VERSION = 1

_TEMPLATES = (
    "a photo of the digit {}",
    "a handwritten {}",
    "the number {}, written by hand",
    "a scan of a handwritten digit {}",
    "a low resolution image of the digit {}",
)


def caption_for(digit: int, template: int) -> str:
    """Caption of a digit with one of the templates (taken modulo their number)."""
    return _TEMPLATES[template % len(_TEMPLATES)].format(digit)


def _encode(pixels: np.ndarray, image_size: int) -> bytes:
    # load_digits stores ink intensity 0..16; render dark ink on white like a scan.
    grey = (255.0 - pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(grey, mode="L")
    image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def prepare(
    data_dir: str | os.PathLike,
    *,
    image_size: int = 32,
    num_val: int = 297,
    samples_per_shard: int = 75,
    seed: int = 0,
) -> dict:
    """Write `digits` as shards into `data_dir` on first use; later calls reuse it.

    Args:
        data_dir: root data directory; the dataset goes into a subdirectory of it.
        image_size: image side in pixels.
        num_val: validation images (stratified by digit).
        samples_per_shard: samples per tar file (default 20 train / 4 val shards).
        seed: seed of the split and of the caption templates.

    Returns:
        dict with "train"/"val" shard patterns, "train_samples"/"val_samples", "root",
        "classes".
    """
    from sklearn.datasets import load_digits

    def build(tmp: Path) -> dict:
        digits = load_digits()
        images, targets = digits.images, digits.target
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(targets))
        # Stratified: each digit gives its first shuffled images, in proportion to its count.
        by_digit = [order[targets[order] == d] for d in range(10)]
        share = num_val / len(targets)
        val = sorted(np.concatenate([idx[: round(share * len(idx))] for idx in by_digit]))
        val_set = set(int(i) for i in val)
        train = [int(i) for i in order if int(i) not in val_set]
        val = [int(i) for i in rng.permutation(val)]
        templates = rng.integers(len(_TEMPLATES), size=len(targets))
        info = {"name": "digits", "version": VERSION, "image_size": image_size, "seed": seed}
        for split, indices in (("train", train), ("val", val)):
            samples = (
                {
                    "__key__": f"digit_{i:04d}",
                    "png": _encode(images[i], image_size),
                    "txt": caption_for(int(targets[i]), int(templates[i])),
                    "cls": int(targets[i]),
                    "json": {"digit": int(targets[i]), "index": i},
                }
                for i in indices
            )
            shards = write_shards(
                progress(samples, desc=f"writing digits {split}", total=len(indices)),
                tmp,
                prefix=split,
                samples_per_shard=samples_per_shard,
            )
            info[split] = os.path.basename(shards.pattern)
            info[f"{split}_samples"] = shards.num_samples
        info["classes"] = [str(d) for d in range(10)]
        return info

    name = f"digits-v{VERSION}-{image_size}px-val{num_val}-s{samples_per_shard}-seed{seed}"
    return prepare_once(Path(data_dir) / name, build)
