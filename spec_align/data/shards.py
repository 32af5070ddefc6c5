"""Writing and resolving webdataset shards: shard specs, sizes.json and image-folder/CSV import.

A shard is a plain tar file whose members are named `<key>.<ext>`; the files of one sample are
adjacent and share the key. Extensions used here: `jpg`/`png`/`webp` (image bytes), `txt`
(caption, UTF-8), `cls` (integer label as text), `json` (metadata) and `ref.npy` (a reference
embedding as a numpy `.npy` file). Shards written here are byte-for-byte reproducible (fixed
mtime, owner and order), so a generated dataset can be compared by hash.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
import random
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image
from webdataset.shardlists import expand_urls

from spec_align.data._progress import progress

__all__ = [
    "IMAGE_EXTENSIONS",
    "ShardSet",
    "check_shard_count",
    "expand_shards",
    "images_from_csv",
    "images_from_folder",
    "make_shards",
    "read_sizes",
    "shard_pattern",
    "shard_sizes",
    "write_shards",
]

log = logging.getLogger(__name__)

# Extensions the pipeline decodes as the sample image, in order of preference.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

# Files whose suffix PIL reads but webdataset users rarely store; re-encoded to PNG on import.
_REENCODE_SUFFIXES = {".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
_KEEP_SUFFIXES = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}

ShardSpec = str | Sequence[str]


@dataclass
class ShardSet:
    """Shards written by `write_shards`.

    Attributes:
        pattern: brace pattern covering all shards, e.g. `/data/train-{000000..000007}.tar`.
        paths: the shard files, in order.
        sizes: samples per shard file name (the same mapping stored in sizes.json).
        num_samples: total samples written.
        skipped: sources that were not written and why (unreadable images).
    """

    pattern: str
    paths: list[str]
    sizes: dict[str, int]
    num_samples: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def shard_pattern(directory: str | os.PathLike, prefix: str, num_shards: int) -> str:
    """Brace pattern `<directory>/<prefix>-{000000..N-1}.tar` for `num_shards` shards."""
    return os.path.join(str(directory), f"{prefix}-{{000000..{num_shards - 1:06d}}}.tar")


def _is_local(url: str) -> bool:
    if url.startswith("pipe:"):
        return False
    scheme = urlparse(url).scheme
    # A one-letter scheme is a Windows drive letter, not a protocol.
    return scheme in ("", "file") or len(scheme) == 1


def expand_shards(spec: ShardSpec, *, check_exists: bool = True) -> list[str]:
    """Expand a shard spec into a list of URLs, as webdataset would.

    Args:
        spec: a brace pattern (`/d/train-{000000..000015}.tar`), several patterns joined by
            `::`, a list of paths or patterns, or `pipe:`/`http(s)://` URLs.
        check_exists: raise FileNotFoundError listing the local paths that do not exist
            (remote URLs are not checked).

    Returns:
        The expanded URLs in order.
    """
    items = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    urls = [url for item in items for url in expand_urls(os.fspath(item))]
    if not urls:
        raise ValueError(f"shard spec {spec!r} expands to no shards")
    if check_exists:
        missing = [
            url for url in urls if _is_local(url) and not os.path.exists(url.removeprefix("file:"))
        ]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise FileNotFoundError(
                f"{len(missing)} of {len(urls)} shards do not exist: {shown}. Check the shard "
                "pattern and the data directory (built-in datasets are written by their prepare())"
            )
    return urls


def check_shard_count(num_shards: int, num_workers: int, world_size: int, name: str) -> None:
    """Raise ValueError unless every dataloader worker on every rank can own a shard.

    Args:
        num_shards: shards in the split.
        num_workers: DataLoader workers per rank (0 counts as one: the main process reads).
        world_size: number of ranks (devices x nodes).
        name: split name used in the message ("train", "val").
    """
    readers = max(num_workers, 1) * world_size
    if num_shards < readers:
        raise ValueError(
            f"{name}: {num_shards} shards cannot feed {max(num_workers, 1)} dataloader workers "
            f"x {world_size} ranks = {readers} readers; each reader needs at least one shard. "
            f"Lower num_workers to {max(num_shards // world_size, 1)} or fewer, or reshard the "
            f"data into at least {readers} shards (scripts/make_shards.py --samples-per-shard)"
        )


def shard_sizes(urls: Sequence[str]) -> dict[str, int]:
    """Samples per shard from the sizes.json beside each local shard.

    Returns:
        url -> sample count for the urls whose sizes.json lists them; remote urls and shards
        without an entry are left out.
    """
    sizes: dict[str, int] = {}
    listings: dict[str, dict] = {}
    for url in urls:
        if not _is_local(url):
            continue
        directory, name = os.path.split(url.removeprefix("file:"))
        if directory not in listings:
            sizes_file = os.path.join(directory, "sizes.json")
            listings[directory] = {}
            if os.path.exists(sizes_file):
                with open(sizes_file) as f:
                    listings[directory] = json.load(f)
        if name in listings[directory]:
            sizes[url] = int(listings[directory][name])
    return sizes


def read_sizes(urls: Sequence[str]) -> int | None:
    """Total sample count of `urls` from the sizes.json beside them, or None when unknown."""
    sizes = shard_sizes(urls)
    if not all(url in sizes for url in urls):
        return None
    return sum(sizes[url] for url in urls)


def _tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    # Fixed metadata so the same samples always give the same bytes.
    info.mtime = 0
    info.mode = 0o444
    info.uname = info.gname = "spec_align"
    return info, io.BytesIO(data)


def _encode_sample(sample: Mapping[str, object]) -> list[tuple[str, bytes]]:
    key = sample["__key__"]
    if not isinstance(key, str) or "." in key or "/" in key or not key:
        raise ValueError(f"sample key {key!r} must be a non-empty string without '.' or '/'")
    files = []
    for ext in sorted(k for k in sample if not k.startswith("__")):
        value = sample[ext]
        if value is None:
            continue
        if isinstance(value, bytes):
            data = value
        elif ext == "cls":
            data = str(int(value)).encode()
        elif ext == "txt":
            data = str(value).encode("utf-8")
        elif ext == "json":
            data = json.dumps(value, sort_keys=True).encode("utf-8")
        elif ext.endswith("npy"):
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(value), allow_pickle=False)
            data = buffer.getvalue()
        else:
            raise ValueError(f"{key}.{ext}: cannot encode a {type(value).__name__}; give bytes")
        files.append((f"{key}.{ext}", data))
    return files


def write_shards(
    samples: Iterable[Mapping[str, object]],
    directory: str | os.PathLike,
    *,
    prefix: str,
    samples_per_shard: int,
    update_sizes: bool = True,
) -> ShardSet:
    """Write samples into `<directory>/<prefix>-NNNNNN.tar` shards and record sizes.json.

    Each sample is a mapping with `__key__` (unique, no dots) and extension -> value entries:
    bytes are stored as is; `txt` str, `cls` int, `json` JSON-able, `*npy` arrays are encoded.

    Args:
        samples: the samples, in the order they should be stored.
        directory: output directory (created).
        prefix: shard file name prefix, e.g. "train".
        samples_per_shard: samples per tar file (the last one may hold fewer).
        update_sizes: merge the new shard sizes into `<directory>/sizes.json`.

    Returns:
        The shards written.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    sizes: dict[str, int] = {}
    seen: set[str] = set()
    stream = iter(samples)
    for first in stream:
        paths.append(str(directory / f"{prefix}-{len(paths):06d}.tar"))
        count = 0
        shard = itertools.chain([first], itertools.islice(stream, samples_per_shard - 1))
        with tarfile.open(paths[-1], "w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in shard:
                key = sample["__key__"]
                if key in seen:
                    raise ValueError(f"duplicate sample key {key!r}: keys must be unique")
                seen.add(key)
                for name, data in _encode_sample(sample):
                    tar.addfile(*_tar_member(name, data))
                count += 1
        sizes[os.path.basename(paths[-1])] = count
    if not paths:
        raise ValueError(f"no samples to write for {prefix!r}")
    if update_sizes:
        sizes_file = directory / "sizes.json"
        merged = json.loads(sizes_file.read_text()) if sizes_file.exists() else {}
        merged.update(sizes)
        sizes_file.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    return ShardSet(
        pattern=shard_pattern(directory, prefix, len(paths)),
        paths=paths,
        sizes=sizes,
        num_samples=sum(sizes.values()),
    )


@dataclass
class _Source:
    path: Path
    caption: str | None
    label: int | None


def images_from_folder(
    root: str | os.PathLike, *, caption_template: str | None = "a photo of a {}."
) -> tuple[list[_Source], list[str]]:
    """List the images of a class-subfolder tree (`root/<class>/<image>`).

    Args:
        root: folder with one subfolder per class; classes are labelled in sorted order.
        caption_template: caption made from the class name (underscores become spaces), or
            None for no caption.

    Returns:
        (sources, class names); sources sorted by class then file name.
    """
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class subfolders")
    suffixes = set(_KEEP_SUFFIXES) | _REENCODE_SUFFIXES
    sources = []
    for label, name in enumerate(classes):
        caption = caption_template.format(name.replace("_", " ")) if caption_template else None
        for path in sorted((root / name).rglob("*")):
            if path.is_file() and path.suffix.lower() in suffixes:
                sources.append(_Source(path, caption, label))
    return sources, classes


def images_from_csv(
    csv_path: str | os.PathLike,
    *,
    image_key: str = "filepath",
    caption_key: str | None = "caption",
    label_key: str | None = None,
    separator: str = ",",
) -> list[_Source]:
    """List the images of a CSV with one row per image (`filepath,caption` as open_clip uses).

    Relative paths are resolved against the CSV's folder.

    Args:
        csv_path: the CSV (or TSV with `separator="\\t"`) file with a header row.
        image_key: column with the image path.
        caption_key: column with the caption, or None.
        label_key: column with an integer label, or None.
        separator: field separator.
    """
    csv_path = Path(csv_path)
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=separator))
    if rows:
        for column in (image_key, caption_key, label_key):
            if column is not None and column not in rows[0]:
                raise KeyError(f"{csv_path} has no column {column!r}; columns: {list(rows[0])}")
    sources = []
    for row in rows:
        path = Path(row[image_key])
        sources.append(
            _Source(
                path if path.is_absolute() else csv_path.parent / path,
                row[caption_key] if caption_key else None,
                int(row[label_key]) if label_key else None,
            )
        )
    return sources


def _load_image(path: Path, max_size: int | None) -> tuple[bytes, str, tuple[int, int]]:
    """Image bytes ready for a shard: originals kept, re-encoded only when needed."""
    raw = path.read_bytes()
    with Image.open(io.BytesIO(raw)) as image:
        # load() decodes every pixel, so truncated or corrupt files fail here and not in training.
        image.load()
        size = image.size
        ext = _KEEP_SUFFIXES.get(path.suffix.lower())
        too_big = max_size is not None and max(size) > max_size
        if ext is not None and not too_big:
            return raw, ext, size
        image = image.convert("RGB")
        if too_big:
            image.thumbnail((max_size, max_size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        if too_big and ext == "jpg":
            image.save(buffer, format="JPEG", quality=95)
            return buffer.getvalue(), "jpg", image.size
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "png", image.size


def _import_samples(
    sources: Sequence[_Source],
    root: Path | None,
    max_size: int | None,
    skipped: list[tuple[str, str]],
) -> Iterator[dict]:
    # Keys come from the position in the sorted source list, so they stay stable across
    # re-runs with a different shuffle and never contain dots; the path goes into json.
    for index, source in sources:
        try:
            data, ext, size = _load_image(source.path, max_size)
        except Exception as exn:  # any decoder failure means the file is unusable
            skipped.append((str(source.path), f"{type(exn).__name__}: {exn}"))
            log.warning("skipping unreadable image %s: %s", source.path, exn)
            continue
        name = str(source.path.relative_to(root)) if root else str(source.path)
        yield {
            "__key__": f"{index:09d}",
            ext: data,
            "txt": source.caption,
            "cls": source.label,
            "json": {"source": name, "width": size[0], "height": size[1]},
        }


def make_shards(
    sources: Sequence[_Source],
    out_dir: str | os.PathLike,
    *,
    samples_per_shard: int = 1000,
    val_fraction: float = 0.0,
    shuffle: bool = True,
    seed: int = 0,
    max_size: int | None = None,
    root: str | os.PathLike | None = None,
) -> dict[str, ShardSet]:
    """Write image sources (from `images_from_folder` / `images_from_csv`) as shards.

    Unreadable images are skipped, logged and listed in each ShardSet's `skipped`. Progress
    (images per split) goes to a tqdm bar on stderr.

    Args:
        sources: images with optional caption and label.
        out_dir: output directory for `train-*.tar` (and `val-*.tar`) plus sizes.json.
        samples_per_shard: samples per tar file.
        val_fraction: fraction of sources written as a `val` split (0 for none).
        shuffle: shuffle sample order (seeded) so that each shard mixes classes.
        seed: seed of the shuffle and the train/val split.
        max_size: downscale images whose longer side exceeds this (re-encoded); None keeps all.
        root: folder that the `source` paths in json metadata are relative to.

    Returns:
        ShardSet per split name ("train", optionally "val").
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    indexed = list(enumerate(sources))
    if not indexed:
        raise ValueError("no images to write")
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(indexed)
    num_val = round(len(indexed) * val_fraction)
    splits = {"train": indexed[num_val:]}
    if num_val:
        splits["val"] = indexed[:num_val]
    root = Path(root) if root else None
    result = {}
    for name, part in splits.items():
        skipped: list[tuple[str, str]] = []
        shards = write_shards(
            _import_samples(
                progress(part, desc=f"writing {name} shards"), root, max_size, skipped
            ),
            out_dir,
            prefix=name,
            samples_per_shard=samples_per_shard,
        )
        shards.skipped = skipped
        result[name] = shards
    return result
