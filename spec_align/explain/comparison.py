"""SPEC of two (n, d) embedding matrices that may be larger than memory, on one or many ranks."""

from __future__ import annotations

import numpy as np
import torch.distributed as dist
from torch import Tensor

from spec_align.explain.loading import embedding_batches
from spec_align.spectrum import SpecResult, compare
from spec_align.spectrum.distributed import is_distributed

__all__ = ["AUTO_EXACT_MAX_SAMPLES", "AUTO_RFF_DIM", "compare_embeddings", "resolve_rff_dim"]

# rff_dim="auto": the exact n x n Gaussian kernel up to this n (three float64 n x n matrices,
# ~0.4 GB at 4096), random Fourier features beyond it.
AUTO_EXACT_MAX_SAMPLES = 4096
# Frequencies per embedding for "auto": 2048 features each, so C is 4096 x 4096 (128 MB) and
# the kernel error is O(1/sqrt(1024)) ~ 3% per entry, well below typical cluster contrasts.
AUTO_RFF_DIM = 1024


def resolve_rff_dim(rff_dim: int | str | None, kernel: str, num_samples: int) -> int | None:
    """The rff_dim to use: "auto" picks the exact kernel for small n, features for large n."""
    if rff_dim != "auto":
        return rff_dim
    if kernel == "cosine" or (num_samples <= AUTO_EXACT_MAX_SAMPLES and not is_distributed()):
        return None
    return AUTO_RFF_DIM


def compare_embeddings(
    x: np.ndarray | Tensor,
    y: np.ndarray | Tensor,
    *,
    kernel: str = "gaussian",
    sigma_x: float | str = "auto",
    sigma_y: float | str = "auto",
    eta: float = 1.0,
    rff_dim: int | str | None = "auto",
    top_k: int = 10,
    seed: int = 0,
    batch_size: int = 8192,
    names: tuple[str, str] = ("x", "y"),
    progress: bool = False,
) -> SpecResult:
    """SPEC of x vs y, streamed batch by batch from (memory-mapped) arrays.

    Inside a torch.distributed process group each rank takes a contiguous block of the rows
    (rank 0 the first) and the covariance is all-reduced (`compare(distributed=True)`); every rank
    gets the full result.

    Args:
        x: the first embedding, (n, d_x); a memory map is read in batches, never loaded whole.
        y: the second embedding, (n, d_y); row i of x and y is the same sample.
        kernel: "gaussian" or "cosine".
        sigma_x: Gaussian bandwidth of x, or "auto" (half the median pairwise distance).
        sigma_y: Gaussian bandwidth of y, or "auto".
        eta: weight of y's kernel.
        rff_dim: random Fourier frequencies per embedding, None for the exact kernel, or
            "auto" (see `resolve_rff_dim`).
        top_k: modes kept per sign.
        seed: random-feature seed.
        batch_size: rows per batch.
        names: display names (and error names) of x and y.
        progress: tqdm bars on stderr for the passes over the rows (rank 0 only).

    Returns:
        A `SpecResult` whose positive modes are "x - y" and negative ones "y - x".
    """
    rff_dim = resolve_rff_dim(rff_dim, kernel, x.shape[0])
    settings = dict(
        kernel=kernel,
        sigma_x=sigma_x,
        sigma_y=sigma_y,
        eta=eta,
        rff_dim=rff_dim,
        top_k=top_k,
        seed=seed,
        names=tuple(names),
        progress=progress,
    )
    if is_distributed():
        # Check the pairing on the whole arrays before splitting, so every rank fails alike.
        embedding_batches(x, y, batch_size=batch_size, names=names)
        world, rank = dist.get_world_size(), dist.get_rank()
        bounds = np.linspace(0, x.shape[0], world + 1).astype(int)
        block = slice(bounds[rank], bounds[rank + 1])
        batches = embedding_batches(x[block], y[block], batch_size=batch_size, names=names)
        return compare(batches, distributed=True, **settings)
    batches = embedding_batches(x, y, batch_size=batch_size, names=names)
    return compare(batches, batch_size=batch_size, **settings)
