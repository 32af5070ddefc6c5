"""Mode tracking: give the differential clusters of successive SPEC evaluations stable ids.

A mode is known by its members (the top-scoring samples of a fixed probe set). Modes of one
evaluation are matched to those of the previous one in the same direction by the Jaccard
overlap of their members (Hungarian matching, so two new modes never claim one old id); a
mode whose best overlap is below a threshold is a new cluster and gets a fresh id.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["ModeTracker", "jaccard_matrix"]


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


class ModeTracker:
    """Assigns each evaluation's modes the ids of the matching modes of the previous one.

    Ids are non-negative ints, unique over the whole run and never reused, so a logged series
    `clusters/tracked/<id>/...` always follows one cluster.

    Args:
        threshold: the least Jaccard overlap of members for a mode to inherit an id.
    """

    def __init__(self, threshold: float = 0.2) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.next_id = 0
        self.previous: list[dict[str, Any]] = []

    def update(self, modes: Sequence[tuple[str, Collection[Hashable]]]) -> list[int]:
        """Ids of this evaluation's modes, in order; it becomes the previous evaluation.

        Args:
            modes: (direction, members) per mode. Only modes of the same direction can match:
                a cluster the encoder lacks is never the continuation of one it has extra.

        Returns:
            One id per mode.
        """
        ids: list[int | None] = [None] * len(modes)
        for direction in dict.fromkeys(d for d, _ in modes):
            current = [i for i, (d, _) in enumerate(modes) if d == direction]
            before = [p for p in self.previous if p["direction"] == direction]
            if not before:
                continue
            overlap = jaccard_matrix(
                [modes[i][1] for i in current], [p["members"] for p in before]
            )
            rows, cols = linear_sum_assignment(overlap, maximize=True)
            for row, col in zip(rows, cols, strict=True):
                if overlap[row, col] >= self.threshold:
                    ids[current[row]] = before[col]["id"]
        for i, assigned in enumerate(ids):
            if assigned is None:
                ids[i] = self.next_id
                self.next_id += 1
        self.previous = [
            {"id": mode_id, "direction": direction, "members": sorted(members)}
            for mode_id, (direction, members) in zip(ids, modes, strict=True)
        ]
        return ids

    def state_dict(self) -> dict[str, Any]:
        """The next free id and the previous evaluation's modes (JSON-ready)."""
        return {"next_id": self.next_id, "previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_id = int(state["next_id"])
        self.previous = [dict(p) for p in state["previous"]]
