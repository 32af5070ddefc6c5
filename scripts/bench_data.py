"""Loader throughput of the built-in datasets next to open_clip's loader and the raw decode speed.

    python scripts/bench_data.py --data-dir data --workers 2 --batch-size 256

For each dataset, on the same shards, with the same transform (`ResizeToTensor`), batch size
and number of workers:
- spec_align's loader: the WdsDataModule training loader (resampled shards, shuffle buffer,
  decode, transform and collation in persistent workers);
- open_clip's loader: `open_clip_train.data.get_wds_dataset` (what open_clip's own training
  script builds for `--dataset-type webdataset --dataset-resampled`), with its own shuffle
  buffer settings. Its tokenizer is the identity, so both deliver the captions as strings
  (spec_align tokenizes in the training step; open_clip's tokenizer would add its cost to
  its workers);
- two single-process references over the same images: PIL decode (open, load, RGB: the
  pixels are still inside PIL) and decode to tensor (the same plus the transform: a
  contiguous uint8 (3, H, W) tensor). For synthetic, digits and jpeg224, whose images are
  stored at the transform's size, this is the least work that turns the bytes into the
  pixels a batch holds.

`jpeg224` is the realistic case: 224 px JPEG photographs (quality 90; random crops of the
scikit-image sample photographs), written once under the data directory.

The CPU columns say where the time goes: PIL's decode time per image, and the CPU time per
image of each loader's workers (all together) and of its main process, over one epoch of a
freshly built loader (least of three; includes the workers' start-up and shuffle buffer fill).

This machine's speed drifts by tens of percent within a minute, so after a warm-up epoch the
references and both loaders are measured in alternating rounds (one pass of each, back to
back). The table shows the best of each and the median over rounds of the per-round ratios.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import functools
import gc
import io
import os
import resource
import statistics
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from spec_align.data import (
    ResizeToTensor,
    WdsDataModule,
    digits,
    expand_shards,
    synthetic,
    textures,
    write_shards,
)
from spec_align.data._prepare import prepare_once
from spec_align.data.shards import IMAGE_EXTENSIONS

JPEG_PHOTOS = (
    "astronaut",
    "cat",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
)


def prepare_jpeg224(data_dir: str, *, num_images: int = 2048, seed: int = 0) -> dict:
    """224 px JPEG photographs in 16 shards: random square crops (224 px up to the photo's
    short side) of the scikit-image sample photographs, resized to 224 px, quality 90."""
    import skimage.data

    def build(tmp: Path) -> dict:
        rng = np.random.default_rng(seed)
        photos = [Image.fromarray(getattr(skimage.data, name)()) for name in JPEG_PHOTOS]

        def samples():
            for i in range(num_images):
                photo = photos[i % len(photos)]
                side = int(rng.integers(224, min(photo.size) + 1))
                x = int(rng.integers(0, photo.size[0] - side + 1))
                y = int(rng.integers(0, photo.size[1] - side + 1))
                crop = photo.crop((x, y, x + side, y + side)).resize((224, 224), Image.BILINEAR)
                data = io.BytesIO()
                crop.save(data, format="JPEG", quality=90)
                yield {"__key__": f"photo_{i:05d}", "jpg": data.getvalue(), "txt": "a photo"}

        shards = write_shards(samples(), tmp, prefix="train", samples_per_shard=num_images // 16)
        return {"train": os.path.basename(shards.pattern), "train_samples": shards.num_samples}

    return prepare_once(Path(data_dir) / f"bench-jpeg224-n{num_images}-seed{seed}", build)


# (prepare function, image side of the default transform, loader samples per epoch):
# synthetic, digits and jpeg224 are stored at their side (no resize); textures are 250 px
# JPEGs resized to a typical encoder input. A 224 px decode costs 20x more (fewer samples).
DATASETS = {
    "synthetic": (synthetic.prepare, 64, 16384),
    "digits": (digits.prepare, 32, 16384),
    "jpeg224": (prepare_jpeg224, 224, 2048),
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


def _identity_tokenizer(text: str) -> list[str]:
    return [text]  # open_clip keeps element 0 of what its tokenizer returns


def _open_clip_loader(pattern: str, image_size: int, samples: int, workers: int, args):
    """open_clip's training loader on the same shards, as its training script builds it."""
    import open_clip_train.data
    from webdataset.tariterators import tar_file_expander

    # webdataset >= 0.2.96 ends each shard with an end-of-shard marker ({}) that open_clip
    # 3.3.0's sample grouping does not expect (KeyError: 'fname'; webdataset issue 384,
    # open_clip issue 935). Without the marker, as those threads advise, it reads as before.
    open_clip_train.data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)

    options = SimpleNamespace(
        train_data=pattern,
        train_num_samples=samples,
        dataset_resampled=True,
        train_data_upsampling_factors=None,
        seed=0,
        batch_size=args.batch_size,
        workers=workers,
        world_size=1,
    )
    info = open_clip_train.data.get_wds_dataset(
        options, ResizeToTensor(image_size), is_train=True, tokenizer=_identity_tokenizer
    )
    return info.dataloader


def _batch_size(batch) -> int:
    return len(batch["key"]) if isinstance(batch, dict) else len(batch[0])


def _epoch_rate(loader) -> float:
    count, start = 0, time.perf_counter()
    for batch in loader:
        count += _batch_size(batch)
    return count / (time.perf_counter() - start)


def _cpu_per_image(make_loader) -> tuple[float, float]:
    """CPU seconds per image of the workers (all together) and of the main process over one
    epoch of a fresh loader. A worker's CPU time is counted once it has exited and been
    reaped, so the loader is dropped (which joins its workers) before reading it."""
    children, main = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    loader = make_loader()
    count = sum(_batch_size(batch) for batch in loader)
    main_cpu = time.process_time() - main
    del loader
    gc.collect()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    return workers / count, main_cpu / count


def _bench(name: str, args: argparse.Namespace) -> dict:
    prepare, size, samples = DATASETS[name]
    pattern = prepare(args.data_dir)["train"]
    images = _image_bytes(pattern)
    transform = ResizeToTensor(size)
    ours = _loader(pattern, size, samples, args.workers, args)
    theirs = _open_clip_loader(pattern, size, samples, args.workers, args)
    cold = _epoch_rate(ours)  # includes worker start-up
    cold_open_clip = _epoch_rate(theirs)
    cpu_ours = min(
        _cpu_per_image(lambda: _loader(pattern, size, samples, args.workers, args, False))
        for _ in range(3)
    )
    cpu_open_clip = min(
        _cpu_per_image(lambda: _open_clip_loader(pattern, size, samples, args.workers, args))
        for _ in range(3)
    )
    pil, tensor, warm, warm_open_clip = [], [], [], []
    for _ in range(args.rounds):
        pil.append(_decode_rate(images))
        tensor.append(_decode_rate(images, transform))
        warm.append(_epoch_rate(ours))
        warm_open_clip.append(_epoch_rate(theirs))
    return {
        "dataset": name,
        "size": size,
        "pil": max(pil),
        "tensor": max(tensor),
        "cold": cold,
        "cold_open_clip": cold_open_clip,
        "warm": max(warm),
        "warm_open_clip": max(warm_open_clip),
        "cpu_workers": cpu_ours[0],
        "cpu_main": cpu_ours[1],
        "cpu_workers_open_clip": cpu_open_clip[0],
        "cpu_main_open_clip": cpu_open_clip[1],
        "vs_open_clip": statistics.median(
            w / r for w, r in zip(warm, warm_open_clip, strict=True)
        ),
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
        "\n| dataset | image | spec_align loader, warm | open_clip loader, warm "
        "| spec_align / open_clip | spec_align / PIL decode | spec_align / decode to tensor "
        "| epoch 1: spec_align, open_clip | CPU per image: PIL decode "
        "| CPU per image: spec_align workers + main | CPU per image: open_clip workers + main |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['size']} px | {r['warm']:,.0f} img/s | "
            f"{r['warm_open_clip']:,.0f} img/s | **{r['vs_open_clip']:.2f}x** | "
            f"{r['vs_pil']:.0%} | {r['vs_tensor']:.0%} | "
            f"{r['cold']:,.0f}, {r['cold_open_clip']:,.0f} img/s | {1e6 / r['pil']:.0f} us | "
            f"{1e6 * r['cpu_workers']:.0f} + {1e6 * r['cpu_main']:.0f} us | "
            f"{1e6 * r['cpu_workers_open_clip']:.0f} + {1e6 * r['cpu_main_open_clip']:.0f} us |"
        )
    print(
        f"\nbatch {args.batch_size}, {args.workers} workers, spec_align shuffle buffer "
        f"{args.shuffle_buffer}, open_clip's own buffer, {args.rounds} rounds; PIL decode "
        f"and decode to tensor best of the rounds: "
        + ", ".join(f"{r['dataset']} {r['pil']:,.0f} / {r['tensor']:,.0f} img/s" for r in rows)
        + "; loader epochs of "
        + ", ".join(f"{name} {DATASETS[name][2]}" for name in args.datasets)
        + " samples"
    )
    return rows


if __name__ == "__main__":
    main()
