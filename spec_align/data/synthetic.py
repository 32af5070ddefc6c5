"""`synthetic`: shapes on textured backgrounds whose differential clusters are known in advance.

Each image (RGB, `image_size` square, default 64 px, PNG) shows one coloured shape on a grey
textured background. Four independent attributes, drawn per sample from a seeded generator:

    attribute   values (frequency)                                in caption   in pixels
    shape       circle, square, triangle (1/3 each)               yes          yes
    colour      red, green, blue (1/3 each)                       yes          yes
    side        left, right (1/2 each): which half holds the      yes          yes (position)
                shape
    texture     plain (0.4), stripes (0.3), checker (0.2),        never        yes
                dots (0.1): achromatic background pattern

Captions name colour, shape and side ("a red circle on the left", five templates) and never
the texture. Label (`cls`) = 3 * shape + colour (9 classes, `CLASSES`), what captions say
about the object. Per-sample metadata (`json` in the shards, and `attributes.json` in the
dataset directory: key -> attributes) holds all four attributes plus the exact geometry.

Ground truth for SPEC(x=reference, y=caption-trained encoder), where the reference sees
pixels but is translation-invariant (as pooled self-supervised features roughly are) and the
encoder only learns what captions say:

    positive modes (reference forms, encoder does not): the texture groups. The groups have
        distinct frequencies so their modes are not degenerate; the top samples of each
        positive mode share one texture.
    negative modes (encoder forms, reference does not): the side groups (left vs right).
    shape and colour: seen by both, so they cancel and are no differential cluster.

`tests/unit/test_data_datasets.py` checks that `spec_align.compare` recovers exactly this
from attribute-derived embeddings (cluster purity of the top samples per mode).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from spec_align.data._prepare import prepare_once
from spec_align.data._progress import progress
from spec_align.data.shards import write_shards

__all__ = [
    "ATTRIBUTES",
    "CLASSES",
    "COLOURS",
    "SHAPES",
    "SIDES",
    "TEXTURES",
    "TEXTURE_FREQUENCIES",
    "caption_for",
    "load_attributes",
    "prepare",
    "render",
    "sample_attributes",
]

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue")
SIDES = ("left", "right")
TEXTURES = ("plain", "stripes", "checker", "dots")
TEXTURE_FREQUENCIES = (0.4, 0.3, 0.2, 0.1)
CLASSES = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)
ATTRIBUTES = ("shape", "colour", "side", "texture")  # the labelled attributes in each json

# Bump when rendering changes, so cached copies of the old version are not reused.
VERSION = 1

_RGB = {"red": (0.85, 0.15, 0.15), "green": (0.15, 0.75, 0.2), "blue": (0.15, 0.3, 0.9)}
_TEMPLATES = (
    "a {colour} {shape} on the {side}",
    "a photo of a {colour} {shape} on the {side}",
    "a {colour} {shape}, {side} side",
    "a small {colour} {shape} placed on the {side}",
    "on the {side} there is a {colour} {shape}",
)


def sample_attributes(rng: np.random.Generator, image_size: int) -> dict:
    """Draw one sample's attributes and geometry (fractions of the image size)."""
    texture = TEXTURES[rng.choice(len(TEXTURES), p=TEXTURE_FREQUENCIES)]
    side = SIDES[rng.integers(2)]
    radius = rng.uniform(0.13, 0.19)
    # The centre stays inside its half with a margin, so "left"/"right" is never ambiguous.
    cx = rng.uniform(radius + 0.03, 0.47 - radius)
    return {
        "shape": SHAPES[rng.integers(3)],
        "colour": COLOURS[rng.integers(3)],
        "side": side,
        "texture": texture,
        "cx": float(cx if side == "left" else 1.0 - cx),
        "cy": float(rng.uniform(radius + 0.05, 0.95 - radius)),
        "radius": float(radius),
        "tint": [float(v) for v in rng.uniform(-0.08, 0.08, 3)],
        "grey": float(rng.uniform(0.4, 0.6)),
        "period": float(rng.uniform(5.0, 8.0) * image_size / 64),
        "phase": float(rng.uniform(0.0, 1.0)),
        "template": int(rng.integers(len(_TEMPLATES))),
    }


def render(attributes: dict, image_size: int) -> np.ndarray:
    """Draw one image from its attributes.

    Shapes:
        -> (image_size, image_size, 3) uint8
    """
    size = image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    period, shift = attributes["period"], attributes["phase"] * attributes["period"]
    texture = attributes["texture"]
    if texture == "plain":
        pattern = np.zeros_like(xx)
    elif texture == "stripes":
        pattern = np.where(((xx + yy + shift) // period) % 2 == 0, 1.0, -1.0)
    elif texture == "checker":
        cells = (xx + shift) // period + (yy + shift) // period
        pattern = np.where(cells % 2 == 0, 1.0, -1.0)
    else:
        fx = ((xx + shift) % period) - period / 2
        fy = ((yy + shift) % period) - period / 2
        pattern = np.where(fx**2 + fy**2 < (0.3 * period) ** 2, 1.0, -0.35)
    background = attributes["grey"] + 0.22 * pattern
    image = np.repeat(background[..., None], 3, axis=2)

    cx, cy, r = (attributes[k] * size for k in ("cx", "cy", "radius"))
    dx, dy = xx - cx, yy - cy
    shape = attributes["shape"]
    if shape == "circle":
        mask = dx**2 + dy**2 <= r**2
    elif shape == "square":
        side = r * 0.886  # same area as the circle
        mask = (np.abs(dx) <= side) & (np.abs(dy) <= side)
    else:
        # Upward equilateral triangle inscribed in a circle of radius 1.2 r.
        rr = 1.2 * r
        mask = (dy <= rr / 2) & (np.sqrt(3) * dx - dy <= rr) & (-np.sqrt(3) * dx - dy <= rr)
    colour = np.clip(np.array(_RGB[attributes["colour"]]) + attributes["tint"], 0.0, 1.0)
    image[mask] = colour
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def caption_for(attributes: dict) -> str:
    """The caption of a sample: names colour, shape and side, never the texture."""
    return _TEMPLATES[attributes["template"]].format(**attributes)


def _samples(split: str, num: int, seed: int, image_size: int, attributes: dict):
    # One generator per split so that changing the val size leaves train unchanged.
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    for index in range(num):
        attrs = sample_attributes(rng, image_size)
        key = f"syn_{split}_{index:06d}"
        buffer = io.BytesIO()
        Image.fromarray(render(attrs, image_size)).save(buffer, format="PNG")
        meta = {k: attrs[k] for k in (*ATTRIBUTES, "cx", "cy", "radius")}
        attributes[key] = meta
        yield {
            "__key__": key,
            "png": buffer.getvalue(),
            "txt": caption_for(attrs),
            "cls": 3 * SHAPES.index(attrs["shape"]) + COLOURS.index(attrs["colour"]),
            "json": meta,
        }


def prepare(
    data_dir: str | os.PathLike,
    *,
    num_train: int = 4096,
    num_val: int = 1024,
    image_size: int = 64,
    samples_per_shard: int = 256,
    seed: int = 0,
) -> dict:
    """Generate `synthetic` into `data_dir` on first use; later calls reuse it.

    The dataset directory name encodes every argument, so different settings coexist and the
    same settings always give byte-identical shards.

    Args:
        data_dir: root data directory; the dataset goes into a subdirectory of it.
        num_train: training samples.
        num_val: validation samples.
        image_size: image side in pixels.
        samples_per_shard: samples per tar file (default 16 train / 4 val shards).
        seed: generation seed.

    Returns:
        dict with "train"/"val" shard patterns, "train_samples"/"val_samples", "root"
        (dataset directory), "attributes" (path of attributes.json) and "classes".
    """

    def build(tmp: Path) -> dict:
        attributes: dict[str, dict] = {}
        info = {"name": "synthetic", "version": VERSION, "image_size": image_size, "seed": seed}
        for split, num in (("train", num_train), ("val", num_val)):
            samples = _samples(split, num, seed, image_size, attributes)
            shards = write_shards(
                progress(samples, desc=f"generating synthetic {split}", total=num),
                tmp,
                prefix=split,
                samples_per_shard=samples_per_shard,
            )
            info[split] = os.path.basename(shards.pattern)
            info[f"{split}_samples"] = shards.num_samples
        (tmp / "attributes.json").write_text(json.dumps(attributes, sort_keys=True) + "\n")
        info["classes"] = list(CLASSES)
        return info

    name = f"synthetic-v{VERSION}-{image_size}px-n{num_train}-{num_val}"
    name += f"-s{samples_per_shard}-seed{seed}"
    info = prepare_once(Path(data_dir) / name, build)
    info["attributes"] = str(Path(info["root"]) / "attributes.json")
    return info


def load_attributes(info_or_path: dict | str | os.PathLike) -> dict[str, dict]:
    """Per-sample attributes (key -> shape, colour, side, texture, geometry) of a prepared set."""
    path = info_or_path["attributes"] if isinstance(info_or_path, dict) else info_or_path
    return json.loads(Path(path).read_text())
