"""The cluster callback's probe set: the first validation samples, embedded by both sides.

Every rank reads and embeds its share; the results are gathered, so both functions are
collectives when distributed (every rank calls them, also one whose share is empty).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from spec_align.data import images_to_float
from spec_align.explain.modes import class_name
from spec_align.utils.distributed import gather_chunks, world_size

__all__ = ["Probe", "embed_probe", "read_probe"]


@dataclass
class Probe:
    """A fixed probe set: this rank's batches to embed, and every rank's per-sample display data.

    Attributes:
        batches: this rank's share as the loader produced it, on the CPU: {"image": (b, ...)}
            plus "ref" (precomputed reference embeddings) where the loader gives them.
        thumbnails: (n, s, s, 3) uint8 display copies of all n samples, in probe order.
        captions: per sample its text, else "label <name>", else its key.
        labels: per sample its integer label, -1 if it has none.
        class_names: names of the integer labels, if the module has them.
        keys: per sample its key (its probe index where it has none).
        meta: per sample its metadata dict, None if it has none.
    """

    batches: list[dict[str, Tensor]]
    thumbnails: np.ndarray
    captions: list[str]
    labels: list[int]
    class_names: Sequence[str] | None
    keys: list[str]
    meta: list[dict | None]

    def __len__(self) -> int:
        return len(self.keys)


def read_probe(
    loader: Iterable[dict[str, Any]],
    size: int,
    *,
    thumbnail_size: int,
    device: torch.device | str,
    class_names: Sequence[str] | None = None,
) -> Probe:
    """The first `size` samples of `loader` over all ranks (each rank reads size / world).

    Args:
        loader: batches of {"image": (b, 3, H, W), optional "ref", "text", "label", "key",
            "meta"}; this rank's share of the validation stream.
        size: samples in the probe (all ranks together).
        thumbnail_size: side in pixels of the display copies.
        device: where the gathers run (the module's device: nccl needs CUDA tensors).
        class_names: names of integer labels, for the captions.
    """
    share = math.ceil(size / world_size())
    batches, thumbnails, info, count = [], [], [], 0
    for batch in loader:
        rows = min(share - count, batch["image"].shape[0])
        item = {"image": batch["image"][:rows].cpu()}
        if "ref" in batch:
            item["ref"] = batch["ref"][:rows].cpu()
        batches.append(item)
        thumbnails.append(_thumbnails(item["image"], thumbnail_size))
        for i in range(rows):
            info.append({k: _row(batch.get(k), i) for k in ("text", "label", "key", "meta")})
        count += rows
        if count >= share:
            break
    local = [t.to(device) for t in thumbnails]
    everything = gather_chunks(local, 4, torch.uint8, device).cpu()[:size]
    info = _gather_objects(info)[:size]
    return Probe(
        batches=batches,
        thumbnails=everything.permute(0, 2, 3, 1).numpy(),
        captions=[_caption(r, class_names) for r in info],
        labels=[-1 if r["label"] is None else int(r["label"]) for r in info],
        class_names=class_names,
        keys=[str(r["key"]) if r["key"] is not None else str(i) for i, r in enumerate(info)],
        meta=[r["meta"] if isinstance(r["meta"], dict) else None for r in info],
    )


def embed_probe(
    probe: Probe,
    encoder: Callable[[Tensor], Tensor],
    reference: Callable[[dict[str, Tensor]], Tensor],
    device: torch.device | str,
) -> tuple[Tensor, Tensor]:
    """Both embeddings of the whole probe, (n, D) and (n, D_ref) float32 on every rank.

    Args:
        probe: the probe set.
        encoder: images (b, 3, H, W) -> (b, D).
        reference: batch {"image", optional "ref"} -> (b, D_ref).
        device: where this rank's batches are embedded.
    """
    encoded, referenced = [], []
    for item in probe.batches:
        batch = {k: v.to(device) for k, v in item.items()}
        encoded.append(encoder(batch["image"]).float())
        referenced.append(reference(batch).float())
    n = len(probe)
    # A rank without probe rows still joins the gathers.
    return (
        gather_chunks(encoded, device=device)[:n],
        gather_chunks(referenced, device=device)[:n],
    )


def _thumbnails(images: Tensor, size: int) -> Tensor:
    """uint8 (B, 3, size, size) display copies; images outside [0, 1] are min-max scaled."""
    images = images_to_float(images).float()
    if images.min() < 0 or images.max() > 1:
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        images = (images - low) / (high - low).clamp_min(1e-8)
    if max(images.shape[-2:]) > size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    return (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8)


def _row(values: Any, i: int) -> Any:
    if values is None:
        return None
    value = values[i]
    return value.item() if isinstance(value, Tensor) else value


def _gather_objects(rows: list) -> list:
    """Every rank's rows in rank order (a collective when distributed)."""
    if world_size() == 1:
        return rows
    parts = [None] * world_size()
    dist.all_gather_object(parts, rows)
    return [row for part in parts for row in part]


def _caption(row: dict, class_names: Sequence[str] | None) -> str:
    if row["text"]:
        return str(row["text"])
    if row["label"] is not None and int(row["label"]) >= 0:
        label = int(row["label"])
        return f"label {class_name(label, class_names) or label}"
    return str(row["key"] or "")
