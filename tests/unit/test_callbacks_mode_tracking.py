"""Mode tracking: stable ids for the differential clusters of successive evaluations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spec_align import compare
from spec_align.callbacks import ModeTracker
from spec_align.callbacks.mode_tracking import Mode, abs_correlation_matrix, jaccard_matrix

POS, NEG = "enc_minus_ref", "ref_minus_enc"
N = 240  # probe samples


def _mode(direction: str, start: int, size: int = 20, sign: float = 1.0, seed: int = 0) -> Mode:
    """A cluster mode on samples start..start+size: indicator eigenvector plus noise."""
    scores = np.zeros(N)
    scores[start : start + size] = 1.0
    scores += 0.05 * np.random.default_rng(seed).normal(size=N)
    members = {f"s{i}" for i in np.argsort(-scores)[:size]}
    return Mode(direction, members, sign * scores / np.linalg.norm(scores))


def _ids(tracker: ModeTracker, modes: list[Mode]) -> list[int]:
    return [track.id for track in tracker.update(modes)]


def test_jaccard_matrix_values():
    overlap = jaccard_matrix([{1, 2}, {3}], [{2, 3}, set(), {1, 2}])
    np.testing.assert_allclose(overlap, [[1 / 3, 0.0, 1.0], [0.5, 0.0, 0.0]])


def test_abs_correlation_is_sign_free_and_needs_the_same_samples():
    u = np.array([[1.0, 0.0, 0.0], [0.0, 3.0, 4.0], [0.0, 0.0, 0.0]])
    v = np.array([[-2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(abs_correlation_matrix(u, v), [[1, 0], [0, 0.8], [0, 0]])
    with pytest.raises(ValueError, match="probe set must stay the same"):
        abs_correlation_matrix(u, np.ones((1, 4)))


def test_tracker_keeps_ids_when_modes_swap_order_flip_sign_and_drift():
    tracker = ModeTracker()
    assert _ids(tracker, [_mode(POS, 0), _mode(POS, 100), _mode(NEG, 200)]) == [0, 1, 2]
    # The positive modes swap rank, the first flips its eigenvector's sign (arbitrary), all
    # get new noise, and a quarter of a's members move: each keeps its id.
    drifted_a = _mode(POS, 5, sign=-1.0, seed=1)
    tracks = tracker.update([_mode(POS, 100, seed=1), _mode(NEG, 200, seed=1), drifted_a])
    assert [t.id for t in tracks] == [1, 2, 0]
    assert tracks[2].correlation > 0.7 and tracks[2].overlap == pytest.approx(15 / 25)
    assert tracker.next_id == 3


def test_tracker_gives_new_ids_to_new_clusters_and_never_reuses_ids():
    tracker = ModeTracker(memory=0)
    tracker.update([_mode(POS, 0), _mode(POS, 100)])
    # b dissolves and an unrelated cluster appears; a mostly stays.
    tracks = tracker.update([_mode(POS, 2, seed=1), _mode(POS, 150, seed=1)])
    assert [t.id for t in tracks] == [0, 2]
    assert tracks[1].similarity is None  # a new id matched nothing
    # Without memory, b coming back after one evaluation away is a new cluster.
    assert _ids(tracker, [_mode(POS, 100, seed=2)]) == [3]


def test_a_mode_missing_for_a_while_keeps_its_id_within_memory():
    tracker = ModeTracker(memory=2)
    tracker.update([_mode(POS, 0), _mode(POS, 100)])
    tracker.update([_mode(POS, 0, seed=1)])  # b fell out of the top_k
    tracker.update([_mode(POS, 0, seed=2)])
    assert _ids(tracker, [_mode(POS, 0, seed=3), _mode(POS, 100, seed=3)]) == [0, 1]
    for seed in (4, 5, 6):  # b gone for three evaluations: past memory
        tracker.update([_mode(POS, 0, seed=seed)])
    assert _ids(tracker, [_mode(POS, 100, seed=7)]) == [2]


def test_tracker_matches_only_within_a_direction():
    tracker = ModeTracker()
    tracker.update([_mode(POS, 0)])
    assert _ids(tracker, [_mode(NEG, 0)]) == [1]


def test_tracker_state_round_trip_keeps_ids():
    tracker = ModeTracker()
    tracker.update([_mode(POS, 0), _mode(NEG, 50)])
    restored = ModeTracker()
    restored.load_state_dict(tracker.state_dict())
    modes = [_mode(NEG, 52, seed=1), _mode(POS, 1, seed=1), _mode(POS, 150, seed=1)]
    assert _ids(restored, modes) == [1, 0, 2]


def test_state_of_the_membership_only_tracker_restarts_tracking_with_fresh_ids():
    tracker = ModeTracker()
    with pytest.warns(UserWarning, match="fresh ids from 7"):
        tracker.load_state_dict({"next_id": 7, "previous": [{"id": 6, "direction": POS}]})
    assert _ids(tracker, [_mode(POS, 0)]) == [7]


def test_tracker_rejects_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        ModeTracker(threshold=0.0)
    with pytest.raises(ValueError, match="memory"):
        ModeTracker(memory=-1)


# A planted run through SPEC itself: the embedding x forms clusters a and b (c from the
# fourth evaluation on) that the reference y does not; evaluations differ in noise and in
# how tight each cluster is, so eigenvalues change and a and b swap rank.
GROUPS = {"a": range(0, 40), "b": range(40, 100), "c": range(100, 170)}


def _planted_modes(spreads: dict[str, float], seed: int, top_k: int) -> tuple[list, list]:
    rng = np.random.default_rng(0)  # fixed layout: cluster centres and background
    centres = {g: 3 * rng.normal(size=6) for g in GROUPS}
    background_x, background_y = 2 * rng.normal(size=(2, N, 6))
    noise = np.random.default_rng(seed)
    x = background_x + 0.3 * noise.normal(size=(N, 6))
    y = background_y + 0.3 * noise.normal(size=(N, 6))
    for group, spread in spreads.items():
        rows = list(GROUPS[group])
        x[rows] = centres[group] + spread * noise.normal(size=(len(rows), 6))
    result = compare(
        torch.tensor(x), torch.tensor(y), kernel="gaussian", sigma_x=2.0, sigma_y=2.0, top_k=top_k
    )
    modes, planted = [], []
    for j in range(result.num_positive):
        members = set(result.top_samples(j, 20).tolist())
        modes.append(Mode(POS, {f"s{i}" for i in members}, result.scores[:, j].numpy()))
        # The planted group most of its members belong to.
        planted.append(max(GROUPS, key=lambda g: len(members & set(GROUPS[g]))))
    return modes, planted


def test_planted_spec_run_keeps_ids_through_rank_swaps_and_gives_a_new_cluster_a_new_id():
    tracker = ModeTracker()
    evaluations = [
        ({"a": 0.3, "b": 0.8}, 2),
        ({"a": 0.3, "b": 1.5}, 2),  # b loosens: its eigenvalue drops
        ({"a": 0.5, "b": 0.4}, 2),  # b tightens past a: rank order swapped
        ({"a": 0.3, "b": 0.8, "c": 0.2}, 3),  # a new cluster c forms
    ]
    ids_of: dict[str, set[int]] = {}
    orders = []
    for seed, (spreads, top_k) in enumerate(evaluations):
        modes, planted = _planted_modes(spreads, seed, top_k)
        orders.append(planted)
        for group, track in zip(planted, tracker.update(modes), strict=True):
            ids_of.setdefault(group, set()).add(track.id)
    assert orders[0] == ["a", "b"] and orders[2] == ["b", "a"], orders  # the swap happened
    assert set(orders[3]) == {"a", "b", "c"}, orders
    assert ids_of == {"a": {0}, "b": {1}, "c": {2}}
