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
        self.images, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a":
            self.links.append(attrs["href"])


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
    assert "<script" not in page and "stylesheet" not in page  # opens offline, no external assets
    return summary


def free_port() -> int:
    """A TCP port on the loopback that is free now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
