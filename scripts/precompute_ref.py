"""Run a frozen reference encoder once over shards and cache its embedding per sample key.

    python scripts/precompute_ref.py --shards '/data/train-{000000..000127}.tar' \
        --encoder spec_align.encoders.dinov2:DinoV2Encoder \
        --out /data/ref-dinov2 --num-workers 8 --device cuda

`--encoder` is `module:attribute`: an `ImageEncoder` instance, or a class or factory that is
called with `--encoder-kwargs` and returns one (images (B, 3, image_size, image_size) -> (B, d),
with image_size, image_mean and image_std). The cache holds what training with that encoder
as the live reference would embed (`build_ref_cache`): the data's eval view, resized and
normalised for the encoder. The view is `ResizeToTensor(--image-size)`, the data configs'
eval_transform (give their `data.image_size`), unless `--transform` names the callable (PIL
image -> tensor) that the data config uses instead. Train with `ref=precomputed
ref.cache_dir=/data/ref-dinov2`; samples are paired with embeddings by key.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from collections.abc import Callable

import torch

from spec_align.data import RefCache, ResizeToTensor, build_ref_cache, expand_shards
from spec_align.encoders.hub import WeightsUnavailableError


def load_object(spec: str) -> object:
    """Import `module:attribute` (the attribute may be dotted)."""
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise ValueError(f"expected module:attribute, got {spec!r}")
    obj = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def load_encoder(spec: str, kwargs: dict | None = None) -> Callable:
    """An nn.Module instance as is; a class or factory is called with `kwargs`."""
    obj = load_object(spec)
    return obj if isinstance(obj, torch.nn.Module) else obj(**(kwargs or {}))


def load_transform(spec: str, kwargs: dict | None = None) -> Callable:
    """A transform callable as is; a class, or anything given `kwargs`, is called first."""
    obj = load_object(spec)
    return obj(**(kwargs or {})) if inspect.isclass(obj) or kwargs else obj


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True, help="shard pattern, list with '::', or URLs")
    parser.add_argument("--encoder", required=True, help="module:attribute of the encoder")
    parser.add_argument("--encoder-kwargs", type=json.loads, default=None, help="JSON dict")
    parser.add_argument(
        "--transform", default=None, help="module:attribute of the data's eval_transform"
    )
    parser.add_argument("--transform-kwargs", type=json.loads, default=None, help="JSON dict")
    parser.add_argument(
        "--image-size", type=int, default=224, help="data.image_size: side of the default view"
    )
    parser.add_argument("--out", required=True, help="cache directory")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> RefCache:
    args = parse_args(argv)
    # The shards first: a typo in the pattern should not wait for the encoder to load.
    expand_shards(args.shards, check_exists=True)
    encoder = load_encoder(args.encoder, args.encoder_kwargs)
    if args.transform is not None:
        view = load_transform(args.transform, args.transform_kwargs)
    else:
        view = ResizeToTensor(args.image_size)
    cache = build_ref_cache(
        args.shards,
        encoder,
        args.out,
        view=view,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        dtype=args.dtype,
        meta={"encoder": args.encoder, "encoder_kwargs": args.encoder_kwargs},
    )
    print(f"cached {len(cache)} embeddings of dim {cache.dim} in {args.out}")
    samples, shards = cache.meta["samples_skipped"], cache.meta["shard_errors"]
    if samples or shards:
        print(f"skipped corrupt data: {samples} samples lost, {shards} shard reads failed")
    return cache


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (FileNotFoundError, ValueError, WeightsUnavailableError) as err:
        raise SystemExit(f"error: {err}") from None
