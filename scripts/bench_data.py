"""Loader throughput of the built-in datasets next to the raw decode speed of the same images.

    python scripts/bench_data.py --data-dir data --workers 2 --batch-size 256

For each dataset: the images' raw decode rate in one process (PIL decode + RGB, the limit
one worker can reach), the same plus the default transform, and the WdsDataModule training
loader (resampled shards, shuffle buffer, decode, transform, collation in workers), measured
as the best of three warm epochs after one warm-up epoch with persistent workers, and the
same loader without workers (pipeline cost without inter-process transfer). Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import io
import time

from PIL import Image

from spec_align.data import WdsDataModule, digits, expand_shards, synthetic
from spec_align.data.wds import ResizeToTensor


def _image_bytes(pattern: str) -> list[bytes]:
    import tarfile

    images = []
    for url in expand_shards(pattern):
        with tarfile.open(url) as tar:
            for member in tar:
                if member.name.endswith((".png", ".jpg", ".webp")):
                    images.append(tar.extractfile(member).read())
    return images


def _decode_rate(images: list[bytes], transform=None, repeats: int = 3) -> float:
    """Best of `repeats` passes (this machine's timings are noisy; the best is the limit)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for data in images:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                rgb = image.convert("RGB")
                if transform is not None:
                    transform(rgb)
        rates.append(len(images) / (time.perf_counter() - start))
    return max(rates)


def _loader_rate(
    pattern: str, image_size: int, workers: int, args: argparse.Namespace
) -> tuple[float, float]:
    dm = WdsDataModule(
        pattern,
        batch_size=args.batch_size,
        num_workers=workers,
        train_samples_per_epoch=args.samples,
        shuffle_buffer=args.shuffle_buffer,
        image_size=image_size,
        persistent_workers=workers > 0,
        pin_memory=False,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    rates = []
    # The first epoch includes worker start-up; the warm rate is the best of the later ones.
    for _ in range(1 + args.repeats):
        count, start = 0, time.perf_counter()
        for batch in loader:
            count += len(batch["key"])
        rates.append(count / (time.perf_counter() - start))
    return rates[0], max(rates[1:])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=16384, help="samples per loader epoch")
    parser.add_argument("--shuffle-buffer", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="warm epochs; the best counts")
    args = parser.parse_args(argv)

    datasets = {
        "synthetic": (synthetic.prepare(args.data_dir), 64),
        "digits": (digits.prepare(args.data_dir), 32),
    }
    rows = []
    for name, (info, size) in datasets.items():
        images = _image_bytes(info["train"])
        raw = _decode_rate(images)
        transformed = _decode_rate(images, ResizeToTensor(size))
        cold, warm = _loader_rate(info["train"], size, args.workers, args)
        _, inline = _loader_rate(info["train"], size, 0, args)
        rows.append(
            {
                "dataset": name,
                "size": size,
                "raw": raw,
                "transformed": transformed,
                "inline": inline,
                "cold": cold,
                "warm": warm,
            }
        )
    print(
        "\n| dataset | image | raw decode (1 proc) | decode + transform (1 proc) "
        "| loader, 0 workers | loader, epoch 1 | loader, warm epoch | warm / raw |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['size']} px | {r['raw']:,.0f} img/s | "
            f"{r['transformed']:,.0f} img/s | {r['inline']:,.0f} img/s | "
            f"{r['cold']:,.0f} img/s | {r['warm']:,.0f} img/s | "
            f"{r['warm'] / r['raw']:.0%} |"
        )
    print(
        f"\nloader: batch {args.batch_size}, {args.workers} workers, shuffle buffer "
        f"{args.shuffle_buffer}, {args.samples} samples per epoch"
    )
    return rows


if __name__ == "__main__":
    main()
