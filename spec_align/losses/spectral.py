"""Kernel-alignment penalties between trainable and reference embeddings of one batch.

`SpectralPenalty` is SPEC-align's minibatch SPEC-diff; `KernelMatchingPenalty` is the
KUEA-style baseline (squared or Frobenius distance of the minibatch kernel matrices). Both
share how bandwidths are chosen and how held-out pairs are scored, so their validation
numbers (`val/spec_diff`, `val/spec_diff_median`) compare directly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spec_align.spectrum import (
    CosineFeatures,
    RandomFourierFeatures,
    cosine_kernel,
    estimate_sigma,
    gaussian_kernel,
    spec_diff,
)
from spec_align.spectrum import spec_diff_features as _spec_diff_features
from spec_align.spectrum.validation import check_eta, check_kernel, check_positive_int, check_sigma

__all__ = ["KernelMatchingPenalty", "SpectralPenalty", "frequency_seed"]

Sigma = float | str
BANDWIDTHS = ("fixed", "batch")
FREQUENCIES = ("fixed", "fresh")
ESTIMATORS = ("features", "exact")
MATCHING_NORMS = {"mean_squared": "kuea", "frobenius": "kuea_frobenius"}  # norm -> train/<name>


def frequency_seed(seed: int, step: int) -> int:
    """Seed of the random frequencies drawn at optimizer step `step` of a run seeded `seed`.

    A pure function of (seed, step), hashed so that neighbouring steps and seeds give
    unrelated draws: a resumed run draws what the uninterrupted one would have.
    """
    state = np.random.SeedSequence([int(seed) % 2**63, int(step)]).generate_state(1, np.uint64)
    return int(state[0])


class _KernelPenalty(nn.Module):
    """What both penalties share: the weight and schedule, the bandwidths and the evaluation.

    Bandwidths: an "auto" bandwidth is fitted once, by `fit`, from the first data the
    penalty sees (`sigma_scale` x median pairwise distance) and kept as a buffer, so
    checkpoints carry it. `bandwidth="batch"` additionally re-estimates both bandwidths on
    every training batch (detached), which follows the embedding's scale; validation keeps
    the fitted ones for `val/spec_diff`.
    """

    name = "penalty"  # the term's key: train/<name>
    sigma_encoder_value: Tensor
    sigma_ref_value: Tensor

    def __init__(
        self,
        weight: float,
        kernel: str,
        eta: float,
        normalize: bool,
        sigma_encoder: Sigma,
        sigma_ref: Sigma,
        sigma_scale: float,
        bandwidth: str,
        every_n_steps: int,
        seed: int,
    ) -> None:
        super().__init__()
        check_kernel(kernel)
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"penalty weight must be a finite float >= 0, got {weight}")
        if bandwidth not in BANDWIDTHS:
            raise ValueError(f"bandwidth must be one of {BANDWIDTHS}, got {bandwidth!r}")
        sigmas = {"encoder": sigma_encoder, "ref": sigma_ref}
        for side, sigma in sigmas.items():
            if sigma == "auto":
                continue
            sigmas[side] = check_sigma(sigma, f"sigma_{side}")
            if bandwidth == "batch":
                raise ValueError(
                    f"bandwidth=batch re-estimates both bandwidths on every batch, so "
                    f"sigma_{side}={sigma} would be ignored: set sigma_{side}=auto, or "
                    "bandwidth=fixed to keep an explicit bandwidth"
                )
        if bandwidth == "batch" and kernel != "gaussian":
            raise ValueError("bandwidth=batch needs kernel=gaussian (the cosine kernel has none)")
        self.weight = float(weight)
        self.kernel = kernel
        self.eta = check_eta(eta)
        self.normalize = bool(normalize)
        self.sigma_scale = check_sigma(sigma_scale, "sigma_scale")
        self.bandwidth = bandwidth
        self.every_n_steps = check_positive_int(every_n_steps, "every_n_steps")
        self.seed = int(seed)
        # 0 marks a bandwidth still to be fitted (a finite marker: checkpoints must hold no
        # NaN, see losses/divergence.py); buffers so checkpoints carry them.
        for side, sigma in sigmas.items():
            value = 0.0 if sigma == "auto" else sigma
            self.register_buffer(f"sigma_{side}_value", torch.tensor(value, dtype=torch.float64))
        self.register_load_state_dict_post_hook(_repair_sigmas)

    def bind(self, encoder_dim: int, ref_dim: int) -> None:
        """Prepare for embeddings of these widths (before loading weights)."""

    @property
    def fitted(self) -> bool:
        """Whether both bandwidths are fixed (always true for the cosine kernel)."""
        if self.kernel == "cosine":
            return True
        return _is_fitted(self.sigma_encoder_value) and _is_fitted(self.sigma_ref_value)

    def active(self, step: int) -> bool:
        """Whether the penalty enters the loss at optimizer step `step`."""
        return self.weight > 0 and step % self.every_n_steps == 0

    def _prepare(self, z: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
        z = z.to(dtype)
        return F.normalize(z, dim=-1) if self.normalize and self.kernel == "gaussian" else z

    @torch.no_grad()
    def fit(self, z_enc: Tensor, z_ref: Tensor) -> None:
        """Fix the "auto" bandwidths from paired embeddings; once only.

        Every rank must pass the same rows (the module passes the gathered global batch), so
        all ranks derive the same bandwidths.
        """
        if self.fitted:
            return
        for side, z in (("encoder", z_enc), ("ref", z_ref)):
            buffer = getattr(self, f"sigma_{side}_value")
            if not _is_fitted(buffer):
                buffer.fill_(self._median_sigma(z))
        self._on_fitted(z_enc.shape[1], z_ref.shape[1])

    def _on_fitted(self, encoder_dim: int, ref_dim: int) -> None:
        """Hook for what depends on the fitted bandwidths."""

    def _median_sigma(self, z: Tensor) -> float:
        """sigma_scale x the median pairwise distance of all rows of `z` (detached)."""
        z = self._prepare(z.detach())
        return estimate_sigma(z, scale=self.sigma_scale, max_samples=len(z), seed=self.seed)

    def training_sigmas(self, z_enc: Tensor, z_ref: Tensor) -> tuple[float, float]:
        """Bandwidths of this training batch: the fitted ones, or the batch's median rule."""
        if self.bandwidth == "batch":
            return self._median_sigma(z_enc), self._median_sigma(z_ref)
        return float(self.sigma_encoder_value), float(self.sigma_ref_value)

    def _kernels(self, z_enc: Tensor, z_ref: Tensor, sigmas: tuple[float, float]) -> tuple:
        """Exact float64 kernel matrices of both sides, (n, n) each, with gradient."""
        x, y = self._prepare(z_enc), self._prepare(z_ref)
        if self.kernel == "cosine":
            return cosine_kernel(x), cosine_kernel(y)
        return (
            gaussian_kernel(x, sigmas[0], name="sigma_encoder"),
            gaussian_kernel(y, sigmas[1], name="sigma_ref"),
        )

    def _exact_spec_diff(
        self, z_enc: Tensor, z_ref: Tensor, sigmas: tuple[float, float]
    ) -> Tensor:
        """SPEC-diff of the exact kernels at these bandwidths, float64, differentiable."""
        kwargs = {"sigma_x": sigmas[0], "sigma_y": sigmas[1]} if self.kernel == "gaussian" else {}
        x, y = self._prepare(z_enc), self._prepare(z_ref)
        return spec_diff(x, y, kernel=self.kernel, eta=self.eta, **kwargs)

    @torch.no_grad()
    def evaluate(self, z_enc: Tensor, z_ref: Tensor) -> dict[str, float]:
        """SPEC-diff of held-out paired embeddings, exact kernels, float64, no gradient.

        Returns "exact": at the fitted bandwidths (`val/spec_diff`), the quantity the
        alignment is after; "median": with both bandwidths refitted on these embeddings
        (`sigma_scale` x their median distance, `val/spec_diff_median`), which no change of
        the embedding's overall scale can lower (for the cosine kernel it equals "exact").
        """
        if not self.fitted:
            raise RuntimeError("the bandwidths are not fixed yet: call fit() on data first")
        fitted = (float(self.sigma_encoder_value), float(self.sigma_ref_value))
        refitted = fitted
        if self.kernel == "gaussian":
            refitted = (self._median_sigma(z_enc), self._median_sigma(z_ref))
        return {
            "exact": float(self._exact_spec_diff(z_enc, z_ref, fitted)),
            "median": float(self._exact_spec_diff(z_enc, z_ref, refitted)),
        }

    def extra_repr(self) -> str:
        sigmas = ""
        if self.kernel == "gaussian":
            sigmas = f"sigma_encoder={float(self.sigma_encoder_value):.4g}, "
            sigmas += f"sigma_ref={float(self.sigma_ref_value):.4g}, bandwidth={self.bandwidth}, "
        return (
            f"weight={self.weight}, kernel={self.kernel}, eta={self.eta}, {sigmas}"
            f"every_n_steps={self.every_n_steps}"
        )


class SpectralPenalty(_KernelPenalty):
    """SPEC-diff ||(K_enc - eta K_ref) / n||_op of one batch (train/spec_diff).

    Row i of both inputs must be the same sample (the module guarantees it; the authors'
    code paired unrelated images, docs/math.md section 10.2). The value and its gradient come
    from a float64 eigen-solve (exact eigenvector, Rayleigh quotient gradient); the
    reference side carries no gradient.

    Estimators (docs/math.md section 12):
        "features": the minibatch covariances of kernel features. Gaussian kernel: random
            Fourier features with one seed for both sides (identical embeddings give exactly
            0) and per-side bandwidths. `frequencies="fixed"` keeps one draw for the whole
            run (a buffer, in checkpoints); a model can then partly fit those frequencies
            instead of the kernel. `frequencies="fresh"` draws new ones every optimizer step
            from `frequency_seed(seed, step)`: each step's estimate is unbiased for the
            kernel and nothing fixed is left to fit; no RNG state, so a resumed run draws
            what the uninterrupted one would.
        "exact": the exact n x n kernels of the batch, float64 (no random features).

    Validation (`evaluate`) always uses the fixed maps from `seed` for "features" and the
    fitted bandwidths for "exact". `normalize` puts embeddings on the unit sphere first,
    which makes a fixed bandwidth immune to the trainable encoder's norm drifting.

    Args:
        weight: lambda, the multiplier of the penalty in the total loss (0: off in training,
            still measured in validation).
        kernel: "gaussian" or "cosine" (exact features, D = d).
        eta: weight of the reference kernel; 1 compares on equal terms.
        rff_dim: random frequencies per side (2 * rff_dim features each), gaussian only.
        normalize: L2-normalise embeddings before the Gaussian kernel.
        sigma_encoder: bandwidth of the trainable side, "auto" or a float.
        sigma_ref: bandwidth of the reference side, "auto" or a float.
        sigma_scale: multiplier of the median distance for "auto" bandwidths.
        bandwidth: "fixed" (fitted once) or "batch" (median rule on every training batch).
        frequencies: "fixed" or "fresh" (gaussian features only; conf/loss/gaussian.yaml
            trains with "fresh", the default here keeps the penalty a function of its inputs).
        estimator: "features" or "exact".
        every_n_steps: evaluate the penalty on every n-th optimizer step only (1: always).
        seed: seed of the random frequencies.

    Shapes:
        forward: z_enc (n, d_enc), z_ref (n, d_ref) -> ()
    """

    name = "spec_diff"

    def __init__(
        self,
        weight: float = 1.0,
        kernel: str = "gaussian",
        eta: float = 1.0,
        rff_dim: int = 256,
        normalize: bool = True,
        sigma_encoder: Sigma = "auto",
        sigma_ref: Sigma = "auto",
        sigma_scale: float = 0.5,
        bandwidth: str = "fixed",
        frequencies: str = "fixed",
        estimator: str = "features",
        every_n_steps: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(
            weight,
            kernel,
            eta,
            normalize,
            sigma_encoder,
            sigma_ref,
            sigma_scale,
            bandwidth,
            every_n_steps,
            seed,
        )
        if frequencies not in FREQUENCIES:
            raise ValueError(f"frequencies must be one of {FREQUENCIES}, got {frequencies!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if frequencies == "fresh" and kernel != "gaussian":
            raise ValueError(
                "frequencies=fresh needs kernel=gaussian: the cosine kernel's features are "
                "exact, there are no random frequencies"
            )
        # rff_dim is checked here: the cosine kernel ignores it. The exact estimator draws no
        # frequencies in training (`frequencies` does not apply), but still builds the fixed
        # maps: they give val/spec_diff_features.
        self.rff_dim = check_positive_int(rff_dim, "rff_dim") if kernel == "gaussian" else 0
        self.frequencies = frequencies
        self.estimator = estimator
        self.map_encoder: nn.Module | None = None
        self.map_ref: nn.Module | None = None
        self.register_load_state_dict_post_hook(_sync_map_sigmas)

    def bind(self, encoder_dim: int, ref_dim: int) -> None:
        """Create the feature maps for embeddings of these widths (before loading weights)."""
        self.map_encoder = self._feature_map(encoder_dim, self.sigma_encoder_value)
        self.map_ref = self._feature_map(ref_dim, self.sigma_ref_value)

    def _feature_map(self, dim: int, sigma: Tensor) -> nn.Module:
        if self.kernel == "cosine":
            return CosineFeatures(dim)
        # Unfitted maps hold unit-bandwidth frequencies of the right shape, so a checkpoint's
        # fitted frequencies load strictly into a freshly built module.
        value = float(sigma) if _is_fitted(sigma) else 1.0
        return RandomFourierFeatures(dim, self.rff_dim, value, seed=self.seed).to(sigma.device)

    @torch.no_grad()
    def fit(self, z_enc: Tensor, z_ref: Tensor) -> None:
        """Fix the "auto" bandwidths (see the base class) and rebuild the maps with them."""
        if self.map_encoder is None:
            raise RuntimeError("SpectralPenalty.bind(encoder_dim, ref_dim) must be called first")
        super().fit(z_enc, z_ref)

    def _on_fitted(self, encoder_dim: int, ref_dim: int) -> None:
        self.map_encoder = self._feature_map(encoder_dim, self.sigma_encoder_value)
        self.map_ref = self._feature_map(ref_dim, self.sigma_ref_value)

    def features(
        self, z_enc: Tensor, z_ref: Tensor, dtype: torch.dtype = torch.float64
    ) -> tuple[Tensor, Tensor]:
        """Fixed-map kernel features of both sides, (n, D_enc) and (n, D_ref), in `dtype`."""
        if not self.fitted:
            raise RuntimeError("the bandwidths are not fixed yet: call fit() on data first")
        return self.map_encoder(self._prepare(z_enc, dtype)), self.map_ref(
            self._prepare(z_ref, dtype)
        )

    def forward(self, z_enc: Tensor, z_ref: Tensor, step: int | None = None) -> Tensor:
        """Differentiable SPEC-diff of a training batch (float64 eigen-solve), float64 scalar.

        `step` (the optimizer step) seeds fresh frequencies; fixed ones ignore it. The
        feature maps run in float32 here (with autocast off): their error is ~1e-7, far below
        the O(rff_dim^-1/2) random-feature error, and the wide reference projection is the
        penalty's largest cost after the solve. Evaluation uses float64 throughout.
        """
        if not self.fitted:
            raise RuntimeError("the bandwidths are not fixed yet: call fit() on data first")
        z_ref = z_ref.detach()
        with torch.autocast(z_enc.device.type, enabled=False):
            if self.estimator == "exact":
                return self._exact_spec_diff(z_enc, z_ref, self.training_sigmas(z_enc, z_ref))
            if self.frequencies == "fixed" and self.bandwidth == "fixed":
                phi_enc, phi_ref = self.features(z_enc, z_ref, dtype=torch.float32)
            else:
                phi_enc, phi_ref = self._training_features(z_enc, z_ref, step)
        return _spec_diff_features(phi_enc, phi_ref, eta=self.eta)

    def _training_features(
        self, z_enc: Tensor, z_ref: Tensor, step: int | None
    ) -> tuple[Tensor, Tensor]:
        """float32 random features with this step's frequencies and/or bandwidths."""
        sigmas = self.training_sigmas(z_enc, z_ref)
        if self.frequencies == "fixed":
            # The fixed map holds W / sigma_fitted; scaling the input by sigma_fitted / sigma
            # gives the same draws W at bandwidth sigma (no gradient flows through sigma).
            fitted = (float(self.sigma_encoder_value), float(self.sigma_ref_value))
            x = self._prepare(z_enc, torch.float32) * (fitted[0] / sigmas[0])
            y = self._prepare(z_ref, torch.float32) * (fitted[1] / sigmas[1])
            return self.map_encoder(x), self.map_ref(y)
        if step is None:
            raise ValueError("frequencies=fresh draws per optimizer step: pass step=...")
        seed = frequency_seed(self.seed, step)
        # One seed for both sides, as the fixed maps: identical embeddings still give 0.
        # Drawn where and as they are used (float32, the embeddings' device): 2.7 M float64
        # normals on the CPU took 38 ms a step at ViT-B-32 widths, more than the solve.
        maps = [
            RandomFourierFeatures(
                z.shape[1], self.rff_dim, sigma, seed=seed, dtype=torch.float32, device=z.device
            )
            for z, sigma in ((z_enc, sigmas[0]), (z_ref, sigmas[1]))
        ]
        return (
            maps[0](self._prepare(z_enc, torch.float32)),
            maps[1](self._prepare(z_ref, torch.float32)),
        )

    @torch.no_grad()
    def evaluate(self, z_enc: Tensor, z_ref: Tensor) -> dict[str, float]:
        """SPEC-diff of held-out paired embeddings, float64, no gradient.

        Returns "exact" and "median" (see the base class) and "features": the fixed maps
        from `seed` at the fitted bandwidths, i.e. the fixed-frequency penalty on held-out
        data; a value well below "exact" means the model fits those frequencies.
        """
        values = super().evaluate(z_enc, z_ref)
        phi_enc, phi_ref = self.features(z_enc, z_ref)
        values["features"] = float(_spec_diff_features(phi_enc, phi_ref, eta=self.eta))
        return values

    def extra_repr(self) -> str:
        options = f", estimator={self.estimator}"
        if self.kernel == "gaussian":
            options += f", rff_dim={self.rff_dim}, frequencies={self.frequencies}"
        return super().extra_repr() + options


class KernelMatchingPenalty(_KernelPenalty):
    """KUEA-style baseline: distance of the minibatch kernel matrices, entry by entry.

    Gong et al. (ICML 2025) align an encoder to a reference by minimising the expected
    squared difference of their kernel values over pairs of samples; their code computes it
    on each batch as mean((K_enc - K_ref)^2) over all n^2 entries. `norm` picks:
        "mean_squared" (train/kuea): ||K_enc - K_ref||_F^2 / n^2, that code's loss;
        "frobenius" (train/kuea_frobenius): ||K_enc - K_ref||_F / n, its square root: the
            Frobenius norm of the same (K_enc - K_ref) / n whose operator norm is SPEC-diff,
            so the two penalties have one scale (SPEC-diff <= this).
    The kernels are exact (n x n, float64), with the same bandwidth rules as
    `SpectralPenalty`; KUEA's "stay close to the initial model" term is `AnchorLoss`.

    Args:
        weight: multiplier of the term in the total loss.
        norm: "mean_squared" or "frobenius".
        kernel, normalize, sigma_encoder, sigma_ref, sigma_scale, bandwidth, every_n_steps,
            seed: as for `SpectralPenalty`. Validation reports SPEC-diff with eta = 1.

    Shapes:
        forward: z_enc (n, d_enc), z_ref (n, d_ref) -> ()
    """

    def __init__(
        self,
        weight: float = 1.0,
        norm: str = "mean_squared",
        kernel: str = "gaussian",
        normalize: bool = True,
        sigma_encoder: Sigma = "auto",
        sigma_ref: Sigma = "auto",
        sigma_scale: float = 0.5,
        bandwidth: str = "fixed",
        every_n_steps: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(
            weight,
            kernel,
            1.0,
            normalize,
            sigma_encoder,
            sigma_ref,
            sigma_scale,
            bandwidth,
            every_n_steps,
            seed,
        )
        if norm not in MATCHING_NORMS:
            raise ValueError(f"norm must be one of {tuple(MATCHING_NORMS)}, got {norm!r}")
        self.norm = norm
        self.name = MATCHING_NORMS[norm]

    def forward(self, z_enc: Tensor, z_ref: Tensor, step: int | None = None) -> Tensor:
        """The kernel distance of a training batch, float64 scalar (`step` is unused)."""
        if not self.fitted:
            raise RuntimeError("the bandwidths are not fixed yet: call fit() on data first")
        z_ref = z_ref.detach()
        with torch.autocast(z_enc.device.type, enabled=False):
            k_enc, k_ref = self._kernels(z_enc, z_ref, self.training_sigmas(z_enc, z_ref))
            difference = k_enc - k_ref
            if self.norm == "mean_squared":
                return difference.square().mean()
            # matrix_norm's gradient at 0 is 0 (a subgradient), where sqrt(mean) gives NaN.
            return torch.linalg.matrix_norm(difference) / len(difference)

    def extra_repr(self) -> str:
        return f"norm={self.norm}, " + super().extra_repr()


def _is_fitted(sigma: Tensor) -> bool:
    # Neither the 0 marker nor a fit on non-finite embeddings (NaN) is a bandwidth.
    return bool(sigma.isfinite() and sigma > 0)


def _repair_sigmas(module: _KernelPenalty, incompatible_keys: object) -> None:
    # Older checkpoints marked an unfitted bandwidth with NaN; saved again, it must not
    # read as divergence.
    for side in ("encoder", "ref"):
        buffer = getattr(module, f"sigma_{side}_value")
        if buffer.isnan():
            buffer.zero_()


def _sync_map_sigmas(module: SpectralPenalty, incompatible_keys: object) -> None:
    # Loaded frequencies already include 1/sigma; keep the maps' reported sigma in step.
    for side in ("encoder", "ref"):
        buffer = getattr(module, f"sigma_{side}_value")
        feature_map = getattr(module, f"map_{side}")
        if isinstance(feature_map, RandomFourierFeatures) and _is_fitted(buffer):
            feature_map.sigma = float(buffer)
