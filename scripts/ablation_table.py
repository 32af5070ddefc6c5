"""The README's ablation table from a multirun: final held-out metrics, mean and spread over seeds.

    python train.py -m <variants> seed=0,1,2          # e.g. the README's ablation line
    python scripts/ablation_table.py logs/train/multiruns/<stamp> [<another sweep> ...]

Each job directory of the multirun holds its overrides (.hydra/overrides.yaml) and its logged
metrics (csv/metrics.csv). Jobs whose overrides differ only in `seed` form one row; a cell is
the mean over the row's seeds of the metric's last logged value (the final validation) and,
with two or more seeds, its sample standard deviation. Nothing is recomputed: the table shows
what the runs logged. Rows appear in the order of their first job.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path

import yaml

DEFAULT_COLUMNS = (
    "val/probe/texture_knn",
    "val/probe/texture_linear",
    "val/probe/shape_knn",
    "val/probe/colour_knn",
    "val/probe/side_knn",
    "val/zero_shot_acc",
    "val/spec_diff",
    "val/spec_diff_median",
)


def final_metrics(metrics_csv: Path) -> dict[str, float]:
    """The last logged value of every column of a Lightning CSVLogger file."""
    last: dict[str, float] = {}
    with metrics_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if value not in ("", None):
                    last[key] = float(value)
    return last


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Job directories of a multirun (numbered subdirectories with a config), in job order."""
    jobs = [p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()]
    return sorted(jobs, key=lambda p: int(p.name) if p.name.isdigit() else p.name)


def finished(job: Path, metrics: dict[str, float]) -> bool:
    """Whether the job's last validation was at its last epoch (not a run still going)."""
    max_epochs = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["trainer"][
        "max_epochs"
    ]
    return metrics.get("epoch", -1) + 1 >= max_epochs


def rows_of(sweep_dirs: list[Path]) -> dict[str, list[dict[str, float]]]:
    """Final metrics of every finished job, grouped by their overrides without `seed` (and
    without the overrides every job shares)."""
    jobs = []
    for job in (job for sweep_dir in sweep_dirs for job in job_dirs(sweep_dir)):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        metrics_csv = job / "csv" / "metrics.csv"
        if not metrics_csv.is_file():
            print(f"skipped {job}: no csv/metrics.csv", file=sys.stderr)
            continue
        metrics = final_metrics(metrics_csv)
        if not finished(job, metrics):
            print(f"skipped {job}: not finished", file=sys.stderr)
            continue
        jobs.append(([o for o in overrides if not o.startswith("seed=")], metrics))
    shared = set.intersection(*(set(o) for o, _ in jobs)) if len(jobs) > 1 else set()
    rows: dict[str, list[dict[str, float]]] = {}
    for overrides, metrics in jobs:
        setting = " ".join(o for o in overrides if o not in shared) or "(defaults)"
        rows.setdefault(setting, []).append(metrics)
    return rows


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown_table(rows: dict[str, list[dict[str, float]]], columns: list[str]) -> str:
    header = ["setting", "seeds", *(c.removeprefix("val/") for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for setting, runs in rows.items():
        cells = [cell([m[c] for m in runs if c in m and not math.isnan(m[c])]) for c in columns]
        lines.append(f"| `{setting}` | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sweep_dirs", type=Path, nargs="+", help="multirun directories (logs/.../multiruns/X)"
    )
    parser.add_argument(
        "--columns", nargs="+", default=list(DEFAULT_COLUMNS), help="metric keys, in order"
    )
    args = parser.parse_args(argv)
    for sweep_dir in args.sweep_dirs:
        if not sweep_dir.is_dir():
            parser.error(f"{sweep_dir} is not a directory")
    rows = rows_of(args.sweep_dirs)
    if not rows:
        parser.error("no jobs found (expected <sweep>/<job>/.hydra/overrides.yaml)")
    print(markdown_table(rows, args.columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
