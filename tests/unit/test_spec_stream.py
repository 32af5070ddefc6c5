"""A streamed source read twice: the second pass must see the first pass's rows, in order."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from spec_align import compare
from spec_align.spectrum import SourceChangedError
from spec_align.spectrum.stream import Fingerprints, Verifier
from tests.helpers import clustered_pair

# n > 2 * 2 * RFF: the streaming covariance path, which reads the source a second time.
N, RFF = 400, 8
CASES = [dict(sigma_x=2.0, sigma_y=1.5, rff_dim=RFF), dict(kernel="cosine")]


def _batches(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, x.shape[0], size)]


class _ChangingSource:
    """A function returning fresh iterators; the second call's batches go through `change`."""

    def __init__(self, batches, change):
        self.batches, self.change, self.calls = batches, change, 0

    def __call__(self):
        self.calls += 1
        return iter(self.batches if self.calls == 1 else self.change(self.batches))


@pytest.mark.parametrize("kwargs", CASES)
def test_shuffling_dataloader_is_refused_with_the_fix(kwargs):
    x, y = clustered_pair(n=N)
    loader = DataLoader(TensorDataset(x, y), batch_size=50, shuffle=True)
    with pytest.raises(SourceChangedError, match=r"changed between passes.*shuffle=False"):
        compare(loader, top_k=2, **kwargs)


def test_the_error_names_the_batch_and_says_how_to_fix_it():
    x, y = clustered_pair(n=N)

    def swap_two_rows_of_batch_3(batches):
        changed = list(batches)
        bx, by = changed[3]
        order = torch.arange(bx.shape[0])
        order[[0, 1]] = order[[1, 0]]
        changed[3] = (bx[order], by[order])
        return changed

    source = _ChangingSource(_batches(x, y, 50), swap_two_rows_of_batch_3)
    with pytest.raises(SourceChangedError) as info:
        compare(source, kernel="cosine", top_k=2)
    message = str(info.value)
    assert "batch 3 (rows 150-199)" in message
    assert "same samples in the same order" in message and "fresh iterator" in message


@pytest.mark.parametrize(
    "change",
    [
        # the same rows, another order within each batch (no sum over a batch changes)
        lambda batches: [(bx.flip(0), by.flip(0)) for bx, by in batches],
        # the same batches, another order of batches
        lambda batches: batches[::-1],
        # random augmentation of one value of y by 1e-6 (x unchanged)
        lambda batches: (
            [
                batches[0],
                (
                    batches[1][0],
                    batches[1][1]
                    + 1e-6
                    * (torch.arange(batches[1][1].numel()).reshape(batches[1][1].shape) == 7),
                ),
            ]
            + batches[2:]
        ),
        # a pair of rows exchanged across a batch boundary
        lambda batches: (
            [
                (
                    torch.cat([batches[0][0][:-1], batches[1][0][:1]]),
                    torch.cat([batches[0][1][:-1], batches[1][1][:1]]),
                ),
                (
                    torch.cat([batches[0][0][-1:], batches[1][0][1:]]),
                    torch.cat([batches[0][1][-1:], batches[1][1][1:]]),
                ),
            ]
            + batches[2:]
        ),
    ],
    ids=["order within batches", "order of batches", "content", "across a boundary"],
)
@pytest.mark.parametrize("kwargs", CASES)
def test_any_change_of_order_or_content_is_detected(change, kwargs):
    x, y = clustered_pair(n=N)
    with pytest.raises(SourceChangedError, match="changed between passes"):
        compare(_ChangingSource(_batches(x, y, 50), change), top_k=2, **kwargs)


def test_more_or_fewer_rows_on_the_second_pass_are_counted():
    x, y = clustered_pair(n=N)
    batches = _batches(x, y, 50)
    more = _ChangingSource(batches, lambda b: b + b[:2])
    with pytest.raises(SourceChangedError, match=f"{N} samples on the first pass and {N + 100}"):
        compare(more, kernel="cosine", top_k=2)
    fewer = _ChangingSource(batches, lambda b: b[:-1])
    with pytest.raises(SourceChangedError, match=f"{N} samples on the first pass and {N - 50}"):
        compare(fewer, kernel="cosine", top_k=2)


@pytest.mark.parametrize("kwargs", CASES)
def test_stable_sources_pass_and_match_the_in_memory_result(kwargs):
    """Same data, re-batched or loaded by workers: never a false alarm, same answer."""
    x, y = clustered_pair(n=N)
    in_memory = compare(x, y, top_k=3, **kwargs)
    loader = DataLoader(TensorDataset(x.float(), y.float()), batch_size=64, num_workers=2)
    float32 = compare(x.float(), y.float(), top_k=3, **kwargs)
    rebatched = _ChangingSource(_batches(x, y, 64), lambda _: _batches(x, y, 37))
    for streamed, reference in (
        (compare(loader, top_k=3, **kwargs), float32),
        (compare(rebatched, top_k=3, **kwargs), in_memory),
        (compare(lambda: iter(_batches(x.numpy(), y.numpy(), 1)), top_k=3, **kwargs), in_memory),
    ):
        torch.testing.assert_close(streamed.eigenvalues, reference.eigenvalues, atol=1e-12, rtol=0)
        torch.testing.assert_close(streamed.scores, reference.scores, atol=1e-10, rtol=0)


def test_fingerprints_are_exact_for_the_same_bytes_and_move_with_any_row():
    x, y = clustered_pair(n=300)
    first, again = Fingerprints(), Fingerprints()
    for bx, by in _batches(x, y, 64):
        first.add(bx, by)
        again.add(bx.clone(), by.clone())
    assert first.records == again.records  # bit for bit
    for row in (0, 150, 299):
        for delta in (1e-7, -1e-7):
            verifier = Verifier(first)
            changed = x.clone()
            changed[row, 2] += delta
            ok = all(verifier.add(bx, by) for bx, by in _batches(changed, y, 64))
            assert not ok and verifier.error() is not None


def test_results_stay_json_ready_and_deterministic():
    x, y = clustered_pair(n=N)
    source = lambda: iter(_batches(x, y, 50))  # noqa: E731
    a = compare(source, rff_dim=RFF, top_k=2)
    b = compare(source, rff_dim=RFF, top_k=2)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.eigenvalues, b.eigenvalues)
    json.dumps(a.to_dict())


# progress
def test_progress_bars_have_totals_and_are_off_by_default(capsys):
    x, y = clustered_pair(n=N)
    compare(x, y, rff_dim=RFF, top_k=2, batch_size=100)
    assert capsys.readouterr().err == ""
    compare(x, y, rff_dim=RFF, top_k=2, batch_size=100, progress=True)
    err = capsys.readouterr().err
    assert "SPEC pass 1/2 (covariance): 100%" in err and f"{N}/{N}" in err
    assert "SPEC pass 2/2 (scores): 100%" in err and "eigen-solve" in err
    # A sized source without a row count: the first pass counts batches.
    compare(_batches(x, y, 100), rff_dim=RFF, top_k=2, progress=True)
    err = capsys.readouterr().err
    assert "4/4 [" in err and f"{N}/{N}" in err
    # A factory with num_samples (as spec_align.explain.embedding_batches sets it).
    source = lambda: iter(_batches(x, y, 100))  # noqa: E731
    source.num_samples = N
    compare(source, kernel="cosine", top_k=2, progress=True)
    assert capsys.readouterr().err.count(f"{N}/{N}") >= 2
    compare(x, y, sigma_x=2.0, sigma_y=1.5, top_k=2, progress=True)  # exact: the solve only
    assert "eigen-solve of the 400 x 400 difference kernel" in capsys.readouterr().err


def test_numpy_batches_and_widths():
    x, y = clustered_pair(n=N)
    batches = _batches(x, y, 100)
    batches[2] = (batches[2][0][:, :4], batches[2][1])
    with pytest.raises(
        ValueError,
        match="batch 2 of the source has x of width 4, but the first batch's x has width 6",
    ):
        compare(batches, kernel="cosine", top_k=2)
    with pytest.raises(ValueError, match="batch 2 of the source has x of width 4"):
        compare(batches, sigma_x=1.0, sigma_y=1.0, top_k=2)  # exact path collects the stream
    first_call = []

    def narrower_on_the_second_pass():
        first_call.append(1)
        cols = 6 if len(first_call) == 1 else 5
        return iter([(bx[:, :cols], by) for bx, by in _batches(x, y, 100)])

    with pytest.raises(
        ValueError, match=r"batch 0 \(second pass\) of the source has x of width 5"
    ):
        compare(narrower_on_the_second_pass, kernel="cosine", top_k=2)
    assert np.isfinite(compare(x.numpy(), y.numpy(), kernel="cosine", top_k=2).spec_diff)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_are_fingerprinted_on_the_device():
    x, y = clustered_pair(n=N)
    x, y = x.cuda(), y.cuda()
    batches = _batches(x, y, 50)
    cpu = compare(_batches(x.cpu(), y.cpu(), 50), rff_dim=RFF, top_k=2)
    for _ in range(3):  # the same bytes never trip the check on the GPU either
        streamed = compare(lambda: iter(batches), rff_dim=RFF, top_k=2)
        torch.testing.assert_close(streamed.scores.cpu(), cpu.scores, atol=1e-8, rtol=0)
    changed = _ChangingSource(batches, lambda b: b[::-1])
    with pytest.raises(SourceChangedError, match="changed between passes"):
        compare(changed, rff_dim=RFF, top_k=2)
