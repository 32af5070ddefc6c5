"""The encoder interface: images -> (B, embed_dim) embeddings, with their preprocessing."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from PIL import Image
from torch import Tensor, nn

__all__ = ["FrozenEncoder", "ImageEncoder", "Tokenizer", "Transform"]

Transform = Callable[[Image.Image], Tensor]
Tokenizer = Callable[[list[str]], Tensor]


class ImageEncoder(nn.Module, ABC):
    """Maps a batch of preprocessed images to one embedding per image.

    Subclasses set, in ``__init__``:

    Attributes:
        embed_dim: width D of the embeddings.
        image_size: side in pixels of the square images ``forward`` expects.
        image_mean: per-channel mean the transforms subtract.
        image_std: per-channel std the transforms divide by.
        train_transform: PIL image -> (3, image_size, image_size) tensor, with augmentation.
        eval_transform: the deterministic counterpart (resize, center crop, normalise).
        has_text: whether ``encode_text`` and ``tokenizer`` work (CLIP-style models).
    """

    embed_dim: int
    image_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    train_transform: Transform
    eval_transform: Transform
    has_text: bool = False

    @abstractmethod
    def forward(self, images: Tensor) -> Tensor:
        """Embed a batch of images.

        Shapes:
            images: (B, 3, image_size, image_size) -> (B, embed_dim)
        """

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Embed tokenised texts into the image embedding space (CLIP-style encoders only).

        Shapes:
            tokens: (B, context_length) -> (B, embed_dim)
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no text tower (has_text=False); "
            "use a CLIP encoder for image-text tasks"
        )

    @property
    def tokenizer(self) -> Tokenizer:
        """Callable turning a list of B strings into a (B, context_length) LongTensor."""
        raise NotImplementedError(f"{type(self).__name__} has no text tower (has_text=False)")

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, image_size={self.image_size}"


class FrozenEncoder(ImageEncoder):
    """A fixed reference: no gradients, always in eval mode, forward under ``no_grad``.

    The wrapped encoder sits at ``self.encoder``, so its weights are the ``<name>.encoder.*``
    entries of the parent's state dict (a module can drop them from checkpoints by prefix).

    Args:
        encoder: the encoder to freeze; it is modified in place (requires_grad off, eval mode).
    """

    def __init__(self, encoder: ImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()
        self.embed_dim = encoder.embed_dim
        self.image_size = encoder.image_size
        self.image_mean = encoder.image_mean
        self.image_std = encoder.image_std
        self.train_transform = encoder.train_transform
        self.eval_transform = encoder.eval_transform
        self.has_text = encoder.has_text
        self.eval()  # the wrapper too, not only the wrapped network

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Ignore ``mode``: batch-norm statistics and dropout of a reference must not change."""
        return super().train(False)

    # no_grad rather than inference_mode: the outputs enter autograd graphs (the penalty) as
    # constants, and inference tensors cannot be saved for backward.
    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """Embed images with the frozen encoder.

        Shapes:
            images: (B, 3, image_size, image_size) -> (B, embed_dim)
        """
        return self.encoder(images)

    @torch.no_grad()
    def encode_text(self, tokens: Tensor) -> Tensor:
        """Embed tokenised texts with the frozen encoder's text tower.

        Shapes:
            tokens: (B, context_length) -> (B, embed_dim)
        """
        return self.encoder.encode_text(tokens)

    @property
    def tokenizer(self) -> Tokenizer:
        """The wrapped encoder's tokenizer."""
        return self.encoder.tokenizer
