"""DINOv2 vision transformers through timm."""

from __future__ import annotations

from pathlib import Path

import timm
import torch.hub
from timm.models import get_pretrained_cfg, split_model_name_tag

from spec_align.encoders.hub import find_cached_weights
from spec_align.encoders.timm_base import TimmEncoder

__all__ = ["DinoV2Encoder"]

# Files a timm hub repository may hold, preferred first (as timm itself tries them).
_HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")


class DinoV2Encoder(TimmEncoder):
    """A DINOv2 ViT (or any timm ViT); the embedding is the final-norm CLS token.

    Args:
        model_name: timm name, optionally with its tag ("vit_small_patch14_dinov2.lvd142m",
            "vit_base_patch14_dinov2", ...).
        pretrained: True for the tag in ``model_name`` (or timm's default tag), a tag string to
            pick one, False/None for random init.
        checkpoint_path: local weights file (timm or original DINOv2 state dict) loaded instead
            of downloading; position embeddings are resampled to ``image_size``.
        image_size: input side in pixels (a multiple of the patch size); DINOv2 was trained at
            518 but its position embeddings are interpolated, so 224 is the cheap default.
        cache_dir: Hugging Face cache override for the pretrained weights; None means default.
        depth: number of blocks, overriding the architecture (random-init test models only).
        embed_dim: token width, overriding the architecture (random-init test models only).
        num_heads: attention heads, overriding the architecture (random-init test models only).
    """

    def __init__(
        self,
        model_name: str = "vit_small_patch14_dinov2.lvd142m",
        pretrained: bool | str | None = True,
        checkpoint_path: str | None = None,
        image_size: int = 224,
        cache_dir: str | None = None,
        depth: int | None = None,
        embed_dim: int | None = None,
        num_heads: int | None = None,
    ) -> None:
        arch, name_tag = split_model_name_tag(model_name)
        tag = pretrained if isinstance(pretrained, str) else name_tag
        full_name = f"{arch}.{tag}" if tag else arch
        arch_overrides = {"depth": depth, "embed_dim": embed_dim, "num_heads": num_heads}
        overlay = None
        if checkpoint_path is not None:
            if not Path(checkpoint_path).is_file():
                raise FileNotFoundError(f"checkpoint_path {checkpoint_path} is not a file")
            overlay = {"file": checkpoint_path}
        elif pretrained:
            cached = _find_weights(full_name, cache_dir)
            overlay = {"file": cached} if cached else None
        model = timm.create_model(
            full_name,
            pretrained=bool(pretrained) or checkpoint_path is not None,
            pretrained_cfg_overlay=overlay,
            num_classes=0,
            img_size=image_size,
            cache_dir=cache_dir,
            **{k: v for k, v in arch_overrides.items() if v is not None},
        )
        super().__init__(model, image_size)


def _find_weights(full_name: str, cache_dir: str | None) -> str | None:
    """Cached weights file for a timm name, None to let timm download (checked to be possible)."""
    try:
        cfg = get_pretrained_cfg(full_name)
    except RuntimeError:  # timm's answer to an unknown tag of a known architecture
        cfg = None
    if cfg is None:
        arch = split_model_name_tag(full_name)[0]
        raise ValueError(
            f"no pretrained weights named {full_name!r}; known: {timm.list_pretrained(arch + '*')}"
            ", or pretrained=null for random init"
        )
    url_dir = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
    return find_cached_weights(
        f"{cfg.architecture}.{cfg.tag}",
        hf_repo=cfg.hf_hub_id,
        hf_filenames=(cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HF_FILENAMES,
        url=None if cfg.hf_hub_id else cfg.url,
        url_dir=url_dir,
        cache_dir=cache_dir,
    )
