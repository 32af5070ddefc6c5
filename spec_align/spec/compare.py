"""SPEC: the differential clusters of two embeddings of the same samples."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from spec_align.spec.distributed import all_reduce_covariance, gather_rows, is_distributed
from spec_align.spec.features import (
    CosineFeatures,
    RandomFourierFeatures,
    cosine_kernel,
    estimate_sigma,
    gaussian_kernel,
)
from spec_align.spec.linalg import (
    JointCovariance,
    feature_space_eigh,
    joint_features,
    orient_columns,
    symmetric_eigh,
    zero_tolerance,
)
from spec_align.spec.stream import (
    FIX,
    Fingerprints,
    SourceChangedError,
    Verifier,
    progress_bar,
    progress_note,
)
from spec_align.spec.validation import (
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

Sigma = float | str
PairSource = Iterable[tuple[object, object]] | Callable[[], Iterable[tuple[object, object]]]

# Rows used by sigma="auto": a seeded subsample in memory, the first rows of a stream.
SIGMA_SAMPLES = 1000


@dataclass
class SpecResult:
    """The spectrum and differential clusters of (K_x - eta * K_y) / n.

    Modes are the columns of `scores`: first the positive eigenvalues in descending order
    (clusters that x forms and y does not), then the negative ones from the most negative
    up (clusters that y forms and x does not). Only eigenvalues that are nonzero beyond
    float64 rounding become modes, at most `top_k` of each sign.

    `scores[:, j]` is the unit-norm sample-space eigenvector of mode j, identical on the exact
    and feature-space paths. Sign convention: each column is flipped so its entries sum to a
    positive number (a cluster's members score highest); a contrast mode whose entries sum
    to about zero (|sum| < 0.1 * sum |u|) is instead flipped so that the lowest-index sample
    with |u_i| >= half the column's max is positive. `top_samples(j)` lists the highest
    scores; `top_samples(j, largest=False)` the other pole of a contrast mode.

    Attributes:
        eigenvalues: the spectrum, descending. Complete, null-space zeros included ((n,) on
            the exact path, (min(n, m),) with features), while the solved matrix is at most
            2048-square or on a GPU; above that on a CPU, only its top_k largest and top_k
            smallest (a Lanczos solve), and `full_spectrum` is False. spec_diff and the modes
            are exact either way.
        mode_eigenvalues: eigenvalue of each mode, (num_modes,).
        scores: per-sample mode scores, (n, num_modes).
        num_positive: how many leading modes have positive eigenvalues.
        spec_diff: operator norm of the difference kernel, max(lambda_max, -lambda_min).
        names: display names of the two embeddings.
        method: "exact" (n x n kernel) or "features" ((D_x + D_y)-square dual).
    """

    eigenvalues: Tensor
    mode_eigenvalues: Tensor
    scores: Tensor
    num_positive: int
    spec_diff: float
    kernel: str
    eta: float
    sigma_x: float | None
    sigma_y: float | None
    rff_dim: int | None
    seed: int
    method: str
    full_spectrum: bool = True
    names: tuple[str, str] = ("x", "y")
    feature_map_x: nn.Module | None = field(default=None, repr=False)
    feature_map_y: nn.Module | None = field(default=None, repr=False)
    mode_vectors: Tensor | None = field(default=None, repr=False)

    @property
    def num_samples(self) -> int:
        return self.scores.shape[0]

    @property
    def num_modes(self) -> int:
        return self.scores.shape[1]

    def mode_direction(self, mode: int) -> str:
        """Which embedding forms the cluster of `mode`: "x - y" style label with the names."""
        first, second = self.names if mode < self.num_positive else self.names[::-1]
        return f"{first} - {second}"

    def top_samples(self, mode: int, m: int = 10, *, largest: bool = True) -> Tensor:
        """Row indices of the `m` samples with the highest (or lowest) score in `mode`."""
        if not 0 <= mode < self.num_modes:
            raise IndexError(f"mode {mode} out of range: this result has {self.num_modes} modes")
        m = min(m, self.num_samples)
        return torch.topk(self.scores[:, mode], m, largest=largest).indices

    def score(self, x: object, y: object) -> Tensor:
        """Mode scores of new paired samples with the same feature maps, (n_new, num_modes).

        The scale matches `scores` (unit eigenvectors over the original n samples).
        """
        if self.mode_vectors is None:
            raise ValueError(
                "score() needs explicit feature maps; this result came from the exact n x n "
                "Gaussian path. Use rff_dim=... (or kernel='cosine') to score new samples"
            )
        x, y = as_tensor(x, "x"), as_tensor(y, "y")
        check_pair(x, y)
        device = self.mode_vectors.device
        joint = _joint_features(
            self.feature_map_x, self.feature_map_y, x.to(device), y.to(device), self.eta
        )
        return joint @ self.mode_vectors / math.sqrt(self.num_samples)

    def to_dict(self, samples_per_mode: int = 10) -> dict:
        """A JSON-ready summary: settings, spectrum ends and each mode's top samples."""
        modes = []
        for j in range(self.num_modes):
            top = self.top_samples(j, samples_per_mode)
            modes.append(
                {
                    "mode": j,
                    "direction": self.mode_direction(j),
                    "eigenvalue": float(self.mode_eigenvalues[j]),
                    "top_samples": top.tolist(),
                    "top_scores": self.scores[top, j].tolist(),
                }
            )
        return {
            "names": list(self.names),
            "kernel": self.kernel,
            "eta": self.eta,
            "sigma_x": self.sigma_x,
            "sigma_y": self.sigma_y,
            "rff_dim": self.rff_dim,
            "seed": self.seed,
            "method": self.method,
            "full_spectrum": self.full_spectrum,
            "num_samples": self.num_samples,
            "spec_diff": self.spec_diff,
            "modes": modes,
        }

    def __str__(self) -> str:
        x_name, y_name = self.names
        kernel = self.kernel
        if self.kernel == "gaussian":
            kernel += f" (sigma_{x_name}={self.sigma_x:.4g}, sigma_{y_name}={self.sigma_y:.4g}"
            kernel += f", rff_dim={self.rff_dim})" if self.rff_dim else ", exact)"
        lines = [
            f"SPEC {x_name} vs {y_name}: n={self.num_samples}, kernel={kernel}, eta={self.eta:g}",
            f"SPEC-diff = {self.spec_diff:.6f}",
        ]
        for label, columns in (
            (
                f"{x_name} - {y_name} (clusters {x_name} forms, {y_name} does not)",
                range(self.num_positive),
            ),
            (
                f"{y_name} - {x_name} (clusters {y_name} forms, {x_name} does not)",
                range(self.num_positive, self.num_modes),
            ),
        ):
            lines.append(f"{label}: {len(columns)} modes")
            for j in columns:
                top = ", ".join(str(i) for i in self.top_samples(j, 8).tolist())
                lines.append(
                    f"  mode {j:2d}  eigenvalue {float(self.mode_eigenvalues[j]):+.5f}"
                    f"  top samples: {top}"
                )
        return "\n".join(lines)


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

    batches, rows_hint, batches_hint = _pair_batches(x, y, batch_size)
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
    return _compare_features(batches, sigma_x, sigma_y, top_k, settings, distributed, show, totals)


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
) -> SpecResult:
    kernel, eta = settings["kernel"], settings["eta"]
    stream = batches()
    head, stream = _peek_rows(stream, SIGMA_SAMPLES if kernel == "gaussian" else 1)
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
    fingerprints = Fingerprints()  # compared on the second pass, see spec_align.spec.stream
    try:
        with _bar(show, "SPEC pass 1/2 (covariance)", totals) as (bar, per_batch):
            for bx, by in stream:
                bx, by = _float64_batch(bx, by, device, widths, fingerprints.batches, "")
                fingerprints.add(bx, by)
                joint = _joint_features(map_x, map_y, bx, by, eta)
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
        psi = torch.cat(buffered) / math.sqrt(n)
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
        )
    signs = orient_columns(scores)
    if complete:  # the rest of the min(n, m) eigenvalues are exact zeros
        padding = values.new_zeros(min(n, m) - values.shape[0])
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


def _float64_batch(
    bx: Tensor, by: Tensor, device: torch.device, widths: tuple[int, int], index: int, when: str
) -> tuple[Tensor, Tensor]:
    """A batch on `device` in float64, after checking it has the first batch's widths."""
    _check_widths(bx, by, widths, f"batch {index}{when}")
    return bx.to(device=device, dtype=torch.float64), by.to(device=device, dtype=torch.float64)


def _check_widths(bx: Tensor, by: Tensor, widths: tuple[int, int], batch: str) -> None:
    for side, values, width in (("x", bx, widths[0]), ("y", by, widths[1])):
        if values.shape[1] != width:
            raise ValueError(
                f"{batch} of the source has {side} of width {values.shape[1]}, but the first "
                f"batch's {side} has width {width}: every batch must have the same columns "
                "(d_x for x, d_y for y)"
            )


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
) -> Tensor:
    """Second pass: sample scores from re-streaming the data through the same maps.

    Every batch is fingerprinted and compared with the first pass's (see
    `spec_align.spec.stream`): a source that changed raises `SourceChangedError`, on every
    rank alike when distributed.
    """
    verifier = Verifier(fingerprints)
    parts = []
    try:
        with progress_bar(show, "SPEC pass 2/2 (scores)", fingerprints.rows) as bar:
            for bx, by in batches():
                bx, by = _float64_batch(
                    bx, by, device, widths, verifier.second.batches, " (second pass)"
                )
                if not verifier.add(bx, by):
                    break  # changed: no need to read on
                if verifier.second.rows > fingerprints.rows:
                    continue  # more rows than the first pass: only count them
                parts.append(_joint_features(map_x, map_y, bx, by, eta) @ mode_vectors)
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


def _joint_features(
    map_x: nn.Module, map_y: nn.Module, x: Tensor, y: Tensor, eta: float
) -> Tensor:
    return joint_features(map_x(x.to(torch.float64)), map_y(y.to(torch.float64)), eta)


def _mode_columns(values: Tensor, top_k: int, tolerance: float) -> tuple[Tensor, int]:
    """Indices (into descending `values`) of the top_k positive, then top_k negative modes."""
    positive = (values > tolerance).nonzero().squeeze(1)[:top_k]
    negative = (values < -tolerance).nonzero().squeeze(1).flip(0)[:top_k]
    return torch.cat([positive, negative]), positive.shape[0]


def _operator_norm(values: Tensor) -> float:
    return max(float(values.max()), -float(values.min()), 0.0)


def _pair_batches(
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
    return (lambda: _validated(factory())), rows, count


def _validated(pairs: Iterable) -> Iterator[tuple[Tensor, Tensor]]:
    empty = True
    widths = None
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"batch {i} of the source is not an (x_batch, y_batch) pair")
        bx, by = as_tensor(pair[0], f"x batch {i}"), as_tensor(pair[1], f"y batch {i}")
        check_pair(bx, by)
        if widths is None:
            widths = (bx.shape[1], by.shape[1])
        _check_widths(bx, by, widths, f"batch {i}")
        empty = False
        yield bx, by
    if empty:
        raise ValueError("the batch source yielded no batches; SPEC needs at least one sample")


def _peek_rows(
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
