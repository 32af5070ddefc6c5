"""Initial encoder weights from files: exact tensors, strictness, safe loading, clear errors."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import pytest
import torch
from torch import nn

from spec_align.modules.init_weights import (
    EncoderWeightsError,
    load_encoder_weights,
    read_encoder_state,
)


def _encoder(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(proj=nn.Linear(4, 3), norm=nn.LayerNorm(3), head=nn.Linear(3, 2))
    )


def _assert_equal_state(module: nn.Module, state: dict) -> None:
    loaded = module.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_plain_state_dict_loads_exactly(tmp_path):
    source = _encoder(1).state_dict()
    path = tmp_path / "encoder.pt"
    torch.save(source, path)
    target = _encoder(2)
    assert not torch.equal(target.proj.weight, source["proj.weight"])
    record = load_encoder_weights(target, path)
    _assert_equal_state(target, source)
    assert record.path == str(path.resolve())
    assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert record.tensors == len(source)


def test_checkpoint_gives_its_encoder_entries(tmp_path):
    source = _encoder(1).state_dict()
    state = {f"encoder.{k}": v for k, v in source.items()}
    state["penalty.sigma_x"] = torch.tensor(0.5)  # other parts of the module are left out
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "global_step": 3, "hyper_parameters": {"lr": 1.0}}, path)
    target = _encoder(2)
    load_encoder_weights(target, path)
    _assert_equal_state(target, source)


def test_safetensors_file_loads_exactly(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    source = _encoder(1).state_dict()
    path = tmp_path / "encoder.safetensors"
    safetensors.save_file(dict(source), str(path))
    target = _encoder(2)
    load_encoder_weights(target, path)
    _assert_equal_state(target, source)


def test_every_mismatch_is_named_in_one_error(tmp_path):
    state = dict(_encoder(1).state_dict())
    del state["head.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["proj.weight"] = torch.zeros(5, 4)
    path = tmp_path / "other.pt"
    torch.save(state, path)
    target = _encoder(2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(EncoderWeightsError) as info:
        load_encoder_weights(target, path)
    message = str(info.value)
    assert "missing (1): head.bias" in message
    assert "unexpected (1): extra.weight" in message
    assert "other shape (1): proj.weight (5, 4) (encoder: (3, 4))" in message
    assert "another encoder config" in message
    _assert_equal_state(target, before)  # nothing half-loaded


def test_checkpoint_without_encoder_entries_is_refused(tmp_path):
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"model.weight": torch.zeros(2)}}, path)
    with pytest.raises(EncoderWeightsError, match="without 'encoder.' entries"):
        read_encoder_state(path)


class _Payload:
    """A pickled object: weights_only loading must refuse it (it could run code)."""


def test_pickled_objects_are_not_unpickled(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"weight": _Payload()}, path)
    with pytest.raises(EncoderWeightsError, match="weights_only=True"):
        read_encoder_state(path)


def test_non_state_dict_content_is_refused(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(EncoderWeightsError, match="holds a Tensor, not a state_dict"):
        read_encoder_state(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(EncoderWeightsError, match="none.pt is not a file"):
        read_encoder_state(tmp_path / "none.pt")


def test_init_from_is_an_experiment_key():
    """Starting elsewhere is another experiment: ckpt_path=last never mixes the two."""
    from spec_align.utils.runs import is_experiment_key

    assert is_experiment_key("model.init_from")
