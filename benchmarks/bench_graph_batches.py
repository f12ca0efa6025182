"""Graph classification over a stream of different connectomes: time per training batch.

A PyG ``DataLoader`` over ``--graphs`` random connectomes (``random_connectome``, sizes drawn
between ``--min-nodes`` and ``--max-nodes``, ten synapses per neuron, 8 cell types) feeds
:class:`graphode.GraphODEClassifier` (graph-agnostic :class:`graphode.ConnectomeDynamics`
with per-edge-type synapses and a :class:`graphode.NodeDrive` from the node features). For
each gradient method it trains one epoch and prints seconds per batch, function
evaluations, peak memory and how often the ``auto`` message-passing backend timed the
backends (once per size class, not once per batch).

    python benchmarks/bench_graph_batches.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from timing import sync  # benchmarks/timing.py, beside this script

from graphode import ConnectomeDynamics, GraphODEClassifier, NodeDrive, PooledReadout, random_connectome
from torch_geometric.loader import DataLoader

K = 8  # cell types; edge types are (source type, target type) pairs


def graphs(count: int, lo: int, hi: int, seed: int = 0) -> list:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        n = int(torch.randint(lo, hi + 1, (1,), generator=gen))
        label = i % 2
        data = random_connectome(n, 10 * n, num_cell_types=K, frac_inhibitory=(0.1, 0.4)[label], seed=seed * 7919 + i)
        data.x = data.input_mask.float().unsqueeze(1)
        data.y = torch.tensor([label])
        del data.cell_type_names
        out.append(data)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--graphs", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--min-nodes", type=int, default=500)
    p.add_argument("--max-nodes", type=int, default=3000)
    args = p.parse_args()
    device = torch.device(args.device)
    data = graphs(args.graphs, args.min_nodes, args.max_nodes)
    print(f"{args.graphs} graphs of {args.min_nodes}-{args.max_nodes} neurons, batches of {args.batch_size}, {device}\n")
    print("| gradient | s / batch (median) | f-evals (last batch) | peak GB | backend timings | batches |")
    print("|---|---|---|---|---|---|")
    for gradient in ("autodiff", "checkpoint", "adjoint"):
        torch.manual_seed(0)
        dynamics = ConnectomeDynamics(K, K * K, tau=0.2, bias=0.0, tau_mode="shared", node_input=NodeDrive(node_features=1))
        readout = PooledReadout(4, 2, K, hidden=32, num_frequencies=0, aggr="mean", keep_group_mean=True)
        model = GraphODEClassifier(dynamics, readout, gradient=gradient, rtol=1e-3, atol=1e-4).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for batch in DataLoader(data, batch_size=args.batch_size, shuffle=True):
            batch = batch.to(device)
            sync(device)
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(batch), batch.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sync(device)
            times.append(time.perf_counter() - t0)
        stats = model.last_solution.stats
        peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else float("nan")
        timings = len(getattr(model.dynamics.conv.backend, "choices", {}))
        print(f"| {gradient} | {statistics.median(times):.3f} | {stats.n_f_evals + stats.backward_f_evals} | {peak:.2f} |"
              f" {timings} | {len(times)} |")


if __name__ == "__main__":
    main()
