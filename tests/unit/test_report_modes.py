"""Mode descriptions shared by the report and the cluster callback (pure functions)."""

from __future__ import annotations

import pytest

from spec_align import compare
from spec_align.explain.modes import (
    class_name,
    dominant_attribute,
    label_purity,
    labelled_share,
    mode_records,
)
from tests.helpers import planted_groups


def test_mode_records_extend_to_dict_with_sign_rank_and_names():
    a, b, _ = planted_groups()
    result = compare(a, b, sigma_x=3.0, sigma_y=3.0, top_k=2, names=("A", "B"))
    records = mode_records(result, 5)
    assert len(records) == result.num_modes and result.num_modes > result.num_positive > 0
    for j, (record, plain) in enumerate(zip(records, result.to_dict(5)["modes"], strict=True)):
        assert {k: record[k] for k in plain} == plain
        positive = j < result.num_positive
        assert record["sign"] == ("positive" if positive else "negative")
        assert record["rank"] == (j if positive else j - result.num_positive)
        assert (record["formed_by"], record["missed_by"]) == (
            ("A", "B") if positive else ("B", "A")
        )
        assert record["eigenvalue"] == pytest.approx(float(result.mode_eigenvalues[j]), abs=0)


def test_dominant_attribute_prefers_enrichment_over_frequency():
    # "plain" is 60% of the probe and 60% of the members: no enrichment. "left" is 20% of
    # the probe but 80% of the members.
    meta = [
        {
            "texture": "plain" if i % 5 < 3 else "dots",
            "side": "left" if i < 20 else "right",
            "cx": 0.1,
        }
        for i in range(100)
    ]
    members = list(range(16)) + [20, 21, 22, 23]
    assert dominant_attribute(members, meta) == ("side=left", 0.8)
    assert dominant_attribute(members, [None] * 100) == (None, None)


def test_label_purity_counts_labelled_members_only():
    # The callback's definition was over all members, (2, 0.5) here; one definition now: an
    # unlabelled member is not impure, and the labelled share says what the purity rests on.
    labels = [2, 2, -1, 1]
    assert label_purity(labels) == (2, 2 / 3)
    assert labelled_share(labels) == 0.75
    assert label_purity([-1]) == (None, None) and labelled_share([-1]) == 0.0
    assert labelled_share([]) is None


def test_label_purity_ignores_unknown_labels():
    assert label_purity([1, 1, 2, -1, None]) == (1, 2 / 3)
    assert label_purity([-1, None]) == (None, None)


def test_class_name_only_for_integer_labels_in_range():
    names = ["zero", "one"]
    assert class_name(1, names) == "one"
    assert class_name(2, names) is None and class_name(-1, names) is None
    assert class_name("one", names) is None and class_name(0, None) is None
