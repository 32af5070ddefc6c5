"""The float32 random-feature path (docs/math.md section 7.1) against the float64 one."""

import pytest
import torch

from spec_align import compare
from spec_align.spectrum.linalg import feature_space_eigh
from tests.helpers import clustered_pair

# m = 4 * 520 = 2080 > 2048: precision="auto" is float32 and the solve is the partial
# (implicit Lanczos) one; n > m, so the covariance is accumulated over several batches.
RFF, N = 520, 2600
KWARGS = dict(sigma_x=3.0, sigma_y=2.5, rff_dim=RFF, top_k=4, batch_size=1000)

# Stated tolerances: float32 features and per-batch products deviate by ~1e-7 relative; the
# random-feature error itself is O(D^-1/2), about 4e-2 relative here.
EIGENVALUE_ATOL = 1e-6
SCORE_COSINE_ATOL = 1e-5


@pytest.fixture(scope="module")
def both():
    x, y = clustered_pair(n=N, d_x=8, d_y=6, groups=6)
    return compare(x, y, precision="float64", **KWARGS), compare(x, y, **KWARGS)


def test_float32_path_matches_float64_eigenvalues_and_scores(both):
    exact, fast = both
    assert fast.num_positive == exact.num_positive and fast.num_modes == exact.num_modes
    deviation = (fast.mode_eigenvalues - exact.mode_eigenvalues).abs().max()
    assert float(deviation) < EIGENVALUE_ATOL
    assert abs(fast.spec_diff - exact.spec_diff) < EIGENVALUE_ATOL
    cosines = (fast.scores * exact.scores).sum(dim=0)  # unit columns, same orientation
    assert float((1 - cosines).abs().max()) < SCORE_COSINE_ATOL
    assert fast.scores.dtype == torch.float64


def test_implicit_lanczos_matches_the_full_solve(both):
    """The partial solve on F^T J F (never formed) equals the full eigh of the formed matrix."""
    x, y = clustered_pair(n=N, d_x=8, d_y=6, groups=6)
    exact = both[0]
    phi_x, phi_y = exact.feature_map_x(x), exact.feature_map_y(y)
    psi = torch.cat([phi_x, phi_y], dim=1)
    cov = psi.T @ psi / N
    partial, _, complete = feature_space_eigh(cov, phi_x.shape[1], 2.0, 4)
    full, _, _ = feature_space_eigh(cov, phi_x.shape[1], 2.0, None)
    assert not complete
    torch.testing.assert_close(partial[:4], full[:4], atol=1e-12, rtol=0)
    torch.testing.assert_close(partial[-4:], full[-4:], atol=1e-12, rtol=0)


def test_precision_is_checked():
    x, y = clustered_pair()
    with pytest.raises(ValueError, match="precision must be one of"):
        compare(x, y, rff_dim=10, precision="half")
    with pytest.raises(ValueError, match="random Fourier features only"):
        compare(x, y, kernel="cosine", precision="float32")
