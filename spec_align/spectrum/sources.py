"""What `compare` reads: arrays or a re-iterable source of (x_batch, y_batch) pairs, checked."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor

from spec_align.spectrum.validation import (
    as_tensor,
    check_pair,
    check_positive_int,
)

__all__ = ["PairSource", "check_widths", "float64_batch", "pair_batches", "peek_rows", "validated"]

PairSource = Iterable[tuple[object, object]] | Callable[[], Iterable[tuple[object, object]]]


def pair_batches(
    x: object, y: object | None, batch_size: int
) -> tuple[Callable[[], Iterator[tuple[Tensor, Tensor]]], int | None, int | None]:
    """A function returning a fresh, validated iterator of (x_batch, y_batch) each call.

    Also returns the number of rows and of batches per pass where known (progress totals).
    """
    if y is not None:
        x, y = as_tensor(x, "x"), as_tensor(y, "y")
        check_pair(x, y)
        batch_size = check_positive_int(batch_size, "batch_size")
        n = x.shape[0]
        return (
            lambda: (
                (x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)
            ),
            n,
            -(-n // batch_size),
        )
    if callable(x):
        factory = x
    elif isinstance(x, Iterable) and iter(x) is not x:
        factory = lambda: x  # noqa: E731 - a re-iterable container or DataLoader
    elif isinstance(x, Iterable):
        raise TypeError(
            "the batch source is a one-shot iterator (e.g. a generator), but SPEC reads it twice; "
            "pass a list, a DataLoader, or a function that returns a fresh iterator"
        )
    else:
        raise TypeError(
            "compare() needs x and y arrays, or one source of (x_batch, y_batch) pairs"
        )
    rows = getattr(x, "num_samples", None)
    rows = int(rows) if isinstance(rows, numbers.Integral) and not isinstance(rows, bool) else None
    try:
        count = len(x)  # a list or a DataLoader over a sized dataset
    except TypeError:
        count = None
    return (lambda: validated(factory())), rows, count


def validated(pairs: Iterable) -> Iterator[tuple[Tensor, Tensor]]:
    empty = True
    widths = None
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"batch {i} of the source is not an (x_batch, y_batch) pair")
        bx, by = as_tensor(pair[0], f"x batch {i}"), as_tensor(pair[1], f"y batch {i}")
        check_pair(bx, by)
        if widths is None:
            widths = (bx.shape[1], by.shape[1])
        check_widths(bx, by, widths, f"batch {i}")
        empty = False
        yield bx, by
    if empty:
        raise ValueError("the batch source yielded no batches; SPEC needs at least one sample")


def peek_rows(
    stream: Iterator[tuple[Tensor, Tensor]], rows: int
) -> tuple[list[tuple[Tensor, Tensor]], Iterator[tuple[Tensor, Tensor]]]:
    """Read batches until `rows` rows are buffered; return them and the whole stream again."""
    head, count = [], 0
    for pair in stream:
        head.append(pair)
        count += pair[0].shape[0]
        if count >= rows:
            break

    def replay() -> Iterator[tuple[Tensor, Tensor]]:
        yield from head
        yield from stream

    return head, replay()


def float64_batch(
    bx: Tensor, by: Tensor, device: torch.device, widths: tuple[int, int], index: int, when: str
) -> tuple[Tensor, Tensor]:
    """A batch on `device` in float64, after checking it has the first batch's widths."""
    check_widths(bx, by, widths, f"batch {index}{when}")
    return bx.to(device=device, dtype=torch.float64), by.to(device=device, dtype=torch.float64)


def check_widths(bx: Tensor, by: Tensor, widths: tuple[int, int], batch: str) -> None:
    for side, values, width in (("x", bx, widths[0]), ("y", by, widths[1])):
        if values.shape[1] != width:
            raise ValueError(
                f"{batch} of the source has {side} of width {values.shape[1]}, but the first "
                f"batch's {side} has width {width}: every batch must have the same columns "
                "(d_x for x, d_y for y)"
            )
