"""The SPEC core on a CUDA device gives the CPU's answer (run where a GPU is present)."""

import pytest
import torch

from spec_align import compare, spec_diff
from tests.helpers import clustered_pair

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sigma_x=4.0, sigma_y=3.0),
        dict(sigma_x=4.0, sigma_y=3.0, rff_dim=64),  # covariance path (n > m)
        dict(sigma_x=4.0, sigma_y=3.0, rff_dim=2048),  # n x n path
        dict(kernel="cosine", eta=0.5),
    ],
)
def test_cuda_matches_cpu(kwargs):
    x, y = clustered_pair(1500)
    cpu = compare(x, y, top_k=3, **kwargs)
    gpu = compare(x.cuda(), y.cuda(), top_k=3, **kwargs)
    assert gpu.scores.is_cuda
    torch.testing.assert_close(
        gpu.mode_eigenvalues.cpu(), cpu.mode_eigenvalues, atol=1e-10, rtol=0
    )
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, atol=1e-8, rtol=0)


def test_spec_diff_gradient_on_cuda_matches_cpu():
    x, y = clustered_pair(256)
    grads = []
    for device in ("cpu", "cuda"):
        a = x.float().to(device).requires_grad_(True)
        value = spec_diff(a, y.float().to(device), sigma_x=4.0, sigma_y=3.0, rff_dim=512)
        value.backward()
        grads.append((float(value.detach()), a.grad.cpu()))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-4)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-5, rtol=1e-3)


def test_fresh_penalty_frequencies_are_drawn_on_the_device():
    """Fresh draws come from a CUDA generator: a pure function of (seed, step) there too,
    estimating the same exact SPEC-diff as on the CPU (different draws, same expectation)."""
    from spec_align.losses import SpectralPenalty

    x, y = clustered_pair(256)
    for device in ("cpu", "cuda"):
        penalty = SpectralPenalty(rff_dim=2048, frequencies="fresh", seed=3)
        penalty.bind(x.shape[1], y.shape[1])
        penalty.to(device)
        a, b = x.to(device), y.to(device)
        penalty.fit(a, b)
        values = [float(penalty(a, b, step=s)) for s in range(4)]
        assert float(penalty(a, b, step=1)) == values[1] != values[2]
        exact = penalty.evaluate(a, b)["exact"]
        assert sum(values) / 4 == pytest.approx(exact, abs=0.03)
