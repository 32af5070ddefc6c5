"""`compare.py` (Hydra): two configured encoders on a configured data set -> features, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from spec_align.explain.report_dir import ReportDirError
from spec_align.explain.run import _expected_samples, run_compare
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
    x = np.load(features / "x.npy")
    assert x.shape == (128, 64)  # every val sample, tiny CLIP's width
    assert np.load(features / "y.npy").shape == (128, 1280)  # EfficientNet-Lite0's width
    # The cards carry the shards' metadata: a dominant attribute per mode, from the cache.
    first = (features / "attributes.jsonl").read_text().splitlines()[0]
    assert json.loads(json.loads(first))["texture"] in ("plain", "stripes", "checker", "dots")
    fields = {m["attribute"]["field"] for m in summary["modes"] if m["attribute"]}
    assert fields <= {"shape", "colour", "side", "texture", "label"} and fields
    assert summary["stability"]["resamples"] == 10 and summary["maps_figure"] == "maps.png"
    assert all("stability" in m for m in summary["modes"])
    assert summary["provenance"]["ref"] == "EfficientNetEncoder (pretrained weights)"
    assert summary["provenance"]["encoder"] == "ClipEncoder tiny_clip (random init)"

    # Other SPEC settings on the same encoders and data: the cached features are reused.
    stamp = (features / "x.npy").stat().st_mtime_ns
    rerun = _compose(
        data_root,
        tmp_path / "second",
        f"cache_dir={features}",
        "spec.kernel=cosine",
        "spec.rff_dim=null",
    )
    check_report(run_compare(rerun).parent)
    assert (features / "x.npy").stat().st_mtime_ns == stamp

    # A different encoder invalidates the cache instead of reusing stale features.
    other = _compose(
        data_root, tmp_path / "third", f"cache_dir={features}", "ref.encoder.image_size=32"
    )
    run_compare(other)
    assert (features / "x.npy").stat().st_mtime_ns != stamp


def test_compare_refuses_an_occupied_report_dir_before_extracting(data_root, tmp_path):
    cfg = _compose(data_root, tmp_path / "run")
    report = Path(cfg.report.out_dir)
    report.mkdir(parents=True)
    (report / "index.html").write_text("<html>an earlier report</html>")
    with pytest.raises(ReportDirError, match=r"report.out_dir .* is not empty.*report.overwrite"):
        run_compare(cfg)
    assert not Path(cfg.cache_dir).exists()  # no encoder ran
    assert (report / "index.html").read_text() == "<html>an earlier report</html>"


def test_compare_overwrites_a_whole_report_on_request_and_shows_progress(
    data_root, tmp_path, capsys
):
    cfg = _compose(data_root, tmp_path / "run", "report.overwrite=true", "spec.rff_dim=16")
    report = Path(cfg.report.out_dir)
    (report / "modes").mkdir(parents=True)
    (report / "modes.json").write_text("{}")
    (report / "modes" / "mode_42.png").write_bytes(b"stale")
    check_report(run_compare(cfg).parent)
    assert not (report / "modes" / "mode_42.png").exists()
    err = capsys.readouterr().err
    assert "features: 100%" in err and "128/128" in err  # a total: the shards' sizes.json
    assert "SPEC pass 1/2 (covariance): 100%" in err


def test_expected_samples_mirror_the_eval_pipeline(tmp_path):
    (tmp_path / "sizes.json").write_text(json.dumps({f"val-{i}.tar": 10 + i for i in range(5)}))
    urls = [str(tmp_path / f"val-{i}.tar") for i in range(5)]
    assert _expected_samples(urls, None, 2) == 60
    # max_samples=25 over 2 readers: each stops after ceil(25 / 2) = 13 samples.
    assert _expected_samples(urls, 25, 2) == 26
    assert _expected_samples(urls, 25, 0) == 25
    assert _expected_samples([str(tmp_path / "unknown.tar")], None, 1) is None
