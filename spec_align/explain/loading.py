"""Loading precomputed embeddings and per-sample sidecar files without unpickling anything.

Embeddings: `.npy` (memory-mapped, so a file larger than RAM streams), `.npz` and `.pt`
(a tensor, or a dict of tensors with `key=` naming the entry). Pickle is refused everywhere:
`np.load(allow_pickle=False)` and `torch.load(weights_only=True)`, because unpickling a file
can run arbitrary code.

Sidecars (labels, keys, image paths, texts): `.json` (a list), `.npy` (a 1-D array) or text
with one entry per line.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "EMBEDDING_SUFFIXES",
    "InputError",
    "embedding_batches",
    "load_embedding",
    "load_list",
]

EMBEDDING_SUFFIXES = (".npy", ".npz", ".pt", ".pth")
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


class InputError(ValueError):
    """An input file is missing, unsafe, malformed or does not match the other inputs."""


def load_embedding(path: str | os.PathLike, key: str | None = None) -> np.ndarray | Tensor:
    """Read an (n, d) embedding matrix; `.npy` stays memory-mapped on disk.

    Args:
        path: `.npy`, `.npz` or `.pt`/`.pth` file.
        key: the array's name inside an `.npz` or a dict saved with `torch.save`; may be
            omitted when the file holds exactly one array.

    Returns:
        A numpy array (memory-mapped for `.npy`) or a CPU tensor, 2-D and numeric.

    Raises:
        InputError: missing file, pickle content, unknown suffix or key, not 2-D numeric.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        raise InputError(
            f"{path}: pickle files are not loaded (unpickling can run arbitrary code); "
            "save the array with np.save(path, array) or torch.save(tensor, path) instead"
        )
    if suffix not in EMBEDDING_SUFFIXES:
        raise InputError(
            f"{path}: unknown embedding format {suffix!r}; "
            f"use one of {', '.join(EMBEDDING_SUFFIXES)}"
        )
    try:
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                array = _pick(dict(archive.items()), key, path)
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            array = _pick(loaded, key, path) if isinstance(loaded, dict) else loaded
    except InputError:
        raise
    except (pickle.UnpicklingError, ValueError, RuntimeError, zipfile.BadZipFile, EOFError) as err:
        raise InputError(
            f"{path}: cannot be read as a plain {suffix} array ({_first_line(err)}); pickled "
            "objects are refused, save a numeric array or tensor instead"
        ) from err
    return _check_matrix(array, path, key)


def _pick(arrays: dict, key: str | None, path: Path) -> object:
    if key is None:
        if len(arrays) != 1:
            raise InputError(
                f"{path} holds {len(arrays)} arrays ({', '.join(map(str, arrays)) or 'none'}); "
                "name one with the key option"
            )
        return next(iter(arrays.values()))
    if key not in arrays:
        raise InputError(f"{path} has no array {key!r}; it holds {', '.join(map(str, arrays))}")
    return arrays[key]


def _check_matrix(array: object, path: Path, key: str | None) -> np.ndarray | Tensor:
    where = f"{path}[{key}]" if key else str(path)
    if not isinstance(array, (np.ndarray, Tensor)):
        raise InputError(f"{where} holds a {type(array).__name__}, not an array or tensor")
    if isinstance(array, Tensor):
        numeric = not array.is_complex() and array.dtype != torch.bool
    else:
        numeric = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    if not numeric:
        raise InputError(f"{where} has dtype {array.dtype}; embeddings must be real numbers")
    if array.ndim != 2 or array.shape[0] == 0:
        raise InputError(
            f"{where} has shape {tuple(array.shape)}; "
            "embeddings must be (n samples, d) with n >= 1"
        )
    return array


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def embedding_batches(
    x: np.ndarray | Tensor,
    y: np.ndarray | Tensor,
    *,
    batch_size: int = 8192,
    names: tuple[str, str] = ("x", "y"),
) -> Callable[[], Iterator[tuple[Tensor, Tensor]]]:
    """A re-iterable source of paired float64 batches for `spec_align.compare`.

    Rows are read (from a memory map: pages in, never the whole file) batch by batch, so
    memory stays O(batch_size * d). NaN/inf are reported with their global row number.

    Args:
        x: the first embedding, (n, d_x).
        y: the second embedding, (n, d_y); row i of both is the same sample.
        batch_size: rows per batch.
        names: how errors name the two inputs (file names).

    Returns:
        A function returning a fresh iterator of (x_batch, y_batch) each call; its
        `num_samples` attribute is n.

    Raises:
        InputError: the row counts differ.
    """
    if x.shape[0] != y.shape[0]:
        raise InputError(
            f"{names[0]} has {x.shape[0]} rows but {names[1]} has {y.shape[0]}: both embeddings "
            "must embed the same samples, row i of each being the same sample"
        )

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, x.shape[0], batch_size):
            pair = []
            for name, array in zip(names, (x, y), strict=True):
                chunk = array[start : start + batch_size]
                chunk = (
                    chunk.to(torch.float64)
                    if isinstance(chunk, Tensor)
                    else torch.from_numpy(
                        np.array(chunk, dtype=np.float64)
                    )  # copy: memmaps are read-only
                )
                bad = ~torch.isfinite(chunk)
                if bool(bad.any()):
                    row = start + int(bad.any(dim=1).nonzero()[0])
                    raise InputError(
                        f"{name} contains NaN or inf (first at row {row}); remove or repair "
                        "those samples in both embeddings before comparing"
                    )
                pair.append(chunk)
            yield pair[0], pair[1]

    batches.num_samples = int(x.shape[0])  # the total of `compare(progress=True)`'s bars
    return batches


def load_list(path: str | os.PathLike, num_samples: int, what: str) -> list:
    """Read one entry per sample from a sidecar file and check the count.

    Args:
        path: `.json` list, `.npy` 1-D array, or text with one entry per line.
        num_samples: the number of embedding rows it must match.
        what: what the entries are ("labels", "image paths"), for errors.

    Returns:
        The entries as a Python list.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file {path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            entries = json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".npy":
            entries = np.load(path, allow_pickle=False)
            if entries.ndim != 1:
                raise InputError(f"{what} file {path} must be 1-D, got {entries.shape}")
            entries = entries.tolist()
        else:
            entries = path.read_text(encoding="utf-8").splitlines()
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{what} file {path}: {_first_line(err)}") from err
    if not isinstance(entries, list):
        raise InputError(f"{what} file {path} must hold a JSON list, got {type(entries).__name__}")
    if len(entries) != num_samples:
        raise InputError(
            f"{what} file {path} has {len(entries)} entries but the embeddings have "
            f"{num_samples} rows; give one entry per sample, in row order"
        )
    return entries
