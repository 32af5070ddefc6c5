"""tqdm progress bars for the data layer's long steps, shown on global rank zero only."""

from __future__ import annotations

from collections.abc import Iterable

from lightning_utilities.core.rank_zero import rank_zero_only
from tqdm import tqdm


def progress(
    iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "img"
) -> tqdm:
    """A tqdm bar on stderr (with total and ETA when `total` or `len(iterable)` is known).

    Hidden on ranks other than zero: Lightning sets `rank_zero_only.rank` in each process it
    starts; it is unset (rank zero) in a plain script. Imported from lightning_utilities, which
    is light, so shard tools and scripts do not import Lightning for it.
    """
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        dynamic_ncols=True,
        disable=getattr(rank_zero_only, "rank", 0) != 0,
    )
