"""Mode stability: planted clusters reappear above the noise floor, independent noise does not."""

import json

import numpy as np
import pytest

from spec_align import compare
from spec_align.explain import mode_stability
from spec_align.explain.stability import mode_members
from tests.helpers import planted_differential


def test_planted_modes_reappear_with_an_interval_above_the_noise_floor():
    x, y, only_x, only_y = planted_differential()
    result = compare(x, y, top_k=3)
    stability = mode_stability(x, y, result)
    positive, negative = 0, result.num_positive
    # The top mode of each sign is a planted group (its top samples all in one group).
    assert len(set(only_x[result.top_samples(positive, 20).numpy()])) == 1
    assert len(set(only_y[result.top_samples(negative, 20).numpy()])) == 1
    floor_positive, floor_negative = stability.noise_floor
    for mode in (positive, negative):
        assert stability.reappearance[mode] >= 0.9 and stability.is_stable(mode)
        assert stability.overlap[mode] > 0.7
        low, high = stability.eigenvalue_low[mode], stability.eigenvalue_high[mode]
        assert low <= float(result.mode_eigenvalues[mode]) <= high
        assert stability.above_noise_floor(float(result.mode_eigenvalues[mode]))
    assert stability.eigenvalue_low[positive] > floor_positive
    assert stability.eigenvalue_high[negative] < -floor_negative
    assert len(stability.null_positive) == stability.null_draws == stability.resamples == 10


def test_independent_noise_is_within_the_noise_floor_and_its_modes_do_not_reappear():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(240, 64)), rng.normal(size=(240, 64))
    result = compare(x, y, top_k=3)
    # The observed pair is one more draw of the references' distribution: with 20 draws it
    # exceeds their largest with probability 1/21 (seeds 1-4: 0.031-0.035 against 0.037).
    stability = mode_stability(x, y, result, null_draws=20)
    eigenvalues = result.mode_eigenvalues.tolist()
    assert not any(stability.above_noise_floor(value) for value in eigenvalues)
    assert max(eigenvalues) <= stability.noise_floor[0]
    assert -min(eigenvalues) <= stability.noise_floor[1]
    # Beyond the top mode of each sign, nothing reappears reliably.
    tops = (0, result.num_positive)
    others = [j for j in range(result.num_modes) if j not in tops]
    assert all(stability.reappearance[j] < 0.8 for j in others)
    # The top modes are no clusters but real: the samples with the smaller norm in x than in
    # y (a Gaussian kernel's rows shrink with the norm). They reappear, and the floor, made
    # of such pairs, is what says they are no larger than random embeddings differ by.
    norm_difference = (x**2).sum(axis=1) - (y**2).sum(axis=1)
    assert abs(np.corrcoef(result.scores[:, 0].numpy(), norm_difference)[0, 1]) > 0.9


def test_stability_is_seeded_reported_and_checked(tmp_path):
    x, y, _, _ = planted_differential(n=80)
    result = compare(x, y, top_k=2)
    first = mode_stability(x, y, result, resamples=3, null_draws=2, seed=4)
    assert first == mode_stability(x, y, result, resamples=3, null_draws=2, seed=4)
    result.stability = first
    summary = json.loads(json.dumps(result.to_dict(3)))
    assert summary["stability"]["reappearance"] == first.reappearance
    assert summary["stability"]["noise_floor"] == list(first.noise_floor)
    assert "reappears" in str(result) and "noise floor" in str(result)
    # A subsample of the rows: the floor and the resamples are of that size.
    sub = mode_stability(x, y, result, resamples=2, null_draws=1, max_samples=40)
    assert sub.sample_size == 40
    with pytest.raises(ValueError, match="79 rows but the result has 80"):
        mode_stability(x[:79], y[:79], result)
    with pytest.raises(ValueError, match="fraction must be in"):
        mode_stability(x, y, result, fraction=1.0)
    with pytest.raises(ValueError, match="resamples must be >= 1"):
        mode_stability(x, y, result, resamples=0)


def test_members_are_the_samples_above_half_the_top_score():
    assert mode_members(np.array([0.1, 0.5, 0.26, 0.24, -0.6])).tolist() == [1, 2]
    assert mode_members(np.array([-0.1, -0.2])).tolist() == []
