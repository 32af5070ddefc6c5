"""Attribute probes: planted attributes, agreement with scikit-learn, metadata reading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import LeaveOneOut, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from spec_align.modules.probes import (
    attribute_probes,
    attribute_values,
    encode_values,
    fit_softmax_regression,
    knn_accuracy,
    linear_probe_accuracy,
)


def _blobs(n, dim, classes, spread, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, dim)) * spread
    return centres[labels] + rng.normal(size=(n, dim)), labels


def test_planted_attribute_is_decoded_and_noise_is_at_chance():
    """A (3 classes) sets the embedding; B (4 classes) is drawn independently of it."""
    rng = np.random.default_rng(0)
    n = 400
    a = rng.integers(0, 3, n)
    b = rng.integers(0, 4, n)
    embeddings = np.eye(3)[a] * 5 + rng.normal(size=(n, 3)) * 0.3
    embeddings = np.hstack([embeddings, rng.normal(size=(n, 5))])
    results = attribute_probes(
        torch.tensor(embeddings), {"a": a.tolist(), "b": [f"value{v}" for v in b]}
    )
    assert set(results) == {"a_knn", "a_linear", "b_knn", "b_linear"}
    assert results["a_knn"] == 1.0 and results["a_linear"] == 1.0
    # Chance is about 1/4 (the most frequent value's share); 200 test rows: sd about 0.03.
    assert results["b_knn"] < 0.4 and results["b_linear"] < 0.4


@pytest.mark.parametrize("classes, spread", [(4, 0.7), (7, 0.3)])
def test_knn_equals_scikit_learn_leave_one_out(classes, spread):
    """Exactly: the same neighbours, and tied votes go to the smallest class in both."""
    x, y = _blobs(150, 12, classes, spread, seed=classes)
    ours = knn_accuracy(torch.tensor(x), torch.tensor(y))
    theirs = cross_val_predict(
        KNeighborsClassifier(n_neighbors=10, metric="cosine"), x, y, cv=LeaveOneOut()
    )
    assert ours == (theirs == y).mean()


def test_knn_ties_with_string_values_follow_sorted_order():
    """Values are coded in sorted order, so a probe of string values ties like sklearn."""
    x, y = _blobs(150, 12, 7, 0.3, seed=3)
    names = np.array(["g", "f", "e", "d", "c", "b", "a"])[y]  # reversed order of the codes
    ours = attribute_probes(torch.tensor(x), {"name": names.tolist()})["name_knn"]
    theirs = cross_val_predict(
        KNeighborsClassifier(n_neighbors=10, metric="cosine"), x, names, cv=LeaveOneOut()
    )
    assert ours == (theirs == names).mean()


def _sklearn_linear(x, y):
    train, test = slice(0, None, 2), slice(1, None, 2)
    scaler = StandardScaler().fit(x[train])
    model = LogisticRegression(C=1.0, max_iter=10_000, tol=1e-12)
    model.fit(scaler.transform(x[train]), y[train])
    return model, scaler.transform(x[train]), model.score(scaler.transform(x[test]), y[test])


@pytest.mark.parametrize("classes", [2, 4])
def test_linear_probe_agrees_with_scikit_learn(classes):
    """Same minimiser (coefficients to 1e-5; they are of order 1) and the same accuracy
    to within one of the 100 test rows (a row at the boundary could flip)."""
    x, y = _blobs(200, 10, classes, 0.5, seed=classes)
    model, x_train, accuracy = _sklearn_linear(x, y)
    weight, bias = fit_softmax_regression(torch.tensor(x_train), torch.tensor(y[0::2]))
    fitted = slice(1, None) if classes == 2 else slice(None)  # sklearn: class 1's vector
    np.testing.assert_allclose(weight[fitted].numpy(), model.coef_, atol=1e-5)
    np.testing.assert_allclose(bias[fitted].numpy(), model.intercept_, atol=1e-5)
    ours = linear_probe_accuracy(torch.tensor(x), torch.tensor(y))
    assert abs(ours - accuracy) <= 1 / 100 + 1e-12
    assert 0.5 < ours < 1.0  # a problem where the probe has something to get right and wrong


def test_linear_probe_counts_classes_unseen_in_training_as_errors():
    x = torch.randn(6, 3, dtype=torch.float64)
    labels = torch.tensor([0, 2, 0, 2, 1, 1])  # class 2 only at odd (test) rows
    accuracy = linear_probe_accuracy(x, labels)
    assert accuracy <= 1 / 3  # two of the three test rows can never be right


def test_missing_values_take_no_part():
    x, y = _blobs(120, 6, 3, 1.0, seed=5)
    values = [None if i % 5 == 0 else int(v) for i, v in enumerate(y)]
    kept = [i for i in range(len(y)) if i % 5]
    with_missing = attribute_probes(torch.tensor(x), {"a": values})
    subset = attribute_probes(torch.tensor(x[kept]), {"a": y[kept].tolist()})
    assert with_missing == subset


def test_attributes_with_one_value_are_not_probed():
    x = torch.randn(10, 4)
    assert attribute_probes(x, {"constant": ["a"] * 10, "absent": [None] * 10}) == {}


def test_attribute_values_read_labels_and_metadata():
    batch = {
        "image": torch.zeros(3, 3, 2, 2, dtype=torch.uint8),
        "label": torch.tensor([3, -1, 0]),
        "meta": [{"shape": "circle", "size": [1, 2]}, None, {"shape": "square"}],
    }
    rows = attribute_values(batch, ["label", "shape", "size"])
    assert rows == [(3, "circle", "[1, 2]"), (None, None, None), (0, "square", None)]


def test_encode_values_sorts_and_marks_missing():
    codes, classes = encode_values(["b", None, "a", "b"])
    assert classes == ["a", "b"]
    assert codes.tolist() == [1, -1, 0, 1]


def test_bad_probe_input_is_refused():
    with pytest.raises(ValueError, match="need embeddings"):
        knn_accuracy(torch.randn(5, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="attribute 'a' has 3 values for 5 rows"):
        attribute_probes(torch.randn(5, 3), {"a": [0, 1, 0]})


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_linear_probe_runs_inside_validation_modes(mode):
    """Lightning validates under no_grad (fit) or inference mode (trainer.validate)."""
    x, y = _blobs(60, 5, 3, 2.0, seed=1)
    expected = linear_probe_accuracy(torch.tensor(x), torch.tensor(y))
    with mode():
        assert linear_probe_accuracy(torch.tensor(x), torch.tensor(y)) == expected
