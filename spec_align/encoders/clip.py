"""open_clip models as image encoders, with their text tower for contrastive tasks."""

from __future__ import annotations

from pathlib import Path

import open_clip
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model
from torch import Tensor, nn

from spec_align.encoders.base import ImageEncoder, Tokenizer
from spec_align.encoders.hub import find_cached_weights

__all__ = ["TINY_CLIP", "ClipEncoder"]

# Model configs shipped with the package; registering them at import makes their names valid
# for every open_clip entry point (create_model, get_tokenizer), not only for ClipEncoder.
_CONFIG_DIR = Path(__file__).with_name("configs")
open_clip.add_model_config(_CONFIG_DIR)

TINY_CLIP = "tiny_clip"  # 2-layer width-64 towers, 32 px images, D=64: tests and offline default

# Files an open_clip hub repository may hold, preferred first (as open_clip itself tries them).
_HF_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_URL_CACHE = Path("~/.cache/clip").expanduser()


class ClipEncoder(ImageEncoder):
    """An open_clip CLIP model: image tower for ``forward``, text tower for ``encode_text``.

    Args:
        model_name: open_clip architecture name ("ViT-B-32", ..., or ``TINY_CLIP``).
        pretrained: open_clip pretrained tag ("openai", "laion2b_s34b_b79k", ...); None for random
            init. With ``checkpoint_path`` the tag only supplies its preprocessing and QuickGELU
            setting, the weights come from the file.
        checkpoint_path: local open_clip state-dict file (.safetensors/.bin/.pt) to load instead of
            downloading, e.g. a copy of the tag's hub file or a fine-tuned model.
        cache_dir: Hugging Face cache override for the tag's weights; None means the default.

    Attributes:
        model: the wrapped ``open_clip.CLIP``.
        logit_scale: learnable log inverse temperature of the contrastive loss (use ``.exp()``).
    """

    has_text = True

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = "openai",
        checkpoint_path: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        model_cfg = open_clip.get_model_config(model_name)
        if model_cfg is None:
            raise ValueError(
                f"unknown open_clip model_name {model_name!r}; see open_clip.list_models()"
            )
        tag_cfg = {}
        if pretrained:
            tag_cfg = get_pretrained_cfg(model_name, pretrained)
            if not tag_cfg:
                tags = list_pretrained_tags_by_model(model_name)
                raise ValueError(
                    f"unknown pretrained tag {pretrained!r} for {model_name}; known tags: {tags}, "
                    "or pretrained=null for random init"
                )
        weights_file = checkpoint_path
        if weights_file is not None and not Path(weights_file).is_file():
            raise FileNotFoundError(f"checkpoint_path {weights_file} is not a file")
        if weights_file is None and tag_cfg:
            weights_file = _fetch_weights(model_name, pretrained, tag_cfg, cache_dir)

        # Weights always arrive as a file, so the tag's preprocessing and activation are applied
        # here; open_clip would only apply them when it resolves the tag itself.
        self.model, self.train_transform, self.eval_transform = (
            open_clip.create_model_and_transforms(
                model_name,
                pretrained=weights_file,
                force_quick_gelu=tag_cfg.get("quick_gelu", False),
                image_mean=tag_cfg.get("mean"),
                image_std=tag_cfg.get("std"),
                image_interpolation=tag_cfg.get("interpolation"),
                image_resize_mode=tag_cfg.get("resize_mode"),
                cache_dir=cache_dir,
            )
        )
        preprocess = self.model.visual.preprocess_cfg
        size = preprocess["size"]
        self.embed_dim = int(model_cfg["embed_dim"])
        self.image_size = int(size if isinstance(size, int) else size[0])
        self.image_mean = tuple(preprocess["mean"])
        self.image_std = tuple(preprocess["std"])
        self._tokenizer = open_clip.get_tokenizer(model_name)

    @property
    def logit_scale(self) -> nn.Parameter:
        """Learnable log inverse temperature, shape (); the contrastive loss uses its ``exp()``."""
        return self.model.logit_scale

    @property
    def tokenizer(self) -> Tokenizer:
        """open_clip tokenizer: list of B strings -> (B, context_length) LongTensor."""
        return self._tokenizer

    def forward(self, images: Tensor) -> Tensor:
        """Projected image embeddings, not normalised (the losses decide on normalisation).

        Shapes:
            images: (B, 3, image_size, image_size) -> (B, embed_dim)
        """
        return self.model.encode_image(images)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Projected text embeddings, not normalised.

        Shapes:
            tokens: (B, context_length) -> (B, embed_dim)
        """
        return self.model.encode_text(tokens)


def _fetch_weights(model_name: str, tag: str, tag_cfg: dict, cache_dir: str | None) -> str:
    """Local file of a tag's weights: cached, else downloaded (after a fast offline check)."""
    hf_repo, hf_filenames = None, _HF_FILENAMES
    if tag_cfg.get("hf_hub"):
        # open_clip spells hub entries "org/repo/" (default file names) or "org/repo/file".
        hf_repo, filename = tag_cfg["hf_hub"].rstrip("/"), ""
        if hf_repo.count("/") > 1:
            hf_repo, filename = hf_repo.rsplit("/", 1)
        if filename:
            hf_filenames = (filename,)
    url = None if hf_repo else tag_cfg.get("url")
    url_dir = Path(cache_dir) if cache_dir else _URL_CACHE
    cached = find_cached_weights(
        f"{model_name}/{tag}",
        hf_repo=hf_repo,
        hf_filenames=hf_filenames,
        url=url,
        url_dir=url_dir,
        cache_dir=cache_dir,
    )
    return cached or open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
