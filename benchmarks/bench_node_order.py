"""Node order and message-passing speed: as built, renumbered at random, reordered by RCM.

The recurrent input gathers one state row per connection. When connections join nearby
neuron indices the gathered rows are reused from cache; exports numbered by 64-bit ids
(FlyWire, neuPrint) have no such locality. For two graphs:

- a whole-brain-size synthetic connectome with local structure
  (``random_connectome(--nodes, --edges, locality=--locality, seed=0)``);
- the fly visual system (``fly_visual_system(--extent)``, numbered column by column);

each in three numberings (as built; renumbered at random, as an export would be; that one
reordered by ``ReorderNeurons("rcm")``, and also by ``"cell_type"``), this prints the largest and
mean ``|pre − post|``, the time ``ReorderNeurons`` took, and the medians of forward and
forward+backward (gradients to the states and to every synapse weight) of
``ConnectomeConv`` (relu, backends csr and, when available, triton) with B stimuli: CUDA
events on a GPU, the wall clock on the CPU. The markdown table goes to stdout and,
atomically, to ``--out``.

    PYTHONPATH=. python benchmarks/bench_node_order.py --out benchmarks/results/bench_node_order_h200.md
    PYTHONPATH=. python benchmarks/bench_node_order.py --device cpu --nodes 20000 --edges 500000 --batch 32
"""

from __future__ import annotations

import argparse
import datetime
import gc
import time

import torch
from tqdm.auto import tqdm

from timing import sync, timed  # benchmarks/timing.py, beside this script

from graphode._atomic import atomic_write
from graphode.connectome import ReorderNeurons, random_connectome
from graphode.flyvis import fly_visual_system
from graphode.layer import ConnectomeConv, SparseGraph, available_backends


def span(data) -> tuple[int, float]:
    """Largest and mean ``|pre − post|`` over the connections."""
    d = (data.edge_index[0] - data.edge_index[1]).abs()
    return int(d.max()), float(d.double().mean())


def numberings(data, device: torch.device, seed: int = 1):
    """``(name, graph, seconds of ReorderNeurons or None)``: as built, renumbered at random,
    and the random one reordered by ``"rcm"`` and by ``"cell_type"``."""
    n = int(data.num_nodes)
    shuffle = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    shuffled = ReorderNeurons(shuffle)(data)
    del shuffled.original_index  # as an export: no trace of the order it was built in
    out = [("as built", data, None), ("random (as an export)", shuffled, None)]
    for order in ("rcm", "cell_type"):
        sync(device)
        t0 = time.perf_counter()
        reordered = ReorderNeurons(order)(shuffled)
        sync(device)
        out.append((f"random, then ReorderNeurons({order!r})", reordered, time.perf_counter() - t0))
    return out


def message_passing(data, batch: int, device: torch.device, backends: list[str], repeats: int) -> dict:
    """``{backend: (forward ms, forward+backward ms)}`` of ``ConnectomeConv("relu")``."""
    n = int(data.num_nodes)
    graph = SparseGraph.from_edge_index(data.edge_index.to(device), n)
    w0 = (data.sign * data.syn_weight).to(device)
    x0 = torch.randn(n, batch, device=device, generator=torch.Generator(device).manual_seed(0))
    out = {}
    for backend in backends:
        conv = ConnectomeConv("relu", backend=backend)

        def forward():
            with torch.no_grad():
                return conv(x0, graph, w0)

        def forward_backward():
            w = w0.clone().requires_grad_(True)
            x = x0.clone().requires_grad_(True)
            conv(x, graph, w).sum().backward()

        try:
            out[backend] = (timed(forward, device, repeats, warmup=2), timed(forward_backward, device, max(repeats // 2, 3), warmup=2))
        except torch.OutOfMemoryError:
            out[backend] = (float("nan"), float("nan"))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--nodes", type=int, default=139_000)
    p.add_argument("--edges", type=int, default=15_000_000)
    p.add_argument("--locality", type=float, default=0.01)
    p.add_argument("--extent", type=int, default=15, help="fly visual system extent (0: leave it out)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=None, help="markdown file for the table (written atomically)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.empty(1, device=device)  # context creation out of every timing
    backends = [b for b in ("csr", "triton") if b in available_backends(device)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    lines = [
        "# Node order and message passing\n",
        f"{datetime.date.today()} · {name} · torch {torch.__version__} · B = {args.batch} · fp32 · "
        f"ConnectomeConv relu, backends {', '.join(backends)} · medians of {args.repeats} (forward) and "
        f"{max(args.repeats // 2, 3)} (forward+backward) after 2 warm-ups\n",
        "| graph | numbering | max \\|pre − post\\| | mean \\|pre − post\\| | ReorderNeurons s | backend "
        "| forward ms | fwd+bwd ms | forward vs random | fwd+bwd vs random |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def save():
        if args.out:
            text = "\n".join(lines) + "\n"
            atomic_write(args.out, lambda fh: fh.write(text.encode()))

    graphs = [(f"synthetic, locality {args.locality}",
               lambda: random_connectome(args.nodes, args.edges, locality=args.locality, seed=0, device=device))]
    if args.extent:
        graphs.append((f"fly visual system (extent {args.extent})", lambda: fly_visual_system(args.extent).to(device)))
    print("\n".join(lines), flush=True)
    for label, build in graphs:
        t0 = time.perf_counter()
        data = build()
        sync(device)
        built = time.perf_counter() - t0
        label = f"{label}: {data.num_nodes:,} / {data.num_edges:,}"
        tqdm.write(f"{label} built in {built:.1f} s")
        rows = [(numbering, graph, seconds, span(graph),
                 message_passing(graph, args.batch, device, backends, args.repeats))
                for numbering, graph, seconds in tqdm(numberings(data, device), desc="numberings", leave=False)]
        base = next(times for numbering, _, _, _, times in rows if numbering.startswith("random"))
        for numbering, _, seconds, (longest, mean), times in rows:
            for backend, (fwd, fb) in times.items():
                lines.append(f"| {label} | {numbering} | {longest:,} | {mean:,.1f} | "
                             f"{'' if seconds is None else f'{seconds:.2f}'} | {backend} | {fwd:.3f} | {fb:.3f} | "
                             f"{base[backend][0] / fwd:.2f}× | {base[backend][1] / fb:.2f}× |")
                print(lines[-1], flush=True)
        save()
        del rows, data
        gc.collect()
    lines.append("\n× vs random: time of the randomly renumbered graph / time of this numbering "
                 "(above 1: faster than the export's order).")
    save()


if __name__ == "__main__":
    main()
