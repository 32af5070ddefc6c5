"""Train then evaluate: the checkpoint reproduces the run's last probe-set metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from spec_align.train import ConfigError, evaluate, run

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SHORT = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "trainer.max_epochs=1"]


def _eval_cfg(tmp_path: Path, data_root: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(
            "eval",
            overrides=[
                f"paths.root_dir={tmp_path}",
                f"paths.data_dir={data_root}",
                f"paths.log_dir={tmp_path / 'logs'}",
                f"paths.output_dir={tmp_path / 'eval'}",
                "accelerator=cpu",
                *overrides,
            ],
        )


def test_eval_reproduces_the_last_validation(compose_train, tmp_path, data_root):
    run_dir = tmp_path / "run"
    cfg = compose_train(*SHORT, output_dir=run_dir)
    metrics, _ = run(cfg)

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    evaluated = evaluate(_eval_cfg(tmp_path, data_root, f"ckpt_path={ckpt}"))
    for key in ("val/spec_diff", "val/i2t_r1", "val/t2i_r1"):
        assert evaluated[key] == pytest.approx(metrics[key], abs=1e-6), key


def test_eval_needs_an_existing_checkpoint(tmp_path, data_root):
    with pytest.raises(ConfigError, match="is not a file"):
        evaluate(_eval_cfg(tmp_path, data_root, f"ckpt_path={tmp_path / 'none.ckpt'}"))
