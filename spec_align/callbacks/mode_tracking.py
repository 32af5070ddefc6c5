"""Mode tracking: give the differential clusters of successive SPEC evaluations stable ids.

Every evaluation sees the same fixed probe set, so a mode can be compared with an earlier one
on the same samples, by what it is: the overlap of its members (its top-scoring samples) and
the correlation of its eigenvector with the earlier one. Eigenvectors have no intrinsic sign,
so the correlation counts in absolute value; only modes of the same direction (sign of the
eigenvalue) can match. The similarity of two modes is the mean of the two, and all modes of
an evaluation are matched jointly (Hungarian assignment, so two modes never claim one id and
a swap of rank order is undone); a pair below the threshold is no match, and an unmatched
mode is a new cluster with a fresh id. A mode that is missing from a few evaluations (it fell
below the top_k kept) stays matchable for `memory` evaluations, so it keeps its id when it
comes back.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "Mode",
    "ModeTracker",
    "Track",
    "abs_correlation_matrix",
    "jaccard_matrix",
]


class Mode(NamedTuple):
    """One mode of one evaluation, as the tracker compares it.

    Attributes:
        direction: which sign of the spectrum it belongs to (e.g. "enc_minus_ref").
        members: its top-scoring samples, by key.
        scores: its eigenvector over the probe set, (n,) in probe order (any sign, any norm).
    """

    direction: str
    members: Collection[Hashable]
    scores: Sequence[float] | np.ndarray


class Track(NamedTuple):
    """A mode's tracked id and how well it matched the mode it continues.

    Attributes:
        id: the tracked id.
        similarity: mean of member overlap and |eigenvector correlation| with the mode it
            continues; None for a new id.
        overlap: Jaccard overlap of the members with it (None for a new id).
        correlation: |correlation| of the eigenvectors with it (None for a new id).
    """

    id: int
    similarity: float | None = None
    overlap: float | None = None
    correlation: float | None = None


def jaccard_matrix(
    first: Sequence[Collection[Hashable]], second: Sequence[Collection[Hashable]]
) -> np.ndarray:
    """Jaccard overlap |A & B| / |A | B| of every pair of member sets.

    Shapes:
        -> (len(first), len(second)) float64 in [0, 1]
    """
    sets_a, sets_b = [set(a) for a in first], [set(b) for b in second]
    overlap = np.zeros((len(sets_a), len(sets_b)))
    for i, a in enumerate(sets_a):
        for j, b in enumerate(sets_b):
            union = len(a | b)
            overlap[i, j] = len(a & b) / union if union else 0.0
    return overlap


def abs_correlation_matrix(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """|cosine| of every pair of eigenvectors on the same samples (sign-free correlation).

    The uncentred cosine is the overlap |<u, v>| of the unit eigenvectors: 1 for the same
    mode (whichever sign each solve picked), 0 for orthogonal ones. A zero vector correlates
    with nothing.

    Shapes:
        first: (a, n), second: (b, n) -> (a, b) float64 in [0, 1]
    """
    first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
    if first.shape[1:] != second.shape[1:]:
        raise ValueError(
            f"eigenvectors over different sample sets: {first.shape[1:]} vs "
            f"{second.shape[1:]} entries (the probe set must stay the same)"
        )
    norms_a = np.linalg.norm(first, axis=1, keepdims=True)
    norms_b = np.linalg.norm(second, axis=1, keepdims=True)
    unit_a = np.divide(first, norms_a, out=np.zeros_like(first), where=norms_a > 0)
    unit_b = np.divide(second, norms_b, out=np.zeros_like(second), where=norms_b > 0)
    return np.clip(np.abs(unit_a @ unit_b.T), 0.0, 1.0)


class ModeTracker:
    """Assigns each evaluation's modes the ids of the earlier modes they continue.

    Ids are non-negative ints, unique over the whole run and never reused, so a logged series
    `clusters/tracked/<id>/...` always follows one cluster.

    Args:
        threshold: the least similarity (mean of member Jaccard overlap and |eigenvector
            correlation|, both in [0, 1]) for a mode to inherit an id.
        memory: evaluations a mode that was not found stays matchable (0: only the
            previous evaluation's modes can be continued).
    """

    def __init__(self, threshold: float = 0.3, memory: int = 2) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
            raise ValueError(f"memory must be a non-negative int, got {memory!r}")
        self.threshold = float(threshold)
        self.memory = memory
        self.next_id = 0
        # Every mode still matchable: its id, direction, members, scores and the number of
        # evaluations since it was last found (0: found in the latest one).
        self.known: list[dict[str, Any]] = []

    def update(self, modes: Sequence[Mode]) -> list[Track]:
        """Tracked ids of this evaluation's modes, in order.

        Args:
            modes: this evaluation's modes. Only modes of the same direction can match: a
                cluster the encoder lacks is never the continuation of one it has extra.

        Returns:
            One Track per mode.
        """
        tracks: list[Track | None] = [None] * len(modes)
        for direction in dict.fromkeys(m.direction for m in modes):
            current = [i for i, m in enumerate(modes) if m.direction == direction]
            before = [k for k in self.known if k["direction"] == direction]
            if not before:
                continue
            overlap = jaccard_matrix(
                [modes[i].members for i in current], [k["members"] for k in before]
            )
            correlation = abs_correlation_matrix(
                np.stack([np.asarray(modes[i].scores, np.float64) for i in current]),
                np.stack([np.asarray(k["scores"], np.float64) for k in before]),
            )
            similarity = (overlap + correlation) / 2
            rows, cols = linear_sum_assignment(similarity, maximize=True)
            for row, col in zip(rows, cols, strict=True):
                if similarity[row, col] >= self.threshold:
                    tracks[current[row]] = Track(
                        before[col]["id"],
                        float(similarity[row, col]),
                        float(overlap[row, col]),
                        float(correlation[row, col]),
                    )
        for i, track in enumerate(tracks):
            if track is None:
                tracks[i] = Track(self.next_id)
                self.next_id += 1
        found = {t.id for t in tracks}
        lapsed = [
            {**k, "missed": k["missed"] + 1}
            for k in self.known
            if k["id"] not in found and k["missed"] < self.memory
        ]
        self.known = [
            {
                "id": track.id,
                "direction": mode.direction,
                "members": sorted(mode.members),
                "scores": np.asarray(mode.scores, np.float64).tolist(),
                "missed": 0,
            }
            for track, mode in zip(tracks, modes, strict=True)
        ] + lapsed
        return tracks

    def state_dict(self) -> dict[str, Any]:
        """The next free id and every matchable mode (JSON-ready)."""
        return {"next_id": self.next_id, "known": self.known}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_id = int(state["next_id"])
        if "known" not in state:
            # A checkpoint of the membership-only tracker: its modes have no eigenvectors.
            warnings.warn(
                "the checkpoint's mode-tracker state has no eigenvectors (written before "
                "eigenvector matching): tracking restarts with fresh ids from "
                f"{self.next_id}; earlier ids are not continued",
                stacklevel=2,
            )
            self.known = []
            return
        self.known = [dict(k) for k in state["known"]]
