"""`compare.py`: SPEC of two configured encoders on a configured data set, as a report."""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from spec_align.explain.comparison import compare_embeddings
from spec_align.explain.extract import FeatureCache, PairTransform, extract_features
from spec_align.explain.report import log_report_to_wandb, write_report
from spec_align.explain.report_dir import check_report_dir, replace_report_dir
from spec_align.explain.stability import mode_stability

__all__ = ["run_compare"]

log = logging.getLogger(__name__)


def run_compare(cfg: DictConfig) -> Path:
    """Extract (or reuse cached) features of `cfg.encoder` and `cfg.ref`, compare, report.

    The report directory `cfg.report.out_dir` is checked first: it must be writable, and
    new or empty unless `report.overwrite` is true (an existing report is then replaced
    whole, swapped in after the new one is written). Progress bars (feature extraction and
    the SPEC passes) go to stderr unless `progress=false`.

    Returns:
        Path of the report's index.html.
    """
    from spec_align.data.shards import expand_shards
    from spec_align.data.wds import build_eval_pipeline

    if cfg.ref.get("encoder") is None:
        raise ValueError(
            "compare needs two encoders, but this ref option has no `encoder` node "
            "(ref=none or a precomputed cache); pick e.g. ref=dinov2 or ref=tiny"
        )
    # Before any encoder runs: an unwritable or occupied report directory fails now.
    overwrite = bool(cfg.report.overwrite)
    out_dir = check_report_dir(
        cfg.report.out_dir,
        overwrite=overwrite,
        option="report.out_dir",
        flag="report.overwrite=true",
    )
    progress = bool(cfg.progress)
    encoder_x, encoder_y = instantiate(cfg.encoder), instantiate(cfg.ref.encoder)
    names = tuple(cfg.names) if cfg.get("names") else ("encoder", "ref")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit" if cfg.split == "train" else "validate")
    urls = expand_shards(datamodule.train_urls if cfg.split == "train" else datamodule.val_urls)
    fingerprint = {
        "encoder": OmegaConf.to_container(cfg.encoder, resolve=True),
        "ref": OmegaConf.to_container(cfg.ref.encoder, resolve=True),
        "shards": urls,
        "max_samples": cfg.max_samples,
    }
    cache_dir = Path(cfg.cache_dir)
    if FeatureCache.matches(cache_dir, fingerprint):
        log.info("reusing cached features in %s", cache_dir)
        cache = FeatureCache(cache_dir)
    else:
        sizes = [(3, e.image_size, e.image_size) for e in (encoder_x, encoder_y)]
        pair = PairTransform(encoder_x.eval_transform, encoder_y.eval_transform, *sizes)
        pipeline = build_eval_pipeline(
            urls,
            transform=pair,
            batch_size=cfg.batch_size,
            max_samples=cfg.max_samples,
            num_workers=cfg.num_workers,
        )
        loader = DataLoader(pipeline, batch_size=None, num_workers=cfg.num_workers)
        cache = extract_features(
            loader,
            encoder_x,
            encoder_y,
            cache_dir,
            split=pair.split,
            fingerprint=fingerprint,
            progress=progress,
            num_samples=_expected_samples(urls, cfg.max_samples, cfg.num_workers),
        )
    spec = {"progress": progress, **cfg.spec}
    result = compare_embeddings(cache.x, cache.y, names=names, **spec)
    if cfg.stability.resamples:
        result.stability = mode_stability(
            cache.x,
            cache.y,
            result,
            resamples=cfg.stability.resamples,
            max_samples=cfg.stability.max_samples,
            seed=cfg.stability.seed,
        )
    log.info("%s", result)  # before writing: the result is out even if the report fails
    keys, labels = cache.keys(), cache.labels.tolist()
    wanted = {
        keys[int(i)]
        for j in range(result.num_modes)
        for largest in (True, False)
        for i in result.top_samples(j, cfg.report.samples_per_mode, largest=largest)
    }
    thumbnails = _shard_images(urls, wanted)
    check_report_dir(  # nothing appeared there meanwhile
        out_dir, overwrite=overwrite, option="report.out_dir", flag="report.overwrite=true"
    )
    index = replace_report_dir(
        out_dir,
        lambda staging: write_report(
            result,
            staging,
            samples_per_mode=cfg.report.samples_per_mode,
            keys=keys,
            labels=labels,
            class_names=(datamodule.dataset_info or {}).get("classes"),
            texts=cache.texts(),
            attributes=cache.attributes(),
            load_image=lambda i: thumbnails.get(keys[i]),
            embeddings=(cache.x, cache.y),
            map_method=cfg.report.map_method,
            provenance={
                names[0]: _describe(cfg.encoder),
                names[1]: _describe(cfg.ref.encoder),
                "split": cfg.split,
                "features": str(cache_dir),
            },
        ),
    )
    if cfg.report.wandb:
        log_report_to_wandb(out_dir, project=cfg.report.wandb_project)
    log.info("report: %s", index)
    return index


def _expected_samples(urls: list[str], max_samples: int | None, num_workers: int) -> int | None:
    """Samples the eval pipeline will read, from the shards' sizes.json (None if unknown).

    Mirrors `build_eval_pipeline` on one rank: reader w of W takes shards w, w + W, ... and,
    with max_samples, stops after ceil(max_samples / W) of them.
    """
    from spec_align.data.shards import read_sizes

    readers = max(int(num_workers), 1)
    share = None if max_samples is None else math.ceil(max_samples / readers)
    total = 0
    for reader in range(readers):
        mine = urls[reader::readers]
        if not mine:
            continue
        size = read_sizes(mine)
        if size is None:
            return None
        total += size if share is None else min(size, share)
    return total


def _describe(node: DictConfig) -> str:
    """A short name of an encoder config node: "EfficientNetEncoder (pretrained weights)",
    "OpenClipEncoder ViT-B-32 (weights: openai)", "TinyEncoder (random init)"."""
    parts = [str(node.get("_target_", "?")).rsplit(".", 1)[-1]]
    if node.get("model_name") is not None:
        parts.append(str(node.model_name))
    pretrained = node.get("pretrained")
    if pretrained is True:
        parts.append("(pretrained weights)")
    elif pretrained:
        parts.append(f"(weights: {pretrained})")
    elif "pretrained" in node:
        parts.append("(random init)")
    return " ".join(parts)


def _shard_images(urls: list[str], wanted: set[str]) -> dict[str, Image.Image]:
    """Decode only the `wanted` samples' images from the shards (raw tar pass, no transform)."""
    import webdataset as wds

    from spec_align.data.shards import IMAGE_EXTENSIONS

    found = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        if sample["__key__"] in wanted:
            ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
            if ext is not None:
                with Image.open(io.BytesIO(sample[ext])) as image:
                    found[sample["__key__"]] = image.convert("RGB")
            if len(found) == len(wanted):
                break
    return found
