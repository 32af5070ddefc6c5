"""A SPEC comparison as a directory a person can open: plot, JSON, image grids, index.html.

Layout of `out_dir`:

    index.html        everything below on one page; relative links only, inline CSS, no JS,
                      so it opens straight from disk with no server and no network
    spectrum.png      mode eigenvalues of both signs, and the whole spectrum
    modes.json        settings and, per mode, direction, eigenvalue, top samples, purity
    modes/mode_XX.png image grid of the mode's top samples (when images are available)
    modes/mode_XX.txt the top samples' texts, one per line (text data without images)
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from spec_align.explain.figures import DIRECTION_COLOURS, image_grid, save_png, spectrum_plot
from spec_align.explain.modes import class_name, label_purity, mode_records
from spec_align.spectrum import SpecResult

__all__ = ["REPORT_VERSION", "log_report_to_wandb", "write_report"]

REPORT_VERSION = 1

_GRID_COLUMNS = 8  # tiles per row of a mode's image grid


def write_report(
    result: SpecResult,
    out_dir: str | os.PathLike,
    *,
    samples_per_mode: int = 16,
    keys: Sequence[str] | None = None,
    labels: Sequence | None = None,
    class_names: Sequence[str] | None = None,
    texts: Sequence[str] | None = None,
    image_paths: Sequence[str] | None = None,
    load_image: Callable[[int], Image.Image | None] | None = None,
    title: str | None = None,
    provenance: dict | None = None,
) -> Path:
    """Write the report of `result` into `out_dir` (created; existing report files replaced).

    Per-sample inputs are indexed by the rows of `result.scores`; only the top samples of
    each mode are read, so lazy sequences (memory maps, shard lookups) are fine.

    Args:
        result: the comparison.
        out_dir: output directory.
        samples_per_mode: top samples listed and shown per mode.
        keys: sample identifiers (default: the row index).
        labels: class labels (ints or strings; -1/None = unknown), for label purity.
        class_names: display names of integer labels.
        texts: sample texts (captions, documents), listed when there are no images.
        image_paths: sample image files, recorded in modes.json and loaded for the grids.
        load_image: row index -> PIL image, for images that are not files (e.g. in shards);
            takes precedence over `image_paths` for the grids.
        title: page title (default "<x> vs <y>").
        provenance: extra JSON-ready settings shown in the page and stored in modes.json
            (input files, encoders, dataset).

    Returns:
        Path of index.html.
    """
    if samples_per_mode < 1:
        raise ValueError(f"samples_per_mode must be >= 1, got {samples_per_mode}")
    out = Path(out_dir)
    (out / "modes").mkdir(parents=True, exist_ok=True)
    name_x, name_y = result.names
    title = title or f"SPEC: {name_x} vs {name_y}"
    if load_image is None and image_paths is not None:
        load_image = lambda i: _open_image(image_paths[i])  # noqa: E731

    modes = []
    for record in mode_records(result, samples_per_mode):
        j, rows = record["mode"], record["top_samples"]
        mode = _mode_entry(result, record, keys, labels, class_names, texts, image_paths)
        if load_image is not None:
            mode["figure"] = f"modes/mode_{j:02d}.png"
            _save_grid([load_image(i) for i in rows], mode["top"], out / mode["figure"])
        elif texts is not None:
            mode["figure"] = f"modes/mode_{j:02d}.txt"
            lines = (str(s["text"]).replace("\n", " ") for s in mode["top"])
            (out / mode["figure"]).write_text("\n".join(lines) + "\n", encoding="utf-8")
        if mode["contrast"]:
            # The other pole of a contrast mode is a cluster too: show it alongside.
            low = result.top_samples(j, samples_per_mode, largest=False).tolist()
            mode["bottom"] = _samples(
                result, j, low, keys, labels, class_names, texts, image_paths
            )
            if load_image is not None:
                mode["figure_bottom"] = f"modes/mode_{j:02d}_low.png"
                _save_grid(
                    [load_image(i) for i in low], mode["bottom"], out / mode["figure_bottom"]
                )
        modes.append(mode)

    summary = {
        "report_version": REPORT_VERSION,
        "title": title,
        "names": [name_x, name_y],
        "kernel": result.kernel,
        "eta": result.eta,
        "sigma_x": result.sigma_x,
        "sigma_y": result.sigma_y,
        "rff_dim": result.rff_dim,
        "seed": result.seed,
        "method": result.method,
        "num_samples": result.num_samples,
        "spec_diff": result.spec_diff,
        "num_positive": result.num_positive,
        "num_negative": result.num_modes - result.num_positive,
        "samples_per_mode": samples_per_mode,
        "provenance": provenance or {},
        "spectrum_figure": "spectrum.png",
        "modes": modes,
    }
    save_png(_spectrum_figure(result), out / "spectrum.png")
    (out / "modes.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    index = out / "index.html"
    index.write_text(_html(summary), encoding="utf-8")
    return index


def _mode_entry(
    result: SpecResult,
    record: dict,
    keys: Sequence[str] | None,
    labels: Sequence | None,
    class_names: Sequence[str] | None,
    texts: Sequence[str] | None,
    image_paths: Sequence[str] | None,
) -> dict:
    j = record["mode"]
    column = result.scores[:, j]
    entry = {
        "mode": j,
        "direction": record["direction"],
        "sign": record["sign"],
        "formed_by": record["formed_by"],
        "missed_by": record["missed_by"],
        "eigenvalue": record["eigenvalue"],
        # A contrast mode (one group up, another down) has a second pole of large negative
        # scores; its top samples alone would hide half of the difference.
        "contrast": bool(float(column.min()) < -0.5 * float(column.max())),
        "top": _samples(
            result, j, record["top_samples"], keys, labels, class_names, texts, image_paths
        ),
    }
    if labels is not None:
        majority, purity = label_purity([s["label"] for s in entry["top"]])
        entry["majority_label"] = majority
        name = class_name(majority, class_names)
        if name is not None:
            entry["majority_label_name"] = name
        entry["label_purity"] = purity
    return entry


def _samples(
    result: SpecResult,
    j: int,
    rows: list[int],
    keys: Sequence[str] | None,
    labels: Sequence | None,
    class_names: Sequence[str] | None,
    texts: Sequence[str] | None,
    image_paths: Sequence[str] | None,
) -> list[dict]:
    top = []
    for rank, i in enumerate(rows):
        sample = {"rank": rank, "index": i, "key": str(keys[i]) if keys is not None else str(i)}
        sample["score"] = float(result.scores[i, j])
        if labels is not None:
            label = labels[i]
            sample["label"] = label
            name = class_name(label, class_names)
            if name is not None:
                sample["label_name"] = name
        if texts is not None:
            sample["text"] = texts[i]
        if image_paths is not None:
            sample["path"] = str(image_paths[i])
        top.append(sample)
    return top


def _caption(sample: dict) -> str:
    label = sample.get("label_name", sample.get("label"))
    first = f"{sample['rank'] + 1}. {sample['key']}"
    return first if label is None else f"{first}\n{label}"


def _save_grid(images: list[Image.Image | None], samples: list[dict], path: Path) -> None:
    captions = [_caption(s) for s in samples]
    save_png(image_grid(images, captions, columns=_GRID_COLUMNS), path)


def _open_image(path: str | os.PathLike) -> Image.Image | None:
    """The image at `path` decoded to RGB, or None (drawn as a "no image" tile) if unreadable."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError):  # missing, unreadable or not an image: a gap, not a crash
        return None


def _spectrum_figure(result: SpecResult) -> np.ndarray:
    name_x, name_y = result.names
    return spectrum_plot(
        result.eigenvalues.cpu().numpy(),
        result.num_positive,
        result.num_modes - result.num_positive,
        labels=(f"{name_x} - {name_y}: {name_x} forms", f"{name_y} - {name_x}: {name_y} forms"),
        title=(
            f"SPEC {name_x} vs {name_y}, modes of (K_{name_x} - eta K_{name_y}) / n: "
            f"n={result.num_samples}, kernel={result.kernel}, eta={result.eta:g}, "
            f"SPEC-diff={result.spec_diff:.4g}"
        ),
        nonzero_panel=True,
    )


_POSITIVE, _NEGATIVE = DIRECTION_COLOURS  # the figures' colours of the two signs
_CSS = f"""
body{{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1100px;
color:#222;padding:0 1em}}
h1{{font-size:1.5em}}h2{{margin-top:1.6em;border-bottom:1px solid #ccc}}
table.settings td{{padding:1px 10px 1px 0}}table.settings td:first-child{{color:#666}}
.mode{{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}}
.mode h3{{margin:.2em 0 .4em}}.positive h3{{color:{_POSITIVE}}}.negative h3{{color:{_NEGATIVE}}}
.meta{{color:#555;font-size:.92em}}img{{max-width:100%;height:auto}}
table.samples{{border-collapse:collapse;font-size:.88em}}
table.samples td,table.samples th{{border-bottom:1px solid #eee;padding:2px 8px;text-align:left}}
ol.texts li{{margin:.15em 0}}
"""


def _html(summary: dict) -> str:
    esc = html.escape
    name_x, name_y = summary["names"]
    settings = {
        "samples": summary["num_samples"],
        "kernel": summary["kernel"],
        "eta": summary["eta"],
        # the cosine kernel has no bandwidth
        **(
            {f"sigma ({name_x})": summary["sigma_x"], f"sigma ({name_y})": summary["sigma_y"]}
            if summary["sigma_x"] is not None
            else {}
        ),
        "random Fourier features": summary["rff_dim"] or "none (exact kernel)",
        "solver": summary["method"],
        "seed": summary["seed"],
        "SPEC-diff": f"{summary['spec_diff']:.6g}",
        **{k: v for k, v in summary["provenance"].items()},
    }
    rows = "".join(
        f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in settings.items()
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(summary['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(summary['title'])}</h1>",
        f'<table class="settings">{rows}</table>',
        f'<p><img src="{esc(summary["spectrum_figure"])}" alt="spectrum"></p>',
        '<p class="meta">Positive eigenvalues are sample clusters that '
        f"<b>{esc(name_x)}</b> groups together and <b>{esc(name_y)}</b> does not; negative "
        "ones the reverse. Each eigenvalue is about the difference of the cluster's weight "
        'in the two kernels. Data: <a href="modes.json">modes.json</a>.</p>',
    ]
    for sign, formed, missed in (("positive", name_x, name_y), ("negative", name_y, name_x)):
        modes = [m for m in summary["modes"] if m["sign"] == sign]
        parts.append(
            f"<h2>{esc(formed)} &minus; {esc(missed)}: clusters {esc(formed)} forms and "
            f"{esc(missed)} does not ({len(modes)} modes)</h2>"
        )
        if not modes:
            parts.append('<p class="meta">No eigenvalue of this sign beyond rounding.</p>')
        parts.extend(_mode_html(mode) for mode in modes)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _mode_html(mode: dict) -> str:
    esc = html.escape
    meta = f"eigenvalue {mode['eigenvalue']:+.5g}"
    if mode.get("label_purity") is not None:
        label = mode.get("majority_label_name", mode["majority_label"])
        meta += f" · label purity {mode['label_purity']:.0%} (majority: {esc(str(label))})"
    parts = [
        f'<div class="mode {mode["sign"]}" id="mode-{mode["mode"]}">',
        f"<h3>Mode {mode['mode']} <small>({esc(mode['direction'])})</small></h3>",
        f'<div class="meta">{meta}</div>',
    ]
    figure = mode.get("figure")
    if figure and figure.endswith(".png"):
        parts.append(f'<p><img src="{esc(figure)}" alt="top samples of mode {mode["mode"]}"></p>')
    elif figure:
        items = "".join(f"<li>{esc(str(s['text']))}</li>" for s in mode["top"])
        parts.append(f'<ol class="texts">{items}</ol><a href="{esc(figure)}">{esc(figure)}</a>')
    if mode.get("figure_bottom"):
        parts.append(
            '<div class="meta">Contrast mode: the lowest scores form the other pole '
            f"(samples {esc(mode['formed_by'])} separates from the ones above).</div>"
            f'<p><img src="{esc(mode["figure_bottom"])}" alt="lowest samples of mode '
            f'{mode["mode"]}"></p>'
        )
    columns = ["rank", "key", "score"] + [
        c for c in ("label", "label_name", "path") if any(c in s for s in mode["top"])
    ]
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{esc(f'{s[c]:.4g}' if c == 'score' else str(s.get(c, '')))}</td>"
            for c in columns
        )
        + "</tr>"
        for s in mode["top"]
    )
    parts.append(
        f"<details><summary>top samples</summary><table class='samples'><tr>{head}</tr>"
        f"{body}</table></details></div>"
    )
    return "\n".join(parts)


def log_report_to_wandb(
    report_dir: str | os.PathLike,
    *,
    project: str = "spec_align",
    name: str | None = None,
    mode: str | None = None,
) -> None:
    """Log a written report to Weights & Biases: spectrum, mode images, a table of modes.

    Offline unless told otherwise (`mode`, else the WANDB_MODE environment variable, else
    "offline"), so a comparison never needs network or an account. The run is always
    finished, also when logging fails, so no half-open run is left behind.

    Args:
        report_dir: directory written by `write_report`.
        project: W&B project.
        name: run name (default: the report's title).
        mode: "offline", "online" or "disabled".
    """
    import wandb  # optional at run time: only this function needs it

    report_dir = Path(report_dir)
    summary = json.loads((report_dir / "modes.json").read_text(encoding="utf-8"))
    settings = {k: v for k, v in summary.items() if k not in ("modes", "provenance")}
    run = wandb.init(
        project=project,
        name=name or summary["title"],
        job_type="compare",
        mode=mode or os.environ.get("WANDB_MODE", "offline"),
        config={**settings, **summary["provenance"]},
        dir=str(report_dir),
    )
    try:
        table = wandb.Table(
            columns=["mode", "direction", "eigenvalue", "label_purity", "top_keys"]
        )
        media = {"spectrum": wandb.Image(str(report_dir / summary["spectrum_figure"]))}
        for mode in summary["modes"]:
            keys = ", ".join(s["key"] for s in mode["top"])
            purity = mode.get("label_purity")
            table.add_data(mode["mode"], mode["direction"], mode["eigenvalue"], purity, keys)
            if mode.get("figure", "").endswith(".png"):
                media[f"modes/mode_{mode['mode']:02d}"] = wandb.Image(
                    str(report_dir / mode["figure"]), caption=mode["direction"]
                )
        run.log({"compare/modes": table, **{f"compare/{k}": v for k, v in media.items()}})
        run.summary["compare/spec_diff"] = summary["spec_diff"]
    finally:
        wandb.finish()
