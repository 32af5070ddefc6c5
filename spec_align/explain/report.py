"""A SPEC comparison as a directory a person can open: overview, maps, JSON, grids, index.html.

Layout of `out_dir`:

    index.html        everything below on one page: a contents list, a sortable overview
                      table of the modes, the maps, the spectrum, the settings and one card
                      per mode; relative links only, inline CSS and JS (the sorting), no
                      network, so it opens straight from disk
    spectrum.png      mode eigenvalues of both signs, and the whole spectrum
    maps.png          2-D layouts of the samples in each embedding, coloured by mode (when
                      the embeddings are given)
    modes.json        settings, stability and noise floor, and per mode direction,
                      eigenvalue, share, dominant attribute, label purity, top samples
    modes/mode_XX.png image grid of the mode's top samples (when images are available)
    modes/mode_XX.txt the top samples' texts, one per line (text data without images)

A mode's *members* are the samples scoring at least half its top score
(`spec_align.explain.stability.mode_members`): its share of the samples, its label purity
and its dominant attribute are over them. When `result.stability` is set
(`mode_stability`), the overview and the cards say how often each mode reappears on
half-samples, give its eigenvalue interval, and mark the modes whose eigenvalue is not above
the noise floor.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from spec_align.explain.figures import (
    DIRECTION_COLOURS,
    embedding_maps,
    image_grid,
    mode_membership,
    project_2d,
    save_png,
    spectrum_plot,
)
from spec_align.explain.modes import (
    attribute_counts,
    class_name,
    describe_attribute,
    enriched_attribute,
    label_purity,
    labelled_share,
    mode_records,
)
from spec_align.explain.stability import mode_members
from spec_align.spectrum import SpecResult

__all__ = ["REPORT_VERSION", "log_report_to_wandb", "write_report"]

REPORT_VERSION = 2

_GRID_COLUMNS = 8  # tiles per row of a mode's image grid
_MAP_MODES = 5  # modes of each sign coloured in the maps (one palette of five per sign)
_MAP_POINTS = 4000  # samples drawn in the maps (a seeded subsample beyond: readable, fast)


def write_report(
    result: SpecResult,
    out_dir: str | os.PathLike,
    *,
    samples_per_mode: int = 16,
    keys: Sequence[str] | None = None,
    labels: Sequence | None = None,
    class_names: Sequence[str] | None = None,
    texts: Sequence[str] | None = None,
    attributes: Sequence[dict | None] | None = None,
    image_paths: Sequence[str] | None = None,
    load_image: Callable[[int], Image.Image | None] | None = None,
    embeddings: tuple[np.ndarray, np.ndarray] | None = None,
    map_method: str = "pca",
    title: str | None = None,
    provenance: dict | None = None,
) -> Path:
    """Write the report of `result` into `out_dir` (created; existing report files replaced).

    Per-sample inputs are indexed by the rows of `result.scores`; per mode only the top
    samples are loaded (images) and only its members read (labels, attributes), so lazy
    sequences (memory maps, shard lookups) are fine.

    Args:
        result: the comparison (with `result.stability` when stability was computed).
        out_dir: output directory.
        samples_per_mode: top samples listed and shown per mode.
        keys: sample identifiers (default: the row index).
        labels: class labels (ints or strings; -1/None = unknown), for label purity.
        class_names: display names of integer labels.
        texts: sample texts (captions, documents): in the cards, and listed per mode when
            there are no images.
        attributes: per-sample metadata dicts (None: none): its str/bool fields, and the
            label, compete for each mode's dominant attribute; shown in the cards.
        image_paths: sample image files, recorded in modes.json and loaded for the grids.
        load_image: row index -> PIL image, for images that are not files (e.g. in shards);
            takes precedence over `image_paths` for the grids.
        embeddings: (x, y), the compared embeddings, for the 2-D maps (none without).
        map_method: "pca" or "tsne", the maps' layout (`project_2d`).
        title: page title (default "SPEC: <x> vs <y>").
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
    samples = _Samples(keys, labels, class_names, texts, attributes, image_paths)
    rows = _SampleAttributes(labels, class_names, attributes)
    counts = attribute_counts(rows) if rows.available else None

    modes = []
    for record in mode_records(result, samples_per_mode):
        j = record["mode"]
        members = mode_members(result.scores[:, j])
        mode = _mode_entry(result, record, members, samples, rows, counts)
        if load_image is not None:
            mode["figure"] = f"modes/mode_{j:02d}.png"
            _save_grid(
                [load_image(i) for i in record["top_samples"]], mode["top"], out / mode["figure"]
            )
        elif texts is not None:
            mode["figure"] = f"modes/mode_{j:02d}.txt"
            lines = (str(s["text"]).replace("\n", " ") for s in mode["top"])
            (out / mode["figure"]).write_text("\n".join(lines) + "\n", encoding="utf-8")
        if mode["contrast"]:
            # The other pole of a contrast mode is a cluster too: show it alongside.
            low = result.top_samples(j, samples_per_mode, largest=False).tolist()
            mode["bottom"] = samples.describe(result, j, low)
            if load_image is not None:
                mode["figure_bottom"] = f"modes/mode_{j:02d}_low.png"
                _save_grid(
                    [load_image(i) for i in low], mode["bottom"], out / mode["figure_bottom"]
                )
        modes.append(mode)

    stability = result.stability
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
        "stability": None if stability is None else stability.to_dict(),
        "spectrum_figure": "spectrum.png",
        "maps_figure": None,
        "modes": modes,
    }
    save_png(_spectrum_figure(result), out / "spectrum.png")
    if embeddings is not None:
        summary["maps_figure"] = "maps.png"
        save_png(_maps_figure(result, modes, embeddings, map_method), out / "maps.png")
    (out / "modes.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    index = out / "index.html"
    index.write_text(_html(summary), encoding="utf-8")
    return index


class _SampleAttributes(Sequence):
    """Row i -> the sample's categorical description: its attributes and its label (by
    display name), so the label competes with the attributes for the dominant one."""

    def __init__(
        self,
        labels: Sequence | None,
        class_names: Sequence[str] | None,
        attributes: Sequence[dict | None] | None,
    ) -> None:
        self.labels, self.class_names, self.attributes = labels, class_names, attributes
        self.available = labels is not None or attributes is not None
        self.length = len(labels if labels is not None else attributes or [])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        row = {}
        if self.attributes is not None and isinstance(self.attributes[i], dict):
            row.update(self.attributes[i])
        if self.labels is not None and self.labels[i] not in (None, -1, ""):
            label = self.labels[i]
            row["label"] = class_name(label, self.class_names) or str(label)
        return row


class _Samples:
    """The per-sample inputs of a report, and the JSON record of a listed sample."""

    def __init__(self, keys, labels, class_names, texts, attributes, image_paths) -> None:
        self.keys, self.labels, self.class_names = keys, labels, class_names
        self.texts, self.attributes, self.image_paths = texts, attributes, image_paths

    def describe(self, result: SpecResult, j: int, rows: list[int]) -> list[dict]:
        top = []
        for rank, i in enumerate(rows):
            key = str(self.keys[i]) if self.keys is not None else str(i)
            sample = {"rank": rank, "index": i, "key": key, "score": float(result.scores[i, j])}
            if self.labels is not None:
                label = self.labels[i]
                sample["label"] = label
                name = class_name(label, self.class_names)
                if name is not None:
                    sample["label_name"] = name
            if self.texts is not None:
                sample["text"] = self.texts[i]
            if self.attributes is not None and isinstance(self.attributes[i], dict):
                sample["attributes"] = self.attributes[i]
            if self.image_paths is not None:
                sample["path"] = str(self.image_paths[i])
            top.append(sample)
        return top


def _mode_entry(
    result: SpecResult,
    record: dict,
    members: np.ndarray,
    samples: _Samples,
    rows: _SampleAttributes,
    counts: dict | None,
) -> dict:
    j = record["mode"]
    column = result.scores[:, j]
    entry = {
        "mode": j,
        "direction": record["direction"],
        "sign": record["sign"],
        "rank": record["rank"],
        "formed_by": record["formed_by"],
        "missed_by": record["missed_by"],
        "eigenvalue": record["eigenvalue"],
        "members": len(members),
        "share": len(members) / result.num_samples,
        # A contrast mode (one group up, another down) has a second pole of large negative
        # scores; its top samples alone would hide half of the difference.
        "contrast": bool(float(column.min()) < -0.5 * float(column.max())),
        "top": samples.describe(result, j, record["top_samples"]),
    }
    if samples.labels is not None:
        member_labels = [samples.labels[i] for i in members]
        majority, purity = label_purity(member_labels)
        entry["majority_label"] = majority
        name = class_name(majority, samples.class_names)
        if name is not None:
            entry["majority_label_name"] = name
        entry["label_purity"] = purity
        entry["labelled"] = labelled_share(member_labels)
    if counts is not None:
        entry["attribute"] = enriched_attribute(members.tolist(), rows, counts)
        entry["description"] = describe_attribute(entry["attribute"])
    stability = result.stability
    if stability is not None:
        entry["stability"] = {
            "reappearance": stability.reappearance[j],
            "overlap": stability.overlap[j],
            "eigenvalue_low": stability.eigenvalue_low[j],
            "eigenvalue_high": stability.eigenvalue_high[j],
            "stable": stability.is_stable(j),
            "above_noise_floor": stability.above_noise_floor(record["eigenvalue"]),
        }
    return entry


def _caption(sample: dict) -> str:
    lines = [f"{sample['rank'] + 1}. {sample['key']}"]
    label = sample.get("label_name", sample.get("label"))
    if label not in (None, -1, ""):
        lines.append(str(label))
    if sample.get("text"):
        lines.append(str(sample["text"]).replace("\n", " "))
    return "\n".join(lines)


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


def _maps_figure(
    result: SpecResult,
    modes: list[dict],
    embeddings: tuple[np.ndarray, np.ndarray],
    method: str,
) -> np.ndarray:
    """Both embeddings' 2-D layouts coloured by the strongest modes of each sign."""
    n = result.num_samples
    for name, z in zip(result.names, embeddings, strict=True):
        if z.shape[0] != n:
            raise ValueError(
                f"the {name} embedding for the maps has {z.shape[0]} rows, the result {n}"
            )
    shown = [m for m in modes if m["rank"] < _MAP_MODES]
    members = [mode_members(result.scores[:, m["mode"]]) for m in shown]
    membership = mode_membership(members, [m["eigenvalue"] for m in shown], n)
    rows = np.arange(n)
    if n > _MAP_POINTS:
        rows = np.sort(np.random.default_rng(0).choice(n, _MAP_POINTS, replace=False))
    layouts = [project_2d(np.asarray(z[rows], dtype=np.float64), method) for z in embeddings]
    return embedding_maps(
        layouts,
        [f"{name} ({method.upper()})" for name in result.names],
        membership[rows],
        [f"mode {m['mode']} ({m['direction']})" for m in shown],
        [int(m["sign"] == "negative") for m in shown],
        "samples in each embedding, coloured by the mode they belong to "
        f"(members: score >= half the mode's top; {len(rows)} of {n} samples drawn)",
    )


def _number(value: object) -> str:
    """A setting for display: floats to 4 significant digits, None as "none"."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


_POSITIVE, _NEGATIVE = DIRECTION_COLOURS  # the figures' colours of the two signs
_CSS = f"""
body{{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1100px;
color:#222;padding:0 1em}}
h1{{font-size:1.5em}}h2{{margin-top:1.6em;border-bottom:1px solid #ccc}}
nav.contents{{background:#f6f6f6;border-radius:6px;padding:.4em 1em;font-size:.92em}}
nav.contents a{{margin-right:1em}}
table.settings td{{padding:1px 10px 1px 0}}table.settings td:first-child{{color:#666}}
table.overview{{border-collapse:collapse;font-size:.9em;width:100%}}
table.overview th{{cursor:pointer;text-align:left;border-bottom:2px solid #999;padding:3px 6px;
user-select:none}}
table.overview th[aria-sort=ascending]::after{{content:" \\25B2"}}
table.overview th[aria-sort=descending]::after{{content:" \\25BC"}}
table.overview td{{border-bottom:1px solid #eee;padding:3px 6px}}
table.overview td:nth-child(-n+4){{white-space:nowrap}}
tr.positive td:first-child a{{color:{_POSITIVE}}}tr.negative td:first-child a{{color:{_NEGATIVE}}}
tr.below-floor,.mode.below-floor{{opacity:.55}}
.badge{{display:inline-block;font-size:.78em;border-radius:3px;padding:0 5px;margin-left:.4em;
background:#eee;color:#555;border:1px solid #ccc;vertical-align:middle}}
.badge.floor{{background:#fff3cd;border-color:#e0c060;color:#7a5b00}}
.badge.stable{{background:#e3f4e3;border-color:#8c8;color:#245a24}}
.mode{{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}}
.mode h3{{margin:.2em 0 .4em}}.positive h3{{color:{_POSITIVE}}}.negative h3{{color:{_NEGATIVE}}}
.meta{{color:#555;font-size:.92em}}.describe{{font-size:1.02em;margin:.2em 0}}
img{{max-width:100%;height:auto}}
table.samples{{border-collapse:collapse;font-size:.88em}}
table.samples td,table.samples th{{border-bottom:1px solid #eee;padding:2px 8px;text-align:left}}
ol.texts li{{margin:.15em 0}}
"""

# Click a header to sort by it (again: reverse); the overview starts sorted by |eigenvalue|.
# Cells sort by their data-value (numbers) or text. Inline: the page needs no network.
_SORT_JS = """
(function () {
  function value(row, column) {
    var cell = row.cells[column];
    var raw = cell.getAttribute("data-value");
    if (raw === null) { raw = cell.textContent; }
    var number = parseFloat(raw);
    return isNaN(number) ? raw.toLowerCase() : number;
  }
  function sortBy(table, column, descending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var p = value(a, column), q = value(b, column);
      var order = (typeof p === "number" && typeof q === "number") ? p - q
        : String(p).localeCompare(String(q));
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      if (i === column) {
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      } else {
        th.removeAttribute("aria-sort");
      }
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
      th.addEventListener("click", function () {
        sortBy(table, column, th.getAttribute("aria-sort") !== "descending");
      });
    });
    var initial = table.getAttribute("data-initial-sort");
    if (initial !== null) { sortBy(table, parseInt(initial, 10), true); }
  });
  document.body.setAttribute("data-sorting", "ready");
})();
"""


def _html(summary: dict) -> str:
    esc = html.escape
    name_x, name_y = summary["names"]
    stability = summary["stability"]
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
        "SPEC-diff": summary["spec_diff"],
        **summary["provenance"],
    }
    if stability is not None:
        floor = stability["noise_floor"]
        settings["noise floor"] = (
            f"+{floor[0]:.4g} ({name_x} - {name_y}) / -{floor[1]:.4g} ({name_y} - {name_x})"
        )
        settings["stability"] = (
            f"{stability['resamples']} resamples of {stability['fraction']:.0%} of "
            f"{stability['sample_size']} samples; {stability['null_draws']} random pairs"
        )
    rows = "".join(
        f"<tr><td>{esc(str(k))}</td><td>{esc(_number(v))}</td></tr>" for k, v in settings.items()
    )
    sections = [("positive", name_x, name_y), ("negative", name_y, name_x)]
    contents = [
        ("overview", "Overview"),
        *([("maps", "Maps")] if summary["maps_figure"] else []),
        ("spectrum", "Spectrum"),
        ("settings", "Settings"),
        *(
            (f"modes-{sign}", f"{formed} \u2212 {missed} modes")
            for sign, formed, missed in sections
        ),
        ("reading", "How to read it"),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(summary['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(summary['title'])}</h1>",
        '<nav class="contents">Contents: '
        + "".join(f'<a href="#{anchor}">{esc(text)}</a>' for anchor, text in contents)
        + "</nav>",
        '<p class="meta">Positive eigenvalues are sample clusters that '
        f"<b>{esc(name_x)}</b> groups together and <b>{esc(name_y)}</b> does not; negative "
        "ones the reverse. Each eigenvalue is about the difference of the cluster's weight "
        'in the two kernels. Data: <a href="modes.json">modes.json</a>.</p>',
        '<h2 id="overview">Overview</h2>',
        _overview_html(summary),
    ]
    if summary["maps_figure"]:
        parts += [
            '<h2 id="maps">Maps</h2>',
            f'<p><img src="{esc(summary["maps_figure"])}" alt="2-D maps of both embeddings '
            'coloured by mode"></p>',
        ]
    parts += [
        '<h2 id="spectrum">Spectrum</h2>',
        f'<p><img src="{esc(summary["spectrum_figure"])}" alt="spectrum"></p>',
        '<h2 id="settings">Settings</h2>',
        f'<table class="settings">{rows}</table>',
    ]
    for sign, formed, missed in sections:
        modes = [m for m in summary["modes"] if m["sign"] == sign]
        parts.append(
            f'<h2 id="modes-{sign}">{esc(formed)} &minus; {esc(missed)}: clusters '
            f"{esc(formed)} forms and {esc(missed)} does not ({len(modes)} modes)</h2>"
        )
        if not modes:
            parts.append('<p class="meta">No eigenvalue of this sign beyond rounding.</p>')
        parts.extend(_mode_html(mode, stability) for mode in modes)
    parts += [
        '<h2 id="reading">How to read it</h2>',
        _reading_html(summary),
        f"<script>{_SORT_JS}</script>",
        "</body></html>\n",
    ]
    return "\n".join(parts)


def _overview_html(summary: dict) -> str:
    esc = html.escape
    labelled = any("label_purity" in m for m in summary["modes"])
    described = any("attribute" in m for m in summary["modes"])
    stability = summary["stability"] is not None
    head = ["mode", "direction", "eigenvalue", "share of samples"]
    head += ["dominant (share vs base rate)"] if described else []
    head += ["label purity"] if labelled else []
    head += ["reappears", "eigenvalue interval"] if stability else []
    cells_of_rows = []
    for mode in summary["modes"]:
        cells = [
            (mode["mode"], f'<a href="#mode-{mode["mode"]}">mode {mode["mode"]}</a>'),
            (None, esc(mode["direction"])),
            (abs(mode["eigenvalue"]), f"{mode['eigenvalue']:+.4g}" + _badges(mode)),
            (mode["share"], f"{mode['share']:.1%} ({mode['members']})"),
        ]
        if described:
            attribute = mode.get("attribute")
            if attribute is None:
                cells.append((-1, ""))
            else:
                text = (
                    f"{attribute['field']}={attribute['value']} "
                    f"({attribute['share']:.0%} vs {attribute['base_rate']:.0%})"
                )
                cells.append((attribute["enrichment"], esc(text)))
        if labelled:
            purity = mode.get("label_purity")
            label = mode.get("majority_label_name", mode.get("majority_label"))
            text = "" if purity is None else f"{purity:.0%} {label}"
            cells.append((-1 if purity is None else purity, esc(text)))
        if stability:
            entry = mode["stability"]
            cells.append((entry["reappearance"], f"{entry['reappearance']:.0%}"))
            low, high = entry["eigenvalue_low"], entry["eigenvalue_high"]
            interval = "" if low is None else f"{low:+.4g} to {high:+.4g}"
            cells.append((None if low is None else abs(low + high) / 2, interval))
        classes = mode["sign"] + (
            " below-floor" if stability and not mode["stability"]["above_noise_floor"] else ""
        )
        body = "".join(
            f"<td{'' if value is None else f' data-value={chr(34)}{value:.10g}{chr(34)}'}>"
            f"{text}</td>"
            for value, text in cells
        )
        cells_of_rows.append(f'<tr class="{classes}">{body}</tr>')
    header = "".join(f"<th>{esc(h)}</th>" for h in head)
    return (
        '<table class="overview sortable" id="overview-table" data-initial-sort="2">'
        f"<thead><tr>{header}</tr></thead><tbody>{''.join(cells_of_rows)}</tbody></table>"
        '<p class="meta">Click a column to sort (again to reverse); sorted by |eigenvalue| '
        "first.</p>"
    )


def _badges(mode: dict) -> str:
    entry = mode.get("stability")
    if entry is None:
        return ""
    badges = ""
    if not entry["above_noise_floor"]:
        badges += '<span class="badge floor">below noise floor</span>'
    elif entry["stable"]:
        badges += '<span class="badge stable">stable</span>'
    return badges


def _mode_html(mode: dict, stability: dict | None) -> str:
    esc = html.escape
    meta = [
        f"eigenvalue {mode['eigenvalue']:+.5g}",
        f"{mode['share']:.1%} of the samples ({mode['members']} members)",
    ]
    if mode.get("label_purity") is not None:
        label = mode.get("majority_label_name", mode["majority_label"])
        meta.append(f"label purity {mode['label_purity']:.0%} (majority: {esc(str(label))})")
    entry = mode.get("stability")
    notes = []
    if entry is not None:
        text = f"reappears in {entry['reappearance']:.0%} of {stability['resamples']} half-samples"
        if entry["eigenvalue_low"] is not None:
            text += (
                f", eigenvalue {entry['eigenvalue_low']:+.4g} to {entry['eigenvalue_high']:+.4g}"
            )
        meta.append(text)
        if not entry["above_noise_floor"]:
            floor = stability["noise_floor"][mode["sign"] == "negative"]
            notes.append(
                f"Below the noise floor: |eigenvalue| {abs(mode['eigenvalue']):.4g} is not above "
                f"{floor:.4g}, the top eigenvalue two unrelated random embeddings of this shape "
                "give. Read it as noise unless it reappears and its samples say otherwise."
            )
    floor_class = " below-floor" if entry is not None and not entry["above_noise_floor"] else ""
    parts = [
        f'<div class="mode {mode["sign"]}{floor_class}" id="mode-{mode["mode"]}">',
        f"<h3>Mode {mode['mode']} <small>({esc(mode['direction'])})</small>{_badges(mode)}</h3>",
    ]
    if mode.get("description"):
        parts.append(
            f'<div class="describe">{esc(mode["formed_by"])} groups samples with '
            f"{esc(mode['description'])}; {esc(mode['missed_by'])} does not.</div>"
        )
    parts.append(f'<div class="meta">{" · ".join(meta)}</div>')
    parts += [f'<div class="meta"><b>{esc(note)}</b></div>' for note in notes]
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
        c
        for c in ("label", "label_name", "text", "attributes", "path")
        if any(c in s for s in mode["top"])
    ]
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(_sample_cell(s, c))}</td>" for c in columns) + "</tr>"
        for s in mode["top"]
    )
    parts.append(
        f"<details open><summary>top samples</summary><table class='samples'><tr>{head}</tr>"
        f"{body}</table></details></div>"
    )
    return "\n".join(parts)


def _sample_cell(sample: dict, column: str) -> str:
    value = sample.get(column, "")
    if column == "score":
        return f"{value:.4g}"
    if column == "rank":
        return str(value + 1)  # as in the grids' captions
    if column == "attributes":
        return ", ".join(f"{k}={_number(v)}" for k, v in value.items())
    return str(value)


def _floor_statistic(stability: dict) -> str:
    quantile = stability["null_quantile"]
    return "the largest" if quantile == 1 else f"the {quantile:.0%} quantile"


def _reading_html(summary: dict) -> str:
    parts = [
        "<p>A mode's <b>members</b> are the samples scoring at least half its top score; "
        "<b>share</b> is their part of all samples, <b>label purity</b> the share of its "
        "labelled members with the majority label, and the <b>dominant</b> attribute the "
        "value (label or metadata) most over-represented among them relative to its base "
        "rate (enrichment (share - base) / (1 - base)).</p>"
    ]
    stability = summary["stability"]
    if stability is None:
        parts.append(
            "<p>No stability analysis was run (it tells which modes reappear on other "
            "samples and where the noise floor is).</p>"
        )
    else:
        parts.append(
            f"<p><b>Stability</b>: SPEC was recomputed on {stability['resamples']} random "
            f"halves of {stability['sample_size']} samples with the same kernel; a mode "
            f"<b>reappears</b> when a mode of the half has a Jaccard overlap of members of at "
            f"least {stability['match_threshold']:g} with it (matched one to one within each "
            "sign). The interval is the central 95% of the matched eigenvalues. "
            f"<b>Stable</b>: reappears in at least {stability['stable_reappearance']:.0%}.</p>"
            f"<p><b>Noise floor</b>: {_floor_statistic(stability)} of the top eigenvalue at "
            f"each end over {stability['null_draws']} SPEC runs on pairs of unrelated random "
            "embeddings (independent isotropic Gaussians with the dimensions, means and total "
            "variances of the two, same n and kernel, bandwidths at the same multiple of the "
            "median distance). Such pairs differ too "
            "(the samples whose norm is smaller in one than in the other), so a mode whose "
            "eigenvalue is not above the floor is no larger than what random embeddings "
            "differ by, even if it reappears.</p>"
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
            columns=[
                "mode",
                "direction",
                "eigenvalue",
                "share",
                "dominant",
                "label_purity",
                "reappearance",
                "above_noise_floor",
                "top_keys",
            ]
        )
        media = {"spectrum": wandb.Image(str(report_dir / summary["spectrum_figure"]))}
        if summary.get("maps_figure"):
            media["maps"] = wandb.Image(str(report_dir / summary["maps_figure"]))
        for mode in summary["modes"]:
            keys = ", ".join(s["key"] for s in mode["top"])
            stability = mode.get("stability") or {}
            table.add_data(
                mode["mode"],
                mode["direction"],
                mode["eigenvalue"],
                mode["share"],
                mode.get("description"),
                mode.get("label_purity"),
                stability.get("reappearance"),
                stability.get("above_noise_floor"),
                keys,
            )
            if mode.get("figure", "").endswith(".png"):
                media[f"modes/mode_{mode['mode']:02d}"] = wandb.Image(
                    str(report_dir / mode["figure"]), caption=mode["direction"]
                )
        run.log({"compare/modes": table, **{f"compare/{k}": v for k, v in media.items()}})
        run.summary["compare/spec_diff"] = summary["spec_diff"]
    finally:
        wandb.finish()
