"""Pictures of differential clusters: sample grids, spectra, 2-D maps and tracked-mode curves.

Pure functions from arrays to RGB uint8 arrays (H, W, 3), drawn with matplotlib's
object-oriented API on an Agg canvas: no pyplot global state, no display needed, safe to call
from a training process. `save_png` writes them; W&B takes the arrays directly.
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
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "DIRECTION_COLOURS",
    "embedding_maps",
    "mode_grid",
    "project_2d",
    "save_png",
    "spectrum_plot",
    "thumbnail_strip",
    "tracks_plot",
]

# Positive modes (first embedding forms the cluster) and negative modes, in every picture.
DIRECTION_COLOURS = ("tab:blue", "tab:orange")
_MODE_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:cyan", "tab:olive")
_NEGATIVE_COLOURS = ("tab:orange", "tab:red", "tab:brown", "tab:pink", "gold")
_NONE_COLOUR = "#c8c8c8"
# Sample grids (pixels): least thumbnail side, padding, caption font size and line height.
_CELL, _PAD, _FONT_SIZE, _LINE = 112, 8, 11, 13


def _to_array(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write an (H, W, 3) uint8 array as a PNG."""
    Image.fromarray(image).save(path, format="PNG")


def mode_grid(
    thumbnails: np.ndarray, captions: Sequence[str], title: str, columns: int = 4
) -> np.ndarray:
    """The top samples of one mode as a captioned grid, best first (row-major).

    Drawn with PIL rather than matplotlib: one grid per mode per evaluation adds up, and
    pasting pixels is a hundred times faster than a subplot per sample.

    Shapes:
        thumbnails: (m, h, w, 3) uint8 -> (H, W, 3) uint8
    """
    count, height, width = thumbnails.shape[:3]
    columns = max(1, min(columns, count))
    rows = max(1, -(-count // columns))
    # Integer nearest-neighbour upscaling: small thumbnails stay sharp (textures visible).
    scale = max(1, -(-_CELL // max(height, width)))
    cell_w, cell_h = width * scale, height * scale
    caption_h = 3 * _LINE + 4
    text_font, title_font = _font(_FONT_SIZE), _font(_FONT_SIZE + 2)
    title_lines = title.count("\n") + 1
    header = title_lines * (_LINE + 3) + 2 * _PAD
    canvas = Image.new(
        "RGB",
        (columns * (cell_w + _PAD) + _PAD, header + rows * (cell_h + caption_h + _PAD)),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    draw.multiline_text(
        (canvas.width // 2, _PAD),
        title,
        fill="black",
        font=title_font,
        anchor="ma",
        align="center",
    )
    chars = max(8, int(cell_w / (0.58 * _FONT_SIZE)))
    for i in range(count):
        x = _PAD + (i % columns) * (cell_w + _PAD)
        y = header + (i // columns) * (cell_h + caption_h + _PAD)
        thumb = Image.fromarray(thumbnails[i]).resize((cell_w, cell_h), Image.Resampling.NEAREST)
        canvas.paste(thumb, (x, y))
        text = textwrap.fill(captions[i], chars, max_lines=3, placeholder="...")
        draw.multiline_text(
            (x + cell_w // 2, y + cell_h + 2),
            text,
            fill="black",
            font=text_font,
            anchor="ma",
            align="center",
            spacing=1,
        )
    return np.asarray(canvas)


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
    """
    values = np.asarray(eigenvalues, dtype=np.float64)
    points = min(points, len(values))
    top = np.clip(values[:points], 0.0, None)
    bottom = np.clip(values[::-1][:points], None, 0.0)
    ranks = np.arange(1, points + 1)
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
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
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


def _mode_colours(directions: Sequence[int]) -> list[str]:
    """A distinct colour per mode: blues/greens for direction 0, oranges/reds for 1."""
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
