"""The report logged to W&B (offline): the modes table with stability columns, the images."""

import json

from spec_align import compare
from spec_align.explain import log_report_to_wandb, mode_stability, write_report
from tests.helpers import planted_differential


def test_offline_run_holds_the_modes_table_and_the_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    x, y, only_x, _ = planted_differential(n=80)
    result = compare(x, y, top_k=2, names=("enc", "ref"))
    result.stability = mode_stability(x, y, result, resamples=2, null_draws=2)
    report = tmp_path / "report"
    write_report(
        result,
        report,
        samples_per_mode=3,
        attributes=[{"group": str(g)} for g in only_x],
        embeddings=(x, y),
    )
    log_report_to_wandb(report, mode="offline")
    (run,) = (report / "wandb").glob("offline-run-*")
    (table_file,) = (run / "files" / "media" / "table").rglob("*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"][:5] == ["mode", "direction", "eigenvalue", "share", "dominant"]
    assert "reappearance" in table["columns"] and "above_noise_floor" in table["columns"]
    assert len(table["data"]) == result.num_modes
    reappearance = table["columns"].index("reappearance")
    assert [row[reappearance] for row in table["data"]] == result.stability.reappearance
    images = {
        path.name.split("_")[0] for path in (run / "files" / "media" / "images").rglob("*.png")
    }
    assert {"spectrum", "maps"} <= images
