"""Mode tracking, mode descriptions and the pictures of the cluster callback (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from spec_align.callbacks import ModeTracker
from spec_align.callbacks.clusters import dominant_attribute, label_purity
from spec_align.callbacks.render import (
    embedding_maps,
    mode_grid,
    project_2d,
    spectrum_plot,
    thumbnail_strip,
    tracks_plot,
)
from spec_align.callbacks.tracking import jaccard_matrix

POS, NEG = "enc_minus_ref", "ref_minus_enc"


def _cluster(start: int, size: int = 20) -> set[str]:
    return {f"s{i}" for i in range(start, start + size)}


def test_jaccard_matrix_values():
    overlap = jaccard_matrix([{1, 2}, {3}], [{2, 3}, set(), {1, 2}])
    np.testing.assert_allclose(overlap, [[1 / 3, 0.0, 1.0], [0.5, 0.0, 0.0]])


def test_tracker_keeps_ids_when_modes_swap_order_and_drift():
    tracker = ModeTracker(threshold=0.3)
    a, b, c = _cluster(0), _cluster(100), _cluster(200)
    first = tracker.update([(POS, a), (POS, b), (NEG, c)])
    assert first == [0, 1, 2]
    # The two positive modes swap strength and lose a quarter of their members each.
    drifted_a = (a - _cluster(0, 5)) | _cluster(50, 5)
    drifted_b = (b - _cluster(100, 5)) | _cluster(150, 5)
    assert tracker.update([(POS, drifted_b), (NEG, c), (POS, drifted_a)]) == [1, 2, 0]
    assert tracker.next_id == 3


def test_tracker_gives_new_ids_to_new_clusters_and_never_reuses_ids():
    tracker = ModeTracker(threshold=0.3)
    a, b = _cluster(0), _cluster(100)
    tracker.update([(POS, a), (POS, b)])
    # b dissolves and an unrelated cluster appears; a mostly stays.
    assert tracker.update([(POS, _cluster(2)), (POS, _cluster(300))]) == [0, 2]
    # b coming back after being gone for one evaluation is a new cluster (previous only).
    assert tracker.update([(POS, b)]) == [3]


def test_tracker_matches_only_within_a_direction():
    tracker = ModeTracker()
    a = _cluster(0)
    tracker.update([(POS, a)])
    assert tracker.update([(NEG, a)]) == [1]


def test_tracker_state_round_trip_keeps_ids():
    tracker = ModeTracker()
    tracker.update([(POS, _cluster(0)), (NEG, _cluster(50))])
    restored = ModeTracker()
    restored.load_state_dict(tracker.state_dict())
    assert restored.update([(NEG, _cluster(52)), (POS, _cluster(1)), (POS, _cluster(400))]) == [
        1,
        0,
        2,
    ]


def test_tracker_rejects_a_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        ModeTracker(threshold=0.0)


def test_dominant_attribute_prefers_enrichment_over_frequency():
    # "plain" is 60% of the probe and 60% of the members: no enrichment. "left" is 20% of
    # the probe but 80% of the members.
    meta = [
        {
            "texture": "plain" if i % 5 < 3 else "dots",
            "side": "left" if i < 20 else "right",
            "cx": 0.1,
        }
        for i in range(100)
    ]
    members = list(range(16)) + [20, 21, 22, 23]
    assert dominant_attribute(members, meta) == ("side=left", 0.8)
    assert dominant_attribute(members, [None] * 100) == (None, None)


def test_label_purity_ignores_missing_labels():
    labels = np.array([2, 2, 2, -1, 1])
    assert label_purity([0, 1, 3, 4], labels) == (2, 0.5)
    assert label_purity([3], labels) == (None, None)


def test_pictures_are_rgb_arrays():
    rng = np.random.default_rng(0)
    thumbs = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    grid = mode_grid(thumbs, [f"caption {i}" for i in range(6)], "title\nsecond line", columns=4)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    assert thumbnail_strip(thumbs[:3]).shape == (16, 3 * 16 + 4, 3)
    values = np.sort(rng.normal(size=40))[::-1]
    assert spectrum_plot(values, 3, 2, labels=("a", "b"), title="t").shape[2] == 3
    layout = project_2d(rng.normal(size=(50, 5)), "pca")
    assert layout.shape == (50, 2)
    membership = np.where(np.arange(50) < 10, 0, np.where(np.arange(50) < 20, 1, -1))
    image = embedding_maps([layout, layout], ["x", "y"], membership, ["m0", "m1"], [0, 1], "t")
    assert image.shape[1] > image.shape[0]  # side by side
    history = [{"step": 0, "tracked": {0: 0.1, 1: -0.2}}, {"step": 5, "tracked": {"0": 0.05}}]
    assert tracks_plot(history, "t").ndim == 3
    with pytest.raises(ValueError, match="map method"):
        project_2d(layout, "umap")
