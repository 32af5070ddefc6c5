"""Streaming two encoders over a data loader into an on-disk feature cache.

A cache is a directory of safe formats only (no pickle):

    a.npy, b.npy   (n, d_a), (n, d_b) float32 embeddings, row i = sample i; memory-mapped
    labels.npy     (n,) int64, -1 where unknown
    keys.jsonl     one JSON string per line, the sample keys
    texts.jsonl    one JSON string per line, the sample texts ("" where none)
    meta.json      n, dims, and the `fingerprint` (encoders, data) it was computed for

Features are appended to the files batch by batch, so memory does not grow with n. A second
comparison with the same fingerprint (other bandwidths, kernel, eta) reads the cache and
skips the encoders.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

__all__ = ["FeatureCache", "PairTransform", "extract_features"]

_HEADER_BYTES = 128  # fixed .npy header size, rewritten with the final row count


class PairTransform:
    """One image -> both encoders' preprocessed inputs, flattened into one tensor.

    The data pipeline stacks one tensor per sample; two encoders usually want different
    sizes and normalisations, so both inputs travel concatenated and `split` restores them.

    Args:
        transform_a: PIL image -> tensor of `shape_a` (encoder A's eval transform).
        transform_b: PIL image -> tensor of `shape_b`.
        shape_a: (3, H_a, W_a).
        shape_b: (3, H_b, W_b).
    """

    def __init__(
        self,
        transform_a: Callable,
        transform_b: Callable,
        shape_a: tuple[int, ...],
        shape_b: tuple[int, ...],
    ) -> None:
        self.transform_a, self.transform_b = transform_a, transform_b
        self.shape_a, self.shape_b = tuple(shape_a), tuple(shape_b)

    def __call__(self, image: object) -> Tensor:
        return torch.cat([self.transform_a(image).flatten(), self.transform_b(image).flatten()])

    def split(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """(B, size_a + size_b) -> (B, *shape_a), (B, *shape_b)."""
        size_a = int(np.prod(self.shape_a))
        return (
            batch[:, :size_a].reshape(-1, *self.shape_a),
            batch[:, size_a:].reshape(-1, *self.shape_b),
        )


class _NpyAppender:
    """Writes a .npy file row block by row block; the header gets the row count on close."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
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
        self._header()
        self.file.close()


class FeatureCache:
    """Read side of a feature cache directory (see the module docstring).

    Args:
        path: the cache directory.

    Attributes:
        a, b: memory-mapped (n, d) embeddings.
        labels: (n,) int64 memory map.
        meta: the contents of meta.json.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not (self.path / "meta.json").is_file():
            raise FileNotFoundError(f"{self.path} is not a feature cache (no meta.json)")
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.a = np.load(self.path / "a.npy", mmap_mode="r", allow_pickle=False)
        self.b = np.load(self.path / "b.npy", mmap_mode="r", allow_pickle=False)
        self.labels = np.load(self.path / "labels.npy", mmap_mode="r", allow_pickle=False)

    def __len__(self) -> int:
        return int(self.a.shape[0])

    def keys(self) -> list[str]:
        """The n sample keys, in row order."""
        return self._lines("keys.jsonl")

    def texts(self) -> list[str]:
        """The n sample texts, in row order ("" where a sample has none)."""
        return self._lines("texts.jsonl")

    def _lines(self, name: str) -> list[str]:
        with open(self.path / name, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    @staticmethod
    def matches(path: str | os.PathLike, fingerprint: dict) -> bool:
        """Whether `path` holds a complete cache computed for `fingerprint`."""
        meta = Path(path) / "meta.json"
        return meta.is_file() and json.loads(meta.read_text()).get("fingerprint") == fingerprint


@torch.no_grad()
def extract_features(
    batches: Iterable[dict],
    encoder_a: nn.Module,
    encoder_b: nn.Module,
    cache_dir: str | os.PathLike,
    *,
    split: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    fingerprint: dict | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    total: int | None = None,
    num_samples: int | None = None,
) -> FeatureCache:
    """Embed every batch with both encoders and append the features to `cache_dir`.

    The encoders run in eval mode under no_grad, on the GPU when there is one. The cache is
    written to `<cache_dir>.partial` and renamed when complete, so an interrupted run never
    leaves a directory that looks like a finished cache.

    Args:
        batches: dict batches with "image" (B, ...) and optionally "key", "label", "text"
            (the datamodule's format).
        encoder_a: images -> (B, d_a).
        encoder_b: images -> (B, d_b).
        cache_dir: output directory (replaced if it exists).
        split: batch["image"] -> (images for A, images for B), e.g. `PairTransform.split`;
            None feeds the same images to both.
        fingerprint: JSON-ready description of encoders and data, stored for cache lookups.
        device: where the encoders run (default: CUDA if available, else CPU).
        progress: show a tqdm progress bar (stderr).
        total: number of batches, for the progress bar (default: `len(batches)` if it has
            one).
        num_samples: number of samples, if known: the bar then counts samples (with an
            ETA) instead of batches.

    Returns:
        The written `FeatureCache`.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder_a.eval().to(device)
    encoder_b.eval().to(device)
    final = Path(cache_dir)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    writers: dict[str, _NpyAppender] = {}
    with (
        open(partial / "keys.jsonl", "w", encoding="utf-8") as keys,
        open(partial / "texts.jsonl", "w", encoding="utf-8") as texts,
        tqdm(
            total=num_samples if num_samples is not None else total or _length(batches),
            unit="sample" if num_samples is not None else "batch",
            disable=not progress,
            desc="features",
        ) as bar,
    ):
        for batch in batches:
            images_a, images_b = (split or (lambda t: (t, t)))(batch["image"])
            features = {
                "a": encoder_a(images_a.to(device, non_blocking=True)),
                "b": encoder_b(images_b.to(device, non_blocking=True)),
            }
            count = features["a"].shape[0]
            for name, value in features.items():
                value = value.float().cpu().numpy()
                if name not in writers:
                    writers[name] = _NpyAppender(
                        partial / f"{name}.npy", np.float32, value.shape[1:]
                    )
                writers[name].append(value)
            labels = batch.get("label")
            labels = np.full(count, -1) if labels is None else np.asarray(labels)
            writers.setdefault("labels", _NpyAppender(partial / "labels.npy", np.int64, ()))
            writers["labels"].append(labels)
            first = writers["a"].rows - count
            batch_keys = batch.get("key") or [str(first + i) for i in range(count)]
            for key, text in zip(batch_keys, batch.get("text") or [""] * count, strict=True):
                keys.write(json.dumps(key) + "\n")
                texts.write(json.dumps(text) + "\n")
            bar.update(count if num_samples is not None else 1)
    for writer in writers.values():
        writer.close()
    if "a" not in writers:
        shutil.rmtree(partial)
        raise ValueError("the data loader yielded no batches; nothing to compare")
    meta = {
        "num_samples": writers["a"].rows,
        "dim_a": writers["a"].row_shape[0],
        "dim_b": writers["b"].row_shape[0],
        "fingerprint": fingerprint or {},
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return FeatureCache(final)


def _length(batches: Iterable) -> int | None:
    """len(batches) where defined (a DataLoader over a sized dataset), else None."""
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None
