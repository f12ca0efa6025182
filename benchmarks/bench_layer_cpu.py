"""Time ConnectomeConv's backends on the full fly visual system on CPU.

For every available backend: forward (no autograd) and forward + backward (gradients to the
states and to the synaptic weights) of ``A(v) = W relu(v)`` on ``fly_visual_system(15)``
(45,669 neurons, 1,513,231 synapses) with B stimuli, medians of ``--repeats`` runs after one
warm-up, and the largest relative error of the output and both gradients against the
``csr`` backend. Prints a markdown table and what ``backend="auto"`` chooses.

    PYTHONPATH=. python benchmarks/bench_layer_cpu.py [--extent 15] [--batch 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from graphode.flyvis import fly_visual_system
from graphode.layer import ConnectomeConv, available_backends
from graphode.synapses import SynapseWeights

warnings.filterwarnings("ignore", category=UserWarning)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extent", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    data = fly_visual_system(args.extent)
    build_s = time.perf_counter() - t0
    n, e = data.num_nodes, data.edge_index.size(1)
    w0 = SynapseWeights.from_data(data, mode="per_edge")().detach()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, args.batch, generator=g)
    g_out = torch.randn(n, args.batch, generator=g)
    print(
        f"fly_visual_system({args.extent}): {n:,} neurons, {e:,} synapses (built in {build_s:.1f} s); "
        f"B = {args.batch}, float32, relu, torch threads = {torch.get_num_threads()}, "
        f"median of {args.repeats} after 1 warm-up\n"
    )

    results = {}
    for backend in available_backends():
        conv = ConnectomeConv("relu", backend=backend)
        conv.graph_for(data.edge_index, n)  # structure built once, outside the timings
        fwd, fb = [], []
        for i in range(args.repeats + 1):
            with torch.no_grad():
                t = time.perf_counter()
                conv(x0, data.edge_index, w0)
                dt = time.perf_counter() - t
            if i:
                fwd.append(dt)
        for i in range(args.repeats + 1):
            x = x0.clone().requires_grad_(True)
            w = w0.clone().requires_grad_(True)
            t = time.perf_counter()
            out = conv(x, data.edge_index, w)
            (out * g_out).sum().backward()
            dt = time.perf_counter() - t
            if i:
                fb.append(dt)
        results[backend] = dict(fwd=statistics.median(fwd), fb=statistics.median(fb), out=out.detach(), gx=x.grad, gw=w.grad)

    ref = results["csr"]
    print("| backend | forward (ms) | forward + backward (ms) | max rel. err. out / dL/dv / dL/dw vs csr |")
    print("|---|---:|---:|---|")
    for backend, r in sorted(results.items(), key=lambda kv: kv[1]["fb"]):
        errs = " / ".join(f"{rel_err(r[k], ref[k]):.1e}" for k in ("out", "gx", "gw"))
        print(f"| {backend} | {1e3 * r['fwd']:.1f} | {1e3 * r['fb']:.1f} | {errs} |")

    auto = ConnectomeConv("relu", backend="auto")
    auto(x0, data.edge_index, w0)
    (choice,) = auto.backend.choices.values()
    ranking = auto.benchmark(auto.graph_for(data.edge_index, n), x0, w0)
    print(f"\nauto chooses: {choice}  (a fresh benchmark ranks: "
          + ", ".join(f"{b} {1e3 * s:.0f} ms" for b, s in ranking) + ")")


if __name__ == "__main__":
    main()
