"""Mode tracking: stable ids for the differential clusters of successive evaluations."""

from __future__ import annotations

import numpy as np
import pytest

from spec_align.callbacks import ModeTracker
from spec_align.callbacks.mode_tracking import jaccard_matrix

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
