"""Input checks for the SPEC entry points; each error says what was wrong and how to fix it."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_tensor",
    "check_eta",
    "check_finite",
    "check_kernel",
    "check_pair",
    "check_positive_int",
    "check_sigma",
    "check_sigma_scale",
]

KERNELS = ("gaussian", "cosine")
_ROWS_SHOWN = 5  # bad rows listed by check_finite
# A bandwidth this many times smaller than the data's largest entry is refused: the squared
# distances over sigma^2 overflow float64 (or 2 sigma^2 underflows to 0, NaN on the diagonal),
# so the kernel would be the identity at best.
MIN_RELATIVE_SIGMA = 1e-150


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
    """Raise if `a` holds NaN or inf, naming the first bad rows (and how many there are)."""
    bad = ~torch.isfinite(a)
    if bool(bad.any()):
        rows = bad.reshape(a.shape[0], -1).any(dim=1).nonzero().squeeze(1)
        shown = ", ".join(str(int(r)) for r in rows[:_ROWS_SHOWN])
        more = f" and {rows.numel() - _ROWS_SHOWN} more" if rows.numel() > _ROWS_SHOWN else ""
        raise ValueError(
            f"{name} contains NaN or inf (first at row {int(rows[0])}; "
            f"{rows.numel()} bad row{'s' if rows.numel() > 1 else ''}: {shown}{more}); "
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


def check_positive_int(value: object, name: str, *, allow_none: bool = False) -> int | None:
    """A positive integer (Python or numpy, not bool) as a Python int; None if allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        none = "None or " if allow_none else ""
        raise ValueError(f"{name} must be {none}a positive int, got {value!r}")
    if int(value) < 1:
        none = "None or " if allow_none else ""
        raise ValueError(f"{name} must be {none}a positive int, got {value!r}")
    return int(value)


def check_sigma(sigma: object, name: str) -> float:
    """Check an explicit bandwidth (Python or numpy real); returns it as a Python float."""
    if isinstance(sigma, (bool, np.bool_)) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"{name} must be 'auto' or a positive float, got {sigma!r}")
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"{name} must be a positive finite float (or 'auto'), got {sigma}")
    return sigma


def check_sigma_scale(z: Tensor, sigma: float, name: str) -> None:
    """Check that a bandwidth is usable in float64 on data `z`: not absurdly small for it.

    The Gaussian kernel exp(-||z_i - z_j||^2 / (2 sigma^2)) is computed on z rescaled by a
    power of two (see `gaussian_kernel`), so only sigma relative to the data's scale matters.
    """
    largest = float(z.detach().abs().max()) if z.numel() else 0.0
    if largest > 0 and sigma < MIN_RELATIVE_SIGMA * largest:
        raise ValueError(
            f"{name}={sigma:.3g} is too small for data whose largest absolute entry is "
            f"{largest:.3g}: (distance / sigma)^2 overflows float64, so the kernel would be 0 "
            "between all distinct samples (and NaN where 2 sigma^2 underflows); pass sigma on "
            "the scale of the data's pairwise distances, or 'auto'"
        )


def check_eta(eta: object) -> float:
    """Check the weight on the second kernel (Python or numpy real); returns a Python float."""
    if (
        isinstance(eta, (bool, np.bool_))
        or not isinstance(eta, numbers.Real)
        or not math.isfinite(float(eta))
        or float(eta) < 0
    ):
        raise ValueError(
            f"eta must be a finite float >= 0 (1.0 compares on equal terms), got {eta}"
        )
    return float(eta)


def check_kernel(kernel: str, rff_dim: object = None) -> int | None:
    """Check the kernel name and that `rff_dim` is None or a positive int for the Gaussian.

    Returns `rff_dim` as a Python int (or None).
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if rff_dim is None:
        return None
    if kernel == "cosine":
        raise ValueError(
            "rff_dim applies to kernel='gaussian' only: the cosine kernel has exact features "
            "(z / ||z||); leave rff_dim=None"
        )
    return check_positive_int(rff_dim, "rff_dim", allow_none=True)
