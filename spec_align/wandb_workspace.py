"""`spec-align wandb-workspace`: a saved W&B workspace laid out for the cluster panels.

    spec-align wandb-workspace --entity my-team --project spec_align
    spec-align wandb-workspace --entity my-team --project spec_align --dry-run
    spec-align wandb-workspace --entity my-team --history logs/train/runs/<run>/clusters

This module is also where the W&B keys of `ClusterLogCallback` are named: the callback logs
them and the workspace shows them, so the two cannot drift apart. Building the workspace
needs the `wandb` extra (`pip install -e ".[wandb]"`: the `wandb-workspaces` package);
saving it needs a W&B login (`wandb login` or WANDB_API_KEY), `--dry-run` needs neither.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MAP",
    "MODES_TABLE",
    "SPECTRUM",
    "SPEC_DIFF",
    "TRACKED_CHART",
    "build_parser",
    "build_workspace",
    "eigenvalue",
    "long_lived_ids",
    "main",
    "mode_grid",
    "noise_floor",
    "num_modes",
    "tracked_eigenvalue",
]

# ---------------------------------------------------------------------- the callback's keys

SPEC_DIFF = "clusters/spec_diff"  # operator norm of the difference kernel on the probe
SPECTRUM = "clusters/spectrum"  # image: both ends of the spectrum
MAP = "clusters/map"  # image: 2-D maps of the probe, coloured by mode
MODES_TABLE = "clusters/modes"  # incremental table: one row per mode per evaluation
# Line-series chart of every tracked mode's eigenvalue; wandb stores its data as a table
# under TRACKED_CHART + "_table" and the chart itself in the run config.
TRACKED_CHART = "clusters/tracked_eigenvalues"
_LINE_SERIES_SPEC = "wandb/lineseries/v0"  # wandb's Vega spec behind wandb.plot.line_series
_DIRECTIONS = "enc_minus_ref|ref_minus_enc"


def eigenvalue(direction: str, index: int) -> str:
    """Key of the index-th eigenvalue of one end of the spectrum."""
    return f"clusters/{direction}/eig_{index}"


def num_modes(direction: str) -> str:
    """Key of the number of modes of one direction."""
    return f"clusters/{direction}/num_modes"


def noise_floor(direction: str) -> str:
    """Key of the noise floor of one direction (with the callback's stability_resamples)."""
    return f"clusters/{direction}/noise_floor"


def tracked_eigenvalue(mode_id: int) -> str:
    """Key of tracked mode `mode_id`'s eigenvalue."""
    return f"clusters/tracked/{mode_id}/eigenvalue"


def mode_grid(mode_id: int) -> str:
    """Key of tracked mode `mode_id`'s image grid (the step slider follows that cluster)."""
    return f"clusters/mode/{mode_id}/grid"


# ---------------------------------------------------------------------------- the workspace


def long_lived_ids(history: str | os.PathLike, count: int) -> list[int]:
    """The `count` tracked ids found in the most evaluations of a run, most first.

    Args:
        history: the callback's `history.jsonl`, or the directory holding it (its
            `dirpath`, by default `<run>/clusters`), or a run directory with `clusters/`.
        count: ids to return at most.
    """
    path = Path(history)
    for candidate in (path, path / "history.jsonl", path / "clusters" / "history.jsonl"):
        if candidate.is_file():
            path = candidate
            break
    else:
        raise FileNotFoundError(
            f"no history.jsonl at {history} (nor under it, nor under its clusters/): give the "
            "cluster callback's history file or its directory, <run>/clusters by default"
        )
    seen: Counter[int] = Counter()
    for line in path.read_text().splitlines():
        if line.strip():
            seen.update(int(mode_id) for mode_id in json.loads(line)["tracked"])
    # Ties: the older id (smaller) first.
    return sorted(seen, key=lambda i: (-seen[i], i))[:count]


def build_workspace(
    entity: str,
    project: str,
    mode_ids: Sequence[int],
    name: str = "SPEC clusters",
) -> Any:
    """The workspace: an overview of the clusters, one grid per tracked mode, training curves.

    Args:
        entity: W&B entity (user or team) that owns `project`.
        project: W&B project the runs log to.
        mode_ids: tracked ids that get an image-grid panel (their step slider shows the
            cluster evolving).
        name: the workspace's display name.

    Returns:
        A `wandb_workspaces.workspaces.Workspace` (not saved).
    """
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError as err:
        raise ImportError(
            "the W&B workspace needs the wandb-workspaces package: "
            'pip install -e ".[wandb]" (or pip install wandb-workspaces)'
        ) from err

    def half(h: int = 8) -> Any:
        return wr.Layout(w=12, h=h)

    overview = ws.Section(
        name="SPEC clusters",
        is_open=True,
        pinned=True,
        panels=[
            wr.LinePlot(
                title="tracked modes: eigenvalue over training (one line per tracked id)",
                metric_regex=r"clusters/tracked/\d+/eigenvalue",
                title_y="eigenvalue (+: encoder-only, -: reference-only)",
                layout=half(),
            ),
            wr.CustomChart(
                query={"summaryTable": {"tableKey": f"{TRACKED_CHART}_table"}},
                chart_name=_LINE_SERIES_SPEC,
                chart_fields={"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"},
                chart_strings={"title": "tracked modes (latest run state)", "xname": "step"},
                layout=half(),
            ),
            wr.LinePlot(
                title="SPEC-diff to the reference (probe set and held-out)",
                y=[SPEC_DIFF, "val/spec_diff"],
                layout=half(),
            ),
            wr.LinePlot(
                title="spectrum ends by rank",
                metric_regex=rf"clusters/({_DIRECTIONS})/eig_\d+",
                layout=half(),
            ),
            wr.MediaBrowser(
                title="spectrum", media_keys=[SPECTRUM], gallery_axis="step", layout=half(10)
            ),
            wr.MediaBrowser(
                title="probe set coloured by mode",
                media_keys=[MAP],
                gallery_axis="step",
                layout=half(10),
            ),
            wr.WeavePanelSummaryTable(table_name=MODES_TABLE, layout=wr.Layout(w=24, h=12)),
        ],
    )
    grids = ws.Section(
        name="SPEC clusters: modes by tracked id",
        is_open=True,
        panels=[
            wr.MediaBrowser(
                title=f"tracked mode {mode_id}",
                media_keys=[mode_grid(mode_id)],
                gallery_axis="step",
                layout=wr.Layout(w=8, h=12),
            )
            for mode_id in mode_ids
        ],
    )
    training = ws.Section(
        name="training",
        is_open=True,
        panels=[
            wr.LinePlot(title="task loss", y=["train/task_loss_step", "val/task_loss"]),
            wr.LinePlot(title="SPEC-diff penalty (minibatch)", y=["train/spec_diff_step"]),
            wr.LinePlot(
                title="held-out SPEC-diff: exact and random features",
                y=["val/spec_diff", "val/spec_diff_features"],
            ),
            wr.LinePlot(title="zero-shot accuracy", y=["val/zero_shot_acc"]),
        ],
    )
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name,
        sections=[overview, grids, training],
        # The callback's and Lightning's logged step (WandbLogger's step metric).
        settings=ws.WorkspaceSettings(x_axis="trainer/global_step"),
    )


def _describe(workspace: Any) -> str:
    lines = [f"workspace '{workspace.name}' for {workspace.entity}/{workspace.project}:"]
    for section in workspace.sections:
        lines.append(f"  section '{section.name}' ({len(section.panels)} panels)")
        for panel in section.panels:
            shown = (
                getattr(panel, "media_keys", None)
                or getattr(panel, "y", None)
                or getattr(panel, "metric_regex", None)
                or getattr(panel, "table_name", None)
                or getattr(panel, "query", None)
            )
            title = getattr(panel, "title", None) or getattr(panel, "chart_name", "")
            lines.append(f"    {type(panel).__name__}: {title} <- {shown}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ command line


def _id_list(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated tracked ids such as 0,1,2, got {text!r}"
        ) from None
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"tracked ids are non-negative ints, got {text!r}")
    return ids


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spec-align",
        description="spec_align utilities (training: python train.py; comparison: spec-compare).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    workspace = commands.add_parser(
        "wandb-workspace",
        help="save a W&B workspace laid out for the cluster callback's panels",
        description="Build a W&B workspace with the cluster panels (tracked eigenvalues in "
        "one chart, the spectrum and map, the growing modes table, one image grid per "
        "tracked mode, training curves) and save it to a project.",
    )
    workspace.add_argument(
        "--entity",
        default=os.environ.get("WANDB_ENTITY"),
        help="W&B user or team owning the project (default: $WANDB_ENTITY)",
    )
    workspace.add_argument(
        "--project",
        default=os.environ.get("WANDB_PROJECT", "spec_align"),
        help="W&B project the runs log to (default: $WANDB_PROJECT, else spec_align, as "
        "the training config's logger)",
    )
    workspace.add_argument("--name", default="SPEC clusters", help="workspace display name")
    workspace.add_argument(
        "--mode-ids",
        type=_id_list,
        help="tracked ids that get an image-grid panel, e.g. 0,1,2 (default: ids 0-9, or "
        "with --history the ids that live longest)",
    )
    workspace.add_argument(
        "--history",
        help="a run's cluster history (history.jsonl, its clusters/ dir or the run dir): "
        "grid panels for the --num-grids ids found in the most evaluations",
    )
    workspace.add_argument(
        "--num-grids", type=int, default=10, help="grid panels taken from --history"
    )
    workspace.add_argument(
        "--dry-run",
        action="store_true",
        help="build and validate the workspace and print its layout; save nothing",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.entity is None:
        parser.error("--entity is required (or set WANDB_ENTITY): the W&B user or team")
    if args.mode_ids is not None and args.history is not None:
        parser.error("give --mode-ids or --history, not both")
    if args.num_grids < 1:
        parser.error(f"--num-grids must be a positive int, got {args.num_grids}")
    if args.history is not None:
        try:
            mode_ids = long_lived_ids(args.history, args.num_grids)
        except FileNotFoundError as err:
            parser.error(str(err))
    else:
        mode_ids = args.mode_ids if args.mode_ids is not None else list(range(10))
    try:
        workspace = build_workspace(args.entity, args.project, mode_ids, name=args.name)
        # The wire model is what save() uploads: building it validates every panel.
        workspace._to_model()
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(_describe(workspace))
    if args.dry_run:
        print("validated; not saved (--dry-run)")
        return 0
    import wandb

    try:
        logged_in = bool(wandb.Api().api_key)
    except wandb.errors.UsageError:  # raised when no API key is configured
        logged_in = False
    if not logged_in:
        print(
            "error: saving a workspace needs a W&B login: run `wandb login` or set "
            "WANDB_API_KEY (or check the layout offline with --dry-run)",
            file=sys.stderr,
        )
        return 1
    workspace.save()
    print(f"saved: {workspace.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
