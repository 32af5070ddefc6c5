"""SPEC-diff: the operator norm of the difference kernel, differentiable."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from spec_align.spectrum.algorithm import Sigma, build_feature_maps
from spec_align.spectrum.features import estimate_sigma, gaussian_kernel
from spec_align.spectrum.linalg import feature_space_eigh, joint_features, symmetric_eigh
from spec_align.spectrum.validation import (
    as_tensor,
    check_eta,
    check_kernel,
    check_pair,
    check_sigma,
    check_sigma_scale,
)

__all__ = ["spec_diff", "spec_diff_features"]


def spec_diff(
    x: object,
    y: object,
    *,
    kernel: str = "gaussian",
    sigma_x: Sigma = "auto",
    sigma_y: Sigma = "auto",
    eta: float = 1.0,
    rff_dim: int | None = None,
    seed: int = 0,
) -> Tensor:
    """SPEC-diff ||(K_x - eta * K_y) / n||_op = max(lambda_max, -lambda_min), differentiable.

    Gradients flow to x and y (not to sigma="auto", which is estimated from detached data).
    Arguments mean what they mean in `spec_align.compare`.

    Shapes:
        x: (n, d_x), y: (n, d_y) -> scalar tensor in x's floating dtype.
    """
    x, y = as_tensor(x, "x"), as_tensor(y, "y")
    check_pair(x, y)
    eta = check_eta(eta)
    rff_dim = check_kernel(kernel, rff_dim)
    if kernel == "gaussian":
        auto_x = isinstance(sigma_x, str) and sigma_x == "auto"
        auto_y = isinstance(sigma_y, str) and sigma_y == "auto"
        sigma_x = estimate_sigma(x, seed=seed) if auto_x else sigma_x
        sigma_y = estimate_sigma(y, seed=seed) if auto_y else sigma_y
        sigma_x = check_sigma(sigma_x, "sigma_x")
        sigma_y = check_sigma(sigma_y, "sigma_y")
        check_sigma_scale(x, sigma_x, "sigma_x")
        check_sigma_scale(y, sigma_y, "sigma_y")
    if kernel == "gaussian" and rff_dim is None:
        with torch.autocast(x.device.type, enabled=False):
            x64, y64 = x.to(torch.float64), y.to(torch.float64)
            k_x = gaussian_kernel(x64, sigma_x, name="sigma_x")
            delta = (k_x - eta * gaussian_kernel(y64, sigma_y, name="sigma_y")) / len(x)
            return _dominant_rayleigh_quotient(delta).abs().to(x.dtype)
    map_x, map_y = build_feature_maps(
        x.shape[1],
        y.shape[1],
        kernel=kernel,
        sigma_x=sigma_x,
        sigma_y=sigma_y,
        rff_dim=rff_dim,
        seed=seed,
    )
    map_x, map_y = map_x.to(x.device), map_y.to(x.device)
    return spec_diff_features(map_x(x), map_y(y), eta=eta)


def spec_diff_features(phi_x: Tensor, phi_y: Tensor, *, eta: float = 1.0) -> Tensor:
    """SPEC-diff from explicit features of the same samples (phi_x phi_x^T = K_x), differentiable.

    Solves on the cheaper side: the n x n difference kernel when n <= D_x + D_y, otherwise the
    (D_x + D_y)-square dual. The eigenvector comes from a float64 symmetric solve without
    gradient, and the value is its Rayleigh quotient with gradient. That quotient equals the
    eigenvalue and its gradient is the simple-eigenvalue derivative u^T dDelta u (docs/math.md
    section 4.2), taken for the top positive and top negative eigenvalue alike: a symmetric solve
    separates them exactly even when lambda_max ~ -lambda_min, where power iteration stalls.

    Shapes:
        phi_x: (n, D_x), phi_y: (n, D_y) -> scalar tensor in phi_x's dtype.
    """
    check_pair(phi_x, phi_y)
    eta = check_eta(eta)
    n, dim_x = phi_x.shape
    with torch.autocast(phi_x.device.type, enabled=False):
        if n <= dim_x + phi_y.shape[1]:
            x, y = phi_x.to(torch.float64), phi_y.to(torch.float64)
            # Only the eigenvector needs the n x n kernel (n Delta, same eigenvectors); the
            # value with gradient is u^T Delta u = (||x^T u||^2 - eta ||y^T u||^2) / n,
            # O(n m) instead of differentiating the O(n^2 m) product (twice its cost again in
            # the backward pass). No joint matrix: at batch size this path is a training
            # step's hot loop, and copying or scaling (n, m) float64 blocks costs as much as
            # the products themselves.
            with torch.no_grad():
                u = _dominant_eigenvector(torch.addmm(x @ x.T, y, y.T, alpha=-eta))
            value = ((u @ x).square().sum() - eta * (u @ y).square().sum()) / n
            return value.abs().to(phi_x.dtype)
        joint = joint_features(phi_x, phi_y, eta) / math.sqrt(n)
        cov = joint.T @ joint
        with torch.no_grad():
            values, vectors, _ = feature_space_eigh(cov, dim_x, 1 + eta, count=1)
            dominant = values.abs().argmax() if values.numel() else None
        if dominant is None or not vectors[:, dominant].any():
            # Delta = 0 up to rounding (e.g. identical embeddings): the norm and a valid
            # subgradient are both zero.
            return (cov.sum() * 0).to(phi_x.dtype)
        v = vectors[:, dominant]
        # M = J C has left eigenvector J v, so lambda = v^T C v / v^T J v with d lambda the
        # simple-eigenvalue derivative; ||Psi v||^2 = v^T C v keeps the quotient well scaled.
        j_v = torch.cat([v[:dim_x], -v[dim_x:]])
        return ((joint @ v).square().sum() / (v @ j_v)).abs().to(phi_x.dtype)


def _dominant_eigenvector(delta: Tensor) -> Tensor:
    """Unit eigenvector of the largest-|lambda| eigenvalue of the symmetric `delta`."""
    values, vectors = symmetric_eigh(delta, count=1)
    return vectors[:, values.abs().argmax()]


def _dominant_rayleigh_quotient(delta: Tensor) -> Tensor:
    """u^T delta u for the unit eigenvector u of the largest-|lambda| eigenvalue of `delta`."""
    with torch.no_grad():
        u = _dominant_eigenvector(delta)
    return u @ delta @ u
