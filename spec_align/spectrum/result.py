"""`SpecResult`: the spectrum, modes and sample scores of one SPEC comparison."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from spec_align.spectrum.linalg import mapped_joint_features
from spec_align.spectrum.validation import as_tensor, check_pair

__all__ = ["ModeStability", "SpecResult"]

# A mode is called stable when it reappears in at least this share of the resamples.
STABLE_REAPPEARANCE = 0.8


@dataclass
class ModeStability:
    """How reproducible the modes of a `SpecResult` are under resampling of the samples.

    Computed by `spec_align.explain.mode_stability`: SPEC is recomputed on `resamples`
    random subsets (`fraction` of the `sample_size` rows, without replacement) with the
    result's kernel, bandwidths and features, and each mode is matched (jointly within its
    sign, by the Jaccard overlap of its members: the samples scoring at least half its top
    score) to the modes of every resample. The noise floor is the `null_quantile` quantile
    of the top eigenvalue at each end of the spectrum over `null_draws` SPEC runs on
    unrelated random embeddings: independent isotropic Gaussians with the dimensions, means
    and total variances of x and y, same n and kernel, bandwidths at the same multiple of the
    median distance (1 is the largest of the draws).

    Attributes (per-mode lists follow the result's mode order):
        reappearance: share of resamples in which the mode was matched (overlap >=
            `match_threshold`).
        overlap: mean Jaccard overlap of the matches (None where it never reappeared).
        eigenvalue_low, eigenvalue_high: the central 95% range of the matched eigenvalues
            (None with fewer than two matches).
        null_positive, null_negative: the reference runs' largest eigenvalue and the
            magnitude of their most negative one.
        noise_floor: (positive, negative) floors: an eigenvalue of that sign whose magnitude
            is at most its floor is no larger than what two unrelated random embeddings of
            this size and shape give.
    """

    resamples: int
    fraction: float
    sample_size: int
    match_threshold: float
    null_draws: int
    null_quantile: float
    seed: int
    reappearance: list[float]
    overlap: list[float | None]
    eigenvalue_low: list[float | None]
    eigenvalue_high: list[float | None]
    null_positive: list[float]
    null_negative: list[float]
    noise_floor: tuple[float, float]

    def above_noise_floor(self, eigenvalue: float) -> bool:
        """Whether an eigenvalue is larger in magnitude than the floor of its sign."""
        floor = self.noise_floor[0] if eigenvalue > 0 else self.noise_floor[1]
        return abs(eigenvalue) > floor

    def is_stable(self, mode: int) -> bool:
        """Whether `mode` reappears in at least `STABLE_REAPPEARANCE` of the resamples."""
        return self.reappearance[mode] >= STABLE_REAPPEARANCE

    def to_dict(self) -> dict:
        """A JSON-ready copy (lists and floats)."""
        return {
            "resamples": self.resamples,
            "fraction": self.fraction,
            "sample_size": self.sample_size,
            "match_threshold": self.match_threshold,
            "null_draws": self.null_draws,
            "null_quantile": self.null_quantile,
            "seed": self.seed,
            "stable_reappearance": STABLE_REAPPEARANCE,
            "reappearance": list(self.reappearance),
            "overlap": list(self.overlap),
            "eigenvalue_low": list(self.eigenvalue_low),
            "eigenvalue_high": list(self.eigenvalue_high),
            "null_positive": list(self.null_positive),
            "null_negative": list(self.null_negative),
            "noise_floor": list(self.noise_floor),
        }


@dataclass
class SpecResult:
    """The spectrum and differential clusters of (K_x - eta * K_y) / n.

    Modes are the columns of `scores`: first the positive eigenvalues in descending order
    (clusters that x forms and y does not), then the negative ones from the most negative
    up (clusters that y forms and x does not). Only eigenvalues that are nonzero beyond
    float64 rounding become modes, at most `top_k` of each sign.

    `scores[:, j]` is the unit-norm sample-space eigenvector of mode j, identical on the exact
    and feature-space paths. Sign convention: each column is flipped so its entries sum to a
    positive number (a cluster's members score highest); a contrast mode whose entries sum
    to about zero (|sum| < 0.1 * sum |u|) is instead flipped so that the lowest-index sample
    with |u_i| >= half the column's max is positive. `top_samples(j)` lists the highest
    scores; `top_samples(j, largest=False)` the other pole of a contrast mode.

    Attributes:
        eigenvalues: the spectrum, descending. Complete, null-space zeros included ((n,) on
            the exact path, (min(n, m),) with features), while the solved matrix is at most
            2048-square or on a GPU; above that on a CPU, only its top_k largest and top_k
            smallest (a Lanczos solve), and `full_spectrum` is False. spec_diff and the modes
            are exact either way.
        mode_eigenvalues: eigenvalue of each mode, (num_modes,).
        scores: per-sample mode scores, (n, num_modes).
        num_positive: how many leading modes have positive eigenvalues.
        spec_diff: operator norm of the difference kernel, max(lambda_max, -lambda_min).
        names: display names of the two embeddings.
        method: "exact" (n x n kernel) or "features" ((D_x + D_y)-square dual).
        stability: the modes' `ModeStability`, when one was computed (None otherwise).
    """

    eigenvalues: Tensor
    mode_eigenvalues: Tensor
    scores: Tensor
    num_positive: int
    spec_diff: float
    kernel: str
    eta: float
    sigma_x: float | None
    sigma_y: float | None
    rff_dim: int | None
    seed: int
    method: str
    full_spectrum: bool = True
    names: tuple[str, str] = ("x", "y")
    feature_map_x: nn.Module | None = field(default=None, repr=False)
    feature_map_y: nn.Module | None = field(default=None, repr=False)
    mode_vectors: Tensor | None = field(default=None, repr=False)
    stability: ModeStability | None = field(default=None, repr=False)

    @property
    def num_samples(self) -> int:
        return self.scores.shape[0]

    @property
    def num_modes(self) -> int:
        return self.scores.shape[1]

    def mode_direction(self, mode: int) -> str:
        """Which embedding forms the cluster of `mode`: "x - y" style label with the names."""
        first, second = self.names if mode < self.num_positive else self.names[::-1]
        return f"{first} - {second}"

    def top_samples(self, mode: int, m: int = 10, *, largest: bool = True) -> Tensor:
        """Row indices of the `m` samples with the highest (or lowest) score in `mode`."""
        if not 0 <= mode < self.num_modes:
            raise IndexError(f"mode {mode} out of range: this result has {self.num_modes} modes")
        m = min(m, self.num_samples)
        return torch.topk(self.scores[:, mode], m, largest=largest).indices

    def score(self, x: object, y: object) -> Tensor:
        """Mode scores of new paired samples with the same feature maps, (n_new, num_modes).

        The scale matches `scores` (unit eigenvectors over the original n samples).
        """
        if self.mode_vectors is None:
            raise ValueError(
                "score() needs explicit feature maps; this result came from the exact n x n "
                "Gaussian path. Use rff_dim=... (or kernel='cosine') to score new samples"
            )
        x, y = as_tensor(x, "x"), as_tensor(y, "y")
        check_pair(x, y)
        device = self.mode_vectors.device
        joint = mapped_joint_features(
            self.feature_map_x, self.feature_map_y, x.to(device), y.to(device), self.eta
        )
        return joint @ self.mode_vectors / math.sqrt(self.num_samples)

    def to_dict(self, samples_per_mode: int = 10) -> dict:
        """A JSON-ready summary: settings, spectrum ends and each mode's top samples."""
        modes = []
        for j in range(self.num_modes):
            top = self.top_samples(j, samples_per_mode)
            modes.append(
                {
                    "mode": j,
                    "direction": self.mode_direction(j),
                    "eigenvalue": float(self.mode_eigenvalues[j]),
                    "top_samples": top.tolist(),
                    "top_scores": self.scores[top, j].tolist(),
                }
            )
        return {
            "names": list(self.names),
            "kernel": self.kernel,
            "eta": self.eta,
            "sigma_x": self.sigma_x,
            "sigma_y": self.sigma_y,
            "rff_dim": self.rff_dim,
            "seed": self.seed,
            "method": self.method,
            "full_spectrum": self.full_spectrum,
            "num_samples": self.num_samples,
            "spec_diff": self.spec_diff,
            "modes": modes,
            "stability": None if self.stability is None else self.stability.to_dict(),
        }

    def __str__(self) -> str:
        x_name, y_name = self.names
        kernel = self.kernel
        if self.kernel == "gaussian":
            kernel += f" (sigma_{x_name}={self.sigma_x:.4g}, sigma_{y_name}={self.sigma_y:.4g}"
            kernel += f", rff_dim={self.rff_dim})" if self.rff_dim else ", exact)"
        lines = [
            f"SPEC {x_name} vs {y_name}: n={self.num_samples}, kernel={kernel}, eta={self.eta:g}",
            f"SPEC-diff = {self.spec_diff:.6f}",
        ]
        for label, columns in (
            (
                f"{x_name} - {y_name} (clusters {x_name} forms, {y_name} does not)",
                range(self.num_positive),
            ),
            (
                f"{y_name} - {x_name} (clusters {y_name} forms, {x_name} does not)",
                range(self.num_positive, self.num_modes),
            ),
        ):
            lines.append(f"{label}: {len(columns)} modes")
            for j in columns:
                top = ", ".join(str(i) for i in self.top_samples(j, 8).tolist())
                lines.append(
                    f"  mode {j:2d}  eigenvalue {float(self.mode_eigenvalues[j]):+.5f}"
                    f"{self._stability_note(j)}  top samples: {top}"
                )
        if self.stability is not None:
            floor = self.stability.noise_floor
            lines.append(
                f"noise floor (top eigenvalue of {self.stability.null_draws} pairs of random "
                f"embeddings): +{floor[0]:.5f} / -{floor[1]:.5f}; reappearance over "
                f"{self.stability.resamples} resamples of {self.stability.fraction:.0%} of "
                f"{self.stability.sample_size} samples"
            )
        return "\n".join(lines)

    def _stability_note(self, mode: int) -> str:
        if self.stability is None:
            return ""
        eigenvalue = float(self.mode_eigenvalues[mode])
        floor = "" if self.stability.above_noise_floor(eigenvalue) else ", below noise floor"
        return f"  (reappears {self.stability.reappearance[mode]:.0%}{floor})"
