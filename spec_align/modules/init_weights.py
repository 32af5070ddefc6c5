"""Initial encoder weights from a file: an earlier run's checkpoint or a plain state_dict.

Accepted files:
    a spec_align checkpoint (`.ckpt`, or any torch file holding a dict with "state_dict"):
        its `encoder.` entries (the frozen reference is never in checkpoints);
    a plain encoder state_dict saved with `torch.save(encoder.state_dict(), path)`
        (`.pt`, `.pth`, `.bin`, ...);
    a `.safetensors` file of the encoder's tensors (needs `pip install safetensors`).

Torch files are read with `torch.load(weights_only=True)`: nothing is unpickled beyond tensors
and plain containers, so a downloaded file cannot run code. Loading is strict: every tensor of
the encoder must be in the file with its shape, and the file may hold nothing else.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "ENCODER_PREFIX",
    "EncoderWeightsError",
    "WeightsSource",
    "load_encoder_weights",
    "read_encoder_state",
]

ENCODER_PREFIX = "encoder."  # SpecAlignModule's state-dict prefix of the trainable encoder
_SHOWN = 8  # keys named per kind of mismatch in an error


class EncoderWeightsError(ValueError):
    """A weights file cannot initialise this encoder; the message says what to change."""


@dataclass(frozen=True)
class WeightsSource:
    """Where an encoder's initial weights came from.

    Attributes:
        path: the file, absolute.
        sha256: the first 12 hex digits of the file's SHA-256.
        tensors: entries loaded.
    """

    path: str
    sha256: str
    tensors: int


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_encoder_state(path: str | os.PathLike) -> dict[str, Tensor]:
    """The encoder tensors a weights file holds (see the module docstring for the formats).

    Raises:
        EncoderWeightsError: the file does not exist, cannot be read safely, or holds no
            encoder weights.
    """
    file = Path(path)
    if not file.is_file():
        raise EncoderWeightsError(f"init_from: {file} is not a file")
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise EncoderWeightsError(
                f"init_from: {file} is a safetensors file; pip install safetensors to read it"
            ) from None
        return dict(load_file(str(file), device="cpu"))
    try:
        content = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors have many types
        raise EncoderWeightsError(
            f"init_from: {file} is not a weights file torch.load(weights_only=True) reads "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); give a "
            "spec_align .ckpt, a torch.save(encoder.state_dict()) file or a .safetensors file"
        ) from None
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        state = content["state_dict"]
        encoder = {
            k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)
        }
        if not encoder:
            raise EncoderWeightsError(
                f"init_from: {file} is a checkpoint without '{ENCODER_PREFIX}' entries (its "
                f"keys start like {sorted(state)[:3]}): not written by a spec_align run; save "
                "the encoder's own state_dict and pass that file"
            )
        return encoder
    if isinstance(content, Mapping) and all(isinstance(v, Tensor) for v in content.values()):
        return dict(content)
    raise EncoderWeightsError(
        f"init_from: {file} holds a {type(content).__name__}, not a state_dict of tensors; "
        "save it with torch.save(encoder.state_dict(), path)"
    )


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> WeightsSource:
    """Copy a weights file's tensors into `encoder`, strictly (every key, every shape).

    Raises:
        EncoderWeightsError: unreadable file, or keys missing, unexpected or of another
            shape: all of them in one message.
    """
    file = Path(path).resolve()
    state = read_encoder_state(file)
    expected = encoder.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    reshaped = sorted(
        f"{k} {tuple(state[k].shape)} (encoder: {tuple(expected[k].shape)})"
        for k in expected.keys() & state.keys()
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or reshaped:
        problems = [
            f"{label} ({len(keys)}): {_listed(keys)}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("other shape", reshaped),
            )
            if keys
        ]
        raise EncoderWeightsError(
            f"init_from: {file} does not fit this encoder ({type(encoder).__name__}): "
            + "; ".join(problems)
            + ". It was probably saved from another encoder config: choose the encoder "
            "options it was trained with (its run's .hydra/config.yaml), or another file"
        )
    encoder.load_state_dict(state, strict=True)
    return WeightsSource(path=str(file), sha256=_sha256(file)[:12], tensors=len(state))
