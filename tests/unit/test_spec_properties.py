"""The properties P1-P11 of docs/math.md section 11, each with its tolerance."""

import math

import numpy as np
import pytest
import torch

from spec_align import compare, difference_kernel, spec_diff
from tests.helpers import clustered_pair


def _planted(n_per_group=(100, 100, 100), noise=0.0, seed=0):
    """x separates groups A, B, C; y merges A and B (docs/math.md section 11, P8)."""
    generator = torch.Generator().manual_seed(seed)
    groups = torch.cat([torch.full((k,), g) for g, k in enumerate(n_per_group)])
    centers_x = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]])
    centers_y = torch.tensor([[0.0, 0.0], [0.0, 0.0], [50.0, 50.0]])
    x = centers_x[groups] + noise * torch.randn(len(groups), 2, generator=generator)
    y = centers_y[groups] + noise * torch.randn(len(groups), 2, generator=generator)
    return x.double(), y.double(), groups


def _exact_eigh(delta):
    values, vectors = torch.linalg.eigh(delta)
    return values.flip(0), vectors.flip(1)


# P1 identical embeddings
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel="gaussian", sigma_x=1.5, sigma_y=1.5),
        dict(kernel="gaussian", sigma_x=1.5, sigma_y=1.5, rff_dim=300),
        dict(kernel="cosine"),
    ],
)
def test_identical_embeddings_give_zero_spectrum(kwargs):
    x, _ = clustered_pair()
    result = compare(x, x, **kwargs)
    assert result.eigenvalues.abs().max() < 1e-12
    assert result.spec_diff < 1e-12
    assert result.num_modes == 0
    assert float(spec_diff(x, x, **kwargs)) < 1e-12


# P2 swap
@pytest.mark.parametrize("kernel", ["gaussian", "cosine"])
def test_swap_negates_spectrum(kernel):
    x, y = clustered_pair()
    kwargs = dict(kernel=kernel, sigma_x=2.0, sigma_y=1.0) if kernel == "gaussian" else {}
    swapped_kwargs = dict(kernel=kernel, sigma_x=1.0, sigma_y=2.0) if kernel == "gaussian" else {}
    forward = compare(x, y, **kwargs)
    backward = compare(y, x, **swapped_kwargs)
    torch.testing.assert_close(
        forward.eigenvalues, -backward.eigenvalues.flip(0), atol=1e-13, rtol=0
    )
    assert forward.spec_diff == pytest.approx(backward.spec_diff, abs=1e-13)
    assert float(spec_diff(x, y, **kwargs)) == pytest.approx(
        float(spec_diff(y, x, **swapped_kwargs)), abs=1e-13
    )


# P3 trace
@pytest.mark.parametrize("eta", [1.0, 2.0, 0.5, 0.0])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel="gaussian", sigma_x=2.0, sigma_y=1.0),
        dict(kernel="gaussian", sigma_x=2.0, sigma_y=1.0, rff_dim=50),
        dict(kernel="cosine"),
    ],
)
def test_trace_is_one_minus_eta(eta, kwargs):
    x, y = clustered_pair()
    result = compare(x, y, eta=eta, **kwargs)
    assert float(result.eigenvalues.sum()) == pytest.approx(1 - eta, abs=1e-10)
    if eta == 0.0:  # the spectrum of K_x / n alone lies in [0, 1]
        assert float(result.eigenvalues.min()) > -1e-12
        assert float(result.eigenvalues.max()) <= 1 + 1e-12


# P4 and P11: the dual (feature-space) path equals the n x n path, same 1/n scaling
@pytest.mark.parametrize("n", [40, 300])  # fewer and more samples than features
@pytest.mark.parametrize("eta", [1.0, 0.5, 2.0])
def test_cosine_feature_path_matches_exact_kernel(n, eta):
    x, y = clustered_pair(n=n, d_x=30, d_y=20)
    result = compare(x, y, kernel="cosine", eta=eta, top_k=5)
    assert result.method == "features"
    exact_values, exact_vectors = _exact_eigh(difference_kernel(x, y, kernel="cosine", eta=eta))
    torch.testing.assert_close(result.eigenvalues[:10], exact_values[:10], atol=1e-9, rtol=0)
    torch.testing.assert_close(
        result.eigenvalues[-10:],
        exact_values[-10:],
        atol=1e-9,
        rtol=0,
    )
    # P5 eigenvector recovery, sqrt(eta) included: |cos(scores, exact u)| = 1
    for j in range(result.num_modes):
        i = int((exact_values - result.mode_eigenvalues[j]).abs().argmin())
        cosine = float(result.scores[:, j] @ exact_vectors[:, i])
        assert abs(cosine) == pytest.approx(1.0, abs=1e-9)


def test_rff_feature_path_matches_its_own_gram_matrix():
    """The dual solve reproduces eig(Psi J Psi^T) for the same random features (n < and > m)."""
    for n in (60, 400):
        x, y = clustered_pair(n=n)
        result = compare(x, y, sigma_x=3.0, sigma_y=2.0, rff_dim=50, top_k=5, eta=1.5)
        phi_x, phi_y = result.feature_map_x(x), result.feature_map_y(y)
        delta = (phi_x @ phi_x.T - 1.5 * phi_y @ phi_y.T) / n
        exact_values, exact_vectors = _exact_eigh(delta)
        torch.testing.assert_close(result.eigenvalues[:5], exact_values[:5], atol=1e-12, rtol=0)
        torch.testing.assert_close(
            result.eigenvalues[-5:],
            exact_values[-5:],
            atol=1e-12,
            rtol=0,
        )
        # no spurious modes: nonzero eigenvalues number at most rank(Delta) <= min(n, m)
        nonzero = (result.eigenvalues.abs() > 1e-10).sum()
        assert nonzero == (exact_values.abs() > 1e-10).sum()
        cosine = float(result.scores[:, 0] @ exact_vectors[:, 0])
        assert abs(cosine) == pytest.approx(1.0, abs=1e-10)


# P6 RFF convergence
def test_rff_eigenvalues_converge_to_exact_gaussian():
    x, y = clustered_pair(n=200)
    exact = compare(x, y, sigma_x=3.0, sigma_y=2.5, top_k=3)
    errors = {}
    for rff_dim in (100, 6400):
        errs = []
        for seed in range(3):
            approx = compare(x, y, sigma_x=3.0, sigma_y=2.5, top_k=3, rff_dim=rff_dim, seed=seed)
            errs.append(float((approx.mode_eigenvalues - exact.mode_eigenvalues).abs().max()))
        errors[rff_dim] = float(np.mean(errs))
    # O(D^-1/2): 64x more frequencies should cut the error about 8x; ask for 3x.
    assert errors[6400] < errors[100] / 3
    assert errors[6400] < 0.01


# P7 invariances
def test_cosine_spectrum_invariant_to_rotation():
    x, y = clustered_pair(d_x=8)
    rotation, _ = torch.linalg.qr(
        torch.randn(8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    )
    base = compare(x, y, kernel="cosine")
    rotated = compare(x @ rotation, y, kernel="cosine")
    torch.testing.assert_close(base.eigenvalues, rotated.eigenvalues, atol=1e-12, rtol=0)


def test_gaussian_spectrum_invariances():
    x, y = clustered_pair(d_x=8)
    rotation, _ = torch.linalg.qr(
        torch.randn(8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    )
    base = compare(x, y, sigma_x=2.0, sigma_y=1.5)
    moved = compare(x @ rotation + 7.0, y, sigma_x=2.0, sigma_y=1.5)
    scaled = compare(3.0 * x, y, sigma_x=6.0, sigma_y=1.5)
    auto = compare(x, y), compare(10.0 * x, 0.1 * y)  # the heuristic scales with the data
    for other in (moved, scaled):
        torch.testing.assert_close(base.eigenvalues, other.eigenvalues, atol=1e-12, rtol=0)
    torch.testing.assert_close(auto[0].eigenvalues, auto[1].eigenvalues, atol=1e-12, rtol=0)


def test_permuting_samples_permutes_scores():
    x, y, _ = _planted((90, 60, 30), noise=1.0)
    permutation = torch.randperm(180, generator=torch.Generator().manual_seed(3))
    base = compare(x, y, sigma_x=5.0, sigma_y=5.0, top_k=2)
    permuted = compare(x[permutation], y[permutation], sigma_x=5.0, sigma_y=5.0, top_k=2)
    torch.testing.assert_close(
        base.mode_eigenvalues, permuted.mode_eigenvalues, atol=1e-12, rtol=0
    )
    torch.testing.assert_close(base.scores[permutation], permuted.scores, atol=1e-10, rtol=0)


# P8 planted clusters
@pytest.mark.parametrize("kwargs", [dict(), dict(rff_dim=4000)])
def test_planted_clusters_exact(kwargs):
    sizes = (100, 50, 150)
    x, y, groups = _planted(sizes)
    result = compare(x, y, sigma_x=1.0, sigma_y=1.0, top_k=2, **kwargs)
    expected = math.sqrt(100 * 50) / 300
    tolerance = 1e-12 if not kwargs else 0.02  # RFF is an O(D^-1/2) estimate
    negative = result.num_positive  # first negative mode
    assert float(result.mode_eigenvalues[0]) == pytest.approx(expected, abs=tolerance)
    assert float(result.mode_eigenvalues[negative]) == pytest.approx(-expected, abs=tolerance)
    assert result.spec_diff == pytest.approx(expected, abs=tolerance)
    if not kwargs:  # RFF noise adds small genuine eigenvalues of the approximate kernels
        assert result.num_positive == 1 and result.num_modes == 2
        assert result.eigenvalues[1:-1].abs().max() < 1e-12
    # positive mode: the contrast 1_A/sqrt|A| - 1_B/sqrt|B|; sum > 0 orients A (the larger) up
    assert set(result.top_samples(0, 100).tolist()) == set(range(100))
    assert set(result.top_samples(0, 50, largest=False).tolist()) == set(range(100, 150))
    # negative mode: A u B, the cluster only y forms
    assert set(result.top_samples(negative, 150).tolist()) == set(range(150))
    assert result.mode_direction(0) == "x - y" and result.mode_direction(negative) == "y - x"


def test_planted_equal_thirds_give_one_third_and_a_deterministic_contrast_sign():
    x, y, _ = _planted((100, 100, 100))
    result = compare(x, y, sigma_x=1.0, sigma_y=1.0, top_k=1)
    assert result.spec_diff == pytest.approx(1 / 3, abs=1e-12)
    assert float(spec_diff(x, y, sigma_x=1.0, sigma_y=1.0)) == pytest.approx(1 / 3, abs=1e-12)
    # a balanced contrast: the pole holding the first significant sample (row 0, in A) is up
    assert set(result.top_samples(0, 100).tolist()) == set(range(100))


@pytest.mark.parametrize("kwargs", [dict(), dict(rff_dim=2000)])
def test_planted_clusters_noisy(kwargs):
    x, y, groups = _planted((100, 100, 100), noise=4.0)
    result = compare(x, y, sigma_x=8.0, sigma_y=8.0, top_k=1, **kwargs)
    assert 0.15 < result.spec_diff < 0.35
    top = result.top_samples(0, 50)
    assert len(set(groups[top].tolist())) == 1 and int(groups[top][0]) in (0, 1)
    merged = result.top_samples(1, 150)
    assert (groups[merged] != 2).float().mean() > 0.95


# P9 the SPEC-align estimator needs matched rows
def test_penalty_zero_for_matched_rows_and_not_for_mismatched():
    x, _ = clustered_pair(n=256)
    mismatch = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    for kwargs in (dict(kernel="cosine"), dict(sigma_x=2.0, sigma_y=2.0, rff_dim=256)):
        assert float(spec_diff(x, x, **kwargs)) < 1e-12
        assert float(spec_diff(x, x[mismatch], **kwargs)) > 0.1


def test_singular_covariance_gives_no_spurious_modes():
    """20 distinct samples repeated 15 times: n = 300 > m = 50 but rank(C) = 20 < m."""
    x, y = clustered_pair(n=20, d_x=30, d_y=20)
    x, y = x.repeat(15, 1), y.repeat(15, 1)
    result = compare(x, y, kernel="cosine", top_k=5)
    exact_values, _ = _exact_eigh(difference_kernel(x, y, kernel="cosine"))
    torch.testing.assert_close(result.eigenvalues[:5], exact_values[:5], atol=1e-12, rtol=0)
    torch.testing.assert_close(result.eigenvalues[-5:], exact_values[-5:], atol=1e-12, rtol=0)
    assert (result.eigenvalues.abs() > 1e-10).sum() == (exact_values.abs() > 1e-10).sum() <= 20
