"""SPEC-diff gradients, streaming, reproducibility, the result object and input errors."""

import numpy as np
import pytest
import torch

from spec_align import RandomFourierFeatures, compare, estimate_sigma, spec_diff
from spec_align.spectrum.linalg import orient_columns
from tests.helpers import clustered_pair


def _finite_difference_check(fn, x, y, seed=0, step=1e-6):
    """Directional derivatives of fn at (x, y) against autograd, in float64."""
    x = x.clone().requires_grad_(True)
    y = y.clone().requires_grad_(True)
    value = fn(x, y)
    grad_x, grad_y = torch.autograd.grad(value, (x, y))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(3):
        dx = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        dy = torch.randn(y.shape, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            numeric = (fn(x + step * dx, y + step * dy) - fn(x - step * dx, y - step * dy)) / (
                2 * step
            )
        analytic = (grad_x * dx).sum() + (grad_y * dy).sum()
        assert float(analytic) == pytest.approx(float(numeric), rel=1e-5, abs=1e-9)


# P10 eigenvalue gradient, on each solve path
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sigma_x=2.0, sigma_y=1.5),  # exact n x n
        dict(sigma_x=2.0, sigma_y=1.5, rff_dim=100),  # n < m: n x n Gram of features
        dict(sigma_x=2.0, sigma_y=1.5, rff_dim=10),  # n > m: (D_x + D_y)-square dual
        dict(kernel="cosine"),  # n > m dual with exact features
    ],
)
def test_spec_diff_gradient_matches_finite_differences(kwargs):
    x, y = clustered_pair()
    _finite_difference_check(lambda a, b: spec_diff(a, b, **kwargs), x, y)


def test_spec_diff_gradient_when_top_positive_and_negative_eigenvalues_are_close():
    """Planted case with lambda_max = -lambda_min exactly, then split by a 1e-4 perturbation."""
    groups = torch.arange(120) % 3
    centers_x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    centers_y = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    noise = torch.randn(120, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = centers_x[groups] + 1e-4 * noise
    y = centers_y[groups]
    values = compare(x, y, sigma_x=1.0, sigma_y=1.0, top_k=1).mode_eigenvalues
    assert 0 < abs(float(values[0] + values[1])) < 1e-3  # nearly tied magnitudes
    for kwargs in (dict(sigma_x=1.0, sigma_y=1.0), dict(sigma_x=1.0, sigma_y=1.0, rff_dim=20)):
        _finite_difference_check(lambda a, b, kw=kwargs: spec_diff(a, b, **kw), x, y, step=1e-7)


def test_spec_diff_matches_compare_on_every_path():
    x, y = clustered_pair(n=150)
    for kwargs in (
        dict(sigma_x=2.0, sigma_y=1.5),
        dict(sigma_x=2.0, sigma_y=1.5, rff_dim=40),
        dict(sigma_x=2.0, sigma_y=1.5, rff_dim=200),
        dict(kernel="cosine"),
        dict(kernel="cosine", eta=2.0),
    ):
        assert float(spec_diff(x, y, **kwargs)) == pytest.approx(
            compare(x, y, top_k=1, **kwargs).spec_diff, abs=1e-12
        )


def test_spec_diff_keeps_float32_dtype_and_reaches_both_inputs():
    x, y = (t.float().requires_grad_(True) for t in clustered_pair())
    value = spec_diff(x, y, kernel="cosine")
    value.backward()
    assert value.dtype == torch.float32
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert y.grad is not None and y.grad.abs().sum() > 0


# streaming
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sigma_x=2.0, sigma_y=1.5, rff_dim=8),  # more rows than features: covariance path
        dict(sigma_x=2.0, sigma_y=1.5, rff_dim=500),  # fewer: n x n path
        dict(kernel="cosine", eta=0.5),
        dict(sigma_x=2.0, sigma_y=1.5),  # exact kernel collects the stream
    ],
)
def test_streaming_batches_equal_in_memory(kwargs):
    x, y = clustered_pair(n=203)
    in_memory = compare(x, y, top_k=3, **kwargs)
    batches = [(x[i : i + 50], y[i : i + 50]) for i in range(0, 203, 50)]
    from_list = compare(batches, top_k=3, **kwargs)
    from_factory = compare(lambda: iter(batches), top_k=3, **kwargs)
    from_numpy = compare(x.numpy(), y.numpy(), top_k=3, batch_size=17, **kwargs)
    for streamed in (from_list, from_factory, from_numpy):
        torch.testing.assert_close(streamed.eigenvalues, in_memory.eigenvalues, atol=1e-12, rtol=0)
        torch.testing.assert_close(streamed.scores, in_memory.scores, atol=1e-10, rtol=0)


def test_streamed_auto_sigma_uses_the_first_rows():
    x, y = clustered_pair(n=1500)
    streamed = compare([(x[:700], y[:700]), (x[700:], y[700:])], rff_dim=16, top_k=1)
    assert streamed.sigma_x == pytest.approx(estimate_sigma(x[:1000]))
    assert streamed.sigma_y == pytest.approx(estimate_sigma(y[:1000]))


def test_covariance_path_scores_equal_the_exact_eigenvector_for_eta_not_one():
    """sqrt(eta) in the scores: cosine features, n > m so the streaming covariance path runs."""
    x, y = clustered_pair(n=300)
    for eta in (0.5, 3.0):
        result = compare(x, y, kernel="cosine", eta=eta, top_k=2)
        delta = (
            torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(x).T
            - eta * torch.nn.functional.normalize(y) @ torch.nn.functional.normalize(y).T
        ) / 300
        values, vectors = torch.linalg.eigh(delta)
        exact = vectors[:, [-1, -2, 0, 1]]
        exact = exact * orient_columns(exact)
        torch.testing.assert_close(result.scores, exact, atol=1e-9, rtol=0)
        torch.testing.assert_close(
            result.mode_eigenvalues, values[[-1, -2, 0, 1]], atol=1e-12, rtol=0
        )


def test_one_shot_generator_is_refused_with_a_fix():
    x, y = clustered_pair()
    with pytest.raises(TypeError, match="one-shot iterator.*function that returns"):
        compare(((x[i : i + 10], y[i : i + 10]) for i in range(0, 80, 10)), kernel="cosine")


def test_source_that_changes_between_passes_is_refused():
    x, y = clustered_pair(n=100)
    calls = []

    def shrinking():
        calls.append(1)
        rows = 100 if len(calls) == 1 else 90
        return iter([(x[:rows], y[:rows])])

    with pytest.raises(ValueError, match="first pass and 90 on the second"):
        compare(shrinking, kernel="cosine", top_k=1)


# reproducible random features
def test_random_fourier_features_are_seeded_and_restorable(tmp_path):
    z = torch.randn(50, 7, dtype=torch.float64)
    first = RandomFourierFeatures(7, 64, sigma=1.3, seed=5)
    assert torch.equal(first(z), RandomFourierFeatures(7, 64, sigma=1.3, seed=5)(z))
    assert not torch.equal(first(z), RandomFourierFeatures(7, 64, sigma=1.3, seed=6)(z))
    torch.save(first.state_dict(), tmp_path / "rff.pt")
    restored = RandomFourierFeatures(7, 64, sigma=1.3, seed=123)
    restored.load_state_dict(torch.load(tmp_path / "rff.pt"))
    assert torch.equal(first(z), restored(z))
    assert torch.allclose(first(z).norm(dim=1), torch.ones(50, dtype=torch.float64))


def test_same_seed_same_result_and_maps_rescore_the_samples():
    x, y = clustered_pair(n=300)
    a = compare(x, y, rff_dim=64, top_k=3, seed=3)
    b = compare(x, y, rff_dim=64, top_k=3, seed=3)
    assert torch.equal(a.eigenvalues, b.eigenvalues)
    torch.testing.assert_close(a.score(x, y), a.scores, atol=1e-12, rtol=0)
    small = compare(x[:40], y[:40], rff_dim=64, top_k=3)  # n x n path keeps a feature form
    torch.testing.assert_close(small.score(x[:40], y[:40]), small.scores, atol=1e-10, rtol=0)


def test_sigma_heuristic_is_the_scaled_median_distance():
    z = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    # pairwise distances 1, 3, 7, 2, 6, 4 -> median 3.5
    assert estimate_sigma(z) == pytest.approx(0.5 * 3.5)
    assert estimate_sigma(z, scale=1.0) == pytest.approx(3.5)
    big = torch.randn(5000, 3, dtype=torch.float64)
    assert estimate_sigma(big) == estimate_sigma(big)  # seeded subsample
    assert estimate_sigma(4 * big) == pytest.approx(4 * estimate_sigma(big))


# the result object
def test_result_summary_dict_and_top_samples():
    x, y = clustered_pair(n=120)
    result = compare(x, y, sigma_x=2.0, sigma_y=1.5, top_k=2, names=("clip", "dino"))
    text = str(result)
    assert "SPEC clip vs dino" in text and "SPEC-diff" in text
    assert "clip - dino" in text and "dino - clip" in text
    summary = result.to_dict(samples_per_mode=5)
    assert summary["spec_diff"] == result.spec_diff
    assert len(summary["modes"]) == result.num_modes == 4
    first = summary["modes"][0]
    assert first["top_samples"] == result.top_samples(0, 5).tolist()
    assert first["top_scores"] == sorted(first["top_scores"], reverse=True)
    assert torch.all(result.mode_eigenvalues[:2] > 0) and torch.all(
        result.mode_eigenvalues[2:] < 0
    )
    assert torch.all(result.eigenvalues[:-1] >= result.eigenvalues[1:])
    with pytest.raises(IndexError, match="4 modes"):
        result.top_samples(4)


# errors that say what was wrong and how to fix it
@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((np.ones((5, 2)), np.ones((4, 2))), {}, ValueError, "5 rows but y has 4"),
        ((np.zeros((0, 2)), np.zeros((0, 2))), {}, ValueError, "at least one sample"),
        ((np.array([[1.0, np.nan]] * 3), np.ones((3, 2))), {}, ValueError, "NaN or inf"),
        ((np.array([[1.0, np.inf]] * 3), np.ones((3, 2))), {}, ValueError, "first at row 0"),
        ((np.ones((5, 2)), np.ones((5, 2))), dict(sigma_x=0.0), ValueError, "sigma_x must be"),
        ((np.ones((5, 2)), np.ones((5, 2))), dict(sigma_y=-1.0), ValueError, "sigma_y must be"),
        ((np.ones((5, 2)), np.ones((5, 2))), dict(eta=-0.5), ValueError, "eta must be"),
        ((np.ones((5, 2)), np.ones((5, 2))), dict(kernel="rbf"), ValueError, "unknown kernel"),
        (
            (np.ones((5, 2)), np.ones((5, 2))),
            dict(top_k=6, sigma_x=1.0, sigma_y=1.0),
            ValueError,
            "top_k=6 exceeds",
        ),
        (
            (np.ones((5, 2)), np.ones((5, 2))),
            dict(kernel="cosine", top_k=5),
            ValueError,
            "top_k=5 exceeds",
        ),
        (
            (np.ones((5, 2)), np.ones((5, 2))),
            dict(kernel="cosine", rff_dim=10),
            ValueError,
            "gaussian' only",
        ),
        ((np.ones(5), np.ones(5)), {}, ValueError, "must be 2-D"),
        (([[1.0]], [[1.0]]), {}, TypeError, "numpy array or torch tensor"),
        ((np.zeros((3, 2)), np.ones((3, 2))), dict(kernel="cosine"), ValueError, "all zeros"),
    ],
)
def test_bad_input_gives_clear_errors(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        compare(*args, **kwargs)


def test_spec_diff_validates_inputs_too():
    with pytest.raises(ValueError, match="3 rows but y has 2"):
        spec_diff(torch.ones(3, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="eta must be"):
        spec_diff(torch.ones(3, 2), torch.ones(3, 2), eta=-1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sigma_x=2.0, sigma_y=1.5),  # exact n x n
        dict(sigma_x=2.0, sigma_y=1.5, rff_dim=200),  # n x n Gram of features
        dict(sigma_x=2.0, sigma_y=1.5, rff_dim=40),  # covariance dual
    ],
)
def test_partial_lanczos_solve_matches_the_full_solve(monkeypatch, kwargs):
    x, y = clustered_pair(n=300)
    full = compare(x, y, top_k=4, **kwargs)
    monkeypatch.setattr("spec_align.spectrum.linalg.FULL_SOLVE_MAX", 20)
    partial = compare(x, y, top_k=4, **kwargs)
    assert full.full_spectrum and not partial.full_spectrum
    assert partial.eigenvalues.shape == (8,)
    torch.testing.assert_close(partial.eigenvalues[:4], full.eigenvalues[:4], atol=1e-12, rtol=0)
    torch.testing.assert_close(partial.eigenvalues[4:], full.eigenvalues[-4:], atol=1e-12, rtol=0)
    torch.testing.assert_close(partial.scores, full.scores, atol=1e-9, rtol=0)
    assert partial.spec_diff == pytest.approx(full.spec_diff, abs=1e-13)
    assert float(spec_diff(x, y, **kwargs)) == pytest.approx(full.spec_diff, abs=1e-12)
