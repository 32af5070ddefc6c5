"""What a SPEC mode is made of: one record per mode, its majority label, its enriched attribute.

Shared by the report (`write_report`, hence `spec-compare` and `compare.py`) and the training
callback (`ClusterLogCallback`), so a mode's label purity is the same number in every output.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from spec_align.spectrum import SpecResult

__all__ = [
    "attribute_counts",
    "class_name",
    "describe_attribute",
    "dominant_attribute",
    "enriched_attribute",
    "label_makeup",
    "label_purity",
    "labelled_share",
    "mode_records",
]

_UNKNOWN_LABELS = (None, -1, "")


def mode_records(result: SpecResult, samples_per_mode: int) -> list[dict]:
    """One JSON-ready record per mode of `result`, strongest first within each sign.

    `SpecResult.to_dict`'s mode entries (mode, direction, eigenvalue, top_samples,
    top_scores) plus sign ("positive" or "negative"), rank (position within its sign),
    formed_by and missed_by (the names of the embedding that forms the cluster and of the
    one that does not).
    """
    records = result.to_dict(samples_per_mode)["modes"]
    for record in records:
        positive = record["mode"] < result.num_positive
        formed, missed = result.names if positive else result.names[::-1]
        record["sign"] = "positive" if positive else "negative"
        record["rank"] = record["mode"] if positive else record["mode"] - result.num_positive
        record["formed_by"], record["missed_by"] = formed, missed
    return records


def label_makeup(labels: Sequence, top: int = 3) -> list[tuple[object, float]]:
    """The `top` most common labels of a mode's members, each with its share of the labelled
    members (most common first; members without a label, None, -1 or "", are left out)."""
    known = [label for label in labels if label not in _UNKNOWN_LABELS]
    return [(label, count / len(known)) for label, count in Counter(known).most_common(top)]


def label_purity(labels: Sequence) -> tuple[object, float | None]:
    """Majority label of a mode's members and the share of the labelled members carrying it.

    Members without a label (None, -1 or "") are left out, so unlabelled samples do not count
    as impure; `labelled_share` says how many members the purity rests on.

    Returns:
        (label, purity), or (None, None) if no member has a label.
    """
    makeup = label_makeup(labels, top=1)
    return makeup[0] if makeup else (None, None)


def labelled_share(labels: Sequence) -> float | None:
    """Share of a mode's members that have a label (None without members)."""
    if not labels:
        return None
    return sum(label not in _UNKNOWN_LABELS for label in labels) / len(labels)


def class_name(label: object, class_names: Sequence[str] | None) -> str | None:
    """Display name of an integer label, or None if `class_names` has none for it."""
    if class_names and isinstance(label, int) and 0 <= label < len(class_names):
        return str(class_names[label])
    return None


def attribute_counts(meta: Sequence[dict | None]) -> dict[str, Counter]:
    """Per categorical field (str/bool values only), how often each value occurs in `meta`."""
    fields: dict[str, Counter] = {}
    for row in meta:
        for field, value in (row or {}).items():
            if isinstance(value, str | bool):
                fields.setdefault(field, Counter())[value] += 1
    return fields


def enriched_attribute(
    members: Sequence[int],
    meta: Sequence[dict | None],
    counts: dict[str, Counter] | None = None,
) -> dict | None:
    """The categorical metadata value most over-represented among `members`.

    Enrichment is (share among members - base rate) / (1 - base rate): 1 for a pure cluster
    of that value, 0 at its base rate, so a common value (e.g. a 40% background) does not win
    just by being common. Only str/bool fields count.

    Args:
        members: row indices of the mode's members.
        meta: per-row metadata dicts (None: no metadata) of the whole sample set.
        counts: `attribute_counts(meta)`, when several modes are described (computed once).

    Returns:
        {"field", "value", "share" (among the members), "base_rate" (among all rows with the
        field), "enrichment"}, or None without metadata or members.
    """
    counts = attribute_counts(meta) if counts is None else counts
    best, best_score = None, -math.inf
    if not len(members):
        return None
    for field, base in counts.items():
        total = sum(base.values())
        inside = Counter(
            meta[i][field] for i in members if meta[i] is not None and field in meta[i]
        )
        for value, count in inside.items():
            if not isinstance(value, str | bool):
                continue
            share, prior = count / len(members), base[value] / total
            score = (share - prior) / (1 - prior) if prior < 1 else 0.0
            if score > best_score:
                best_score = score
                best = {
                    "field": field,
                    "value": value,
                    "share": share,
                    "base_rate": prior,
                    "enrichment": score,
                }
    return best


def dominant_attribute(
    members: Sequence[int], meta: Sequence[dict | None]
) -> tuple[str | None, float | None]:
    """`enriched_attribute` as ("field=value", its share among the members), or (None, None)."""
    best = enriched_attribute(members, meta)
    if best is None:
        return None, None
    return f"{best['field']}={best['value']}", best["share"]


def describe_attribute(attribute: dict | None) -> str | None:
    """A phrase for a mode's enriched attribute: "mostly texture=stripes (92% vs 30% of all
    samples)" when it holds most members, "more texture=stripes than overall (...)" when it
    is only enriched; None when nothing is over-represented."""
    if attribute is None or attribute["enrichment"] <= 0:
        return None
    rates = f"({attribute['share']:.0%} vs {attribute['base_rate']:.0%} of all samples)"
    what = f"{attribute['field']}={attribute['value']}"
    if attribute["share"] >= 0.5:
        return f"mostly {what} {rates}"
    return f"more {what} than overall {rates}"
