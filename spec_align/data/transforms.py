"""Image transforms: the data view on the host (PIL -> uint8), each encoder's input on the device.

The pipeline produces one view per sample (`ResizeToTensor` by default); `ViewAdapter` turns
that same view into each encoder's input, so a trainable encoder, its live reference and a
reference cache all embed the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

if TYPE_CHECKING:  # the encoders package imports open_clip and timm: seconds, not needed here
    from spec_align.encoders.base import ImageEncoder

__all__ = ["ImageTransform", "ResizeToTensor", "ViewAdapter", "images_to_float"]

ImageTransform = Callable[[Image.Image], Tensor]


class ResizeToTensor:
    """Default transform: RGB, bilinear antialiased resize to a square, uint8 tensor.

    Images stay uint8 until they reach the device, where `images_to_float` scales them to
    [0, 1]: a quarter of the bytes through worker queues, pinned memory and host-to-device
    copies, and one vectorised conversion per batch instead of one per sample.

    The resize runs in torch's uint8 kernel on the channels-last pixels, which is within one
    grey level of PIL's bilinear resize and about twice as fast (250 to 224 px on one core:
    0.38 ms against 0.83 ms; decoding the 250 px JPEG takes about 0.4 ms).

    Shapes:
        PIL image -> uint8 (3, size, size)
    """

    def __init__(self, size: int = 32) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size

    def __call__(self, image: Image.Image) -> Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size == (self.size, self.size):
            # HWC -> CHW copied here: contiguous samples make batch stacking a plain memcpy.
            return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())
        channels_last = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
        resized = F.interpolate(
            channels_last, size=(self.size, self.size), mode="bilinear", antialias=True
        )
        return resized[0].contiguous()

    def __repr__(self) -> str:
        return f"ResizeToTensor(size={self.size})"


def images_to_float(images: Tensor) -> Tensor:
    """uint8 images in [0, 255] -> float32 in [0, 1] (same device); other dtypes unchanged.

    Shapes:
        (..., 3, H, W) -> (..., 3, H, W)
    """
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images


class ViewAdapter(nn.Module):
    """Turns the batch's images into one encoder's input: scale to [0, 1], resize, normalise.

    The data pipeline produces a single view per sample (one crop, uint8 or [0, 1]); each
    encoder gets that same view at its own resolution and normalisation, so the trainable
    encoder and the reference always embed the same pixels (docs/math.md section 10.2, item 2).

    Args:
        image_size: the encoder's input side in pixels.
        mean: per-channel mean the encoder expects subtracted.
        std: per-channel std the encoder expects divided by.

    Shapes:
        forward: (B, 3, H, W) uint8, or float in [0, 1] -> (B, 3, image_size, image_size)
    """

    mean: Tensor
    std: Tensor

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.image_size = int(image_size)
        # Not persistent: they follow from the encoder, which is rebuilt from the config.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def for_encoder(cls, encoder: ImageEncoder) -> ViewAdapter:
        """The adapter matching an encoder's image_size, image_mean and image_std."""
        return cls(encoder.image_size, encoder.image_mean, encoder.image_std)

    def forward(self, images: Tensor) -> Tensor:
        images = images_to_float(images)  # on the device: batches travel as uint8
        size = (self.image_size, self.image_size)
        if images.shape[-2:] != size:
            # antialias: downscaling without it aliases fine textures, which a reference sees.
            images = F.interpolate(
                images, size=size, mode="bilinear", align_corners=False, antialias=True
            )
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}"
