"""Attribute probes: how well an embedding decodes each labelled attribute of the probe set.

Two probes per attribute, both deterministic, in float64 on the CPU:

knn: leave-one-out k-nearest-neighbour accuracy over the probe rows that have the attribute.
    Each row is classified by a majority vote of the k rows most cosine-similar to it, itself
    excluded; a tied vote goes to the smallest class (classes in sorted value order), as in
    scikit-learn's `KNeighborsClassifier`.
linear: multinomial logistic regression trained on the even-indexed rows (0, 2, 4, ...) and
    tested on the odd-indexed ones. Interleaving keeps both halves alike when the validation
    data is stored sorted by class. Features are standardised with the training half's mean
    and (population) standard deviation; the objective is scikit-learn's
    `LogisticRegression(C=c)`: mean cross-entropy + ||W||^2 / (2 c n_train), intercept not
    penalised, with one weight vector per class (two classes: one vector, the logistic
    model), minimised by full-batch L-BFGS. Test rows of a class absent from the training
    half count as errors.

Rows whose value is missing (None) take no part in that attribute's probes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from spec_align.utils.distributed import world_size

__all__ = [
    "KNN_K",
    "LABEL_ATTRIBUTE",
    "LINEAR_C",
    "LINEAR_MAX_ITER",
    "attribute_probes",
    "attribute_values",
    "encode_values",
    "fit_softmax_regression",
    "gather_objects",
    "knn_accuracy",
    "linear_probe_accuracy",
]

KNN_K = 10  # neighbours in the kNN vote
LINEAR_C = 1.0  # inverse L2 strength of the linear probe, in scikit-learn's units
LINEAR_MAX_ITER = 200  # L-BFGS iterations of the linear probe (at most)
LABEL_ATTRIBUTE = "label"  # the sample's class label (`cls`); other names: its json metadata


def attribute_values(batch: Mapping[str, Any], names: Sequence[str]) -> list[tuple]:
    """Per sample of a batch, its value of each attribute in `names` (None where missing).

    `LABEL_ATTRIBUTE` reads the batch's integer labels (-1: none); every other name reads that
    key of the sample's json metadata. Values are kept as JSON-able Python values, so every
    rank encodes them alike.
    """
    size = len(batch["image"])
    labels = batch["label"].tolist() if LABEL_ATTRIBUTE in names else [None] * size
    metas = batch.get("meta") or [None] * size
    rows = []
    for label, meta in zip(labels, metas, strict=True):
        row = []
        for name in names:
            if name == LABEL_ATTRIBUTE:
                row.append(None if label < 0 else int(label))
            else:
                value = (meta or {}).get(name)
                # Unhashable values (lists, dicts) compare by their JSON text.
                hashable = value is None or isinstance(value, str | int | float | bool)
                row.append(value if hashable else json.dumps(value, sort_keys=True))
        rows.append(tuple(row))
    return rows


def gather_objects(rows: list[Any]) -> list[Any]:
    """Every rank's `rows`, concatenated in rank order (a collective when distributed).

    The order matches `gather_uneven`'s, so gathered rows stay aligned with gathered tensors.
    """
    if world_size() == 1:
        return list(rows)
    parts: list[list[Any] | None] = [None] * world_size()
    dist.all_gather_object(parts, rows)
    return [row for part in parts for row in part]


def encode_values(values: Sequence[Any]) -> tuple[Tensor, list[Any]]:
    """Class indices of `values` in sorted value order; -1 where a value is None.

    Returns:
        codes: (n,) long; classes: the distinct values, codes index into it.
    """
    present = {v for v in values if v is not None}
    try:
        classes = sorted(present)
    except TypeError:  # mixed types: any fixed order will do
        classes = sorted(present, key=repr)
    index = {value: i for i, value in enumerate(classes)}
    codes = [-1 if v is None else index[v] for v in values]
    return torch.tensor(codes, dtype=torch.long), classes


def knn_accuracy(embeddings: Tensor, labels: Tensor, k: int = KNN_K) -> float:
    """Leave-one-out k-NN accuracy with cosine similarity and majority vote (module docstring).

    Shapes:
        embeddings: (n, D), labels: (n,) class indices >= 0 -> float in [0, 1]
    """
    _check_probe_input(embeddings, labels)
    n = embeddings.shape[0]
    k = min(k, n - 1)
    x = F.normalize(embeddings.detach().cpu().double(), dim=1)
    y = labels.cpu()
    similarity = x @ x.T
    similarity.fill_diagonal_(-torch.inf)  # a row is not its own neighbour
    neighbours = similarity.topk(k, dim=1).indices
    votes = torch.zeros(n, int(y.max()) + 1, dtype=torch.long)
    votes.scatter_add_(1, y[neighbours], torch.ones_like(neighbours))
    # argmax returns the first maximum: ties go to the smallest class index.
    return (votes.argmax(dim=1) == y).double().mean().item()


def fit_softmax_regression(
    features: Tensor, labels: Tensor, c: float = LINEAR_C, max_iter: int = LINEAR_MAX_ITER
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression, scikit-learn's objective (module docstring).

    Two classes are fitted as scikit-learn does: one weight vector, for class 1 against a
    fixed zero logit of class 0 (returned as row 0 of zeros).

    Shapes:
        features: (n, D) float64, labels: (n,) in [0, C), C >= 2 -> weight (C, D), bias (C,)
    """
    if int(labels.max()) < 1:
        raise ValueError("fit_softmax_regression needs labels of at least 2 classes")
    # Validation runs under no_grad or inference mode; the probe's own fit needs autograd
    # (and tensors made outside inference mode: hence the copies).
    with torch.inference_mode(False), torch.enable_grad():
        return _fit_softmax(features.clone(), labels.clone(), c, max_iter)


def _fit_softmax(
    features: Tensor, labels: Tensor, c: float, max_iter: int
) -> tuple[Tensor, Tensor]:
    n, dim = features.shape
    classes = int(labels.max()) + 1
    fitted = 1 if classes == 2 else classes
    weight = torch.zeros(fitted, dim, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(fitted, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-8,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    l2 = 1.0 / (2.0 * c * n)

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = features @ weight.T + bias
        if classes == 2:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        loss = F.cross_entropy(logits, labels) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    if classes == 2:
        weight = torch.cat([torch.zeros_like(weight), weight])
        bias = torch.cat([torch.zeros_like(bias), bias])
    return weight, bias


def linear_probe_accuracy(
    embeddings: Tensor, labels: Tensor, c: float = LINEAR_C, max_iter: int = LINEAR_MAX_ITER
) -> float:
    """Test accuracy of a softmax regression on the even rows, tested on the odd rows.

    Shapes:
        embeddings: (n, D), labels: (n,) class indices >= 0 -> float in [0, 1]
    """
    _check_probe_input(embeddings, labels)
    x, y = embeddings.detach().cpu().double(), labels.cpu()
    x_train, y_train, x_test, y_test = x[0::2], y[0::2], x[1::2], y[1::2]
    mean, std = x_train.mean(dim=0), x_train.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant features stay 0
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    # Train on the classes the training half has; the others are never predicted.
    seen, y_train = torch.unique(y_train, return_inverse=True)
    if len(seen) == 1:
        prediction = seen.expand(len(y_test))
    else:
        weight, bias = fit_softmax_regression(x_train, y_train, c, max_iter)
        prediction = seen[(x_test @ weight.T + bias).argmax(dim=1)]
    return (prediction == y_test).double().mean().item()


def attribute_probes(
    embeddings: Tensor, attributes: Mapping[str, Sequence[Any]]
) -> dict[str, float]:
    """`<attribute>_knn` and `<attribute>_linear` for each attribute with at least two
    classes among at least four rows (fewer tell nothing).

    Args:
        embeddings: (n, D) probe embeddings.
        attributes: name -> the n rows' values (None: missing).
    """
    results: dict[str, float] = {}
    for name, values in attributes.items():
        if len(values) != embeddings.shape[0]:
            raise ValueError(
                f"attribute {name!r} has {len(values)} values for {embeddings.shape[0]} rows"
            )
        codes, classes = encode_values(values)
        rows = codes >= 0
        if len(classes) < 2 or int(rows.sum()) < 4:
            continue
        results[f"{name}_knn"] = knn_accuracy(embeddings[rows], codes[rows])
        results[f"{name}_linear"] = linear_probe_accuracy(embeddings[rows], codes[rows])
    return results


def _check_probe_input(embeddings: Tensor, labels: Tensor) -> None:
    if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"need embeddings (n, D) and labels (n,), got {tuple(embeddings.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if embeddings.shape[0] < 2 or bool((labels < 0).any()):
        raise ValueError("need at least 2 rows, all labelled with class indices >= 0")
