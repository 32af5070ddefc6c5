"""The eigen-solves behind SPEC, in float64 with symmetric solvers only.

Notation (docs/math.md section 6): Psi = n^-1/2 [Phi_x, sqrt(eta) Phi_y] is (n, m) with
m = D_x + D_y, J = diag(I_Dx, -I_Dy), the difference kernel is Delta = Psi J Psi^T (n, n) and
its dual is M = J C with C = Psi^T Psi (m, m). Both have the same nonzero eigenvalues.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import blas
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor, nn

__all__ = [
    "JointCovariance",
    "feature_space_eigh",
    "joint_features",
    "mapped_joint_features",
    "orient_columns",
    "symmetric_eigh",
    "zero_tolerance",
]

# Above this size a CPU solve returns only the ends of the spectrum: a full float64 eigh of a
# 4096-square matrix takes ~20 s on two cores, Lanczos finds 2 x 10 extreme pairs in a few.
FULL_SOLVE_MAX = 2048


def joint_features(
    phi_x: Tensor, phi_y: Tensor, eta: float, dtype: torch.dtype = torch.float64
) -> Tensor:
    """The unnormalised rows of Psi, [phi_x, sqrt(eta) phi_y], in `dtype` (float64 unless the
    random-feature path runs in float32, docs/math.md section 7.1).

    Shapes:
        phi_x: (b, D_x), phi_y: (b, D_y) -> (b, D_x + D_y)
    """
    return torch.cat([phi_x.to(dtype), phi_y.to(dtype) * math.sqrt(eta)], dim=1)


def zero_tolerance(size: int, scale: float) -> float:
    """Eigenvalues with |lambda| below this are rounding noise of a float64 solve.

    `scale` bounds the matrix norm: ||Delta|| <= 1 + eta for normalised kernels.
    """
    return 64.0 * size * torch.finfo(torch.float64).eps * scale


def mapped_joint_features(
    map_x: nn.Module,
    map_y: nn.Module,
    x: Tensor,
    y: Tensor,
    eta: float,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """`joint_features` of the two embeddings mapped in `dtype` (default float64) by their maps.

    Shapes:
        x: (b, d_x), y: (b, d_y) -> (b, D_x + D_y)
    """
    return joint_features(map_x(x.to(dtype)), map_y(y.to(dtype)), eta, dtype)


class JointCovariance:
    """Streaming accumulator of C = Psi^T Psi in float64; memory O(m^2), independent of n.

    Each batch adds one (b, m) x (m, b) product in the batch's dtype (float64, or float32 on
    the random-feature path), added to the float64 sum. On a CPU the product is a BLAS syrk,
    which computes only one triangle (half the flops of a matmul); the sum therefore holds
    the upper triangle, and `unnormalized` / `covariance` return the symmetric matrix.

    Args:
        dim_x: feature dimension D_x of the first map.
        dim_y: feature dimension D_y of the second map.
        eta: weight of the second kernel; Psi carries sqrt(eta) on its second block.
        device: where to accumulate.
    """

    def __init__(
        self, dim_x: int, dim_y: int, eta: float, device: torch.device | str | None = None
    ) -> None:
        self.dim_x = dim_x
        self.dim_y = dim_y
        self.eta = float(eta)
        self.num_samples = 0
        self._sum = torch.zeros(dim_x + dim_y, dim_x + dim_y, dtype=torch.float64, device=device)

    def update_joint(self, joint: Tensor) -> None:
        """Add a batch of joint features [phi_x, sqrt(eta) phi_y], (b, D_x + D_y)."""
        joint = joint.to(device=self._sum.device)
        if joint.dtype not in (torch.float32, torch.float64):
            joint = joint.to(torch.float64)
        if joint.device.type == "cpu" and joint.shape[0] > 0:
            syrk = blas.ssyrk if joint.dtype == torch.float32 else blas.dsyrk
            # (m, b) Fortran-ordered view of the row-major (b, m) batch: no copy
            product = syrk(1.0, joint.detach().contiguous().numpy().T, trans=0, lower=1)
            # the lower triangle, Fortran order = the upper triangle of its C-ordered transpose
            self._sum.add_(torch.from_numpy(product.T))
        elif joint.dtype == torch.float64:
            self._sum.addmm_(joint.T, joint)
        else:
            self._sum.add_(joint.T @ joint)
        self.num_samples += joint.shape[0]

    def merge_(self, other_sum: Tensor, other_count: int) -> None:
        """Add an unnormalised sum from another process (used after an all-reduce)."""
        self._sum += other_sum.to(self._sum)
        self.num_samples += other_count

    @property
    def unnormalized(self) -> Tensor:
        """The running sum Psi^T Psi * n, (m, m), symmetric (from the upper triangle)."""
        return self._sum.triu() + self._sum.triu(1).T

    def covariance(self) -> Tensor:
        """C = Psi^T Psi with the 1/n normalisation, (m, m)."""
        if self.num_samples == 0:
            raise ValueError("no samples were accumulated: the data source yielded no batches")
        return self.unnormalized / self.num_samples


def _partial_solve(size: int, count: int | None, on_gpu: bool) -> bool:
    """Whether `symmetric_eigh` returns only the ends of the spectrum (see its docstring)."""
    return not (count is None or on_gpu or size <= FULL_SOLVE_MAX or 4 * count >= size)


def symmetric_eigh(matrix: Tensor, count: int | None = None) -> tuple[Tensor, Tensor]:
    """Eigenpairs of a symmetric matrix, eigenvalues descending.

    All of them when `count` is None, the matrix is at most FULL_SOLVE_MAX square, or it is on
    a GPU (where a full solve is fast); otherwise the `count` largest and `count` smallest,
    from ARPACK's Lanczos in float64 to machine precision with a fixed start vector
    (deterministic), falling back to the full solve if it does not converge.

    Shapes:
        matrix: (s, s) -> values (k,), vectors (s, k) with k = s or 2 * count.
    """
    matrix = (matrix + matrix.T) / 2
    size = matrix.shape[0]
    if not _partial_solve(size, count, matrix.is_cuda):
        values, vectors = torch.linalg.eigh(matrix)
        return values.flip(0), vectors.flip(1)
    dense = matrix.detach().cpu().numpy()
    start = np.ones(size) / math.sqrt(size)
    try:  # "BE": count from each end in one Lanczos run, far faster than two one-sided runs
        values, vectors = eigsh(dense, k=2 * count, which="BE", v0=start, tol=0)
    except ArpackNoConvergence:
        return symmetric_eigh(matrix, None)
    values = torch.from_numpy(values).to(matrix)
    vectors = torch.from_numpy(vectors).to(matrix)
    order = values.argsort(descending=True)
    return values[order], vectors[:, order]


def feature_space_eigh(
    cov: Tensor, dim_x: int, scale: float, count: int | None = None
) -> tuple[Tensor, Tensor, bool]:
    """Nonzero eigenpairs of M = J C through symmetric solves only.

    With any factor C = F F^T, J C = (J F) F^T shares its nonzero spectrum with the symmetric
    matrix T = F^T J F (the AB / BA lemma). If T w = lambda w, v = J F w satisfies
    M v = lambda v, and ||Psi v||^2 = v^T C v = lambda^2, so v / |lambda| maps samples to
    unit-norm eigenvector entries of Delta.

    F is the Cholesky factor of C, without jitter: an eps * I would bias every eigenvalue
    and turn the null space into spurious +-eps modes (docs/math.md section 6.4). Cholesky is
    backward stable, so when it succeeds the eigenvalues are exact to O(eps ||C||) even for
    an ill-conditioned C. When it fails (C singular, e.g. duplicated samples), F comes from
    eigh(C) restricted to its numerically nonzero part, which drops the null space exactly.

    Args:
        cov: C, (m, m), float64, symmetric positive semi-definite.
        dim_x: D_x, the size of J's positive block.
        scale: bound on ||Delta||, for the zero tolerance.
        count: eigenpairs wanted at each end (None: all); see `symmetric_eigh`.

    Returns:
        eigenvalues (r,) sorted descending (r = rank of the factor, or 2 * count);
        feature-space vectors (m, r) scaled so that Psi @ v is the unit sample-space
        eigenvector (columns of zero eigenvalues are zero); whether the spectrum is complete.
    """
    cov = (cov + cov.T) / 2
    factor, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0:
        cov_values, cov_vectors = torch.linalg.eigh(cov)
        keep = cov_values > zero_tolerance(cov.shape[0], max(float(cov_values[-1]), scale))
        factor = cov_vectors[:, keep] * cov_values[keep].sqrt()
    signed = factor.clone()
    signed[dim_x:] *= -1  # J F
    rank = factor.shape[1]
    solved = None
    if _partial_solve(rank, count, factor.is_cuda):
        solved = _implicit_lanczos(factor, dim_x, count, triangular=int(info) == 0)
    if solved is None:
        small = factor.T @ signed  # F^T J F
        values, vectors = symmetric_eigh(small, count)
    else:
        values, vectors = solved
    nonzero = values.abs() > zero_tolerance(max(rank, 1), scale)
    inverse_norm = torch.where(nonzero, 1.0 / values.abs().clamp_min(1e-300), 0.0)
    return values, (signed @ vectors) * inverse_norm, values.shape[0] == rank


def _implicit_lanczos(
    factor: Tensor, dim_x: int, count: int, triangular: bool
) -> tuple[Tensor, Tensor] | None:
    """The `count` largest and smallest eigenpairs of T = F^T J F without forming T.

    ARPACK's Lanczos (float64, tol=0, the fixed start vector of `symmetric_eigh`) on the
    operator w -> F^T (J (F w)): two triangular matrix-vector products with the Cholesky
    factor (BLAS trmv), or two dense ones for the eigh-based factor. Forming T costs an m^3
    product; the Lanczos run needs only a few hundred matvecs. None if it does not converge.
    """
    dense = np.asfortranarray(factor.detach().cpu().numpy())
    size = dense.shape[1]
    signs = np.ones(dense.shape[0])
    signs[dim_x:] = -1.0

    def matvec(w: np.ndarray) -> np.ndarray:
        w = np.ascontiguousarray(w, dtype=np.float64).reshape(-1)
        if triangular:
            return blas.dtrmv(dense, blas.dtrmv(dense, w, lower=1) * signs, lower=1, trans=1)
        return dense.T @ ((dense @ w) * signs)

    operator = LinearOperator((size, size), matvec=matvec, dtype=np.float64)
    start = np.ones(size) / math.sqrt(size)
    try:
        values, vectors = eigsh(operator, k=2 * count, which="BE", v0=start, tol=0)
    except ArpackNoConvergence:
        return None
    values = torch.from_numpy(values).to(factor)
    vectors = torch.from_numpy(vectors).to(factor)
    order = values.argsort(descending=True)
    return values[order], vectors[:, order]


def orient_columns(scores: Tensor) -> Tensor:
    """Deterministic signs for eigenvectors: +1 or -1 per column of `scores` (n, k).

    A column is flipped so that its entries sum to a positive number, which puts a cluster's
    members at the top. A contrast mode (one group up, another down, e.g. 1_A - 1_B with
    |A| = |B|) sums to about zero and the sum's sign is noise (docs/math.md section 3.2); when
    |sum| < 0.1 * sum(|u|), the column is instead flipped so that its first sample (lowest
    row index) with |u_i| >= half the column's max is positive.
    """
    sums = scores.sum(dim=0)
    magnitudes = scores.abs()
    balanced = sums.abs() < 0.1 * magnitudes.sum(dim=0)
    significant = magnitudes >= 0.5 * magnitudes.max(dim=0).values
    first_significant = significant.to(torch.int8).argmax(dim=0)
    anchor = scores.gather(0, first_significant[None, :]).squeeze(0)
    sign_source = torch.where(balanced, anchor, sums)
    return torch.where(sign_source < 0, -1.0, 1.0).to(scores.dtype)
