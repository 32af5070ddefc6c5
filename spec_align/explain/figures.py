"""Pictures of SPEC modes: sample grids, spectra, 2-D maps and tracked-mode curves.

Shared by the report (`write_report`) and the training callback (`ClusterLogCallback`), so
both draw a mode the same way and in the same colours. Pure functions from arrays to RGB
uint8 arrays (H, W, 3), drawn with `matplotlib.figure.Figure` on an Agg canvas: no pyplot,
no backend selected, no global state changed for the importer (notebooks keep theirs), no
display needed. `save_png` writes them; W&B takes the arrays directly.
"""

from __future__ import annotations

import functools
import os
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont, ImageOps

__all__ = [
    "DIRECTION_COLOURS",
    "TILE",
    "embedding_maps",
    "image_grid",
    "mode_membership",
    "project_2d",
    "save_png",
    "spectrum_plot",
    "thumbnail_strip",
    "tracks_plot",
]

# Positive modes (the first embedding forms the cluster) and negative modes, in every picture
# and page (hex: the report's HTML uses them too); tab:blue and tab:red.
DIRECTION_COLOURS = ("#1f77b4", "#d62728")
_MODE_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:cyan", "tab:olive")
_NEGATIVE_COLOURS = ("tab:red", "tab:orange", "tab:brown", "tab:pink", "gold")
_NONE_COLOUR = "#c8c8c8"
# Sample grids (pixels): tile side (the image fits inside with a 2 px margin), title padding,
# caption font size, line height and most caption lines.
TILE, _PAD, _FONT_SIZE, _LINE, _CAPTION_LINES = 128, 8, 11, 13, 3


def _to_array(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write an (H, W, 3) uint8 array as a PNG."""
    Image.fromarray(image).save(path, format="PNG")


def image_grid(
    images: Sequence[Image.Image | np.ndarray | None],
    captions: Sequence[str],
    *,
    title: str | None = None,
    columns: int = 8,
) -> np.ndarray:
    """Samples as captioned square tiles, best first (row-major), under an optional title.

    Each image is fitted into its tile keeping its aspect ratio: enlarged with nearest
    neighbour (small images and textures stay crisp, not blurred), reduced with Lanczos. None
    is drawn as an empty "no image" tile (e.g. an unreadable file). Caption lines ("\n"
    separated) are wrapped to the tile, at most three lines in all. Drawn with PIL rather than
    matplotlib: one grid per mode per evaluation adds up, and pasting pixels is a hundred
    times faster than a subplot per sample.

    Shapes:
        images: PIL images or (h, w, 3) uint8 arrays of any sizes
            -> (H, min(columns, len(images)) * TILE, 3) uint8
    """
    count = len(images)
    columns = max(1, min(columns, count))
    rows = max(1, -(-count // columns))
    text_font, title_font = _font(_FONT_SIZE), _font(_FONT_SIZE + 2)
    chars = max(8, int(TILE / (0.58 * _FONT_SIZE)))
    texts = [_wrap(caption, chars) for caption in captions]
    caption_h = max((t.count("\n") + 1 for t in texts), default=1) * _LINE + 4
    header = 0 if title is None else (title.count("\n") + 1) * (_LINE + 3) + 2 * _PAD
    canvas = Image.new("RGB", (columns * TILE, header + rows * (TILE + caption_h)), "white")
    draw = ImageDraw.Draw(canvas)
    if title is not None:
        draw.multiline_text(
            (canvas.width // 2, _PAD),
            title,
            fill="black",
            font=title_font,
            anchor="ma",
            align="center",
        )
    for i, (image, text) in enumerate(zip(images, texts, strict=True)):
        left = (i % columns) * TILE
        top = header + (i // columns) * (TILE + caption_h)
        if image is None:
            draw.rectangle([left + 4, top + 4, left + TILE - 5, top + TILE - 5], outline="gray")
            draw.text(
                (left + TILE // 2, top + TILE // 2),
                "no image",
                fill="gray",
                font=text_font,
                anchor="mm",
            )
        else:
            tile = _fit(image, TILE - 4)
            canvas.paste(tile, (left + (TILE - tile.width) // 2, top + (TILE - tile.height) // 2))
        draw.multiline_text(
            (left + TILE // 2, top + TILE + 2),
            text,
            fill="black",
            font=text_font,
            anchor="ma",
            align="center",
            spacing=1,
        )
    return np.asarray(canvas)


def _fit(image: Image.Image | np.ndarray, side: int) -> Image.Image:
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image.convert("RGB")
    enlarge = max(image.size) < side
    method = Image.Resampling.NEAREST if enlarge else Image.Resampling.LANCZOS
    return ImageOps.contain(image, (side, side), method=method)


def _wrap(caption: str, chars: int) -> str:
    lines = [line for part in caption.split("\n") for line in textwrap.wrap(part, chars)]
    if len(lines) > _CAPTION_LINES:
        lines = lines[:_CAPTION_LINES]
        lines[-1] = lines[-1][: chars - 1] + "\u2026"
    return "\n".join(lines)


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    # matplotlib ships DejaVu Sans: the same font as the plots, on every machine.
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def thumbnail_strip(thumbnails: np.ndarray, gap: int = 2) -> np.ndarray:
    """Thumbnails side by side on white, for one table cell.

    Shapes:
        thumbnails: (m, h, w, 3) uint8 -> (h, m * (w + gap) - gap, 3) uint8
    """
    m, h, w, _ = thumbnails.shape
    strip = np.full((h, m * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, thumb in enumerate(thumbnails):
        strip[:, i * (w + gap) : i * (w + gap) + w] = thumb
    return strip


def spectrum_plot(
    eigenvalues: np.ndarray,
    num_positive: int,
    num_negative: int,
    *,
    labels: tuple[str, str],
    title: str,
    points: int = 30,
    nonzero_panel: bool = False,
) -> np.ndarray:
    """Both ends of a SPEC spectrum as bars by rank: positive up, negative down.

    Rank r shows the r-th largest eigenvalue (if positive) and the r-th most negative one (if
    negative); the modes SPEC kept are solid, the rest of each end faded.

    Args:
        eigenvalues: the spectrum, descending.
        num_positive: kept positive modes (the leading ranks of the positive end).
        num_negative: kept negative modes.
        labels: legend labels of the positive and negative end.
        title: figure title.
        points: ranks shown at each end.
        nonzero_panel: add a panel of the whole spectrum, in rank order, without its zeros
            (the null space, up to min(n, features) of them, would flatten it).
    """
    values = np.asarray(eigenvalues, dtype=np.float64)
    points = min(points, len(values))
    top = np.clip(values[:points], 0.0, None)
    bottom = np.clip(values[::-1][:points], None, 0.0)
    ranks = np.arange(1, points + 1)
    if nonzero_panel:
        fig = Figure(figsize=(11.0, 3.8), dpi=100)
        ax, ax_all = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    else:
        fig = Figure(figsize=(7.0, 3.4), dpi=100)
        ax = fig.add_subplot(1, 1, 1)
    for ends, kept, colour, label in (
        (top, num_positive, DIRECTION_COLOURS[0], labels[0]),
        (bottom, num_negative, DIRECTION_COLOURS[1], labels[1]),
    ):
        solid = ranks <= kept
        ax.bar(ranks[solid], ends[solid], color=colour, width=0.8, label=label)
        ax.bar(ranks[~solid], ends[~solid], color=colour, alpha=0.3, width=0.8)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("rank within each end of the spectrum (solid: kept modes)")
    ax.set_ylabel("eigenvalue")
    ax.set_xlim(0.3, points + 0.7)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    if nonzero_panel:
        tolerance = 1e-9 * max(float(np.abs(values).max(initial=0.0)), 1e-300)
        nonzero = values[np.abs(values) > tolerance]
        ax_all.plot(nonzero, ".-", color="gray", markersize=3, linewidth=0.8)
        ax_all.axhline(0.0, color="black", linewidth=0.8)
        ax_all.set_xlabel("rank (descending)")
        ax_all.set_title(f"nonzero spectrum ({len(nonzero)} eigenvalues)", fontsize=9)
        fig.suptitle(title, fontsize=10)
    else:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _to_array(fig)


def project_2d(embeddings: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """A 2-D layout of embeddings: PCA (linear, fast) or t-SNE (local neighbourhoods).

    Shapes:
        embeddings: (n, d) -> (n, 2)
    """
    z = np.asarray(embeddings, dtype=np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(z)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(z) - 1) / 3)
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(z)
    raise ValueError(f"unknown map method {method!r}; choose 'pca' or 'tsne'")


def mode_membership(
    members: Sequence[Sequence[int]], eigenvalues: Sequence[float], num_samples: int
) -> np.ndarray:
    """Which mode colours each sample in `embedding_maps`: (num_samples,), -1 for none.

    A sample in several modes' member lists keeps the strongest one (largest |eigenvalue|),
    so the big clusters are not painted over by small ones.
    """
    membership = np.full(num_samples, -1)
    for index in sorted(range(len(members)), key=lambda i: -abs(eigenvalues[i])):
        rows = np.asarray(members[index], dtype=np.int64)
        membership[rows[membership[rows] < 0]] = index
    return membership


def _mode_colours(directions: Sequence[int]) -> list[str]:
    """A distinct colour per mode: blues/greens for direction 0, reds/oranges for 1."""
    counters, colours = [0, 0], []
    for direction in directions:
        palette = _MODE_COLOURS if direction == 0 else _NEGATIVE_COLOURS
        colours.append(palette[counters[direction] % len(palette)])
        counters[direction] += 1
    return colours


def embedding_maps(
    layouts: Sequence[np.ndarray],
    panel_titles: Sequence[str],
    membership: np.ndarray,
    mode_labels: Sequence[str],
    mode_directions: Sequence[int],
    title: str,
) -> np.ndarray:
    """2-D layouts of the same samples side by side, coloured by mode membership.

    Args:
        layouts: one (n, 2) layout per embedding.
        panel_titles: one title per layout.
        membership: (n,) index into `mode_labels` of each sample's mode, -1 for none.
        mode_labels: legend label of each mode.
        mode_directions: 0 (positive) or 1 (negative) per mode, picks its colour family.
        title: figure title.
    """
    colours = _mode_colours(mode_directions)
    fig = Figure(figsize=(5.0 * len(layouts), 5.0), dpi=100)
    fig.suptitle(title, fontsize=10)
    for k, (layout, panel_title) in enumerate(zip(layouts, panel_titles, strict=True)):
        ax = fig.add_subplot(1, len(layouts), k + 1)
        rest = membership < 0
        ax.scatter(*layout[rest].T, s=5, c=_NONE_COLOUR, linewidths=0, label="no mode")
        # Members on top of the grey cloud, so small clusters stay visible.
        for mode, (label, colour) in enumerate(zip(mode_labels, colours, strict=True)):
            members = membership == mode
            ax.scatter(*layout[members].T, s=14, c=colour, linewidths=0, label=label)
        ax.set_title(panel_title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, legend = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, legend, loc="lower center", ncol=min(5, len(legend)), fontsize=7.5)
    rows = -(-len(legend) // 5)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.9, bottom=0.04 + 0.045 * rows, wspace=0.05)
    return _to_array(fig)


def tracks_plot(history: Sequence[Mapping], title: str) -> np.ndarray:
    """Eigenvalue of every tracked mode over training steps, one line per id.

    Args:
        history: per evaluation {"step": int, "tracked": {id: eigenvalue}} (ids may be str,
            as after a JSON round trip).
        title: figure title.
    """
    series: dict[int, list[tuple[int, float]]] = {}
    for entry in history:
        for mode_id, value in entry["tracked"].items():
            series.setdefault(int(mode_id), []).append((entry["step"], value))
    fig = Figure(figsize=(7.0, 3.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for mode_id, points in sorted(series.items()):
        steps, values = zip(*points, strict=True)
        colour = DIRECTION_COLOURS[0] if values[-1] > 0 else DIRECTION_COLOURS[1]
        ax.plot(steps, values, marker="o", markersize=3, color=colour, alpha=0.8)
        ax.annotate(
            str(mode_id),
            (steps[-1], values[-1]),
            fontsize=7,
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
        )
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("eigenvalue (label: tracked id)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _to_array(fig)
