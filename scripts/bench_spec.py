"""Benchmark spec_align.compare: time and peak memory against n, and covariance throughput.

Each configuration runs in a fresh child process so its peak RSS is its own. Embeddings are
generated batch by batch from seeds (d_x=768, d_y=512, 16 planted groups), so the data never
sits in memory. The naive dense reference is the exact n x n Gaussian kernel path.

"authors" is the authors' algorithm as described (re-implemented here, not copied): float32
random Fourier features kept for all n samples, the covariance as a sum of per-sample outer
products (a batched outer-product tensor, then summed), a jittered Cholesky (C + 1e-6 I), and
a full torch.linalg.eigh of the whitened m x m matrix. It uses the same bandwidths and
frequencies as spec_align, so its eigenvalues agree with spec_align's up to float32 rounding
and the jitter. Up to --authors-max it runs in the same run as spec_align, in alternating
order, each in a fresh child process, and the table gives the time ratio per row.

    python scripts/bench_spec.py                     # n = 1e3 ... 2e5, CPU
    python scripts/bench_spec.py --sizes 1000 10000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's spec_align

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


def authors_algorithm(source, rff_dim: int, top_k: int = 10, eta: float = 1.0, chunk: int = 8):
    """The authors' algorithm as described (see the module docstring): eigenvalues and scores."""
    from spec_align.spectrum.algorithm import build_feature_maps
    from spec_align.spectrum.features import estimate_sigma

    x, y = (torch.cat(parts) for parts in zip(*source(), strict=True))
    sigma_x = estimate_sigma(x[:1000].double())
    sigma_y = estimate_sigma(y[:1000].double())
    map_x, map_y = build_feature_maps(
        x.shape[1],
        y.shape[1],
        kernel="gaussian",
        sigma_x=sigma_x,
        sigma_y=sigma_y,
        rff_dim=rff_dim,
        seed=0,
    )
    psi = torch.cat([map_x(x.float()), math.sqrt(eta) * map_y(y.float())], dim=1)  # (n, m)
    n, m = psi.shape
    cov = torch.zeros(m, m, dtype=psi.dtype, device=psi.device)
    for start in range(0, n, chunk):
        rows = psi[start : start + chunk]
        cov += (rows[:, :, None] * rows[:, None, :]).sum(dim=0)  # per-sample outer products
    cov /= n
    factor = torch.linalg.cholesky(cov + 1e-6 * torch.eye(m, dtype=cov.dtype, device=cov.device))
    signs = torch.ones(m, dtype=cov.dtype, device=cov.device)
    signs[map_x.out_dim :] = -1
    whitened = factor.T @ (signs[:, None] * factor)
    values, vectors = torch.linalg.eigh(whitened)
    keep = torch.cat([torch.arange(m - top_k, m).flip(0), torch.arange(top_k)])
    values, vectors = values[keep], vectors[:, keep]
    scores = psi @ ((signs[:, None] * factor) @ vectors) / (values.abs() * math.sqrt(n))
    return values, scores


def _child(n: int, method: str, rff_dim: int, device: str) -> dict:
    from spec_align import compare

    source = _batches(n, device)
    if method == "authors":
        baseline = _peak_rss_mib()
        start = time.perf_counter()
        values, _ = authors_algorithm(source, rff_dim)
        seconds = time.perf_counter() - start
        return {
            "n": n,
            "method": method,
            "seconds": seconds,
            "peak_rss_mib": _peak_rss_mib(),
            "rss_growth_mib": _peak_rss_mib() - baseline,
            "spec_diff": float(values.abs().max()),
            "top_eigenvalue": float(values[0]),
            "mode_eigenvalues": values.double().tolist(),
        }
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
        "mode_eigenvalues": result.mode_eigenvalues.tolist(),
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
    from spec_align.spectrum.linalg import JointCovariance

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
    parser.add_argument(
        "--authors-max", type=int, default=10_000, help="largest n for the authors' algorithm"
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
    header = (
        "| n | method | wall s | s per 1e5 samples | peak RSS MiB | RSS growth MiB | "
        "authors / spec_align | max abs eigenvalue diff |"
    )
    if args.device == "cuda":
        header += " peak GPU MiB |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    rows = []
    for index, n in enumerate(args.sizes):
        methods = ["streaming"] + (["authors"] if n <= args.authors_max else [])
        if index % 2:
            methods.reverse()  # alternating order: neither side always runs first
        methods += ["dense"] if n <= args.dense_max else []
        done = {}
        for method in methods:
            done[method] = row = _run_child(n, method, args.rff_dim, args.device)
            rows.append(row)
        for method in methods:
            row = done[method]
            ratio = diff = ""
            if method != "dense" and "authors" in done:
                ratio = f"{done['authors']['seconds'] / done['streaming']['seconds']:.1f}x"
                diff = max(
                    abs(a - b)
                    for a, b in zip(
                        done["authors"]["mode_eigenvalues"],
                        done["streaming"]["mode_eigenvalues"],
                        strict=False,
                    )
                )
                diff = f"{diff:.1e}"
            line = (
                f"| {n:,} | {method} | {row['seconds']:.2f} | "
                f"{1e5 * row['seconds'] / n:.2f} | {row['peak_rss_mib']:.0f} | "
                f"{row['rss_growth_mib']:.0f} | {ratio} | {diff} |"
            )
            if args.device == "cuda":
                line += f" {row['peak_gpu_mib']:.0f} |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
