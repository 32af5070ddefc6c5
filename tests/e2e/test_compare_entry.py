"""`compare.py` (Hydra): two configured encoders on a configured data set -> features, report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from spec_align.explain.run import run_compare
from tests.helpers import CONF_DIR, SMALL_SYNTHETIC, check_report


def _compose(data_root: Path, output_dir: Path, *overrides: str) -> DictConfig:
    """Compose conf/compare.yaml as `python compare.py <overrides>` would, with test paths."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "compare",
            overrides=[
                "encoder=tiny",
                "ref=efficientnet",  # the real packaged ImageNet weights: sees the textures
                "data=synthetic",
                f"data.dataset_kwargs={SMALL_SYNTHETIC}",
                f"paths.root_dir={output_dir.parent}",
                f"paths.data_dir={data_root}",
                f"paths.output_dir={output_dir}",
                "num_workers=2",
                "batch_size=64",
                "spec.top_k=3",
                "report.samples_per_mode=8",
                *overrides,
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    GlobalHydra.instance().clear()
    return cfg


def test_compare_writes_a_report_and_reuses_its_features(data_root, tmp_path):
    cfg = _compose(data_root, tmp_path / "first")
    index = run_compare(cfg)
    assert index == Path(cfg.report.out_dir) / "index.html"
    summary = check_report(index.parent)
    directions = {mode["direction"] for mode in summary["modes"]}
    assert len(summary["modes"]) == 6 and len(directions) == 2  # top_k modes of each sign
    features = Path(cfg.cache_dir)
    a = np.load(features / "a.npy")
    assert a.shape == (128, 64)  # every val sample, tiny CLIP's width
    assert np.load(features / "b.npy").shape == (128, 1280)  # EfficientNet-Lite0's width

    # Other SPEC settings on the same encoders and data: the cached features are reused.
    stamp = (features / "a.npy").stat().st_mtime_ns
    rerun = _compose(
        data_root,
        tmp_path / "second",
        f"cache_dir={features}",
        "spec.kernel=cosine",
        "spec.rff_dim=null",
    )
    check_report(run_compare(rerun).parent)
    assert (features / "a.npy").stat().st_mtime_ns == stamp

    # A different encoder invalidates the cache instead of reusing stale features.
    other = _compose(
        data_root, tmp_path / "third", f"cache_dir={features}", "ref.encoder.image_size=32"
    )
    run_compare(other)
    assert (features / "a.npy").stat().st_mtime_ns != stamp
