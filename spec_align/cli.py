"""`spec-compare` / `python -m spec_align.cli`: SPEC of two precomputed embeddings, as a report.

    spec-compare clip.npy dino.npy --out reports/clip_vs_dino
    spec-compare feats.npz feats.npz --x-key clip --y-key dino --labels labels.npy \\
        --images paths.txt --kernel gaussian --rff-dim 1024 --top-k 8

Run under `torchrun --nproc-per-node N` to split the rows over N processes (gloo/nccl); the
report is written by rank 0.

The report directory is checked before anything is loaded or computed (it must be creatable
and writable, and empty unless --overwrite); the summary is printed before the files are
written, and the report is written beside the directory and swapped in whole, so a failure
never leaves a half-old, half-new report.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from spec_align.spectrum.validation import KERNELS

__all__ = ["build_parser", "main"]

_PROG = "spec-compare"


class _WriteFailed(Exception):
    """Writing the report failed after the result was computed and printed."""


def _sigma(value: str) -> float | str:
    return value if value == "auto" else float(value)


def _rff_dim(value: str) -> int | str | None:
    if value in ("auto", "none"):
        return None if value == "none" else value
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (also used for `--help` in the docs)."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Compare two embeddings of the same samples with SPEC: which sample "
        "clusters does x form that y does not (positive modes), and the reverse (negative).",
    )
    parser.add_argument("x", help="embedding x: .npy, .npz or .pt, (n, d_x); never unpickled")
    parser.add_argument("y", help="embedding y of the same n samples in the same row order")
    parser.add_argument("--x-key", help="array name inside x's .npz / .pt dict")
    parser.add_argument("--y-key", help="array name inside y's .npz / .pt dict")
    parser.add_argument(
        "--names", nargs=2, metavar=("X", "Y"), help="display names (default: file stems)"
    )
    parser.add_argument(
        "--out",
        "-o",
        default="spec_report",
        help="report directory; must be empty or new unless --overwrite",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing report in --out (the whole directory, swapped in at the end)",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars on stderr",
    )
    spec = parser.add_argument_group("SPEC")
    spec.add_argument("--kernel", choices=KERNELS, default="gaussian")
    spec.add_argument("--sigma-x", type=_sigma, default="auto", help="float or auto")
    spec.add_argument("--sigma-y", type=_sigma, default="auto", help="float or auto")
    spec.add_argument("--eta", type=float, default=1.0, help="weight of y's kernel")
    spec.add_argument(
        "--rff-dim",
        type=_rff_dim,
        default="auto",
        help="random Fourier frequencies per embedding; 'none' = exact n x n kernel; "
        "'auto' = exact up to 4096 samples, else 1024",
    )
    spec.add_argument("--top-k", type=int, default=10, help="modes per sign")
    spec.add_argument("--seed", type=int, default=0, help="random-feature seed")
    spec.add_argument("--batch-size", type=int, default=8192, help="rows per streamed batch")
    stability = parser.add_argument_group("stability (how often each mode reappears; noise floor)")
    stability.add_argument(
        "--stability",
        type=int,
        default=10,
        metavar="N",
        help="SPEC reruns on random halves of the samples, and as many on pairs of random "
        "embeddings for the noise floor; 0: none (default 10: seconds at the default "
        "--stability-samples)",
    )
    stability.add_argument(
        "--stability-samples",
        type=int,
        default=1024,
        metavar="M",
        help="analyse a seeded subsample of at most M rows (each rerun: SPEC of M/2 or M rows)",
    )
    sidecar = parser.add_argument_group("per-sample files (.json list, .npy, or one per line)")
    sidecar.add_argument("--labels", help="class labels, for label purity per mode")
    sidecar.add_argument("--class-names", help="names of integer labels (one per line / json)")
    sidecar.add_argument("--keys", help="sample ids shown in the report")
    sidecar.add_argument("--images", help="image paths (relative ones: to this file's folder)")
    sidecar.add_argument("--texts", help="texts, listed per mode when there are no images")
    report = parser.add_argument_group("report")
    report.add_argument("--samples-per-mode", type=int, default=16)
    report.add_argument(
        "--map-method", choices=("pca", "tsne"), default="pca", help="layout of the 2-D maps"
    )
    report.add_argument("--title")
    report.add_argument("--wandb", action="store_true", help="also log to W&B (WANDB_MODE)")
    report.add_argument("--wandb-project", default="spec_align")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 with a one-line message on bad input, 1 when
    the report could not be written after the result was printed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Heavy imports after parsing, so --help is instant.
    from spec_align.explain.loading import InputError

    try:
        return _run(args)
    except _WriteFailed as err:
        parser.exit(1, f"{_PROG}: error: {err}\n")
    except (InputError, ValueError, TypeError, OSError) as err:
        parser.exit(2, f"{_PROG}: error: {err}\n")


def _run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from spec_align.explain.comparison import compare_embeddings
    from spec_align.explain.loading import load_embedding, load_list
    from spec_align.explain.report import log_report_to_wandb, write_report
    from spec_align.explain.report_dir import (
        ReportDirError,
        check_report_dir,
        replace_report_dir,
    )
    from spec_align.explain.stability import mode_stability
    from spec_align.spectrum.distributed import is_distributed

    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        dist.init_process_group("gloo")  # torchrun; gloo works for the CPU tensors read here
    try:
        writer = not is_distributed() or dist.get_rank() == 0
        # Before loading or computing: a report that cannot be written fails now, not after.
        problem = None
        if writer:
            try:
                out = check_report_dir(args.out, overwrite=args.overwrite)
            except ReportDirError as err:
                problem = str(err)
        if is_distributed():
            shared = [problem]
            dist.broadcast_object_list(shared, src=0)  # every rank stops alike
            problem = shared[0]
        if problem is not None:
            raise ReportDirError(problem)
        if args.samples_per_mode < 1:
            raise ValueError(f"--samples-per-mode must be >= 1, got {args.samples_per_mode}")
        if args.stability < 0 or args.stability_samples < 8:
            raise ValueError(
                f"--stability must be >= 0 (got {args.stability}) and --stability-samples "
                f">= 8 (got {args.stability_samples})"
            )
        x = load_embedding(args.x, args.x_key)
        y = load_embedding(args.y, args.y_key)
        names = tuple(args.names or _default_names(args))
        n = x.shape[0]
        sidecars = {
            name: load_list(path, n, name.replace("_", " "))
            for name, path in (
                ("labels", args.labels),
                ("keys", args.keys),
                ("image_paths", args.images),
                ("texts", args.texts),
            )
            if path is not None
        }
        if "labels" in sidecars:
            # Labels read from a text file are strings; integer ones can index class names.
            sidecars["labels"] = [_as_int(label) for label in sidecars["labels"]]
        if "image_paths" in sidecars:
            root = Path(args.images).resolve().parent
            sidecars["image_paths"] = [str(root / p) for p in sidecars["image_paths"]]
        class_names = None
        if args.class_names:
            class_names = Path(args.class_names).read_text(encoding="utf-8").splitlines()
        result = compare_embeddings(
            x,
            y,
            kernel=args.kernel,
            sigma_x=args.sigma_x,
            sigma_y=args.sigma_y,
            eta=args.eta,
            rff_dim=args.rff_dim,
            top_k=args.top_k,
            seed=args.seed,
            batch_size=args.batch_size,
            names=names,
            progress=args.progress,
        )
        if not writer:
            return 0
        if args.stability:
            result.stability = mode_stability(
                x,
                y,
                result,
                resamples=args.stability,
                max_samples=args.stability_samples,
                seed=args.seed,
            )
        print(result, flush=True)  # the result is out even if writing the report fails
        provenance = {
            f"{names[0]} (x)": os.path.abspath(args.x),
            f"{names[1]} (y)": os.path.abspath(args.y),
        }
        try:
            check_report_dir(out, overwrite=args.overwrite)  # nothing appeared meanwhile
            index = replace_report_dir(
                out,
                lambda staging: write_report(
                    result,
                    staging,
                    samples_per_mode=args.samples_per_mode,
                    class_names=class_names,
                    title=args.title,
                    provenance=provenance,
                    embeddings=(x, y),
                    map_method=args.map_method,
                    **sidecars,
                ),
            )
        except (OSError, ReportDirError) as err:
            raise _WriteFailed(
                f"the report could not be written to {out} ({err}); the result above is "
                f"complete, and {out} was left as it was"
            ) from err
        print(f"report: {index}")
        if args.wandb:
            log_report_to_wandb(out, project=args.wandb_project)
        return 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _as_int(label: object) -> object:
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        return int(label)
    return label


def _default_names(args: argparse.Namespace) -> tuple[str, str]:
    x = args.x_key or Path(args.x).stem
    y = args.y_key or Path(args.y).stem
    return (x, y) if x != y else (f"{x} (x)", f"{y} (y)")


if __name__ == "__main__":
    sys.exit(main())
