"""Shared plumbing for encoders built on a timm backbone."""

from __future__ import annotations

from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import Tensor, nn
from torchvision.transforms import Compose

from spec_align.encoders.base import ImageEncoder

__all__ = ["TRAIN_CROP_SCALE", "TimmEncoder"]

# Area fraction range of the random crop in ``train_transform``: open_clip's default, mild on
# purpose (no flips, no colour jitter) so a reference sees views close to what the trained
# encoder sees; heavy ImageNet augmentation is for training classifiers from scratch.
TRAIN_CROP_SCALE = (0.9, 1.0)


class TimmEncoder(ImageEncoder):
    """A timm model without classifier: ``forward`` returns its pooled features.

    Preprocessing comes from the model's pretrained config (mean, std, interpolation, crop_pct)
    at ``image_size``.

    Args:
        model: timm model created with ``num_classes=0``.
        image_size: side of the square input images in pixels.

    Attributes:
        model: the wrapped timm model.
    """

    def __init__(self, model: nn.Module, image_size: int) -> None:
        super().__init__()
        if model.num_classes != 0:
            raise ValueError("TimmEncoder needs a model created with num_classes=0")
        self.model = model
        self.embed_dim = int(model.num_features)
        self.image_size = int(image_size)
        data_cfg = resolve_data_config({"input_size": (3, image_size, image_size)}, model=model)
        self.image_mean = tuple(data_cfg["mean"])
        self.image_std = tuple(data_cfg["std"])
        eval_tf = create_transform(**data_cfg)
        train_tf = create_transform(
            **data_cfg, is_training=True, scale=TRAIN_CROP_SCALE, hflip=0.0, color_jitter=None
        )
        # timm assumes RGB input; grayscale/RGBA/palette images would give the wrong channel count.
        self.eval_transform = Compose([_to_rgb, *eval_tf.transforms])
        self.train_transform = Compose([_to_rgb, *train_tf.transforms])

    def forward(self, images: Tensor) -> Tensor:
        """Pooled backbone features (CLS token for ViTs, global average for CNNs).

        Shapes:
            images: (B, 3, image_size, image_size) -> (B, embed_dim)
        """
        return self.model(images)


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")
