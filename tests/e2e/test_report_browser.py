"""The comparison report in a real browser: headless Chromium renders it offline, runs its JS.

Chromium is the Debian package `chromium` (`make chromium` installs it; `.ci/run` does, so
CI never skips this). Outside CI, a machine without it skips with the command to install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spec_align import compare
from spec_align.explain import mode_stability, write_report
from tests.helpers import planted_differential


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; CI needs it: run `make chromium` as root")
        pytest.skip("chromium is not installed: `make chromium` (apt-get install chromium)")
    return path


def _headless(chromium: str, *args: str) -> subprocess.CompletedProcess:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


class _Dom(HTMLParser):
    """The rendered DOM's overview rows (eigenvalue sort keys), images and body attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict = {}
        self.images: list[str] = []
        self.rows: list[list[str | None]] = []
        self._in_overview = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table" and attrs.get("id") == "overview-table":
            self._in_overview = True
        elif tag == "tr" and self._in_overview and "class" in attrs:
            self.rows.append([])
        elif tag == "td" and self._in_overview and self.rows:
            self.rows[-1].append(attrs.get("data-value"))

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_overview = False


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    # y's own groups are the weaker ones here: as the first side, its (positive) modes are
    # smaller than the negative ones, so the file's order is not the sorted one.
    y, x, only_y, _ = planted_differential(n=160)
    result = compare(x, y, top_k=3, names=("enc", "ref"))
    result.stability = mode_stability(x, y, result, resamples=4)
    out = tmp_path_factory.mktemp("report")
    images = out.parent / "images"
    images.mkdir(exist_ok=True)
    paths = []
    for i, group in enumerate(only_y):
        paths.append(str(images / f"{i}.png"))
        Image.new("RGB", (24, 24), (200 * int(group), 90, 40)).save(paths[-1])
    write_report(
        result,
        out,
        samples_per_mode=8,
        image_paths=paths,
        attributes=[{"group": str(g)} for g in only_y],
        embeddings=(x, y),
    )
    return out / "index.html"


def test_overview_table_is_sorted_by_its_script_and_images_are_in_the_page(chromium, report):
    dom = _headless(chromium, "--virtual-time-budget=5000", "--dump-dom", report.as_uri())
    page = _Dom()
    page.feed(dom.stdout)
    assert page.body.get("data-sorting") == "ready", "the report's script did not run"
    # The page lists modes positive first; the script sorts them by |eigenvalue|, largest
    # first (column 2's sort key), so the rendered order is the sorted one.
    keys = [float(row[2]) for row in page.rows]
    assert len(keys) == 6 and keys == sorted(keys, reverse=True)
    source_order = [float(row[2]) for row in _source_rows(report)]
    assert source_order != keys  # the script, not the file, put them in this order
    assert {"spectrum.png", "maps.png"} <= set(page.images)
    assert sum(src.startswith("modes/") for src in page.images) >= 6
    for src in page.images:
        assert (report.parent / src).is_file()


def test_screenshot_shows_the_page(chromium, report, tmp_path):
    shot = tmp_path / "report.png"
    _headless(chromium, f"--screenshot={shot}", "--window-size=1200,900", report.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (900, 1200)
    # Not a blank page: text, the table's lines and colours cover part of it.
    assert (pixels.min(axis=2) < 200).mean() > 0.01


def _source_rows(report: Path) -> list[list[str | None]]:
    page = _Dom()
    page.feed(report.read_text())
    return page.rows
