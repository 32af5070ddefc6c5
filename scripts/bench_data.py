"""Loader throughput of the built-in datasets next to the raw decode speed of the same images.

    python scripts/bench_data.py --data-dir data --workers 2 --batch-size 256

For each dataset, two single-process references over the same images:
- PIL decode: open, load, RGB. The pixels are still inside PIL.
- decode to tensor: the same plus the default transform, i.e. a contiguous uint8 (3, H, W)
  tensor. For synthetic and digits, whose images are stored at the transform's size, this is
  the least work that turns the bytes into the pixels a batch holds.
Next to them, the WdsDataModule training loader (resampled shards, shuffle buffer, decode,
transform and collation in persistent workers) and the same loader without workers (the
pipeline's cost in one process, without inter-process transfer).

The last two columns say where the time goes: PIL's decode time per image, and the CPU time
per image of the loader's workers (all together) and of its main process, in an epoch of the
same loader with non-persistent workers (least of three epochs; includes the workers'
start-up and shuffle buffer fill).

This machine's speed drifts by tens of percent within a minute, so after a warm-up epoch the
references and the loader are measured in alternating rounds (one pass of each, back to
back). The table shows the best of each and the median over rounds of the per-round ratios.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import tarfile
import time

from PIL import Image

from spec_align.data import (
    ResizeToTensor,
    WdsDataModule,
    digits,
    expand_shards,
    synthetic,
    textures,
)
from spec_align.data.shards import IMAGE_EXTENSIONS

# (prepare function, image side of the default transform, loader samples per epoch):
# synthetic and digits are stored at their side (no resize); textures are 250 px JPEGs
# resized to a typical encoder input, whose decode costs 20x more (so fewer samples).
DATASETS = {
    "synthetic": (synthetic.prepare, 64, 16384),
    "digits": (digits.prepare, 32, 16384),
    "textures": (textures.prepare, 224, 2048),
}


def _image_bytes(pattern: str) -> list[bytes]:
    images = []
    for url in expand_shards(pattern):
        with tarfile.open(url) as tar:
            for member in tar:
                if member.name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
                    images.append(tar.extractfile(member).read())
    return images


def _decode_rate(images: list[bytes], transform=None) -> float:
    start = time.perf_counter()
    for data in images:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            # As the loader's decode_sample: RGB images are not copied by convert().
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            if transform is not None:
                transform(rgb)
    return len(images) / (time.perf_counter() - start)


def _loader(pattern: str, image_size: int, samples: int, workers: int, args, persistent=True):
    dm = WdsDataModule(
        pattern,
        batch_size=args.batch_size,
        num_workers=workers,
        train_samples_per_epoch=samples,
        shuffle_buffer=args.shuffle_buffer,
        image_size=image_size,
        persistent_workers=persistent and workers > 0,
        pin_memory=False,
    )
    dm.setup("fit")
    return dm.train_dataloader()


def _epoch_rate(loader) -> float:
    count, start = 0, time.perf_counter()
    for batch in loader:
        count += len(batch["key"])
    return count / (time.perf_counter() - start)


def _cpu_per_image(loader) -> tuple[float, float]:
    """CPU seconds per image of the workers (all together) and of the main process over one
    epoch. The workers must not be persistent: a worker's CPU time is counted once it exits."""
    children, main = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    count = sum(len(batch["key"]) for batch in loader)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    return workers / count, (time.process_time() - main) / count


def _bench(name: str, args: argparse.Namespace) -> dict:
    prepare, size, samples = DATASETS[name]
    pattern = prepare(args.data_dir)["train"]
    images = _image_bytes(pattern)
    transform = ResizeToTensor(size)
    inline_loader = _loader(pattern, size, samples, 0, args)
    inline = max(_epoch_rate(inline_loader) for _ in range(2))
    loader = _loader(pattern, size, samples, args.workers, args)
    cold = _epoch_rate(loader)  # includes worker start-up
    # Least of three epochs: workers of an earlier loader reaped meanwhile would count too.
    fresh_workers = _loader(pattern, size, samples, args.workers, args, persistent=False)
    cpu_workers, cpu_main = min(_cpu_per_image(fresh_workers) for _ in range(3))
    pil, tensor, warm = [], [], []
    for _ in range(args.rounds):
        pil.append(_decode_rate(images))
        tensor.append(_decode_rate(images, transform))
        warm.append(_epoch_rate(loader))
    return {
        "dataset": name,
        "size": size,
        "pil": max(pil),
        "tensor": max(tensor),
        "inline": inline,
        "cold": cold,
        "warm": max(warm),
        "cpu_workers": cpu_workers,
        "cpu_main": cpu_main,
        "vs_pil": statistics.median(w / r for w, r in zip(warm, pil, strict=True)),
        "vs_tensor": statistics.median(w / r for w, r in zip(warm, tensor, strict=True)),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shuffle-buffer", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds")
    args = parser.parse_args(argv)

    rows = [_bench(name, args) for name in args.datasets]
    print(
        "\n| dataset | image | PIL decode | decode to tensor | loader, 0 workers "
        "| loader, epoch 1 | loader, warm | warm / PIL decode | warm / decode to tensor "
        "| CPU per image: PIL decode | CPU per image: loader workers + main |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['size']} px | {r['pil']:,.0f} img/s | "
            f"{r['tensor']:,.0f} img/s | {r['inline']:,.0f} img/s | {r['cold']:,.0f} img/s | "
            f"{r['warm']:,.0f} img/s | {r['vs_pil']:.0%} | {r['vs_tensor']:.0%} | "
            f"{1e6 / r['pil']:.0f} us | "
            f"{1e6 * r['cpu_workers']:.0f} + {1e6 * r['cpu_main']:.0f} us |"
        )
    print(
        f"\nloader: batch {args.batch_size}, {args.workers} workers, shuffle buffer "
        f"{args.shuffle_buffer}, {args.rounds} rounds; loader epochs of "
        + ", ".join(f"{name} {DATASETS[name][2]}" for name in args.datasets)
        + " samples"
    )
    return rows


if __name__ == "__main__":
    main()
