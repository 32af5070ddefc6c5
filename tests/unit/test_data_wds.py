"""Webdataset pipeline and datamodule: round trip, epochs, determinism, corrupt data, ref cache."""

from __future__ import annotations

import functools
import http.server
import io
import os
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from PIL import Image

from spec_align.data import (
    RefCache,
    RefCacheMissError,
    ResizeToTensor,
    SkipCounter,
    ViewAdapter,
    WdsDataModule,
    build_eval_pipeline,
    build_ref_cache,
    build_train_pipeline,
    check_shard_count,
    compute_ref_cache,
    expand_shards,
    images_to_float,
    tar_reader,
    write_ref_cache,
    write_shards,
)
from spec_align.data.tar_reader import tar_members


def test_default_transform_keeps_uint8_pixels_and_images_to_float_scales_them():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    out = ResizeToTensor(7)(image.resize((7, 7)))
    assert out.dtype == torch.uint8 and out.shape == (3, 7, 7)
    same_size = ResizeToTensor(5)(Image.fromarray(pixels[:5, :5]))
    assert torch.equal(same_size, torch.from_numpy(pixels[:5, :5]).permute(2, 0, 1))
    grey = ResizeToTensor(5)(Image.fromarray(pixels[:5, :5, 0], mode="L"))
    assert grey.shape == (3, 5, 5) and torch.equal(grey[0], grey[2])
    # Resizing (down, up, from non-square) stays within one grey level of PIL's bilinear.
    for height, width, size in [(40, 50, 16), (250, 250, 224), (8, 8, 32), (30, 20, 25)]:
        source = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        resized = ResizeToTensor(size)(source)
        assert resized.dtype == torch.uint8 and resized.shape == (3, size, size)
        assert resized.is_contiguous()
        pil = np.array(source.resize((size, size), Image.Resampling.BILINEAR))
        difference = resized.int() - torch.from_numpy(pil).permute(2, 0, 1).int()
        assert difference.abs().max() <= 1
    scaled = images_to_float(same_size[None])
    assert scaled.dtype == torch.float32
    torch.testing.assert_close(scaled * 255, same_size[None].float(), rtol=0, atol=1e-4)
    already = torch.rand(2, 3, 4, 4)
    assert images_to_float(already) is already


NUM_SAMPLES = 96
PER_SHARD = 16  # -> 6 shards


def _png(index: int) -> bytes:
    # Every pixel encodes the sample index, so an image can be traced back to its sample.
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = index % 256, index // 256, 7
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _index_of(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images from `_png` -> (B,) sample indices."""
    rgb = (images_to_float(images).mean(dim=(2, 3)) * 255).round().long()
    return rgb[:, 0] + 256 * rgb[:, 1]


def _samples(num: int, *, with_ref: bool = False):
    for i in range(num):
        sample = {"__key__": f"s{i:05d}", "png": _png(i), "json": {"index": i}}
        if i % 3:  # some samples lack caption and label
            sample["txt"] = f"caption {i}"
            sample["cls"] = i % 5
        if with_ref:
            sample["ref.npy"] = np.array([i, -i], dtype=np.float32)
        yield sample


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("shards")
    return write_shards(
        _samples(NUM_SAMPLES), directory, prefix="train", samples_per_shard=PER_SHARD
    ).pattern


def _datamodule(pattern, **kwargs) -> WdsDataModule:
    defaults = dict(batch_size=8, num_workers=0, image_size=8, shuffle_buffer=32, seed=0)
    dm = WdsDataModule(pattern, pattern, **{**defaults, **kwargs})
    dm.setup("fit")
    return dm


def _keys(loader) -> list[str]:
    return [key for batch in loader for key in batch["key"]]


def test_round_trip_reads_back_every_sample(shards):
    dm = _datamodule(shards, val_batch_size=10)
    batches = list(dm.val_dataloader())
    assert [len(b["key"]) for b in batches] == [10] * 9 + [6]  # last batch partial
    keys = [k for b in batches for k in b["key"]]
    assert keys == [f"s{i:05d}" for i in range(NUM_SAMPLES)]  # one shard after another, in order
    index = torch.cat([_index_of(b["image"]) for b in batches])
    assert index.tolist() == list(range(NUM_SAMPLES))
    texts = [t for b in batches for t in b["text"]]
    labels = torch.cat([b["label"] for b in batches]).tolist()
    for i in range(NUM_SAMPLES):
        assert texts[i] == (f"caption {i}" if i % 3 else "")
        assert labels[i] == (i % 5 if i % 3 else -1)
    batch = batches[0]
    assert batch["image"].shape == (10, 3, 8, 8) and batch["image"].dtype == torch.uint8
    assert batch["label"].dtype == torch.long
    assert batch["meta"][3] == {"index": 3}
    assert "ref" not in batch
    assert int(batch["samples_skipped"]) == int(batch["shard_errors"]) == 0


def test_pipe_urls_stream_through_the_reader(tmp_path):
    """`pipe:` shards (as for remote storage: curl, aws s3 cp ... -) arrive in pieces of
    whatever size the pipe delivers; a shard of several read chunks must come out whole, and
    one cut short must be skipped and counted."""
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(300_000) for _ in range(8)]  # 2.4 MB: several of the reader's chunks
    samples = [
        {"__key__": f"s{i:05d}", "png": _png(i), "bin": blob} for i, blob in enumerate(blobs)
    ]
    (shard,) = write_shards(samples, tmp_path, prefix="big", samples_per_shard=8).paths
    truncated = tmp_path / "cut.tar"
    truncated.write_bytes(Path(shard).read_bytes()[:1_500_000])
    counter = SkipCounter()
    urls = [f"pipe:dd if={shard} bs=7000 status=none", f"pipe:cat {truncated}"]
    batches = list(
        build_eval_pipeline(urls, transform=ResizeToTensor(8), batch_size=32, counter=counter)
    )
    keys = [k for b in batches for k in b["key"]]
    assert keys[:8] == [f"s{i:05d}" for i in range(8)]
    assert _index_of(batches[0]["image"][:8]).tolist() == list(range(8))
    # The cut shard yields the samples before the cut, then its tail is skipped and counted:
    # one failed read; how many samples it lost is unknown (no sizes.json for a pipe).
    assert keys[8:] == [f"s{i:05d}" for i in range(len(keys) - 8)] and len(keys) < 16
    assert counter.counts() == {"samples_skipped": 0, "shard_errors": 1}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.skipif(shutil.which("curl") is None, reason="webdataset reads http:// with curl")
def test_http_urls_stream_from_a_server(shards):
    """http(s) shards as users write them (webdataset fetches them with curl): every sample
    arrives, in order, the same as from disk; a shard the server does not have is skipped
    and counted instead of ending the run."""
    directory, name = os.path.split(shards)
    handler = functools.partial(_QuietHandler, directory=directory)
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        dm = WdsDataModule(
            f"{base}/{name}",
            f"{base}/missing.tar::{base}/{name}",
            batch_size=8,
            image_size=8,
            num_workers=0,
            shuffle_buffer=32,
            train_samples_per_epoch=40,  # remote shards have no sizes.json to count from
        )
        dm.setup("fit")
        remote = list(dm.val_dataloader())
        train_keys = _keys(dm.train_dataloader())
        server.shutdown()
    local = list(_datamodule(shards).val_dataloader())
    assert _keys(remote) == _keys(local) == [f"s{i:05d}" for i in range(NUM_SAMPLES)]
    assert torch.equal(
        torch.cat([b["image"] for b in remote]), torch.cat([b["image"] for b in local])
    )
    assert [int(b["shard_errors"]) for b in remote] == [1] * len(remote)
    assert [int(b["samples_skipped"]) for b in remote] == [0] * len(remote)  # size unknown
    none = {"samples_skipped": 0, "shard_errors": 0}
    assert dm.skip_counts == {"train": none, "val": {"samples_skipped": 0, "shard_errors": 1}}
    assert len(train_keys) == 40 and set(train_keys) <= set(_keys(local))


def test_train_epoch_has_fixed_length_and_changes_per_epoch(shards):
    dm = _datamodule(shards, train_samples_per_epoch=40)
    loader = dm.train_dataloader()
    assert len(loader) == dm.batches_per_epoch == 5  # ceil(40 / 8)
    epoch0, epoch1 = _keys(loader), _keys(loader)
    assert len(epoch0) == len(epoch1) == 40
    assert epoch0 != epoch1
    assert dm.state_dict() == {"epochs_started": 2}


def test_train_stream_is_deterministic_under_seed(shards):
    first = _datamodule(shards, train_samples_per_epoch=64).train_dataloader()
    second = _datamodule(shards, train_samples_per_epoch=64).train_dataloader()
    other = _datamodule(shards, train_samples_per_epoch=64, seed=1).train_dataloader()
    run = [_keys(first), _keys(first)]
    assert run == [_keys(second), _keys(second)]
    assert run[0] != _keys(other)
    # A resumed run continues the epoch sequence instead of repeating epoch 0.
    resumed = _datamodule(shards, train_samples_per_epoch=64)
    resumed.load_state_dict({"epochs_started": 1})
    assert _keys(resumed.train_dataloader()) == run[1]


def test_train_defaults_to_sizes_json_epoch_and_shuffles(shards):
    dm = _datamodule(shards)
    assert dm.train_samples_per_epoch == NUM_SAMPLES
    keys = _keys(dm.train_dataloader())
    assert len(keys) == NUM_SAMPLES
    assert keys != sorted(keys)


def test_two_workers_split_epoch_and_are_deterministic(shards):
    dm = _datamodule(shards, num_workers=2, train_samples_per_epoch=64, persistent_workers=True)
    loader = dm.train_dataloader()
    assert len(loader) == 8  # 4 batches per worker
    run = [_keys(loader), _keys(loader)]
    assert [len(k) for k in run] == [64, 64] and run[0] != run[1]
    again = _datamodule(shards, num_workers=2, train_samples_per_epoch=64).train_dataloader()
    assert [_keys(again), _keys(again)] == run
    val = _keys(dm.val_dataloader())
    assert sorted(val) == [f"s{i:05d}" for i in range(NUM_SAMPLES)]


def test_more_workers_than_shards_raises(shards):
    with pytest.raises(ValueError, match=r"6 shards cannot feed 4 dataloader workers x 2 ranks"):
        check_shard_count(6, 4, 2, "train")
    with pytest.raises(ValueError, match="Lower num_workers to 6 or fewer"):
        _datamodule(shards, num_workers=7)
    check_shard_count(6, 3, 2, "train")
    check_shard_count(1, 0, 1, "val")


def test_missing_shards_raise_a_clear_error(tmp_path, shards):
    with pytest.raises(FileNotFoundError, match=r"2 of 2 shards do not exist"):
        expand_shards(str(tmp_path / "nope-{0..1}.tar"))
    with pytest.raises(FileNotFoundError, match="1 of 7 shards"):
        expand_shards([shards, str(tmp_path / "gone.tar")])
    # Remote specs are passed through unchecked.
    remote = expand_shards("pipe:curl -s https://host/d-{000..002}.tar::http://host/x.tar")
    assert remote[0] == "pipe:curl -s https://host/d-000.tar" and len(remote) == 4


def test_corrupt_shards_and_images_are_skipped_and_counted(tmp_path):
    good = write_shards(_samples(32), tmp_path, prefix="good", samples_per_shard=16)
    # A shard cut off in the middle of its data, as after an interrupted copy; sizes.json
    # still lists its 16 samples.
    truncated = Path(good.paths[1])
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2 + 100])
    # A valid tar with an undecodable image, a sample without image, and good samples.
    broken = write_shards(
        [
            {"__key__": "bad_png", "png": b"not a png at all", "txt": "x"},
            {"__key__": "no_image", "txt": "caption without image"},
            {"__key__": "cut_png", "png": _png(5)[:40]},
            {"__key__": "fine", "png": _png(1)},
        ],
        tmp_path,
        prefix="broken",
        samples_per_shard=8,
    )
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(3000))
    urls = [good.paths[0], str(truncated), broken.paths[0], str(garbage)]
    counter = SkipCounter()
    pipeline = build_eval_pipeline(
        urls, transform=ResizeToTensor(8), batch_size=4, counter=counter
    )
    batches = list(pipeline)
    keys = [k for b in batches for k in b["key"]]
    assert keys[:16] == [f"s{i:05d}" for i in range(16)]
    assert "fine" in keys and not {"bad_png", "no_image", "cut_png"} & set(keys)
    # The truncated shard yields its intact samples; its damaged tail is skipped.
    from_truncated = [k for k in keys[16:] if k.startswith("s")]
    assert from_truncated == [f"s{i:05d}" for i in range(16, 16 + len(from_truncated))]
    assert 0 < len(from_truncated) < 16
    # Samples lost: 3 bad samples + the truncated shard's 16 minus those it yielded (the
    # garbage file is in no sizes.json: its loss is unknown). Failed reads: truncated, garbage.
    lost = 3 + 16 - len(from_truncated)
    assert counter.counts() == {"samples_skipped": lost, "shard_errors": 2}
    assert int(batches[-1]["samples_skipped"]) == lost
    assert int(batches[-1]["shard_errors"]) == 2


def _tar_bytes(members: list[tuple[str, bytes]], fmt: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        directory = tarfile.TarInfo("some/dir")
        directory.type = tarfile.DIRTYPE  # carries no sample data
        tar.addfile(directory)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=str
)
def test_tar_reader_reads_what_tarfile_reads(monkeypatch, fmt):
    rng = np.random.default_rng(fmt)
    members = [
        ("a.png", rng.bytes(700)),
        ("a.txt", b"caption"),
        ("empty.cls", b""),
        # A name over 100 characters: ustar splits it into prefix/name, GNU and pax use an
        # extra header.
        ("d" * 80 + "/" + "k" * 60 + ".jpg", rng.bytes(512)),
        ("big.npy", rng.bytes(5000)),
    ]
    data = _tar_bytes(members, fmt)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    assert expected == members
    assert list(tar_members(io.BytesIO(data))) == expected
    # Members that straddle the reader's chunks, down to chunks smaller than one header.
    for chunk in (512, 700, 1000):
        monkeypatch.setattr(tar_reader, "_CHUNK", chunk)
        assert list(tar_members(io.BytesIO(data))) == expected


def test_tar_reader_raises_on_truncation_and_damaged_headers():
    data = _tar_bytes([("a.png", b"x" * 1500), ("a.txt", b"caption")], tarfile.USTAR_FORMAT)
    assert len(list(tar_members(io.BytesIO(data)))) == 2
    # Cut anywhere before the end-of-archive block: never a silent short read.
    archive_end = data.index(bytes(1024), 2048)
    for cut in range(0, archive_end, 100):
        with pytest.raises(tarfile.ReadError, match="truncated"):
            list(tar_members(io.BytesIO(data[:cut])))
    damaged = bytearray(data)
    damaged[512 + 130] ^= 1  # one bit of the first file's size field
    with pytest.raises(tarfile.ReadError, match="checksum"):
        list(tar_members(io.BytesIO(bytes(damaged))))


def test_skips_are_counted_across_workers_in_the_datamodule(tmp_path):
    good = write_shards(_samples(16), tmp_path, prefix="a", samples_per_shard=16)
    bad = write_shards(
        [{"__key__": f"bad{i}", "png": b"garbage"} for i in range(3)],
        tmp_path,
        prefix="b",
        samples_per_shard=3,
    )
    urls = [good.paths[0], bad.paths[0]]
    dm = WdsDataModule(urls, urls, num_workers=2, batch_size=4, image_size=8)
    dm.setup("fit")
    keys = _keys(dm.val_dataloader())
    assert len(keys) == 16
    assert dm.skip_counts == {
        "train": {"samples_skipped": 0, "shard_errors": 0},
        "val": {"samples_skipped": 3, "shard_errors": 0},
    }


def test_transforms_are_the_given_callables(shards):
    def train_transform(image: Image.Image) -> torch.Tensor:
        return torch.zeros(3, 4, 4)

    def eval_transform(image: Image.Image) -> torch.Tensor:
        return torch.ones(3, 6, 6)

    dm = _datamodule(shards, train_transform=train_transform, eval_transform=eval_transform)
    assert next(iter(dm.train_dataloader()))["image"].shape == (8, 3, 4, 4)
    assert torch.all(next(iter(dm.val_dataloader()))["image"] == 1)


def test_val_samples_limits_the_pass(shards):
    assert len(_keys(_datamodule(shards, val_samples=20).val_dataloader())) == 20


def test_ref_embeddings_stored_in_shards_reach_the_batch(tmp_path):
    pattern = write_shards(
        _samples(24, with_ref=True), tmp_path, prefix="r", samples_per_shard=8
    ).pattern
    batch = next(iter(_datamodule(pattern, shuffle_buffer=16).train_dataloader()))
    index = torch.tensor([int(k[1:]) for k in batch["key"]], dtype=torch.float32)
    assert torch.equal(batch["ref"], torch.stack([index, -index], dim=1))


def test_ref_cache_pairs_embeddings_with_samples_by_key(tmp_path, shards):
    # Encoder: mean colour, which encodes the sample index (see _png).
    def encoder(images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3)) * 255

    cache = compute_ref_cache(
        shards, encoder, tmp_path / "cache", transform=ResizeToTensor(8), num_workers=2
    )
    assert len(cache) == NUM_SAMPLES and cache.dim == 3
    assert cache.meta["samples_skipped"] == cache.meta["shard_errors"] == 0
    assert len(cache.meta["shards"]) == 6
    np.testing.assert_array_equal(cache["s00042"], [42, 0, 7])
    # Shuffled, resampled, two workers: every row must still belong to its sample.
    dm = _datamodule(
        shards, num_workers=2, ref_cache=tmp_path / "cache", train_samples_per_epoch=64
    )
    for batch in dm.train_dataloader():
        from_key = torch.tensor([int(k[1:]) for k in batch["key"]])
        assert torch.equal(batch["ref"][:, 0].long(), from_key)
        assert torch.equal(batch["ref"][:, 0].long(), _index_of(batch["image"]))


class _LinearRef(torch.nn.Module):
    """Toy ImageEncoder: 4 px input with its own normalisation, then a fixed linear map."""

    def __init__(self) -> None:
        super().__init__()
        self.image_size, self.image_mean, self.image_std = 4, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)
        self.linear = torch.nn.Linear(3 * 4 * 4, 5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.flatten(1))


def test_built_ref_cache_holds_what_the_live_reference_embeds(tmp_path, shards):
    torch.manual_seed(0)
    encoder = _LinearRef()
    dm = _datamodule(shards)
    cache = build_ref_cache(
        shards, encoder, tmp_path / "cache", view=dm.eval_transform, dtype="float32"
    )
    assert cache.meta["view"] == "ResizeToTensor(size=8)"
    # The training module's reference: ref(ViewAdapter.for_encoder(ref)(batch["image"])).
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        live = encoder(ViewAdapter.for_encoder(encoder)(batch["image"]))
    cached = np.stack([cache[key] for key in batch["key"]])
    np.testing.assert_allclose(cached, live.numpy(), rtol=1e-5, atol=1e-6)


def test_ref_cache_of_the_keys_json_format_is_still_read(tmp_path):
    # Written by earlier versions: the keys as one JSON list.
    np.save(tmp_path / "embeddings.npy", np.eye(2, 3, dtype=np.float16))
    (tmp_path / "keys.json").write_text('["a", "b"]')
    (tmp_path / "meta.json").write_text('{"num_samples": 2, "dim": 3, "dtype": "float16"}')
    cache = RefCache(tmp_path)
    assert cache.keys() == ["a", "b"] and cache.dim == 3
    np.testing.assert_array_equal(cache["b"], [0, 1, 0])


def test_ref_cache_miss_raises_instead_of_skipping(tmp_path, shards):
    keys = [f"s{i:05d}" for i in range(NUM_SAMPLES) if i != 17]
    write_ref_cache(tmp_path / "partial", keys, np.zeros((len(keys), 4)))
    dm = _datamodule(shards, ref_cache=tmp_path / "partial")
    with pytest.raises(RefCacheMissError, match="'s00017' is not in the reference cache"):
        _keys(dm.val_dataloader())
    with pytest.raises(ValueError, match="duplicate sample keys"):
        write_ref_cache(tmp_path / "dupe", ["a", "a"], np.zeros((2, 4)))
    with pytest.raises(FileNotFoundError, match="not a reference cache"):
        RefCache(tmp_path)


def test_shards_are_plain_tars_with_one_member_per_field(shards):
    with tarfile.open(expand_shards(shards)[0]) as tar:
        names = tar.getnames()
    assert names[:4] == ["s00000.json", "s00000.png", "s00001.cls", "s00001.json"]


def test_a_truncated_shard_counts_the_samples_it_loses_on_every_read(tmp_path):
    """Resampled training reads a cut-off shard again and again: each read loses the samples
    after the cut, and the counts say so (not one skip per read)."""
    (path,) = write_shards(_samples(32), tmp_path, prefix="t", samples_per_shard=32).paths
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    intact = len(_keys(build_eval_pipeline(path, transform=ResizeToTensor(8), batch_size=8)))
    assert 0 < intact < 32
    counter = SkipCounter()
    pipeline = build_train_pipeline(
        path,
        transform=ResizeToTensor(8),
        batch_size=8,
        samples_per_epoch=96,
        num_workers=0,
        shuffle_buffer=0,
        counter=counter,
    )
    batches = list(pipeline)
    assert sum(len(b["key"]) for b in batches) == 96  # the epoch keeps its length
    # A read that failed is one shard error and loses 32 - intact samples.
    reads = 96 // intact
    assert counter.shard_errors in (reads - 1, reads)
    assert counter.samples_skipped == (32 - intact) * counter.shard_errors
    last = batches[-1]
    assert (int(last["samples_skipped"]), int(last["shard_errors"])) == (
        counter.samples_skipped,
        counter.shard_errors,
    )


@pytest.mark.parametrize(
    ("num_workers", "val_samples", "val_batch_size", "expected"),
    [(0, None, 10, 10), (2, None, 10, 10), (4, None, 10, 12), (4, 20, 3, 8), (0, 20, 8, 3)],
)
def test_val_loader_length_is_the_number_of_batches_it_yields(
    shards, num_workers, val_samples, val_batch_size, expected
):
    dm = _datamodule(
        shards, num_workers=num_workers, val_samples=val_samples, val_batch_size=val_batch_size
    )
    loader = dm.val_dataloader()
    # 6 shards of 16 split over the workers; each worker ends on its own partial batch.
    assert len(loader) == expected == len(list(loader))


@pytest.mark.parametrize(("max_samples", "expected", "samples"), [(None, 11, 96), (30, 4, 32)])
def test_eval_pipeline_length_is_per_rank_and_worker(shards, max_samples, expected, samples):
    # 6 shards over 2 ranks x 2 workers: worker 0 of each rank reads 2 shards (32 samples,
    # 7 batches of 5), worker 1 one shard (16, 4 batches); max_samples=30: 8 per reader.
    keys = []
    for rank in (0, 1):
        pipeline = build_eval_pipeline(
            shards,
            transform=ResizeToTensor(8),
            batch_size=5,
            world_size=2,
            rank=rank,
            max_samples=max_samples,
            num_workers=2,
        )
        loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=2)
        batches = list(loader)
        assert len(loader) == len(batches) == expected
        keys += [k for b in batches for k in b["key"]]
    assert len(keys) == len(set(keys)) == samples


class _CountValSteps(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.keys: list[str] = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.keys += batch["key"]


def test_lightning_validation_knows_its_total_and_reads_everything(shards):
    """The length reaches Lightning (its progress bar shows x/N) and, being exact, never
    cuts the pass short (Lightning stops an evaluation loop at the loader's length)."""
    dm = WdsDataModule(shards, shards, batch_size=8, val_batch_size=10, num_workers=2)
    model = _CountValSteps()
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.validate(model, datamodule=dm)
    assert trainer.num_val_batches == [10]
    assert sorted(model.keys) == [f"s{i:05d}" for i in range(NUM_SAMPLES)]


def test_eval_pipeline_length_without_sizes_is_unknown(shards):
    directory, name = os.path.split(shards)
    pipeline = build_eval_pipeline(
        [f"pipe:cat {directory}/train-000000.tar"], transform=ResizeToTensor(8), batch_size=4
    )
    with pytest.raises(TypeError, match="no fixed length"):
        len(pipeline)
    assert len(list(pipeline)) == 4


def test_eval_pipeline_refuses_another_worker_count(shards):
    pipeline = build_eval_pipeline(shards, transform=ResizeToTensor(8), batch_size=8)
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=2)
    with pytest.raises(ValueError, match="built for num_workers=0 but runs in 2"):
        next(iter(loader))
