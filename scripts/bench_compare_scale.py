"""Wall time and peak memory of a streamed SPEC comparison as n grows (one process per n).

    python scripts/bench_compare_scale.py                       # n = 1e4, 1e5, 1e6
    python scripts/bench_compare_scale.py --sizes 1000 10000 --rff-dim 256

Samples come from a generator function (seeded per batch, never all in memory): 8 planted
groups, A separates all of them, B merges groups 0 and 1. Each n runs in a fresh process so
its peak RSS (ru_maxrss) is its own. The report lists the part of the peak that grows with
n: the (n, 2 * top_k) float64 score matrix that `compare` returns.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

GROUPS = 8


def _batches(n: int, batch_size: int, dim: int):
    centers = torch.randn(GROUPS, dim, generator=torch.Generator().manual_seed(0)) * 3
    merged = centers.clone()
    merged[1] = merged[0]

    def source():
        for index, start in enumerate(range(0, n, batch_size)):
            rows = min(batch_size, n - start)
            generator = torch.Generator().manual_seed(1 + index)
            groups = torch.randint(0, GROUPS, (rows,), generator=generator)
            yield (
                centers[groups] + torch.randn(rows, dim, generator=generator),
                merged[groups] + torch.randn(rows, dim, generator=generator),
            )

    return source


def _child(args: argparse.Namespace) -> None:
    from spec_align import compare

    start = time.perf_counter()
    result = compare(
        _batches(args.child, args.batch_size, args.dim),
        kernel="gaussian",
        rff_dim=args.rff_dim,
        top_k=args.top_k,
    )
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "n": args.child,
                "wall_s": wall,
                "peak_rss_mib": peak_mib,
                "scores_mib": result.scores.numel() * result.scores.element_size() / 2**20,
                "top_eigenvalue": float(result.mode_eigenvalues[0]),
                "bottom_eigenvalue": float(result.mode_eigenvalues[-1]),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=32, help="embedding width of A and B")
    parser.add_argument("--rff-dim", type=int, default=128, help="frequencies per embedding")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args)
        return
    m = 4 * args.rff_dim
    print(
        f"gaussian kernel, d={args.dim}, rff_dim={args.rff_dim} (m={m}), top_k={args.top_k}, "
        f"batch={args.batch_size}, torch threads={torch.get_num_threads()}"
    )
    print(
        f"{'n':>10} {'wall s':>8} {'peak RSS MiB':>13} {'scores MiB':>11} "
        f"{'lambda_max':>11} {'lambda_min':>11}"
    )
    for n in args.sizes:
        command = [sys.executable, __file__, "--child", str(n)]
        for flag in ("dim", "rff_dim", "top_k", "batch_size"):
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        row = json.loads(
            subprocess.run(
                command, capture_output=True, text=True, check=True
            ).stdout.splitlines()[-1]
        )
        print(
            f"{row['n']:>10} {row['wall_s']:>8.1f} {row['peak_rss_mib']:>13.0f} "
            f"{row['scores_mib']:>11.1f} {row['top_eigenvalue']:>11.4f} "
            f"{row['bottom_eigenvalue']:>11.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
