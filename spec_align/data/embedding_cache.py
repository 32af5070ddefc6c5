"""Embedding cache: per-sample arrays on disk, row i belonging to sample key i (no pickle).

One directory format for every cache of embeddings (reference caches, compared features):

    keys.jsonl     one JSON string per line: the n sample keys, in row order
    <name>.npy     (n, ...) arrays (embeddings, labels), row i for key i; memory-mapped
    <name>.jsonl   optional per-sample strings, one JSON string per line (e.g. texts)
    meta.json      num_samples and the writer's provenance; its presence marks a complete cache

JSON lines rather than one JSON list: the writer appends each batch's keys as they come, so
neither keys nor arrays are held in memory. A cache is written into a private partial
directory beside the target and renamed into place when complete, so an interrupted or
concurrent build never leaves a directory that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TextIO

import numpy as np

__all__ = ["EmbeddingCache", "EmbeddingCacheWriter"]

_HEADER_BYTES = 128  # fixed .npy header size, rewritten with the final row count


class EmbeddingCache:
    """Read side of a cache directory (see the module docstring).

    Args:
        path: the cache directory.

    Attributes:
        path: the cache directory.
        meta: the contents of meta.json.
    """

    kind = "embedding cache"  # what error messages call it
    how_to_build = "write one with EmbeddingCacheWriter"  # the fix they name

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.is_complete(self.path):
            raise FileNotFoundError(
                f"{self.path} is not a {self.kind} (no meta.json); {self.how_to_build}"
            )
        self.meta = json.loads((self.path / "meta.json").read_text())

    @staticmethod
    def is_complete(path: str | os.PathLike) -> bool:
        """Whether `path` holds a finished cache (meta.json is written last)."""
        return (Path(path) / "meta.json").is_file()

    def __len__(self) -> int:
        return int(self.meta["num_samples"])

    def keys(self) -> list[str]:
        """The n sample keys, in row order."""
        if not (self.path / "keys.jsonl").is_file() and (self.path / "keys.json").is_file():
            # Reference caches written before this format kept one JSON list.
            return json.loads((self.path / "keys.json").read_text())
        return self.lines("keys")

    def lines(self, name: str) -> list[str]:
        """The per-sample strings of `<name>.jsonl`, in row order."""
        file = self._file(f"{name}.jsonl")
        # Keys and texts hold no raw newline (JSON escapes it): the lines joined with commas
        # are one JSON list, parsed in C instead of one json.loads call per line.
        text = file.read_text(encoding="utf-8").rstrip("\n")
        return json.loads("[" + text.replace("\n", ",") + "]")

    def array(self, name: str) -> np.ndarray:
        """`<name>.npy`, memory-mapped, (n, ...)."""
        array = np.load(self._file(f"{name}.npy"), mmap_mode="r", allow_pickle=False)
        if array.shape[0] != len(self):
            raise ValueError(
                f"corrupt {self.kind} {self.path}: {name}.npy has {array.shape[0]} rows for "
                f"{len(self)} samples; {self.how_to_build}"
            )
        return array

    def _file(self, name: str) -> Path:
        file = self.path / name
        if not file.is_file():
            raise FileNotFoundError(
                f"{self.path} is not a {self.kind} (no {name}); {self.how_to_build}"
            )
        return file


class EmbeddingCacheWriter:
    """Writes a cache batch by batch; `close` renames it into place (replacing `path`).

    Use as a context manager: leaving it by an exception removes the partial directory.

    Args:
        path: the cache directory to create.
        dtypes: stored dtype per array name (e.g. {"embeddings": "float16"}); arrays not
            named here keep the dtype of their first block.
        unique_keys: refuse a key seen before (caches read by key need it).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        dtypes: Mapping[str, str | np.dtype] | None = None,
        *,
        unique_keys: bool = False,
    ) -> None:
        self.path = Path(path)
        self.dtypes = dict(dtypes or {})
        self.rows = 0
        self._seen: set[str] | None = set() if unique_keys else None
        # Private to this process: two builds of the same cache cannot mix their files.
        self.partial = self.path.with_name(f"{self.path.name}.partial-{os.getpid()}")
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        self._arrays: dict[str, _NpyAppender] = {}
        self._lines: dict[str, TextIO] = {"keys": self._open_lines("keys")}

    def _open_lines(self, name: str) -> TextIO:
        return open(self.partial / f"{name}.jsonl", "w", encoding="utf-8")  # noqa: SIM115

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Row shape of each array written so far."""
        return {name: writer.row_shape for name, writer in self._arrays.items()}

    def append(
        self,
        keys: Sequence[str],
        arrays: Mapping[str, np.ndarray],
        lines: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Add len(keys) rows: one per key in every array and every line file.

        Raises:
            ValueError: an array or line list of another length, rows of another shape than
                the first block's, or (with `unique_keys`) a repeated key.
        """
        count = len(keys)
        if self._seen is not None:
            repeated = [key for key in keys if key in self._seen or self._seen.add(key)]
            if repeated:
                raise ValueError(f"duplicate sample keys cannot be paired exactly: {repeated[:5]}")
        for name, value in {**arrays, **(lines or {})}.items():
            if len(value) != count:
                raise ValueError(f"{name}: {len(value)} rows for {count} keys")
        for name, block in arrays.items():
            block = np.asarray(block)
            if name not in self._arrays:
                dtype = self.dtypes.get(name, block.dtype)
                path = self.partial / f"{name}.npy"
                self._arrays[name] = _NpyAppender(path, dtype, block.shape[1:])
            self._arrays[name].append(block)
        for name, values in {"keys": keys, **(lines or {})}.items():
            if name not in self._lines:
                self._lines[name] = self._open_lines(name)
            self._lines[name].writelines(json.dumps(value) + "\n" for value in values)
        self.rows += count

    def close(self, meta: dict | None = None) -> Path:
        """Write meta.json (num_samples first, then `meta`) and move the cache into place."""
        self._close_files()
        info = {"num_samples": self.rows, **(meta or {})}
        (self.partial / "meta.json").write_text(json.dumps(info, indent=1) + "\n")
        # The old cache is moved aside, not deleted first: `path` is never missing for a
        # concurrent job of the same sweep, and readers that opened it (memory maps) keep it.
        old = self.path.with_name(f"{self.path.name}.old-{os.getpid()}")
        if self.path.exists():
            self.path.rename(old)
        self.partial.rename(self.path)
        shutil.rmtree(old, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Remove the partial directory; nothing is written at `path`."""
        self._close_files()
        shutil.rmtree(self.partial, ignore_errors=True)

    def _close_files(self) -> None:
        for writer in self._arrays.values():
            writer.close()
        for file in self._lines.values():
            file.close()

    def __enter__(self) -> EmbeddingCacheWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is not None:
            self.abort()


class _NpyAppender:
    """Writes a .npy file row block by row block; the header gets the row count on close."""

    def __init__(self, path: Path, dtype: str | np.dtype, row_shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.row_shape, self.rows = path, np.dtype(dtype), row_shape, 0
        self.file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._header()

    def _header(self) -> None:
        header = repr(
            {
                "descr": np.lib.format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": (self.rows, *self.row_shape),
            }
        ).encode("latin1")
        prefix = np.lib.format.magic(1, 0) + (_HEADER_BYTES - 10).to_bytes(2, "little")
        self.file.seek(0)
        self.file.write(prefix + header.ljust(_HEADER_BYTES - 11) + b"\n")
        self.file.seek(0, os.SEEK_END)

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(
                f"{self.path.name}: rows of shape {block.shape[1:]}, expected {self.row_shape}"
            )
        self.file.write(block.tobytes())
        self.rows += block.shape[0]

    def close(self) -> None:
        if self.file.closed:
            return
        self._header()
        self.file.close()
