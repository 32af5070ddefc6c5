"""SPEC: the differential clusters of two embeddings of the same samples (the algorithm)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn

from spec_align.spectrum.distributed import all_reduce_covariance, gather_rows, is_distributed
from spec_align.spectrum.features import (
    CosineFeatures,
    RandomFourierFeatures,
    cosine_kernel,
    estimate_sigma,
    gaussian_kernel,
)
from spec_align.spectrum.linalg import (
    JointCovariance,
    feature_space_eigh,
    mapped_joint_features,
    orient_columns,
    symmetric_eigh,
    zero_tolerance,
)
from spec_align.spectrum.stream import (
    FIX,
    Fingerprints,
    SourceChangedError,
    Verifier,
    progress_bar,
    progress_note,
)
from spec_align.spectrum.validation import (
    as_tensor,
    check_eta,
    check_kernel,
    check_pair,
    check_positive_int,
    check_sigma,
    check_sigma_scale,
)

__all__ = [
    "SourceChangedError",
    "SpecResult",
    "build_feature_maps",
    "compare",
    "difference_kernel",
]

from spec_align.spectrum.result import SpecResult
from spec_align.spectrum.sources import float64_batch, pair_batches, peek_rows

Sigma = float | str

# Rows used by sigma="auto": a seeded subsample in memory, the first rows of a stream.
SIGMA_SAMPLES = 1000

# precision="auto" runs the random-feature path in float32 above this many joint features
# (m = 4 * rff_dim), where the covariance and the maps dominate the cost (docs/math.md 7.1).
FLOAT32_MIN_FEATURES = 2048

# On the float32 path, pass 1 keeps the joint features for the scores up to this many bytes,
# so that a source that fits is read once; a larger one is streamed a second time.
KEEP_FEATURES_BYTES = 1 << 30

PRECISIONS = ("auto", "float64", "float32")


def difference_kernel(
    x: object,
    y: object,
    *,
    kernel: str = "gaussian",
    sigma_x: float = 1.0,
    sigma_y: float = 1.0,
    eta: float = 1.0,
) -> Tensor:
    """The exact n x n difference kernel (K_x - eta * K_y) / n in float64.

    Shapes:
        x: (n, d_x), y: (n, d_y) -> (n, n)
    """
    x, y = as_tensor(x, "x").to(torch.float64), as_tensor(y, "y").to(torch.float64)
    check_pair(x, y)
    eta = check_eta(eta)
    check_kernel(kernel)
    if kernel == "cosine":
        return (cosine_kernel(x) - eta * cosine_kernel(y)) / x.shape[0]
    sigma_x = check_sigma(sigma_x, "sigma_x")
    sigma_y = check_sigma(sigma_y, "sigma_y")
    k_x = gaussian_kernel(x, sigma_x, name="sigma_x")
    return (k_x - eta * gaussian_kernel(y, sigma_y, name="sigma_y")) / x.shape[0]


def build_feature_maps(
    dim_x: int,
    dim_y: int,
    *,
    kernel: str,
    sigma_x: float | None,
    sigma_y: float | None,
    rff_dim: int | None,
    seed: int,
) -> tuple[nn.Module, nn.Module]:
    """Feature maps of both embeddings: cosine (exact) or seeded random Fourier features.

    Both Gaussian maps use `seed`, so they share their standard-normal draws, each scaled by
    its own sigma (common random numbers): each map is still an unbiased feature map, the
    noise of K_x - K_y partly cancels, and identical embeddings give exactly zero.
    """
    if kernel == "cosine":
        return CosineFeatures(dim_x), CosineFeatures(dim_y)
    return (
        RandomFourierFeatures(dim_x, rff_dim, sigma_x, seed=seed),
        RandomFourierFeatures(dim_y, rff_dim, sigma_y, seed=seed),
    )


def compare(
    x: object,
    y: object | None = None,
    *,
    kernel: str = "gaussian",
    sigma_x: Sigma = "auto",
    sigma_y: Sigma = "auto",
    eta: float = 1.0,
    rff_dim: int | None = None,
    top_k: int = 10,
    seed: int = 0,
    batch_size: int = 4096,
    names: tuple[str, str] = ("x", "y"),
    distributed: bool = False,
    progress: bool = False,
    precision: str = "auto",
) -> SpecResult:
    """Differential clusters of two embeddings of the same samples (SPEC).

    Eigendecomposes (K_x - eta * K_y) / n. Positive eigenvalues are clusters that x forms and
    y does not; negative ones the reverse. With explicit features (kernel="cosine", or
    rff_dim=D for the Gaussian kernel) the spectrum comes from the (D_x + D_y)-square dual,
    accumulated over batches in float64, and the sample scores come from a second pass, so
    memory does not grow with n beyond the (n, num_modes) scores.

    Args:
        x: embedding 1 as (n, d_x) numpy array or tensor; or, with `y` omitted, a source of
            (x_batch, y_batch) pairs: a re-iterable (list, DataLoader) or a function returning
            a fresh iterator. It is read twice (covariance, then scores) and must give the
            same rows in the same order both times: a per-batch fingerprint of the rows is
            compared between the passes, and a source that changed (e.g. a DataLoader with
            shuffle=True) raises instead of returning scores of the wrong samples.
        y: embedding 2, (n, d_y); row i of x and y is the same sample.
        kernel: "gaussian" or "cosine".
        sigma_x: Gaussian bandwidth of x, or "auto" (see `estimate_sigma`; a stream uses its
            first 1000 rows).
        sigma_y: Gaussian bandwidth of y, or "auto".
        eta: weight of K_y, >= 0; a mode counts as positive when its cluster is more than eta
            times as strong in x.
        rff_dim: None for the exact kernel (Gaussian: n x n; cosine: exact normalised
            features), or D random Fourier frequencies per embedding (2D features each).
        top_k: modes kept at each end of the spectrum.
        seed: seed of the random features (shared by both maps, see `build_feature_maps`).
        batch_size: rows per batch when x and y are in memory.
        names: display names of the two embeddings in summaries.
        distributed: each rank of a running torch.distributed group passes its own block of
            rows (rank 0 the first); the covariance is all-reduced and the scores gathered, so
            every rank gets the result of one process reading all rows in rank order. Call it
            on every rank. Needs explicit features (cosine, or rff_dim for the Gaussian).
        progress: show tqdm progress bars (on stderr, rank 0 only) for the passes over the
            data, and a note before the eigen-solve. Totals: the row count of in-memory
            arrays, of a source with a `num_samples` attribute, and of the second pass;
            else the `len()` of the source in batches.
        precision: arithmetic of the random-feature path (rff_dim set): "float64", "float32"
            (float32 maps and per-batch products, summed in float64; eigen-solve and scores
            in float64; deviation ~1e-7 relative, far below the O(D^-1/2) random-feature
            error, docs/math.md section 7.1), or "auto": float32 when 4 * rff_dim >= 2048
            in one process (float64 when distributed).
            On the float32 path a source whose features fit in 1 GiB is read only once.
            The exact paths (cosine, rff_dim=None) are always float64.

    Returns:
        A `SpecResult`.
    """
    rff_dim = check_kernel(kernel, rff_dim)
    eta = check_eta(eta)
    top_k = check_positive_int(top_k, "top_k")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int, got {seed!r}")
    seed = int(seed)
    sigma_x = _check_sigma_or_auto(sigma_x, "sigma_x")
    sigma_y = _check_sigma_or_auto(sigma_y, "sigma_y")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32" and rff_dim is None:
        raise ValueError(
            "precision='float32' applies to random Fourier features only (pass rff_dim); the "
            "exact paths (cosine, rff_dim=None) are float64"
        )
    # Several processes take the covariance path at any n: with n < m there, float32 rounding
    # in C's null space would pass the float64 zero test as spurious modes.
    auto_float32 = not distributed and 4 * rff_dim >= FLOAT32_MIN_FEATURES if rff_dim else False
    use_float32 = rff_dim is not None and (
        precision == "float32" or (precision == "auto" and auto_float32)
    )
    dtype = torch.float32 if use_float32 else torch.float64

    batches, rows_hint, batches_hint = pair_batches(x, y, batch_size)
    settings = dict(kernel=kernel, eta=eta, rff_dim=rff_dim, seed=seed, names=names)
    if distributed and not is_distributed():
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group with more "
            "than one process (e.g. under torchrun)"
        )
    show = bool(progress) and (not distributed or dist.get_rank() == 0)
    in_memory = y is not None
    totals = (rows_hint, batches_hint)
    if kernel == "gaussian" and rff_dim is None:
        if distributed:
            raise ValueError(
                "the exact n x n Gaussian kernel cannot be split over processes; pass rff_dim "
                "(random Fourier features) or use kernel='cosine'"
            )
        parts = []
        with _bar(show and not in_memory, "SPEC: reading", totals) as (bar, per_batch):
            for pair in batches():
                parts.append(pair)
                bar.update(1 if per_batch else pair[0].shape[0])
        full_x, full_y = (torch.cat(side) for side in zip(*parts, strict=True))
        return _compare_exact(full_x, full_y, sigma_x, sigma_y, top_k, settings, show)
    return _compare_features(
        batches, sigma_x, sigma_y, top_k, settings, distributed, show, totals, dtype
    )


def _check_sigma_or_auto(sigma: object, name: str) -> Sigma:
    if isinstance(sigma, str) and sigma == "auto":
        return sigma
    return check_sigma(sigma, name)


@contextmanager
def _bar(show: bool, desc: str, totals: tuple[int | None, int | None]):
    """A progress bar counting rows when their total is known (or nothing is), else batches."""
    rows, count = totals
    per_batch = rows is None and count is not None
    with progress_bar(
        show, desc, count if per_batch else rows, "batch" if per_batch else "row"
    ) as bar:
        yield bar, per_batch


def _auto_sigma(z: Tensor, seed: int, name: str) -> float:
    """estimate_sigma with an error that says the bandwidth was automatic."""
    try:
        return estimate_sigma(z, seed=seed)
    except ValueError as err:
        raise ValueError(f"{name}='auto': {err}") from err


def _check_finite_matrix(matrix: Tensor, what: str, settings: dict, sigmas: tuple) -> None:
    """The safety net before an eigen-solve: NaN/inf here would come back as silent NaN."""
    if bool(torch.isfinite(matrix).all()):
        return
    detail = ""
    if settings["kernel"] == "gaussian":
        detail = f" with sigma_x={sigmas[0]:.3g} and sigma_y={sigmas[1]:.3g}"
    raise ValueError(
        f"the {what} contains NaN or inf: the embeddings' values{detail} overflow float64; "
        "rescale the embeddings (e.g. divide each by its largest absolute entry) and, for the "
        "Gaussian kernel, pass sigma on the scale of their pairwise distances or 'auto'"
    )


def _compare_exact(
    x: Tensor,
    y: Tensor,
    sigma_x: Sigma,
    sigma_y: Sigma,
    top_k: int,
    settings: dict,
    show: bool = False,
) -> SpecResult:
    n = x.shape[0]
    if top_k > n:
        raise ValueError(f"top_k={top_k} exceeds the {n} eigenvalues of an n={n} kernel")
    seed = settings["seed"]
    sigma_x = _auto_sigma(x, seed, "sigma_x") if sigma_x == "auto" else float(sigma_x)
    sigma_y = _auto_sigma(y, seed, "sigma_y") if sigma_y == "auto" else float(sigma_y)
    delta = difference_kernel(x, y, sigma_x=sigma_x, sigma_y=sigma_y, eta=settings["eta"])
    _check_finite_matrix(delta, "difference kernel", settings, (sigma_x, sigma_y))
    progress_note(show, f"SPEC: eigen-solve of the {n} x {n} difference kernel")
    values, vectors = symmetric_eigh(delta, top_k)
    complete = values.shape[0] == n
    columns, num_positive = _mode_columns(values, top_k, zero_tolerance(n, 1 + settings["eta"]))
    scores = vectors[:, columns]
    scores = scores * orient_columns(scores)
    return SpecResult(
        eigenvalues=values,
        mode_eigenvalues=values[columns],
        scores=scores,
        num_positive=num_positive,
        spec_diff=_operator_norm(values),
        sigma_x=sigma_x,
        sigma_y=sigma_y,
        method="exact",
        full_spectrum=complete,
        **settings,
    )


def _compare_features(
    batches: Callable[[], Iterator[tuple[Tensor, Tensor]]],
    sigma_x: Sigma,
    sigma_y: Sigma,
    top_k: int,
    settings: dict,
    distributed: bool,
    show: bool = False,
    totals: tuple[int | None, int | None] = (None, None),
    dtype: torch.dtype = torch.float64,
) -> SpecResult:
    kernel, eta = settings["kernel"], settings["eta"]
    stream = batches()
    head, stream = peek_rows(stream, SIGMA_SAMPLES if kernel == "gaussian" else 1)
    head_x, head_y = (torch.cat(parts)[:SIGMA_SAMPLES] for parts in zip(*head, strict=True))
    if kernel == "gaussian" and distributed:
        # The first rows of the whole data set, as one process would see them: rank 0's
        # block may be shorter, so every rank contributes its head, in rank order.
        head_x = gather_rows(head_x.to(torch.float64))[:SIGMA_SAMPLES]
        head_y = gather_rows(head_y.to(torch.float64))[:SIGMA_SAMPLES]
    if kernel == "gaussian":
        seed = settings["seed"]
        sigma_x = _auto_sigma(head_x, seed, "sigma_x") if sigma_x == "auto" else sigma_x
        sigma_y = _auto_sigma(head_y, seed, "sigma_y") if sigma_y == "auto" else sigma_y
        sigma_x, sigma_y = float(sigma_x), float(sigma_y)
        check_sigma_scale(head_x, sigma_x, "sigma_x")
        check_sigma_scale(head_y, sigma_y, "sigma_y")
    else:
        sigma_x = sigma_y = None
    widths = (head_x.shape[1], head_y.shape[1])
    map_x, map_y = build_feature_maps(
        *widths,
        kernel=kernel,
        sigma_x=sigma_x,
        sigma_y=sigma_y,
        rff_dim=settings["rff_dim"],
        seed=settings["seed"],
    )
    device = head_x.device
    map_x, map_y = map_x.to(device), map_y.to(device)

    m = map_x.out_dim + map_y.out_dim
    # Features are buffered until there are more rows than features: a smaller problem is
    # solved on the n x n side (cheaper, and no m x m matrix); a larger one switches to the
    # streaming covariance, whose memory no longer grows with n. Ranks always accumulate.
    buffered, accumulator = [], None
    if distributed:
        accumulator = JointCovariance(map_x.out_dim, map_y.out_dim, eta, device=device)
    fingerprints = Fingerprints()  # compared on the second pass, see spec_align.spectrum.stream
    # float32 path: the features are kept for the scores while they fit (one pass only)
    kept, kept_bytes = ([], 0) if dtype == torch.float32 and not distributed else (None, 0)
    try:
        with _bar(show, "SPEC pass 1/2 (covariance)", totals) as (bar, per_batch):
            for bx, by in stream:
                bx, by = float64_batch(bx, by, device, widths, fingerprints.batches, "")
                fingerprints.add(bx, by)
                joint = mapped_joint_features(map_x, map_y, bx, by, eta, dtype)
                if kept is not None:
                    kept_bytes += joint.numel() * joint.element_size()
                    if kept_bytes <= KEEP_FEATURES_BYTES:
                        kept.append(joint)
                    else:
                        kept = None  # too large: the scores come from a second pass
                if accumulator is None and sum(len(b) for b in buffered) + len(joint) <= m:
                    buffered.append(joint)
                else:
                    if accumulator is None:
                        accumulator = JointCovariance(
                            map_x.out_dim, map_y.out_dim, eta, device=device
                        )
                        for b in buffered:
                            accumulator.update_joint(b)
                        buffered = []
                    accumulator.update_joint(joint)
                bar.update(1 if per_batch else bx.shape[0])
        failure = None
    except Exception as err:
        if not distributed:
            raise
        failure = err
    if distributed and _any_rank_failed(failure is not None, device):
        if failure is not None:
            raise failure
        raise ValueError("SPEC's first pass failed on another rank (see its error)")
    if distributed:
        accumulator = all_reduce_covariance(accumulator)
    n = accumulator.num_samples if accumulator is not None else sum(len(b) for b in buffered)
    if top_k > min(n, m):
        raise ValueError(
            f"top_k={top_k} exceeds the {min(n, m)} eigenvalues available "
            f"(n={n} samples, {m} features); lower top_k"
        )
    tolerance = zero_tolerance(min(n, m), 1 + eta)
    sigmas = (sigma_x, sigma_y)
    if accumulator is None:
        psi = torch.cat(buffered).to(torch.float64) / math.sqrt(n)
        _check_finite_matrix(psi, "feature matrix", settings, sigmas)
        progress_note(show, f"SPEC: eigen-solve of the {n} x {n} difference kernel")
        signed_psi = torch.cat([psi[:, : map_x.out_dim], -psi[:, map_x.out_dim :]], dim=1)
        values, vectors = symmetric_eigh(signed_psi @ psi.T, top_k)
        complete = values.shape[0] == n
        columns, num_positive = _mode_columns(values, top_k, tolerance)
        scores = vectors[:, columns]
        # Psi v = u for v = J Psi^T u / lambda: the feature-space form that scores new samples.
        mode_vectors = signed_psi.T @ scores / values[columns]
    else:
        covariance = accumulator.covariance()
        _check_finite_matrix(covariance, "feature covariance", settings, sigmas)
        progress_note(show, f"SPEC: eigen-solve of the {m} x {m} feature covariance")
        values, vectors, complete = feature_space_eigh(covariance, map_x.out_dim, 1 + eta, top_k)
        columns, num_positive = _mode_columns(values, top_k, tolerance)
        mode_vectors = vectors[:, columns]
        if kept is not None:
            vectors32 = mode_vectors.to(torch.float32)  # float32 features: float32 products
            scores = torch.cat([b @ vectors32 for b in kept]).to(torch.float64) / math.sqrt(n)
            kept = None
        else:
            scores = _stream_scores(
                batches,
                map_x,
                map_y,
                mode_vectors,
                n,
                eta,
                device,
                distributed,
                fingerprints=fingerprints,
                widths=widths,
                show=show,
                dtype=dtype,
            )
    signs = orient_columns(scores)
    if complete:  # the rest of the min(n, m) eigenvalues are exact zeros
        padding = values.new_zeros(max(min(n, m) - values.shape[0], 0))
        values_shown = torch.cat([values, padding]).sort(descending=True).values
    else:
        values_shown = values
    return SpecResult(
        eigenvalues=values_shown,
        mode_eigenvalues=values[columns],
        scores=scores * signs,
        num_positive=num_positive,
        spec_diff=_operator_norm(values),
        sigma_x=sigma_x,
        sigma_y=sigma_y,
        method="features",
        full_spectrum=complete,
        feature_map_x=map_x,
        feature_map_y=map_y,
        mode_vectors=mode_vectors * signs,
        **settings,
    )


def _any_rank_failed(failed: bool, device: torch.device) -> bool:
    """Whether any rank failed: one all-reduce, so that every rank raises and none hangs."""
    flag = torch.tensor([int(failed)], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(int(flag))


def _stream_scores(
    batches: Callable[[], Iterator[tuple[Tensor, Tensor]]],
    map_x: nn.Module,
    map_y: nn.Module,
    mode_vectors: Tensor,
    n: int,
    eta: float,
    device: torch.device,
    distributed: bool,
    *,
    fingerprints: Fingerprints,
    widths: tuple[int, int],
    show: bool = False,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Second pass: sample scores from re-streaming the data through the same maps.

    Every batch is fingerprinted and compared with the first pass's (see
    `spec_align.spectrum.stream`): a source that changed raises `SourceChangedError`, on every
    rank alike when distributed.
    """
    verifier = Verifier(fingerprints)
    parts = []
    try:
        with progress_bar(show, "SPEC pass 2/2 (scores)", fingerprints.rows) as bar:
            for bx, by in batches():
                bx, by = float64_batch(
                    bx, by, device, widths, verifier.second.batches, " (second pass)"
                )
                if not verifier.add(bx, by):
                    break  # changed: no need to read on
                if verifier.second.rows > fingerprints.rows:
                    continue  # more rows than the first pass: only count them
                joint = mapped_joint_features(map_x, map_y, bx, by, eta, dtype)
                parts.append((joint @ mode_vectors.to(dtype)).to(torch.float64))
                bar.update(bx.shape[0])
        failure = None
    except Exception as err:
        if not distributed:
            raise
        failure = err  # raised after the other ranks have heard of it
    where = f" on rank {dist.get_rank()}" if distributed else ""
    error = verifier.error(where) if failure is None else None
    if distributed and _any_rank_failed(failure is not None or error is not None, device):
        if failure is not None:
            raise failure
        if error is None:
            error = (
                f"the batch source changed between passes on another rank (see its error). {FIX}"
            )
    if error is not None:
        raise SourceChangedError(error)
    scores = torch.cat(parts) / math.sqrt(n)
    if distributed:
        scores = gather_rows(scores)
    return scores


def _mode_columns(values: Tensor, top_k: int, tolerance: float) -> tuple[Tensor, int]:
    """Indices (into descending `values`) of the top_k positive, then top_k negative modes."""
    positive = (values > tolerance).nonzero().squeeze(1)[:top_k]
    negative = (values < -tolerance).nonzero().squeeze(1).flip(0)[:top_k]
    return torch.cat([positive, negative]), positive.shape[0]


def _operator_norm(values: Tensor) -> float:
    return max(float(values.max()), -float(values.min()), 0.0)
