"""The SPEC-align penalty: minibatch SPEC-diff between trainable and reference embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spec_align.spectrum import CosineFeatures, RandomFourierFeatures, estimate_sigma, spec_diff
from spec_align.spectrum import spec_diff_features as _spec_diff_features
from spec_align.spectrum.validation import check_eta, check_kernel, check_positive_int, check_sigma

__all__ = ["SpectralPenalty"]

Sigma = float | str


class SpectralPenalty(nn.Module):
    """SPEC-diff ||(K_enc - eta K_ref) / n||_op of one batch, with fixed feature maps.

    Row i of both inputs must be the same sample (the module guarantees it; the authors'
    code paired unrelated images, docs/math.md section 10.2). The value and its gradient come
    from `spec_align.spectrum.spec_diff_features` in float64 (exact eigenvector, Rayleigh quotient
    gradient); the reference side carries no gradient.

    Gaussian kernel: random Fourier features with one seed for both sides (identical
    embeddings give exactly 0) and per-side bandwidths. An "auto" bandwidth is fixed once,
    by `fit`, from the first data the penalty sees (`sigma_scale` x median pairwise distance),
    then never changes: the loss compares kernels at a fixed scale, and a resumed run continues
    with the same maps because bandwidths and frequencies are buffers in the checkpoint.
    `normalize` puts embeddings on the unit sphere first, which makes the fixed bandwidth
    immune to the trainable encoder's norm drifting during training.

    Args:
        weight: lambda, the multiplier of the penalty in the total loss (0: off in training,
            still measured in validation).
        kernel: "gaussian" (random Fourier features) or "cosine" (exact, D = d).
        eta: weight of the reference kernel; 1 compares on equal terms.
        rff_dim: random frequencies per side (2 * rff_dim features each), gaussian only.
        normalize: L2-normalise embeddings before the Gaussian kernel.
        sigma_encoder: bandwidth of the trainable side, "auto" or a float.
        sigma_ref: bandwidth of the reference side, "auto" or a float.
        sigma_scale: multiplier of the median distance for "auto" bandwidths.
        every_n_steps: evaluate the penalty on every n-th optimizer step only (1: always).
        seed: seed of the random frequencies.

    Shapes:
        forward: z_enc (n, d_enc), z_ref (n, d_ref) -> ()
    """

    sigma_encoder_value: Tensor
    sigma_ref_value: Tensor

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
        every_n_steps: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_kernel(kernel)  # rff_dim is checked below: the cosine kernel ignores it
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"penalty weight must be a finite float >= 0, got {weight}")
        self.every_n_steps = check_positive_int(every_n_steps, "every_n_steps")
        self.rff_dim = check_positive_int(rff_dim, "rff_dim") if kernel == "gaussian" else 0
        sigmas = {"encoder": sigma_encoder, "ref": sigma_ref}
        for side, sigma in sigmas.items():
            if sigma != "auto":
                sigmas[side] = check_sigma(sigma, f"sigma_{side}")
        self.weight = float(weight)
        self.kernel = kernel
        self.eta = check_eta(eta)
        self.normalize = bool(normalize)
        self.sigma_scale = check_sigma(sigma_scale, "sigma_scale")
        self.seed = int(seed)
        self._auto = {side: sigma == "auto" for side, sigma in sigmas.items()}
        # 0 marks a bandwidth still to be fitted (a finite marker: checkpoints must hold no
        # NaN, see losses/divergence.py); buffers so checkpoints carry them.
        for side, sigma in sigmas.items():
            value = 0.0 if sigma == "auto" else sigma
            self.register_buffer(f"sigma_{side}_value", torch.tensor(value, dtype=torch.float64))
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
        """Fix the "auto" bandwidths from paired embeddings and rebuild the maps; once only.

        Every rank must pass the same rows (the module passes the gathered global batch), so
        all ranks derive the same bandwidths.
        """
        if self.map_encoder is None:
            raise RuntimeError("SpectralPenalty.bind(encoder_dim, ref_dim) must be called first")
        if self.fitted:
            return
        for side, z, dim in (
            ("encoder", z_enc, z_enc.shape[1]),
            ("ref", z_ref, z_ref.shape[1]),
        ):
            buffer = getattr(self, f"sigma_{side}_value")
            if not _is_fitted(buffer):
                sigma = estimate_sigma(self._prepare(z), scale=self.sigma_scale, seed=self.seed)
                buffer.fill_(sigma)
            setattr(self, f"map_{side}", self._feature_map(dim, buffer))

    def features(
        self, z_enc: Tensor, z_ref: Tensor, dtype: torch.dtype = torch.float64
    ) -> tuple[Tensor, Tensor]:
        """Kernel features of both sides, (n, D_enc) and (n, D_ref), computed in `dtype`."""
        if not self.fitted:
            raise RuntimeError("the bandwidths are not fixed yet: call fit() on data first")
        return self.map_encoder(self._prepare(z_enc, dtype)), self.map_ref(
            self._prepare(z_ref, dtype)
        )

    def forward(self, z_enc: Tensor, z_ref: Tensor) -> Tensor:
        """Differentiable SPEC-diff of a batch (float64 eigen-solve), as a float64 scalar.

        The feature maps run in float32 here (with autocast off): their error is ~1e-7, far
        below the O(rff_dim^-1/2) random-feature error, and the wide reference projection is
        the penalty's largest cost after the solve. Evaluation uses float64 throughout.
        """
        with torch.autocast(z_enc.device.type, enabled=False):
            phi_enc, phi_ref = self.features(z_enc, z_ref.detach(), dtype=torch.float32)
        return _spec_diff_features(phi_enc, phi_ref, eta=self.eta)

    @torch.no_grad()
    def evaluate(self, z_enc: Tensor, z_ref: Tensor) -> dict[str, float]:
        """SPEC-diff of held-out paired embeddings, float64, no gradient.

        Returns "exact": the exact kernels with the fitted bandwidths, the quantity the
        alignment is after, free of the training maps' random-feature error (a model can lower
        the penalty partly by fitting the fixed frequencies); "features": the same with the
        training maps, i.e. the penalty itself on held-out data.
        """
        phi_enc, phi_ref = self.features(z_enc, z_ref)
        sigmas = {}
        if self.kernel == "gaussian":
            sigmas = dict(
                sigma_x=float(self.sigma_encoder_value), sigma_y=float(self.sigma_ref_value)
            )
        exact = spec_diff(
            self._prepare(z_enc), self._prepare(z_ref), kernel=self.kernel, eta=self.eta, **sigmas
        )
        return {
            "exact": float(exact),
            "features": float(_spec_diff_features(phi_enc, phi_ref, eta=self.eta)),
        }

    def extra_repr(self) -> str:
        sigmas = f"sigma_encoder={float(self.sigma_encoder_value):.4g}, "
        sigmas += f"sigma_ref={float(self.sigma_ref_value):.4g}, "
        if self.kernel == "cosine":
            sigmas = ""
        return (
            f"weight={self.weight}, kernel={self.kernel}, eta={self.eta}, {sigmas}"
            f"rff_dim={self.rff_dim}, every_n_steps={self.every_n_steps}"
        )


def _is_fitted(sigma: Tensor) -> bool:
    # Neither the 0 marker nor a fit on non-finite embeddings (NaN) is a bandwidth.
    return bool(sigma.isfinite() and sigma > 0)


def _sync_map_sigmas(module: SpectralPenalty, incompatible_keys: object) -> None:
    for side in ("encoder", "ref"):
        buffer = getattr(module, f"sigma_{side}_value")
        # Older checkpoints marked an unfitted bandwidth with NaN; saved again, it must not
        # read as divergence.
        if buffer.isnan():
            buffer.zero_()
        # Loaded frequencies already include 1/sigma; keep the maps' reported sigma in step.
        feature_map = getattr(module, f"map_{side}")
        if isinstance(feature_map, RandomFourierFeatures) and _is_fitted(buffer):
            feature_map.sigma = float(buffer)
