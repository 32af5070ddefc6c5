"""Input checks for the SPEC entry points; each error says what was wrong and how to fix it."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_tensor",
    "check_eta",
    "check_finite",
    "check_kernel",
    "check_pair",
    "check_sigma",
]

KERNELS = ("gaussian", "cosine")


def as_tensor(a: object, name: str) -> Tensor:
    """Turn a numpy array or tensor of shape (n, d) into a floating tensor (float64 for numpy)."""
    if isinstance(a, np.ndarray):
        if not np.issubdtype(a.dtype, np.number):
            raise TypeError(f"{name} must hold numbers, got a numpy array of dtype {a.dtype}")
        a = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
    elif not isinstance(a, Tensor):
        raise TypeError(
            f"{name} must be a numpy array or torch tensor of shape (n, d), got {type(a).__name__}"
        )
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n samples, d features), got shape {tuple(a.shape)}")
    if not a.is_floating_point():
        a = a.to(torch.float64)
    return a


def check_finite(a: Tensor, name: str) -> Tensor:
    """Raise if `a` holds NaN or inf, naming the first bad row."""
    bad = ~torch.isfinite(a)
    if bool(bad.any()):
        row = int(bad.any(dim=1).nonzero()[0])
        raise ValueError(
            f"{name} contains NaN or inf (first at row {row}); "
            "remove or repair those samples before comparing"
        )
    return a


def check_pair(x: Tensor, y: Tensor) -> None:
    """Check that x and y are non-empty, finite, and pair the same samples row by row."""
    if x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("x and y must contain at least one sample; got an empty input")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x has {x.shape[0]} rows but y has {y.shape[0]}: SPEC needs both embeddings of the "
            "same samples, row i of x and row i of y being the same sample"
        )
    check_finite(x, "x")
    check_finite(y, "y")


def check_sigma(sigma: object, name: str) -> None:
    """Check an explicit bandwidth."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise TypeError(f"{name} must be 'auto' or a positive float, got {sigma!r}")
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"{name} must be a positive finite float (or 'auto'), got {sigma}")


def check_eta(eta: float) -> None:
    """Check the weight on the second kernel."""
    if not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(
            f"eta must be a finite float >= 0 (1.0 compares on equal terms), got {eta}"
        )


def check_kernel(kernel: str, rff_dim: object = None) -> None:
    """Check the kernel name and that `rff_dim` is None or a positive int for the Gaussian."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if rff_dim is None:
        return
    if kernel == "cosine":
        raise ValueError(
            "rff_dim applies to kernel='gaussian' only: the cosine kernel has exact features "
            "(z / ||z||); leave rff_dim=None"
        )
    if isinstance(rff_dim, bool) or not isinstance(rff_dim, int) or rff_dim < 1:
        raise ValueError(f"rff_dim must be None or a positive int, got {rff_dim!r}")
