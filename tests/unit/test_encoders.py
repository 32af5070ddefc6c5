"""Encoders: shapes, preprocessing, freezing, weight loading and the offline failure."""

from __future__ import annotations

import socket
import time

import numpy as np
import open_clip
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import save_file
from skimage import data as skimage_data
from timm.data import ImageNetInfo
from torch import nn

from spec_align.encoders import (
    TINY_CLIP,
    ClipEncoder,
    DinoV2Encoder,
    EfficientNetEncoder,
    FrozenEncoder,
    WeightsUnavailableError,
)
from spec_align.encoders.efficientnet import (
    convert_lite0_state_dict,
    create_efficientnet_lite0,
    lite0_weights_path,
)
from spec_align.encoders.hub import find_cached_weights

# A DINOv2-shaped ViT (patch 14, layer scale) small enough for unit tests.
TINY_VIT = {
    "model_name": "vit_small_patch14_dinov2.lvd142m",
    "pretrained": False,
    "image_size": 28,
    "depth": 2,
    "embed_dim": 64,
    "num_heads": 2,
}
# Offline failures must be reported this fast, well under a download's retry loop (~47 s).
OFFLINE_FAIL_S = 15.0


@pytest.fixture(scope="module")
def tiny_clip() -> ClipEncoder:
    torch.manual_seed(0)
    return ClipEncoder(TINY_CLIP, pretrained=None)


@pytest.fixture(scope="module")
def tiny_vit() -> DinoV2Encoder:
    torch.manual_seed(0)
    return DinoV2Encoder(**TINY_VIT)


@pytest.fixture(scope="module")
def lite0() -> EfficientNetEncoder:
    return EfficientNetEncoder().eval()


@pytest.fixture
def photo() -> Image.Image:
    return Image.fromarray(skimage_data.chelsea())


def test_tiny_clip_shapes(tiny_clip):
    assert TINY_CLIP in open_clip.list_models()
    assert (tiny_clip.embed_dim, tiny_clip.image_size) == (64, 32)
    assert tiny_clip.has_text
    images = torch.randn(256, 3, 32, 32)
    assert tiny_clip(images).shape == (256, 64)
    tokens = tiny_clip.tokenizer(["a photo of a cat", "a dog"])
    assert tokens.dtype == torch.long and tokens.shape == (2, 32)
    assert tiny_clip.encode_text(tokens).shape == (2, 64)


def test_clip_logit_scale_is_trained(tiny_clip):
    scale = tiny_clip.logit_scale
    assert isinstance(scale, nn.Parameter) and scale.requires_grad
    assert any(p is scale for p in tiny_clip.parameters())
    tiny_clip.zero_grad()
    tiny_clip(torch.randn(2, 3, 32, 32)).sum().backward()
    assert tiny_clip.model.visual.conv1.weight.grad is not None


def test_tiny_vit_shapes(tiny_vit):
    assert (tiny_vit.embed_dim, tiny_vit.image_size) == (64, 28)
    assert tiny_vit(torch.randn(5, 3, 28, 28)).shape == (5, 64)


def test_encoder_without_text_says_so(tiny_vit):
    assert not tiny_vit.has_text
    with pytest.raises(NotImplementedError, match="no text tower"):
        tiny_vit.encode_text(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(NotImplementedError, match="no text tower"):
        tiny_vit.tokenizer  # noqa: B018


@pytest.mark.parametrize("name", ["tiny_clip", "tiny_vit"])
def test_train_and_eval_transforms_differ(name, request, photo):
    encoder = request.getfixturevalue(name)
    size = encoder.image_size
    evaluated = encoder.eval_transform(photo)
    assert evaluated.shape == (3, size, size)
    assert torch.equal(evaluated, encoder.eval_transform(photo))
    torch.manual_seed(0)
    trained = [encoder.train_transform(photo) for _ in range(4)]
    assert all(t.shape == (3, size, size) for t in trained)
    assert any(not torch.allclose(t, evaluated) for t in trained)
    grey = encoder.eval_transform(photo.convert("L"))
    assert grey.shape == (3, size, size)


def test_frozen_encoder_has_no_grads_and_stays_in_eval():
    encoder = DinoV2Encoder(**TINY_VIT)
    frozen = FrozenEncoder(encoder)
    assert not any(m.training for m in frozen.modules())  # from construction on
    parent = nn.ModuleDict({"ref": frozen, "head": nn.Linear(2, 2)})
    parent.train()
    ref = parent["ref"]
    assert not ref.training and not any(m.training for m in ref.modules())
    assert parent["head"].training
    assert not any(p.requires_grad for p in ref.parameters())
    images = torch.randn(3, 3, 28, 28, requires_grad=True)
    out = ref(images)
    assert out.shape == (3, 64) and not out.requires_grad
    assert (ref.embed_dim, ref.image_size, ref.has_text) == (64, 28, False)
    assert ref.eval_transform is encoder.eval_transform
    assert all(key.startswith("encoder.") for key in ref.state_dict())


def test_frozen_clip_keeps_its_text_tower():
    ref = FrozenEncoder(ClipEncoder(TINY_CLIP, pretrained=None))
    tokens = ref.tokenizer(["a cat"])
    out = ref.encode_text(tokens)
    assert ref.has_text and out.shape == (1, 64) and not out.requires_grad


def test_encoders_instantiate_from_yaml():
    cfg = OmegaConf.create(
        {
            "_target_": "spec_align.encoders.FrozenEncoder",
            "encoder": {"_target_": "spec_align.encoders.DinoV2Encoder", **TINY_VIT},
        }
    )
    ref = instantiate(cfg)
    assert isinstance(ref, FrozenEncoder) and ref.embed_dim == 64
    clip = instantiate(
        {
            "_target_": "spec_align.encoders.ClipEncoder",
            "model_name": TINY_CLIP,
            "pretrained": None,
        }
    )
    assert clip.embed_dim == 64


def test_clip_checkpoint_path_round_trip(tiny_clip, tmp_path):
    path = tmp_path / "tiny_clip.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    loaded = ClipEncoder(TINY_CLIP, pretrained=None, checkpoint_path=str(path))
    images = torch.randn(4, 3, 32, 32)
    tokens = tiny_clip.tokenizer(["a cat", "a dog"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), tiny_clip(images))
        torch.testing.assert_close(loaded.encode_text(tokens), tiny_clip.encode_text(tokens))


def test_vit_checkpoint_path_round_trip(tiny_vit, tmp_path):
    path = tmp_path / "tiny_vit.safetensors"
    save_file(tiny_vit.model.state_dict(), path)
    loaded = DinoV2Encoder(**TINY_VIT | {"checkpoint_path": str(path)})
    images = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), tiny_vit(images))


def test_efficientnet_checkpoint_path_round_trip(tmp_path):
    source = create_efficientnet_lite0(pretrained=False)
    path = tmp_path / "lite0.pt"
    torch.save(source.state_dict(), path)
    loaded = EfficientNetEncoder(checkpoint_path=str(path)).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = source.forward_head(source.forward_features(images), pre_logits=True)
        torch.testing.assert_close(loaded(images), expected)


def test_missing_checkpoint_path_is_named(tmp_path):
    missing = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ClipEncoder(TINY_CLIP, pretrained=None, checkpoint_path=missing)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        DinoV2Encoder(**TINY_VIT | {"checkpoint_path": missing})
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        EfficientNetEncoder(checkpoint_path=missing)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="known tags"):
        ClipEncoder("ViT-B-32", pretrained="not-a-tag")
    with pytest.raises(ValueError, match="model_name"):
        ClipEncoder("ViT-nope", pretrained=None)
    with pytest.raises(ValueError, match="no pretrained weights"):
        DinoV2Encoder("vit_small_patch14_dinov2", pretrained="not-a-tag")


def _offline_failure(build) -> str:
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        build()
    assert time.perf_counter() - start < OFFLINE_FAIL_S
    return str(err.value)


def test_clip_offline_failure_is_fast_and_explains(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _offline_failure(
        lambda: ClipEncoder("ViT-B-32", pretrained="openai", cache_dir=str(tmp_path))
    )
    for part in (
        "ViT-B-32/openai",
        "timm/vit_base_patch32_clip_224.openai",
        str(tmp_path),
        "HF_HUB_OFFLINE",
        "checkpoint_path",
        "pretrained=null",
    ):
        assert part in message


def test_dinov2_offline_failure_is_fast_and_explains(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _offline_failure(lambda: DinoV2Encoder(pretrained=True, cache_dir=str(tmp_path)))
    for part in (
        "vit_small_patch14_dinov2.lvd142m",
        "timm/vit_small_patch14_dinov2.lvd142m",
        str(tmp_path),
        "checkpoint_path",
        "pretrained=null",
    ):
        assert part in message


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_host_fails_fast_without_offline_flag(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    url = f"http://127.0.0.1:{_closed_port()}/weights.pth"
    message = _offline_failure(
        lambda: find_cached_weights("toy", url=url, url_dir=tmp_path, cache_dir=tmp_path)
    )
    assert "cannot reach 127.0.0.1" in message and str(tmp_path / "weights.pth") in message


def test_reachable_host_defers_to_download(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/weights.pth"
        assert find_cached_weights("toy", url=url, url_dir=tmp_path) is None
    (tmp_path / "weights.pth").write_bytes(b"")
    assert find_cached_weights("toy", url=url, url_dir=tmp_path) == str(tmp_path / "weights.pth")


def test_dinov2_loads_from_hf_cache_offline(monkeypatch, tmp_path, tiny_vit):
    # The layout huggingface_hub writes: refs/main names the snapshot holding the files.
    repo = tmp_path / "models--timm--vit_small_patch14_dinov2.lvd142m"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    save_file(tiny_vit.model.state_dict(), snapshot / "model.safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cached = DinoV2Encoder(**TINY_VIT | {"pretrained": True, "cache_dir": str(tmp_path)})
    images = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(cached(images), tiny_vit(images))


def test_lite0_weights_convert_exactly():
    model = create_efficientnet_lite0(pretrained=False)
    packaged = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    converted = convert_lite0_state_dict(packaged, model)
    expected = model.state_dict()
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)


@pytest.mark.parametrize(
    ("image", "plausible"),
    [("chelsea", {"tabby, tabby cat", "tiger cat", "Egyptian cat"}), ("coffee", {"espresso"})],
)
def test_lite0_classifies_real_images(lite0, image, plausible):
    classifier = create_efficientnet_lite0()
    pixels = lite0.eval_transform(Image.fromarray(getattr(skimage_data, image)()))[None]
    with torch.no_grad():
        embedding = lite0(pixels)
        logits = classifier(pixels)
    assert embedding.shape == (1, 1280) and lite0.embed_dim == 1280
    # The embedding is exactly what the ImageNet classifier reads.
    torch.testing.assert_close(classifier.get_classifier()(embedding), logits)
    info = ImageNetInfo()
    top5 = {info.index_to_description(int(i)) for i in logits[0].topk(5).indices}
    assert top5 & plausible, top5


def test_lite0_embeddings_separate_images(lite0):
    images = [Image.fromarray(getattr(skimage_data, n)()) for n in ("chelsea", "coffee")]
    batch = torch.stack([lite0.eval_transform(img) for img in images])
    with torch.no_grad():
        emb = torch.nn.functional.normalize(lite0(batch), dim=1)
        flipped = torch.nn.functional.normalize(lite0(batch.flip(-1)), dim=1)
    # The same photo mirrored stays closer than a different photo.
    same = (emb * flipped).sum(1)
    assert bool((same > emb[0] @ emb[1]).all())
    assert np.isfinite(emb.numpy()).all()


@pytest.mark.slow
def test_full_size_architectures_random_init():
    clip = ClipEncoder("ViT-B-32", pretrained=None)
    assert (clip.embed_dim, clip.image_size) == (512, 224)
    assert clip(torch.randn(2, 3, 224, 224)).shape == (2, 512)
    vit = DinoV2Encoder("vit_small_patch14_dinov2", pretrained=False)
    assert (vit.embed_dim, vit.image_size) == (384, 224)
    assert vit(torch.randn(2, 3, 224, 224)).shape == (2, 384)
