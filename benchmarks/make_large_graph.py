"""Time :func:`graphode.connectome.synthetic.random_connectome` at whole-fly-brain size.

Usage::

    python -m benchmarks.make_large_graph                    # 139k nodes, 15M edges, CPU
    python -m benchmarks.make_large_graph --device cuda --locality 0.01

Run from the repository root (or after ``pip install -e .``). Prints the
build time per repeat; this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import time

import torch

from graphode.connectome.synthetic import random_connectome


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=139_000)
    parser.add_argument("--edges", type=int, default=15_000_000)
    parser.add_argument("--locality", type=float, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    return parser.parse_args()


def _sync(device: torch.device) -> None:
    # CUDA launches are asynchronous; without a sync the clock stops early.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    args = _parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        # The first CUDA call pays for context creation; keep it out of the timing.
        random_connectome(1000, 10_000, device=device)
    print(
        f"random_connectome({args.nodes:,} nodes, {args.edges:,} edges, "
        f"locality={args.locality}) on {device} ({torch.get_num_threads()} CPU threads)"
    )
    for repeat in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        data = random_connectome(
            args.nodes, args.edges, locality=args.locality, seed=args.seed + repeat, device=device
        )
        _sync(device)
        seconds = time.perf_counter() - start
        in_degree = torch.bincount(data.edge_index[1], minlength=args.nodes)
        print(
            f"  repeat {repeat}: {seconds:.2f} s  "
            f"(max in-degree {int(in_degree.max())}, mean {float(in_degree.float().mean()):.1f})"
        )


if __name__ == "__main__":
    main()
