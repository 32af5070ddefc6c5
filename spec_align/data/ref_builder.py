"""Building reference caches: one pass of a frozen encoder over every sample of the shards.

`build_ref_cache` is the one recipe (used by `run()` for `ref.builder` and by
scripts/precompute_ref.py): the encoder embeds exactly what the training module's reference
would, the data's eval view through the encoder's `ViewAdapter`. `compute_ref_cache` is the
pass it runs, for any callable on [0, 1] images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from spec_align.data._progress import progress
from spec_align.data.ref_cache import RefCache, ref_cache_meta, ref_cache_writer
from spec_align.data.samples import SkipCounter
from spec_align.data.shards import expand_shards, read_sizes
from spec_align.data.transforms import ImageTransform, ResizeToTensor, ViewAdapter, images_to_float
from spec_align.data.wds import build_eval_pipeline

if TYPE_CHECKING:  # the encoders package imports open_clip and timm: seconds, not needed here
    from spec_align.encoders.base import ImageEncoder

__all__ = ["build_ref_cache", "compute_ref_cache"]


def build_ref_cache(
    shards: str | Sequence[str],
    encoder: ImageEncoder,
    path: str | os.PathLike,
    *,
    view: ImageTransform,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    dtype: str = "float16",
    meta: dict | None = None,
) -> RefCache:
    """The reference cache a training run with these shards and this view can use.

    The training module embeds the batch's images (the data's view) through
    `ViewAdapter.for_encoder(ref)`; so does this, so a cached reference and a live one see
    the same pixels. The view is the datamodule's `eval_transform`: a cache holds one
    embedding per sample, so training on it needs `train_transform` to be that same view.

    Args:
        shards: shard spec (pattern, list or URLs; see `expand_shards`).
        encoder: the frozen reference (its image_size, image_mean and image_std build the
            `ViewAdapter`).
        path: output cache directory (replaced if it exists).
        view: PIL image -> (3, H, W) tensor, the datamodule's eval_transform (e.g.
            `ResizeToTensor(data.image_size)`).
        batch_size: images per forward pass.
        num_workers: DataLoader workers decoding images (at most one per shard is used).
        device: where the encoder runs.
        dtype: stored precision, "float16" or "float32".
        meta: extra provenance for meta.json (e.g. the encoder's config).

    Returns:
        The written cache; meta.json also records the view's repr.
    """
    network = nn.Sequential(ViewAdapter.for_encoder(encoder), encoder)
    return compute_ref_cache(
        shards,
        network,
        path,
        transform=view,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        dtype=dtype,
        meta={"view": repr(view), **(meta or {})},
    )


@torch.no_grad()
def compute_ref_cache(
    shards: str | Sequence[str],
    encoder: Callable[[Tensor], Tensor],
    path: str | os.PathLike,
    *,
    transform: ImageTransform | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    dtype: str = "float16",
    meta: dict | None = None,
) -> RefCache:
    """Run a frozen encoder once over every sample of `shards` and cache the embeddings.

    The embeddings are written batch by batch (memory does not grow with the data set).
    Corrupt samples are skipped as in training (they would be skipped there too); meta.json
    records the `SkipCounter` counts (`samples_skipped`, `shard_errors`). Progress goes to a
    tqdm bar on stderr, with a total from sizes.json where it lists every shard.

    Args:
        shards: shard spec (pattern, list or URLs; see `expand_shards`).
        encoder: images (B, 3, H, W) in [0, 1] -> (B, d); an nn.Module is put in eval mode.
        path: output cache directory (replaced if it exists).
        transform: PIL image -> (3, H, W) tensor (default `ResizeToTensor(224)`).
        batch_size: images per forward pass.
        num_workers: DataLoader workers decoding images (at most one per shard is used).
        device: where the encoder runs.
        dtype: stored precision, "float16" (half the disk and page cache) or "float32".
        meta: extra provenance for meta.json (e.g. the encoder's name).

    Returns:
        The written cache.
    """
    urls = expand_shards(shards)
    num_workers = min(num_workers, len(urls))
    counter = SkipCounter()
    pipeline = build_eval_pipeline(
        urls,
        transform=transform or ResizeToTensor(224),
        batch_size=batch_size,
        num_workers=num_workers,
        counter=counter,
    )
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=num_workers)
    if isinstance(encoder, nn.Module):
        encoder.eval().to(device)
    with (
        ref_cache_writer(path, dtype) as writer,
        progress(desc="reference cache", total=read_sizes(urls)) as bar,
    ):
        for batch in loader:
            features = encoder(images_to_float(batch["image"].to(device)))
            writer.append(batch["key"], {"embeddings": features.float().cpu().numpy()})
            bar.update(len(batch["key"]))
        if not writer.rows:
            raise ValueError(f"no decodable samples in {len(urls)} shards")
        info = {"shards": urls, **counter.counts(), **(meta or {})}
        return RefCache(writer.close(ref_cache_meta(writer, info)))
