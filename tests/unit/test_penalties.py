"""Penalty variants and baselines: fresh frequencies are a pure function of (seed, step), the
batch bandwidth is the median rule, the exact estimator is `spec_diff`, the KUEA losses match
a hand computation, and the anchor measures the distance to its start copy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spec_align import spec_diff
from spec_align.losses import AnchorLoss, KernelMatchingPenalty, SpectralPenalty
from spec_align.losses.spectral import frequency_seed
from spec_align.spectrum import RandomFourierFeatures, gaussian_kernel, spec_diff_features
from tests.helpers import clustered_pair


def _penalty(**kwargs) -> SpectralPenalty:
    penalty = SpectralPenalty(**{"rff_dim": 32, "seed": 3, **kwargs})
    penalty.bind(6, 5)
    return penalty


def _median_rule(z: torch.Tensor, scale: float = 0.5) -> float:
    """sigma_scale x the median of all pairwise distances between unit-normalised rows."""
    unit = F.normalize(z.double(), dim=1)
    n = len(unit)
    distances = [float((unit[i] - unit[j]).norm()) for i in range(n) for j in range(i + 1, n)]
    return scale * float(torch.tensor(distances, dtype=torch.float64).quantile(0.5))


def test_fresh_frequencies_are_a_function_of_seed_and_step():
    x, y = clustered_pair(n=40)
    first, second = _penalty(frequencies="fresh"), _penalty(frequencies="fresh")
    first.fit(x, y)
    second.load_state_dict(first.state_dict())  # a resumed run: nothing but the checkpoint
    values = [float(first(x, y, step=step)) for step in range(4)]
    assert values == [float(second(x, y, step=step)) for step in range(4)]
    assert len(set(values)) == 4, "each step draws new frequencies"
    assert float(first(x, y, step=2)) == values[2], "no hidden state: a step repeats exactly"
    other_seed = _penalty(frequencies="fresh", seed=4)
    other_seed.fit(x, y)
    assert float(other_seed(x, y, step=2)) != values[2]
    assert frequency_seed(3, 2) != frequency_seed(2, 3)
    with pytest.raises(ValueError, match="pass step"):
        first(x, y)


def test_fresh_frequencies_average_to_the_exact_kernel():
    """Fresh draws average to the exact kernel: unbiased (docs/math.md section 12.1)."""
    x, y = clustered_pair(n=12)
    penalty = _penalty(frequencies="fresh", rff_dim=64)
    penalty.fit(x, y)
    sigma = float(penalty.sigma_encoder_value)
    unit = F.normalize(x, dim=1)
    steps = 400
    mean = (
        sum(
            (lambda phi: phi @ phi.T)(
                RandomFourierFeatures(
                    6, 64, sigma, seed=frequency_seed(3, step), dtype=torch.float32
                )(unit.float()).double()
            )
            for step in range(steps)
        )
        / steps
    )
    exact = gaussian_kernel(unit, sigma)
    # Each entry averages 400 x 64 cosines of variance <= 1/2: standard error <= 0.0045.
    assert float((mean - exact).abs().max()) < 0.03


def test_fresh_frequencies_are_float32_draws_from_the_step_seed():
    """The penalty at step s is SPEC-diff of float32 maps seeded with frequency_seed(seed, s)."""
    x, y = clustered_pair(n=30)
    penalty = _penalty(frequencies="fresh")
    penalty.fit(x, y)
    seed = frequency_seed(3, 5)
    maps = [
        RandomFourierFeatures(z.shape[1], 32, float(sigma), seed=seed, dtype=torch.float32)
        for z, sigma in ((x, penalty.sigma_encoder_value), (y, penalty.sigma_ref_value))
    ]
    phi_x, phi_y = (m(F.normalize(z.float(), dim=1)) for m, z in zip(maps, (x, y), strict=True))
    assert maps[0].frequencies.dtype == torch.float32
    assert float(penalty(x, y, step=5)) == pytest.approx(
        float(spec_diff_features(phi_x, phi_y)), rel=1e-6
    )


def test_fixed_frequencies_are_todays_map():
    x, y = clustered_pair(n=30)
    penalty = _penalty()
    penalty.fit(x, y)
    phi_x, phi_y = penalty.features(x, y, dtype=torch.float32)
    assert float(penalty(x, y, step=7)) == float(spec_diff_features(phi_x, phi_y))


def test_batch_bandwidth_is_the_median_rule_on_the_batch():
    x, y = clustered_pair(n=30)
    penalty = _penalty(bandwidth="batch", estimator="exact")
    penalty.fit(x[:10], y[:10])  # the fixed (validation) bandwidths come from other rows
    sigmas = penalty.training_sigmas(3 * x, y)
    assert sigmas[0] == pytest.approx(_median_rule(x), rel=1e-12)
    assert sigmas[1] == pytest.approx(_median_rule(y), rel=1e-12)
    assert float(penalty.sigma_encoder_value) == pytest.approx(_median_rule(x[:10]), rel=1e-12)
    expected = spec_diff(
        F.normalize(x, dim=1), F.normalize(y, dim=1), sigma_x=sigmas[0], sigma_y=sigmas[1]
    )
    torch.testing.assert_close(penalty(x, y), expected, rtol=1e-12, atol=0)


def test_batch_bandwidth_with_fixed_frequencies_rescales_the_fixed_draws():
    x, y = clustered_pair(n=30)
    penalty = _penalty(bandwidth="batch")
    penalty.fit(x, y)  # fitted on the same rows: the batch rule gives the same bandwidths
    fixed = _penalty()
    fixed.fit(x, y)
    torch.testing.assert_close(penalty(x, y, step=0), fixed(x, y, step=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", ["gaussian", "cosine"])
def test_exact_estimator_is_spec_diff_of_the_batch_in_float64(kernel):
    x, y = clustered_pair(n=40)
    x.requires_grad_(True)
    penalty = _penalty(estimator="exact", kernel=kernel)
    penalty.fit(x, y)
    value = penalty(x, y)
    assert value.dtype == torch.float64
    prepared = (F.normalize(x, dim=1), F.normalize(y, dim=1)) if kernel == "gaussian" else (x, y)
    sigmas = {}
    if kernel == "gaussian":
        sigmas = {
            "sigma_x": float(penalty.sigma_encoder_value),
            "sigma_y": float(penalty.sigma_ref_value),
        }
    expected = spec_diff(*prepared, kernel=kernel, **sigmas)
    assert float(value.detach()) == float(expected.detach())
    (gradient,) = torch.autograd.grad(value, x)
    (expected_gradient,) = torch.autograd.grad(spec_diff(*prepared, kernel=kernel, **sigmas), x)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-12, atol=1e-15)


def test_exact_estimator_draws_no_frequencies():
    """The training default is frequencies=fresh; with the exact estimator it does not apply."""
    x, y = clustered_pair(n=40)
    fresh, fixed = _penalty(estimator="exact", frequencies="fresh"), _penalty(estimator="exact")
    fresh.fit(x, y)
    fixed.fit(x, y)
    assert float(fresh(x, y, step=3)) == float(fixed(x, y)) == float(fresh(x, y, step=4))


def test_exact_estimator_of_identical_embeddings_is_zero_with_finite_gradient():
    x, _ = clustered_pair(n=20)
    x.requires_grad_(True)
    penalty = SpectralPenalty(estimator="exact")
    penalty.bind(6, 6)
    penalty.fit(x, x)
    value = penalty(x, x.detach())
    (gradient,) = torch.autograd.grad(value, x)
    assert float(value.detach()) < 1e-12 and bool(gradient.isfinite().all())


def _squared_distance(u: list[float], v: list[float]) -> float:
    return sum((a - b) ** 2 for a, b in zip(u, v, strict=True))


def _hand_gaussian(z: torch.Tensor, sigma: float) -> torch.Tensor:
    unit = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in z.tolist()]
    return torch.tensor(
        [[math.exp(-_squared_distance(u, v) / (2 * sigma**2)) for v in unit] for u in unit],
        dtype=torch.float64,
    )


@pytest.mark.parametrize("norm", ["mean_squared", "frobenius"])
def test_kuea_loss_against_a_hand_computation(norm):
    x = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0], [0.0, 1.0, 1.0], [2.0, 2.0, 0.5]])
    y = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.2], [0.3, 1.0]])
    penalty = KernelMatchingPenalty(norm=norm, sigma_encoder=0.7, sigma_ref=0.4)
    value = penalty(x.double(), y.double())
    k_x, k_y = _hand_gaussian(x, 0.7), _hand_gaussian(y, 0.4)
    mean_squared = _squared_distance(k_x.flatten().tolist(), k_y.flatten().tolist()) / 16
    expected = mean_squared if norm == "mean_squared" else math.sqrt(mean_squared)
    assert value.dtype == torch.float64
    assert float(value) == pytest.approx(expected, rel=1e-12)
    assert penalty.name == {"mean_squared": "kuea", "frobenius": "kuea_frobenius"}[norm]


def test_kuea_frobenius_bounds_spec_diff_and_has_a_gradient_at_zero():
    x, y = clustered_pair(n=30)
    penalty = KernelMatchingPenalty(norm="frobenius")
    penalty.fit(x, y)
    values = penalty.evaluate(x, y)
    assert float(penalty(x, y)) >= values["exact"] > 0  # operator norm <= Frobenius norm
    same = KernelMatchingPenalty(norm="frobenius")
    same.fit(x, x)  # equal bandwidths: identical embeddings have identical kernels
    z = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(same(z, x), z)
    assert bool(gradient.isfinite().all()) and float(gradient.abs().max()) == 0.0


def test_median_metric_ignores_the_embedding_scale():
    x, y = clustered_pair(n=30)
    penalty = _penalty(normalize=False)
    penalty.fit(x, y)
    values, scaled = penalty.evaluate(x, y), penalty.evaluate(4 * x, y)
    assert scaled["median"] == pytest.approx(values["median"], rel=1e-10)
    assert scaled["exact"] != pytest.approx(values["exact"], rel=1e-3)  # fixed bandwidths see it
    assert set(values) == {"exact", "features", "median"}
    matching = KernelMatchingPenalty()
    matching.fit(x, y)
    assert set(matching.evaluate(x, y)) == {"exact", "median"}


def test_evaluation_is_the_same_for_every_training_option():
    """val/spec_diff and val/spec_diff_median compare across options: one rule, one seed."""
    x, y = clustered_pair(n=30)
    results = []
    for penalty in (
        _penalty(),
        _penalty(frequencies="fresh", bandwidth="batch"),
        _penalty(estimator="exact"),
        KernelMatchingPenalty(seed=3),
    ):
        penalty.fit(x, y)
        values = penalty.evaluate(x, y)
        results.append((values["exact"], values["median"]))
    assert len(set(results)) == 1


def test_options_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="frequencies must be one of"):
        SpectralPenalty(frequencies="new")
    with pytest.raises(ValueError, match="frequencies=fresh needs kernel=gaussian"):
        SpectralPenalty(kernel="cosine", rff_dim=0, frequencies="fresh")
    with pytest.raises(ValueError, match="set sigma_encoder=auto, or bandwidth=fixed"):
        SpectralPenalty(bandwidth="batch", sigma_encoder=0.3)
    with pytest.raises(ValueError, match="bandwidth=batch needs kernel=gaussian"):
        KernelMatchingPenalty(kernel="cosine", bandwidth="batch")
    with pytest.raises(ValueError, match="norm must be one of"):
        KernelMatchingPenalty(norm="l1")
    with pytest.raises(ValueError, match="anchor weight"):
        AnchorLoss(weight=-1.0)


def test_todays_checkpoint_state_loads_into_every_option():
    x, y = clustered_pair(n=30)
    old = _penalty()
    old.fit(x, y)
    state = old.state_dict()
    for options in ({"frequencies": "fresh"}, {"bandwidth": "batch"}, {"estimator": "exact"}):
        new = _penalty(**options)
        new.load_state_dict(state, strict=True)
        assert new.fitted and new.evaluate(x, y) == old.evaluate(x, y)


def test_anchor_is_the_mean_squared_distance_to_the_start():
    encoder = torch.nn.Linear(3, 2)
    anchor = AnchorLoss(weight=1.0)
    anchor.snapshot(encoder)
    images = torch.randn(5, 3)
    start = anchor.start_embeddings(images)
    assert float(anchor(encoder(images), start)) == 0.0
    with torch.no_grad():
        encoder.bias.add_(torch.tensor([1.0, 2.0]))
    assert float(anchor(encoder(images), start)) == pytest.approx(5.0)  # 1^2 + 2^2 per row
    assert not any(p.requires_grad for p in anchor.parameters())
