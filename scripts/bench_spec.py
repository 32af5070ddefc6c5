"""Benchmark spec_align.compare: time and peak memory against n, and covariance throughput.

Each configuration runs in a fresh child process so its peak RSS is its own. Embeddings are
generated batch by batch from seeds (d_x=768, d_y=512, 16 planted groups), so the data never
sits in memory. The naive dense reference is the exact n x n Gaussian kernel path.

    python scripts/bench_spec.py                     # n = 1e3 ... 2e5, CPU
    python scripts/bench_spec.py --sizes 1000 10000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

DIM_X, DIM_Y, GROUPS, BATCH = 768, 512, 16, 4096


def _batches(n: int, device: str):
    """A function returning a fresh iterator of (x, y) batches: the same data every pass."""
    centers = torch.Generator().manual_seed(0)
    centers_x = torch.randn(GROUPS, DIM_X, generator=centers)
    centers_y = torch.randn(GROUPS, DIM_Y, generator=centers)
    centers_y[1::2] = centers_y[::2]  # y merges pairs of groups that x separates

    def stream():
        for start in range(0, n, BATCH):
            rows = min(BATCH, n - start)
            generator = torch.Generator().manual_seed(start)
            groups = torch.randint(0, GROUPS, (rows,), generator=generator)
            x = centers_x[groups] + 0.5 * torch.randn(rows, DIM_X, generator=generator)
            y = centers_y[groups] + 0.5 * torch.randn(rows, DIM_Y, generator=generator)
            yield x.to(device), y.to(device)

    return stream


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(n: int, method: str, rff_dim: int, device: str) -> dict:
    from spec_align import compare

    source = _batches(n, device)
    if method == "dense":  # the naive reference holds everything: data and n x n kernels
        x, y = (torch.cat(parts) for parts in zip(*source(), strict=True))
        source = None
    baseline = _peak_rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    if method == "dense":
        result = compare(x, y, top_k=10)
    else:
        result = compare(source, rff_dim=rff_dim, top_k=10)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    row = {
        "n": n,
        "method": method,
        "seconds": seconds,
        "peak_rss_mib": _peak_rss_mib(),
        "rss_growth_mib": _peak_rss_mib() - baseline,
        "spec_diff": result.spec_diff,
        "top_eigenvalue": float(result.mode_eigenvalues[0]),
    }
    if device == "cuda":
        row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def _run_child(n: int, method: str, rff_dim: int, device: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        str(n),
        method,
        "--rff-dim",
        str(rff_dim),
        "--device",
        device,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _gflops(fn, flops: float, repeats: int, device: str) -> float:
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return flops * repeats / (time.perf_counter() - start) / 1e9


def covariance_throughput(rff_dim: int, device: str, repeats: int = 3) -> dict:
    """GFLOP/s of the covariance update next to a plain matmul of the same shapes."""
    from spec_align.spec.linalg import JointCovariance

    m = 4 * rff_dim
    joint = torch.randn(BATCH, m, dtype=torch.float64, device=device)
    accumulator = JointCovariance(2 * rff_dim, 2 * rff_dim, 1.0, device=device)
    flops = 2.0 * BATCH * m * m
    return {
        "covariance_f64": _gflops(lambda: accumulator.update_joint(joint), flops, repeats, device),
        "matmul_f64": _gflops(lambda: joint.T @ joint, flops, repeats, device),
        "matmul_f32": _gflops(lambda: joint.float().T @ joint.float(), flops, repeats, device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1_000, 10_000, 50_000, 100_000, 200_000]
    )
    parser.add_argument(
        "--dense-max", type=int, default=4_000, help="largest n for the exact n x n reference"
    )
    parser.add_argument("--rff-dim", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=2, metavar=("N", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(int(args.child[0]), args.child[1], args.rff_dim, args.device)))
        return

    print(
        f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"d_x={DIM_X} d_y={DIM_Y} rff_dim={args.rff_dim} (m={4 * args.rff_dim} features)"
    )
    throughput = covariance_throughput(args.rff_dim, args.device)
    print(
        f"covariance accumulation {throughput['covariance_f64']:.1f} GFLOP/s (float64), "
        f"plain matmul {throughput['matmul_f64']:.1f} GFLOP/s (float64) -> "
        f"{100 * throughput['covariance_f64'] / throughput['matmul_f64']:.0f}%; "
        f"matmul float32 {throughput['matmul_f32']:.1f} GFLOP/s"
    )
    header = "| n | method | wall s | s per 1e5 samples | peak RSS MiB | RSS growth MiB |"
    if args.device == "cuda":
        header += " peak GPU MiB |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    rows = []
    for n in args.sizes:
        methods = ["streaming"] + (["dense"] if n <= args.dense_max else [])
        for method in methods:
            row = _run_child(n, method, args.rff_dim, args.device)
            rows.append(row)
            line = (
                f"| {n:,} | {method} | {row['seconds']:.2f} | "
                f"{1e5 * row['seconds'] / n:.2f} | {row['peak_rss_mib']:.0f} | "
                f"{row['rss_growth_mib']:.0f} |"
            )
            if args.device == "cuda":
                line += f" {row['peak_gpu_mib']:.0f} |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
