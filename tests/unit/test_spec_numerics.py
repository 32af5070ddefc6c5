"""Numerically hostile inputs either work or fail with a message saying what and why."""

import json
import math
import sys

import numpy as np
import pytest
import torch

from spec_align import compare, difference_kernel, estimate_sigma, spec_diff
from spec_align.spectrum.features import gaussian_kernel, normalize_rows
from tests.helpers import clustered_pair

PATHS = [
    dict(),  # exact n x n Gaussian
    dict(rff_dim=16),  # random features, covariance path (n > m)
    dict(rff_dim=200),  # random features, n x n path
    dict(kernel="cosine"),
]


@pytest.mark.parametrize("kwargs", PATHS)
@pytest.mark.parametrize("scale", [1e200, 1e-200, 2.0**700])
def test_extreme_scales_give_the_unit_scale_result(kwargs, scale):
    """SPEC with sigma='auto' is scale-invariant; 1e200 used to give 'sigma ... got nan'."""
    x, y = clustered_pair(n=150)
    reference = compare(x, y, top_k=2, **kwargs)
    scaled = compare(x * scale, y, top_k=2, **kwargs)
    torch.testing.assert_close(scaled.eigenvalues, reference.eigenvalues, atol=1e-12, rtol=0)
    torch.testing.assert_close(scaled.scores, reference.scores, atol=1e-9, rtol=0)
    if kwargs.get("kernel") != "cosine":
        assert scaled.sigma_x == pytest.approx(reference.sigma_x * scale, rel=1e-12)
    assert float(spec_diff(x * scale, y, **kwargs)) == pytest.approx(
        reference.spec_diff, abs=1e-12
    )


def test_power_of_two_rescaling_is_exact():
    x, _ = clustered_pair(n=60)
    sigma = estimate_sigma(x)
    assert estimate_sigma(x * 2.0**600) == sigma * 2.0**600
    assert torch.equal(gaussian_kernel(x * 2.0**600, sigma * 2.0**600), gaussian_kernel(x, sigma))
    assert torch.equal(normalize_rows(x * 2.0**-600), normalize_rows(x))


@pytest.mark.parametrize("kwargs", [dict(), dict(rff_dim=16)])
def test_a_bandwidth_too_small_for_the_data_is_refused(kwargs):
    x, y = clustered_pair(n=150)
    with pytest.raises(ValueError, match=r"sigma_x=1e-300 is too small for data whose largest"):
        compare(x, y, sigma_x=1e-300, sigma_y=1.0, **kwargs)
    with pytest.raises(ValueError, match=r"sigma_y=1e-300 is too small"):
        spec_diff(x, y, sigma_x=1.0, sigma_y=1e-300, **kwargs)
    with pytest.raises(ValueError, match=r"sigma_x=1e-300 is too small"):
        difference_kernel(x, y, sigma_x=1e-300, sigma_y=1.0)
    # Small but usable relative to the data: the kernel is the identity, no NaN.
    tiny = compare(x * 1e-200, y, sigma_x=1e-210, sigma_y=1.0, top_k=1, **kwargs)
    assert torch.isfinite(tiny.eigenvalues).all()


def test_estimate_sigma_accepts_numpy_and_rejects_non_finite_rows():
    x, _ = clustered_pair(n=60)
    assert estimate_sigma(x.numpy()) == estimate_sigma(x)
    assert estimate_sigma(x.float().numpy()) == pytest.approx(estimate_sigma(x), rel=1e-6)
    bad = x.clone()
    bad[[3, 17], 1] = float("nan")
    bad[40, 0] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or inf \(first at row 3; 3 bad rows: 3, 17, 40\)"):
        estimate_sigma(bad)
    with pytest.raises(ValueError, match="at least 2 samples"):
        estimate_sigma(x[:1])
    with pytest.raises(ValueError, match="scale must be a positive"):
        estimate_sigma(x, scale=0.0)


def test_many_bad_rows_are_counted():
    x, y = clustered_pair(n=60)
    bad = x.clone()
    bad[10:30] = float("nan")
    with pytest.raises(
        ValueError, match=r"first at row 10; 20 bad rows: 10, 11, 12, 13, 14 and 15 more"
    ):
        compare(bad, y)


def test_numpy_scalars_are_accepted_and_results_stay_json_ready():
    x, y = clustered_pair(n=150)
    reference = compare(x, y, sigma_x=2.0, sigma_y=1.5, eta=0.5, rff_dim=16, top_k=2, seed=1)
    result = compare(
        x,
        y,
        sigma_x=np.float64(2.0),
        sigma_y=np.float32(1.5),
        eta=np.float64(0.5),
        rff_dim=np.int64(16),
        top_k=np.int64(2),
        seed=np.int64(1),
        batch_size=np.int32(64),
    )
    torch.testing.assert_close(result.eigenvalues, reference.eigenvalues, atol=1e-12, rtol=0)
    assert type(result.rff_dim) is int and type(result.eta) is float
    json.dumps(result.to_dict())
    assert float(spec_diff(x, y, sigma_x=np.float32(2.0), sigma_y=np.int64(1), eta=np.float16(1)))
    assert compare(x, y, kernel="cosine", eta=np.int64(2), top_k=np.int32(1)).eta == 2.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(top_k=np.float64(2.0)), "top_k must be a positive int"),
        (dict(top_k=True), "top_k must be a positive int"),
        (dict(rff_dim=np.int64(0)), "rff_dim must be None or a positive int"),
        (dict(eta=np.float64("nan")), "eta must be a finite float"),
        (dict(sigma_x=np.float64("inf")), "sigma_x must be a positive finite float"),
        (dict(sigma_x="Auto"), "sigma_x must be 'auto' or a positive float"),
        (dict(kernel="cosine", batch_size=0), "batch_size must be a positive int"),
        (dict(seed=1.5), "seed must be an int"),
    ],
)
def test_bad_scalars_still_give_clear_errors(kwargs, message):
    x, y = clustered_pair(n=30)
    with pytest.raises((ValueError, TypeError), match=message):
        compare(x, y, **kwargs)


def test_overflowing_data_fails_before_the_solve(monkeypatch):
    x, y = clustered_pair(n=150)
    huge = x * 1e306
    with pytest.raises(ValueError, match="sigma_x=1 is too small for data whose largest"):
        compare(huge, y, sigma_x=1.0, sigma_y=1.0, rff_dim=16)
    assert math.isfinite(compare(huge, y, rff_dim=16, top_k=1).spec_diff)  # auto sigma: fine
    # The safety net before every solve: NaN there would come back as silent NaN.
    nan_kernel = lambda x, y, **kw: torch.full((x.shape[0],) * 2, float("nan"))  # noqa: E731
    monkeypatch.setattr(
        sys.modules["spec_align.spectrum.algorithm"], "difference_kernel", nan_kernel
    )
    with pytest.raises(ValueError, match="difference kernel contains NaN or inf"):
        compare(x, y, sigma_x=1.0, sigma_y=1.0)
