"""Kernels and their explicit feature maps.

Both kernels are normalised, k(z, z) = 1, so every spectrum of K/n sums to one and
tr((K_x - eta * K_y) / n) = 1 - eta on every path (docs/math.md section 2.2).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from spec_align.spectrum.validation import (
    as_tensor,
    check_finite,
    check_positive_int,
    check_sigma,
    check_sigma_scale,
)

__all__ = [
    "CosineFeatures",
    "RandomFourierFeatures",
    "cosine_kernel",
    "estimate_sigma",
    "gaussian_kernel",
    "normalize_rows",
]

# Entries within [2^-SAFE_EXPONENT, 2^SAFE_EXPONENT] in magnitude square and sum without
# over- or underflow in float64; outside it, kernels rescale their input by a power of two
# first (exact: only the exponent changes), so 1e200- or 1e-200-scale data still work.
SAFE_EXPONENT = 400


def _power_of_two_scale(z: Tensor) -> float:
    """1.0 for data in the safe range, else the power of two that brings max |z| near 1.

    Dividing by a power of two is exact, so a rescaled computation gives the same bits as
    the unscaled one would have without overflow.
    """
    largest = float(z.detach().abs().max()) if z.numel() else 0.0
    if largest == 0.0 or 2.0**-SAFE_EXPONENT <= largest <= 2.0**SAFE_EXPONENT:
        return 1.0
    return math.ldexp(1.0, math.frexp(largest)[1])


def normalize_rows(z: Tensor) -> Tensor:
    """Scale every row to unit Euclidean norm.

    A row whose norm over- or underflows float64 (entries near 1e200 or 1e-200) is first
    divided by a power of two near its largest entry, exactly, so it still normalises.

    Shapes:
        z: (n, d) -> (n, d)
    """
    norms = z.norm(dim=1, keepdim=True)
    if bool(((norms == 0) | ~torch.isfinite(norms)).any()):
        # Rare path: rescale each row by 2^k (exact) and take the norms again.
        largest = z.detach().abs().amax(dim=1, keepdim=True)
        exponents = torch.frexp(largest.to(torch.float64)).exponent
        row_scale = torch.where(largest > 0, torch.ldexp(torch.ones_like(largest), exponents), 1)
        z = z / row_scale.to(z.dtype)
        norms = z.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        row = int((norms.squeeze(1) == 0).nonzero()[0])
        raise ValueError(
            f"row {row} of the embedding is all zeros, so its cosine kernel is undefined; "
            "drop such samples or use kernel='gaussian'"
        )
    return z / norms


def gaussian_kernel(z: Tensor, sigma: float, *, name: str = "sigma") -> Tensor:
    """Exact Gaussian kernel matrix exp(-||z_i - z_j||^2 / (2 sigma^2)).

    Data far from unit scale (max |z| beyond 2^+-400) is first divided by a power of two,
    and sigma with it, so squared distances neither overflow nor underflow. A sigma more
    than 1e150 times smaller than the data's largest entry is refused (ValueError naming
    `name`): the kernel would be 0 between all distinct samples, or NaN.

    Shapes:
        z: (n, d) -> (n, n)
    """
    check_sigma_scale(z, sigma, name)
    scale = _power_of_two_scale(z)
    if scale != 1.0:
        z, sigma = z / scale, sigma / scale
    sq_norms = (z * z).sum(dim=1)
    sq_dists = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (z @ z.T)).clamp_min(0.0)
    # Where 2 sigma^2 would underflow to 0 (0 / 0 = NaN on the diagonal) it is held at the
    # smallest normal float64, which gives the kernel's limit: 1 on the diagonal, 0 off it.
    # Otherwise this is exactly 2 sigma^2; sigma^2 = inf gives the other limit, all ones.
    denominator = max(2.0 * sigma**2, torch.finfo(torch.float64).tiny)
    return torch.exp(-sq_dists / denominator)


def cosine_kernel(z: Tensor) -> Tensor:
    """Exact cosine kernel matrix <z_i, z_j> / (||z_i|| ||z_j||).

    Shapes:
        z: (n, d) -> (n, n)
    """
    unit = normalize_rows(z)
    return unit @ unit.T


def estimate_sigma(
    z: object, *, max_samples: int = 1000, scale: float = 0.5, seed: int = 0
) -> float:
    """Bandwidth heuristic: `scale` times the median pairwise distance.

    The median is taken over all distinct pairs of a seeded subsample of at most
    `max_samples` rows, so the cost does not grow with n. With the default scale 0.5 a pair
    at the median distance has kernel value exp(-2) = 0.135: far samples decorrelate while
    near ones (a cluster) stay close to 1, which is what makes clusters visible as blocks.
    The result scales with the data, so scaling an embedding leaves its spectrum unchanged
    (also at scales like 1e200 or 1e-200, where the distances are taken on the data divided
    by a power of two and scaled back).

    Args:
        z: embeddings, (n, d) numpy array or tensor, finite.
        max_samples: subsample size for the pairwise distances, >= 2.
        scale: multiplier on the median distance, > 0.
        seed: seed of the subsample.

    Returns:
        sigma > 0 as a float.
    """
    z = as_tensor(z, "the embedding passed to estimate_sigma")
    max_samples = check_positive_int(max_samples, "max_samples")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a positive float, got {scale!r}")
    if not (math.isfinite(float(scale)) and float(scale) > 0):
        raise ValueError(f"scale must be a positive finite float, got {scale}")
    if z.shape[0] < 2 or max_samples < 2:
        raise ValueError(
            "sigma='auto' needs at least 2 samples (and max_samples >= 2); pass an explicit "
            "float sigma"
        )
    z = check_finite(z.detach(), "the embedding passed to sigma='auto'").to(torch.float64)
    if z.shape[0] > max_samples:
        generator = torch.Generator().manual_seed(seed)
        z = z[torch.randperm(z.shape[0], generator=generator)[:max_samples].to(z.device)]
    data_scale = _power_of_two_scale(z)
    if data_scale != 1.0:
        z = z / data_scale  # exact; cdist would overflow (or underflow) at this scale
    rows, cols = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    distances = torch.cdist(z, z)[rows, cols]
    median = float(distances.quantile(0.5)) * data_scale
    if median == 0.0:
        raise ValueError(
            "sigma='auto' found a median pairwise distance of 0 (most samples are identical); "
            "pass an explicit float sigma"
        )
    sigma = float(scale) * median
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(
            f"sigma='auto' could not compute a bandwidth: {float(scale)} x the median pairwise "
            f"distance {median:.3g} is {sigma} in float64 (the data's scale is out of range); "
            "rescale the embedding or pass an explicit float sigma"
        )
    return sigma


class CosineFeatures(nn.Module):
    """Exact feature map of the cosine kernel: phi(z) = z / ||z||, so D = d.

    Shapes:
        forward: (n, in_dim) -> (n, in_dim)
    """

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = in_dim

    def forward(self, z: Tensor) -> Tensor:
        return normalize_rows(z)


class RandomFourierFeatures(nn.Module):
    """Seeded random Fourier features of the Gaussian kernel exp(-||z - z'||^2 / (2 sigma^2)).

    phi(z) = D^-1/2 [cos(W^T z), sin(W^T z)] with the D columns of W drawn iid from
    N(0, sigma^-2 I). Then <phi(z), phi(z')> is an unbiased estimate of the kernel and
    ||phi(z)|| = 1 exactly. The frequencies are a buffer: the same seed gives the same map,
    and a saved `state_dict` restores it bit for bit.

    Args:
        in_dim: embedding dimension d.
        rff_dim: number of random frequencies D (the map has 2D outputs).
        sigma: Gaussian bandwidth, > 0.
        seed: seed of the frequencies.
        dtype, device: where the frequencies are drawn and kept. float64 on the CPU (the
            default) gives the same map from a seed everywhere, for maps that are kept.
            Throwaway maps drawn every step (the penalty's fresh frequencies) are drawn in
            float32 on the embeddings' device: 6x faster on the CPU, no host-to-device copy
            on a GPU, and a float32 error far below the random-feature error. Each
            (dtype, device) gives its own sequence for a seed, the same on every process.

    Shapes:
        forward: (n, in_dim) -> (n, 2 * rff_dim), in the dtype of the input.
    """

    frequencies: Tensor

    def __init__(
        self,
        in_dim: int,
        rff_dim: int,
        sigma: float,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_sigma(sigma, "sigma")
        if rff_dim < 1:
            raise ValueError(f"rff_dim must be a positive int, got {rff_dim}")
        self.in_dim = in_dim
        self.rff_dim = rff_dim
        self.out_dim = 2 * rff_dim
        self.sigma = float(sigma)
        self.seed = seed
        generator = torch.Generator(device=device or "cpu").manual_seed(seed)
        frequencies = torch.randn(
            in_dim, rff_dim, generator=generator, dtype=dtype, device=generator.device
        )
        self.register_buffer("frequencies", frequencies / self.sigma)

    def forward(self, z: Tensor) -> Tensor:
        if z.shape[-1] != self.in_dim:
            raise ValueError(
                f"this feature map was built for {self.in_dim}-dim embeddings, got {z.shape[-1]}"
            )
        projection = z @ self.frequencies.to(device=z.device, dtype=z.dtype)
        scale = 1.0 / math.sqrt(self.rff_dim)
        return torch.cat([torch.cos(projection), torch.sin(projection)], dim=1) * scale

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, rff_dim={self.rff_dim}, sigma={self.sigma}, seed={self.seed}"
        )
