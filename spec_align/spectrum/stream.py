"""Reading a batch source twice safely: per-batch fingerprints of the rows, and progress bars.

`compare` reads a streamed source twice: the covariance on the first pass, the sample scores
on the second. A source that changes order or content between the passes (a shuffling
DataLoader, random augmentation) would give correct eigenvalues but scores belonging to other
samples, so the first pass records a fingerprint of every batch and the second compares them.

A batch's fingerprint is, for x and for y, three float64 sums over its rows r (global row g):
sum_r p_r, sum_r c_g p_r and sum_r |p_r|, where p_r = <row r, v> projects the row on a fixed
vector v (v_j in [1, 2), a golden-ratio sequence) and c_g in [-0.5, 0.5) is a fixed
low-discrepancy weight of the row's position. The first sum sees content, the second also
order (a permutation of the rows moves their weights), the third sets the rounding scale.
The sums are accumulated over the pass and compared wherever both passes end a batch at the
same row: the same bytes give the same bits (the same operations in the same order), and a
tolerance of 16 (k_1 + k_2 + 64) float64 rounding errors of the third sum (k: batches so far)
absorbs a different batching of the same rows, while a change of one entry by 1e-7 of the
rows' scale still shows.
Cost: two matrix-vector products per batch, O(b (d_x + d_y)), next to O(b d D) for the
features.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from tqdm import tqdm

__all__ = ["Fingerprints", "SourceChangedError", "Verifier", "progress_bar", "progress_note"]

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # weights of the columns
_SILVER = math.sqrt(2.0) - 1.0  # weights of the row positions
# Rounding allowance of a fingerprint comparison, in units of eps x scale per batch summed:
# a float64 sum of k batch sums is off by at most ~k eps x (sum of |terms|), and each batch's
# own (pairwise) sum by far less; 16 (k_1 + k_2 + 64) eps is ~3e-13 of the scale for ten
# batches, orders below what moving or changing a row does.
_EPS = torch.finfo(torch.float64).eps


def _tolerance(batches_first: int, batches_second: int) -> float:
    return 16.0 * _EPS * (batches_first + batches_second + 64)


FIX = (
    "SPEC reads the batch source twice (covariance, then per-sample scores) and needs the "
    "same samples in the same order both times: use DataLoader(..., shuffle=False) with no "
    "random augmentation, or pass a function that returns a fresh iterator over the same "
    "data in the same order"
)


class SourceChangedError(ValueError):
    """The batch source gave other rows (or another order) on the second pass than the first."""


def _column_weights(width: int, device: torch.device) -> Tensor:
    j = torch.arange(1, width + 1, dtype=torch.float64, device=device)
    return 1.0 + torch.frac(j * _GOLDEN)


def _row_weights(start: int, rows: int, device: torch.device) -> Tensor:
    g = torch.arange(start + 1, start + rows + 1, dtype=torch.float64, device=device)
    return torch.frac(g * _SILVER) - 0.5


class Fingerprints:
    """Cumulative fingerprints of one pass: [(end_row, six float sums)], one per batch."""

    def __init__(self) -> None:
        self.records: list[tuple[int, tuple[float, ...]]] = []
        self.rows = 0
        self.batches = 0
        self._sums = (0.0,) * 6
        self._weights: dict[tuple[int, torch.device], Tensor] = {}

    def _projection(self, width: int, device: torch.device) -> Tensor:
        key = (width, device)
        if key not in self._weights:
            self._weights[key] = _column_weights(width, device)
        return self._weights[key]

    @torch.no_grad()
    def add(self, x: Tensor, y: Tensor) -> tuple[float, ...]:
        """Fingerprint the next batch (float64 rows, (b, d_x) and (b, d_y)); returns the sums."""
        c = _row_weights(self.rows, x.shape[0], x.device)
        stats = []
        for z in (x, y):
            p = z @ self._projection(z.shape[1], z.device)
            stats += [p.sum(), (c * p).sum(), p.abs().sum()]
        batch = torch.stack(stats).tolist()  # one device sync per batch
        self._sums = tuple(a + b for a, b in zip(self._sums, batch, strict=True))
        self.rows += x.shape[0]
        self.batches += 1
        self.records.append((self.rows, self._sums))
        return self._sums


def _same(first: tuple[float, ...], second: tuple[float, ...], tolerance: float) -> bool:
    for k in range(0, 6, 3):
        scale = max(first[k + 2], second[k + 2])
        for a, b in zip(first[k : k + 3], second[k : k + 3], strict=True):
            if a == b:  # also inf == inf: the check is void only where the sums overflow
                continue
            if not abs(a - b) <= tolerance * scale:
                return False
    return True


class Verifier:
    """Checks the second pass against the first pass's `Fingerprints`, batch by batch."""

    def __init__(self, first: Fingerprints) -> None:
        self.first = first
        self.second = Fingerprints()
        self._next = 0  # index into first.records of the next boundary to compare
        self.mismatch: str | None = None

    def add(self, x: Tensor, y: Tensor) -> bool:
        """Fingerprint the next batch of the second pass; False (and `mismatch`) if it differs."""
        start = self.second.rows
        sums = self.second.add(x, y)
        records = self.first.records
        while self._next < len(records) and records[self._next][0] < self.second.rows:
            self._next += 1
        aligned = self._next < len(records) and records[self._next][0] == self.second.rows
        tolerance = _tolerance(self._next + 1, self.second.batches)
        if aligned and not _same(records[self._next][1], sums, tolerance):
            batch = self.second.batches - 1
            self.mismatch = (
                f"batch {batch} (rows {start}-{self.second.rows - 1}) of the second pass "
                "holds other samples, or the same in another order, than the first pass"
            )
            return False
        return True

    def error(self, where: str = "") -> str | None:
        """The message to raise after the pass, or None if both passes agree."""
        first, second = self.first.rows, self.second.rows
        if self.mismatch is not None:
            return f"the batch source{where} changed between passes: {self.mismatch}. {FIX}"
        if first != second:
            return (
                f"the batch source{where} gave {first} samples on the first pass and {second} "
                f"on the second; it must yield the same samples in the same order each time "
                f"it is iterated. {FIX}"
            )
        return None


@contextmanager
def progress_bar(enabled: bool, desc: str, total: int | None, unit: str = "row") -> Iterator[tqdm]:
    """A tqdm bar on stderr (tqdm's defaults: shown also when stderr is not a terminal)."""
    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "row",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        yield bar
    finally:
        bar.close()


def progress_note(enabled: bool, message: str) -> None:
    """One line on stderr between bars (e.g. the eigen-solve, which has no steps to count)."""
    if enabled:
        tqdm.write(message, file=sys.stderr)
