"""Mode stability: do a SPEC result's modes reappear on other samples, and are they above noise?

Two questions a single SPEC run cannot answer:

- **Reappearance.** SPEC is recomputed on random subsets of the samples (split-half by
  default: half the rows, without replacement; a bootstrap would duplicate rows, and
  duplicated samples are themselves tight clusters to a kernel) with the result's kernel,
  bandwidths and random features. Every mode is matched, jointly within its sign (Hungarian
  assignment on the Jaccard overlap), to the modes of each resample; the share of resamples
  where the overlap reaches `match_threshold` is its reappearance, and the matched
  eigenvalues give an interval. Members of a mode are the samples scoring at least half its
  top score, restricted to the resample's rows (both poles of a resample's mode are tried,
  so a contrast mode whose orientation flips still matches). The 1/n normalisation makes a
  cluster's eigenvalue the same at any n, so the resampled eigenvalues estimate the full
  one's.
- **Noise floor.** The largest top eigenvalue at each end of SPEC over pairs of *unrelated
  random* embeddings: independent isotropic Gaussians with the dimensions, means and total
  variances of x and y, the same n and kernel, and each bandwidth the same multiple of its
  embedding's median distance as in the result (the "auto" rule on each reference when the
  result's bandwidths were "auto"; the result's own numbers would give the references other
  mean kernel values than the data, and their difference alone a large eigenvalue: 0.098 on
  a 64-d against 1280-d comparison whose floor is 0.020 this way). Such a pair is not empty for
  SPEC: its top mode is real and reappears (with a Gaussian kernel, the samples whose norm is
  smaller in one embedding than in the other), but it is no cluster; a mode that is not
  above the floor is no larger than what two random embeddings of this shape differ by.
  Two references that look natural are no floor: Gaussians with the covariances of x and y
  take the clusters' separations into their covariance and rise above planted clusters
  (measured: a floor of 0.18 against a planted mode of -0.197), and y row-permuted against x
  keeps every cluster x forms that y lacks and adds the ones both form, so its top
  eigenvalue is at least the observed one (0.29 against 0.197).

Pure numpy/torch/scipy, seeded, no config objects.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from spec_align.spectrum import SpecResult, compare, estimate_sigma
from spec_align.spectrum.result import ModeStability

__all__ = ["DEFAULT_MAX_SAMPLES", "mode_members", "mode_stability"]

# Rows the analysis draws from (a seeded subsample beyond): each resample is then an exact
# kernel of 512 rows and each reference draw one of 1024, seconds on a CPU.
DEFAULT_MAX_SAMPLES = 1024
# Members of a mode: the samples whose score is at least this share of the top score.
MEMBER_SHARE = 0.5


def mode_members(column: Tensor | np.ndarray) -> np.ndarray:
    """Row indices of a mode's members: scores >= half the column's largest score.

    An indicator-like eigenvector (1/sqrt(|C|) on a cluster C) keeps all of C; a smooth one
    its upper region. `len(members) / n` is the mode's share of the samples.
    """
    values = torch.as_tensor(column).detach().double().cpu()
    top = float(values.max())
    if top <= 0:
        return np.zeros(0, dtype=np.int64)
    return torch.nonzero(values >= MEMBER_SHARE * top).flatten().numpy()


def mode_stability(
    x: np.ndarray | Tensor,
    y: np.ndarray | Tensor,
    result: SpecResult,
    *,
    resamples: int = 10,
    fraction: float = 0.5,
    null_draws: int | None = None,
    null_quantile: float = 1.0,
    match_threshold: float = 0.5,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    seed: int = 0,
) -> ModeStability:
    """Reappearance and eigenvalue interval of every mode of `result`, and a noise floor.

    Args:
        x: the embedding `result` was computed from, (n, d_x) (a memory map is fine: only
            the analysed rows are read).
        y: the other embedding, (n, d_y).
        result: the comparison of x and y.
        resamples: SPEC runs on random subsets.
        fraction: share of the rows in each subset (0.5: split-half).
        null_draws: SPEC runs on cluster-free references (default: `resamples`).
        null_quantile: the quantile of the references' top eigenvalues that is the floor
            (1: the largest of the draws).
        match_threshold: least Jaccard overlap of members for a mode to count as reappeared.
        max_samples: analyse a seeded subsample of at most this many rows (None: all n).
            With a subsample the floor is the one of that size: above the full n's, so a mode
            above it is above the full-size floor too.
        seed: seed of the subsets and the references (the random features keep the result's).

    Returns:
        A `ModeStability`; assign it to `result.stability` to have it reported.

    Raises:
        ValueError: out-of-range settings, or x and y do not have the result's n rows.
    """
    n = result.num_samples
    for name, array in (("x", x), ("y", y)):
        if array.shape[0] != n:
            raise ValueError(
                f"{name} has {array.shape[0]} rows but the result has {n} samples: pass the "
                "embeddings the result was computed from"
            )
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if not 0 < match_threshold <= 1:
        raise ValueError(f"match_threshold must be in (0, 1], got {match_threshold}")
    if not 0 < null_quantile <= 1:
        raise ValueError(f"null_quantile must be in (0, 1], got {null_quantile}")
    null_draws = resamples if null_draws is None else null_draws
    if null_draws < 1:
        raise ValueError(f"null_draws must be >= 1, got {null_draws}")
    generator = np.random.default_rng(seed)
    rows = np.arange(n)
    if max_samples is not None and n > max_samples:
        rows = np.sort(generator.choice(n, max_samples, replace=False))
    size = math.floor(fraction * len(rows))
    if size < 4:
        raise ValueError(
            f"a resample of {fraction:g} of {len(rows)} rows has {size} samples; "
            "use more samples or a larger fraction"
        )
    xs, ys = _rows(x, rows), _rows(y, rows)
    scores = result.scores.detach().double().cpu()[torch.from_numpy(rows)]
    settings = {"kernel": result.kernel, "eta": result.eta, "rff_dim": result.rff_dim}
    if result.kernel == "gaussian":
        settings.update(sigma_x=result.sigma_x, sigma_y=result.sigma_y)
    num_positive = result.num_positive
    signs = (range(num_positive), range(num_positive, result.num_modes))
    # A few more modes than the result's: a mode may change rank with its neighbour.
    top_k = max(len(signs[0]), len(signs[1]), 1) + 2

    matched: list[list[tuple[float, float]]] = [[] for _ in range(result.num_modes)]
    for _ in range(resamples):
        subset = np.sort(generator.choice(len(rows), size, replace=False))
        resampled = compare(xs[subset], ys[subset], top_k=top_k, seed=result.seed, **settings)
        resampled_signs = (
            range(resampled.num_positive),
            range(resampled.num_positive, resampled.num_modes),
        )
        for modes, candidates in zip(signs, resampled_signs, strict=True):
            if not modes or not candidates:
                continue
            overlap = np.array(
                [
                    [
                        _best_pole_overlap(scores[subset, j], resampled.scores[:, k])
                        for k in candidates
                    ]
                    for j in modes
                ]
            )
            for i, k in zip(*linear_sum_assignment(overlap, maximize=True), strict=True):
                if overlap[i, k] >= match_threshold:
                    eigenvalue = float(resampled.mode_eigenvalues[candidates[k]])
                    matched[modes[i]].append((eigenvalue, float(overlap[i, k])))

    null_positive, null_negative = [], []
    scales = (_reference_scale(xs), _reference_scale(ys))
    if result.kernel == "gaussian":
        # Each bandwidth as a multiple of its embedding's median distance (1 for "auto").
        relative = (result.sigma_x / estimate_sigma(xs), result.sigma_y / estimate_sigma(ys))
    for _ in range(null_draws):
        x_null, y_null = (
            _gaussian_like(mean, scale, len(rows), generator) for mean, scale in scales
        )
        if result.kernel == "gaussian":
            settings["sigma_x"] = relative[0] * estimate_sigma(x_null)
            settings["sigma_y"] = relative[1] * estimate_sigma(y_null)
        null = compare(x_null, y_null, top_k=1, seed=result.seed, **settings)
        null_positive.append(max(float(null.eigenvalues[0]), 0.0))
        null_negative.append(max(-float(null.eigenvalues[-1]), 0.0))

    low, high = [], []
    for entries in matched:
        values = [eigenvalue for eigenvalue, _ in entries]
        if len(values) >= 2:
            low.append(float(np.quantile(values, 0.025)))
            high.append(float(np.quantile(values, 0.975)))
        else:
            low.append(None)
            high.append(None)
    return ModeStability(
        resamples=resamples,
        fraction=fraction,
        sample_size=len(rows),
        match_threshold=match_threshold,
        null_draws=null_draws,
        null_quantile=null_quantile,
        seed=seed,
        reappearance=[len(entries) / resamples for entries in matched],
        overlap=[
            float(np.mean([o for _, o in entries])) if entries else None for entries in matched
        ],
        eigenvalue_low=low,
        eigenvalue_high=high,
        null_positive=null_positive,
        null_negative=null_negative,
        noise_floor=(
            float(np.quantile(null_positive, null_quantile)),
            float(np.quantile(null_negative, null_quantile)),
        ),
    )


def _rows(array: np.ndarray | Tensor, rows: np.ndarray) -> Tensor:
    """The given rows as a float64 tensor (a memory map reads only those rows)."""
    if isinstance(array, Tensor):
        return array.detach().cpu()[torch.from_numpy(rows)].double()
    return torch.from_numpy(np.asarray(array[rows], dtype=np.float64))


def _jaccard(first: np.ndarray, second: np.ndarray) -> float:
    union = len(np.union1d(first, second))
    return len(np.intersect1d(first, second)) / union if union else 0.0


def _best_pole_overlap(original: Tensor, resampled: Tensor) -> float:
    """Jaccard overlap of the original mode's members with either pole of a resampled mode."""
    members = mode_members(original)
    return max(_jaccard(members, mode_members(pole)) for pole in (resampled, -resampled))


def _reference_scale(z: Tensor) -> tuple[Tensor, float]:
    """Mean and per-coordinate standard deviation of an isotropic Gaussian with z's mean and
    total variance (so its pairwise distances are on z's scale and the bandwidths fit it)."""
    mean = z.mean(dim=0)
    total = float(((z - mean) ** 2).sum()) / max(len(z) - 1, 1)
    return mean, math.sqrt(total / z.shape[1])


def _gaussian_like(
    mean: Tensor, scale: float, rows: int, generator: np.random.Generator
) -> Tensor:
    """`rows` independent isotropic Gaussian samples around `mean`."""
    return mean + scale * torch.from_numpy(generator.standard_normal((rows, len(mean))))
