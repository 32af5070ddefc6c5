"""The pictures shared by the report and the cluster callback: RGB arrays, no pyplot."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from spec_align.explain.figures import (
    TILE,
    embedding_maps,
    image_grid,
    project_2d,
    spectrum_plot,
    thumbnail_strip,
    tracks_plot,
)


def test_pictures_are_rgb_arrays():
    rng = np.random.default_rng(0)
    thumbs = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    captions = [f"caption {i}" for i in range(6)]
    grid = image_grid(thumbs, captions, title="title\nsecond line", columns=4)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[1] == 4 * TILE
    assert thumbnail_strip(thumbs[:3]).shape == (16, 3 * 16 + 4, 3)
    values = np.sort(rng.normal(size=40))[::-1]
    assert spectrum_plot(values, 3, 2, labels=("a", "b"), title="t").shape[2] == 3
    both = spectrum_plot(values, 3, 2, labels=("a", "b"), title="t", nonzero_panel=True)
    assert both.shape[2] == 3
    layout = project_2d(rng.normal(size=(50, 5)), "pca")
    assert layout.shape == (50, 2)
    membership = np.where(np.arange(50) < 10, 0, np.where(np.arange(50) < 20, 1, -1))
    image = embedding_maps([layout, layout], ["x", "y"], membership, ["m0", "m1"], [0, 1], "t")
    assert image.shape[1] > image.shape[0]  # side by side
    history = [{"step": 0, "tracked": {0: 0.1, 1: -0.2}}, {"step": 5, "tracked": {"0": 0.05}}]
    assert tracks_plot(history, "t").ndim == 3
    with pytest.raises(ValueError, match="map method"):
        project_2d(layout, "umap")


def test_image_grid_takes_pil_images_of_any_size_and_gaps():
    images = [Image.new("RGB", (300, 200), "red"), None, Image.new("L", (16, 16), 128)]
    grid = image_grid(images, ["1. a\nlabel", "2. b", "3. " + "long caption " * 10])
    assert grid.shape[1] == 3 * TILE
    # The small image is enlarged to the tile (nearest: flat grey stays flat grey).
    third = grid[2 : TILE - 2, 2 * TILE + 2 : 3 * TILE - 2]
    assert (third == 128).all()


def test_importing_the_figures_selects_no_backend():
    code = (
        "import sys, matplotlib, spec_align.explain; "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'; "
        # Lightning imports pyplot itself; the callback still selects no backend.
        "import spec_align.callbacks; "
        "assert matplotlib.rcParams._get_backend_or_none() is None, 'backend selected'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "MPLBACKEND": ""})
