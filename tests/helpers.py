"""Shared test data and checks: config paths, clustered embedding pairs, the report checker."""

import json
import re
import socket
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import torch

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# A synthetic set small enough for seconds-long runs: 8 train and 4 val shards of 32 samples.
SMALL_SYNTHETIC = "{num_train: 256, num_val: 128, samples_per_shard: 32}"


def clustered_pair(n=80, d_x=6, d_y=5, seed=0, groups=4):
    """Two float64 embeddings of n samples drawn around `groups` random centres each."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, groups, (n,), generator=generator)
    x = torch.randn(groups, d_x, generator=generator)[labels] * 2
    x = x + torch.randn(n, d_x, generator=generator)
    y = torch.randn(groups, d_y, generator=generator)[labels] * 2
    y = y + torch.randn(n, d_y, generator=generator)
    return x.double(), y.double()


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.anchors, self.ids, self.scripts = [], [], [], set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a":
            href = attrs["href"]
            (self.anchors if href.startswith("#") else self.links).append(href)
        elif tag == "script":
            self.scripts.append(attrs)


def planted_groups(n=120, seed=0):
    """A separates groups 0, 1, 2; B merges 0 and 1."""
    rng = np.random.default_rng(seed)
    groups = np.arange(n) % 3
    centers_a = rng.normal(size=(3, 6)) * 4
    centers_b = centers_a.copy()
    centers_b[1] = centers_b[0]
    a = centers_a[groups] + rng.normal(size=(n, 6))
    b = centers_b[groups] + rng.normal(size=(n, 6))
    return a, b, groups


def planted_differential(n=240, seed=0):
    """x and y form 3 shared groups; x also splits the samples into two groups (`only_x`) that
    y does not, y into two others (`only_y`); plus 48 noise dimensions each."""
    rng = np.random.default_rng(seed)
    shared, only_x, only_y = rng.integers(0, 3, n), rng.integers(0, 2, n), rng.integers(0, 2, n)
    centres = [rng.normal(size=(k, 4)) * 5 for k in (3, 2, 2)]
    x = np.hstack([centres[0][shared], centres[1][only_x], rng.normal(size=(n, 48))])
    y = np.hstack([centres[0][shared], centres[2][only_y], rng.normal(size=(n, 48))])
    return x, y, only_x, only_y


def check_report(directory: Path) -> dict:
    """Every image/link of index.html exists; HTML and modes.json agree. Returns the JSON."""
    summary = json.loads((directory / "modes.json").read_text())
    page = (directory / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    for ref in parser.images + parser.links:
        assert not re.match(r"^[a-z]+://|^/", ref), f"{ref} is not a relative path"
        assert (directory / ref).is_file(), f"index.html references missing {ref}"
    assert summary["spectrum_figure"] in parser.images
    for mode in summary["modes"]:
        assert f'id="mode-{mode["mode"]}"' in page
        assert f"eigenvalue {mode['eigenvalue']:+.5g}" in page
        if mode.get("figure", "").endswith(".png"):
            assert mode["figure"] in parser.images
    for anchor in parser.anchors:
        assert anchor[1:] in parser.ids, f"index.html links to a missing #{anchor[1:]}"
    # Opens offline: inline script and style only, no external assets.
    assert all("src" not in attrs for attrs in parser.scripts) and "stylesheet" not in page
    return summary


def free_port() -> int:
    """A TCP port on the loopback that is free now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
