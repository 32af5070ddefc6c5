"""Write an image folder (one subfolder per class) or a CSV of images as webdataset shards.

    python scripts/make_shards.py --folder /data/pets --out /data/pets-wds --val-fraction 0.1
    python scripts/make_shards.py --csv /data/cc.csv --out /data/cc-wds --samples-per-shard 5000

Writes `train-NNNNNN.tar` (and `val-NNNNNN.tar`), `sizes.json` (samples per shard), and
`skipped.json` (unreadable images and why). Prints the shard patterns to pass as
`data.train_shards` / `data.val_shards`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spec_align.data.shards import images_from_csv, images_from_folder, make_shards


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", type=Path, help="root with one subfolder per class")
    source.add_argument("--csv", type=Path, help="CSV with an image path column (and captions)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--val-fraction", type=float, default=0.0, help="held out as val-*.tar")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle and the split")
    parser.add_argument("--no-shuffle", action="store_true", help="keep the source order")
    parser.add_argument("--max-size", type=int, default=None, help="downscale longer sides (px)")
    parser.add_argument(
        "--caption-template",
        default="a photo of a {}.",
        help="folder mode: caption from the class name; '' for no captions",
    )
    parser.add_argument("--csv-img-key", default="filepath")
    parser.add_argument("--csv-caption-key", default="caption", help="'' for no captions")
    parser.add_argument("--csv-label-key", default=None, help="integer label column")
    parser.add_argument("--csv-separator", default=",")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the tool; returns the ShardSet per split."""
    args = parse_args(argv)
    if args.folder is not None:
        sources, classes = images_from_folder(
            args.folder, caption_template=args.caption_template or None
        )
        root = args.folder
    else:
        sources = images_from_csv(
            args.csv,
            image_key=args.csv_img_key,
            caption_key=args.csv_caption_key or None,
            label_key=args.csv_label_key,
            separator=args.csv_separator,
        )
        classes, root = None, args.csv.parent
    splits = make_shards(
        sources,
        args.out,
        samples_per_shard=args.samples_per_shard,
        val_fraction=args.val_fraction,
        shuffle=not args.no_shuffle,
        seed=args.seed,
        max_size=args.max_size,
        root=root,
    )
    skipped = [
        {"path": path, "error": error}
        for shards in splits.values()
        for path, error in shards.skipped
    ]
    (args.out / "skipped.json").write_text(json.dumps(skipped, indent=1) + "\n")
    if classes is not None:
        (args.out / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    for name, shards in splits.items():
        count = f"{shards.num_samples} samples in {len(shards.paths)} shards"
        print(f"{name}: {count}: {shards.pattern}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable images (listed in {args.out / 'skipped.json'}):")
        for item in skipped[:20]:
            print(f"  {item['path']}: {item['error']}")
    return splits


if __name__ == "__main__":
    main(sys.argv[1:])
