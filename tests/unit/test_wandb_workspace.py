"""`spec-align wandb-workspace`: the workspace is built and validated offline, never saved."""

from __future__ import annotations

import json
import re

import pytest

from spec_align import wandb_workspace
from spec_align.wandb_workspace import build_workspace, long_lived_ids, main, mode_grid


@pytest.fixture(autouse=True)
def no_saving(monkeypatch):
    """A test that reached W&B's servers would be a bug: saving fails loudly."""
    import wandb_workspaces.workspaces as ws

    def refuse(self):
        raise AssertionError("a test tried to save a workspace")

    monkeypatch.setattr(ws.Workspace, "save", refuse)
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)


def _history(path, evaluations: list[dict[int, float]]) -> None:
    lines = [json.dumps({"step": 10 * i, "tracked": e}) for i, e in enumerate(evaluations)]
    path.write_text("\n".join(lines) + "\n")


def test_workspace_shows_the_keys_the_callback_logs_and_validates():
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    workspace = build_workspace("team", "proj", [3, 0, 7], name="clusters")
    overview, grids, training = workspace.sections
    # One chart for all tracked ids: a regex over the per-id series, and the line series.
    regexes = [p.metric_regex for p in overview.panels if getattr(p, "metric_regex", None)]
    key_of_id_12 = wandb_workspace.tracked_eigenvalue(12)
    (tracked,) = [r for r in regexes if re.fullmatch(r, key_of_id_12)]
    assert not re.fullmatch(tracked, wandb_workspace.eigenvalue("enc_minus_ref", 0))
    (ends,) = [r for r in regexes if r != tracked]
    assert re.fullmatch(ends, wandb_workspace.eigenvalue("ref_minus_enc", 4))
    (chart,) = [p for p in overview.panels if isinstance(p, wr.CustomChart)]
    assert chart.chart_name == "wandb/lineseries/v0"
    assert chart.query["summaryTable"]["tableKey"] == wandb_workspace.TRACKED_CHART + "_table"
    (table,) = [p for p in overview.panels if isinstance(p, wr.WeavePanelSummaryTable)]
    assert table.table_name == wandb_workspace.MODES_TABLE
    media = {k for p in overview.panels if isinstance(p, wr.MediaBrowser) for k in p.media_keys}
    assert media == {wandb_workspace.SPECTRUM, wandb_workspace.MAP}
    # One grid panel per requested tracked id, in the order given, stepping through steps.
    assert [p.media_keys for p in grids.panels] == [[mode_grid(i)] for i in (3, 0, 7)]
    assert {p.gallery_axis for p in grids.panels} == {"step"}
    assert training.panels

    # What save() would upload: the wire model validates and holds every key.
    view = workspace._to_model()
    spec = view.spec.model_dump_json(by_alias=True, exclude_none=True)
    for key in ("clusters/mode/7/grid", "clusters/modes", "clusters/tracked_eigenvalues_table"):
        assert key in spec
    assert (view.entity, view.project, view.display_name) == ("team", "proj", "clusters")
    # And reads back as the same layout.
    loaded = ws.Workspace._from_model(view)
    assert [s.name for s in loaded.sections] == [s.name for s in workspace.sections]
    assert [len(s.panels) for s in loaded.sections] == [len(s.panels) for s in workspace.sections]


def test_dry_run_prints_the_layout_and_saves_nothing(capsys):
    assert main(["wandb-workspace", "--entity", "team", "--project", "proj", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "workspace 'SPEC clusters' for team/proj" in out
    assert "clusters/mode/9/grid" in out and "clusters/mode/10/grid" not in out  # ids 0-9
    assert "not saved (--dry-run)" in out


def test_history_picks_the_longest_lived_ids(tmp_path, capsys):
    clusters = tmp_path / "run" / "clusters"
    clusters.mkdir(parents=True)
    _history(
        clusters / "history.jsonl",
        [{0: 0.1, 1: 0.05, 2: -0.1}, {"0": 0.1, "3": 0.02, "2": -0.1}, {"0": 0.1, "3": 0.02}],
    )
    assert long_lived_ids(clusters / "history.jsonl", 3) == [0, 2, 3]
    # The run directory and the clusters directory work too; ties go to the older id.
    assert long_lived_ids(tmp_path / "run", 2) == long_lived_ids(clusters, 2) == [0, 2]
    argv = ["wandb-workspace", "--entity", "e", "--history", str(tmp_path / "run")]
    assert main([*argv, "--num-grids", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "clusters/mode/2/grid" in out and "clusters/mode/3/grid" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dry-run"], "--entity is required"),
        (["--entity", "e", "--mode-ids", "1,x"], "comma-separated tracked ids"),
        (["--entity", "e", "--mode-ids", "1", "--history", "h"], "not both"),
        (["--entity", "e", "--history", "nowhere"], "no history.jsonl at nowhere"),
        (["--entity", "e", "--num-grids", "0"], "--num-grids must be a positive int"),
    ],
)
def test_bad_arguments_say_what_to_fix(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["wandb-workspace", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_saving_without_a_login_says_how_to_log_in(tmp_path, monkeypatch, capsys):
    for name in ("WANDB_CONFIG_DIR", "WANDB_DIR", "HOME"):
        monkeypatch.setenv(name, str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert main(["wandb-workspace", "--entity", "e"]) == 1
    assert "needs a W&B login: run `wandb login`" in capsys.readouterr().err
