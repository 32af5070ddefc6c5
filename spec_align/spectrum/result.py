"""`SpecResult`: the spectrum, modes and sample scores of one SPEC comparison."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from spec_align.spectrum.linalg import mapped_joint_features
from spec_align.spectrum.validation import as_tensor, check_pair

__all__ = ["SpecResult"]


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
                    f"  top samples: {top}"
                )
        return "\n".join(lines)
