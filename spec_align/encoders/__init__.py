"""Image encoders: images -> (B, embed_dim) embeddings, with preprocessing and a frozen wrapper."""

from spec_align.encoders.base import FrozenEncoder, ImageEncoder
from spec_align.encoders.clip import TINY_CLIP, ClipEncoder
from spec_align.encoders.dinov2 import DinoV2Encoder
from spec_align.encoders.efficientnet import EfficientNetEncoder
from spec_align.encoders.hub import WeightsUnavailableError
from spec_align.encoders.timm_base import TimmEncoder

__all__ = [
    "TINY_CLIP",
    "ClipEncoder",
    "DinoV2Encoder",
    "EfficientNetEncoder",
    "FrozenEncoder",
    "ImageEncoder",
    "TimmEncoder",
    "WeightsUnavailableError",
]
