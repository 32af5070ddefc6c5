"""Progress bars of the data layer's long steps: totals on stderr, rank zero only."""

from __future__ import annotations

from lightning_utilities.core.rank_zero import rank_zero_only

from spec_align.data import synthetic

TINY = dict(num_train=12, num_val=5, image_size=16, samples_per_shard=4)


def test_dataset_generation_shows_progress_with_totals(tmp_path, capsys):
    synthetic.prepare(tmp_path, **TINY)
    progress = capsys.readouterr().err
    assert "generating synthetic train: 100%" in progress and "12/12" in progress
    assert "generating synthetic val: 100%" in progress and "5/5" in progress
    # A prepared dataset is reused: nothing to show.
    synthetic.prepare(tmp_path, **TINY)
    assert capsys.readouterr().err == ""


def test_progress_is_hidden_on_other_ranks(tmp_path, capsys, monkeypatch):
    # Lightning sets rank_zero_only.rank in every process it starts.
    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    synthetic.prepare(tmp_path, **TINY)
    assert "generating" not in capsys.readouterr().err
