"""Graph classification in an ordinary PyG loop, with a neural ODE on every graph.

Each sample is a whole connectome (20–60 neurons of 4 cell types, different for every
sample) with one label: its wiring rule. In class 0 every neuron of type ``t`` projects to
type ``t + 1`` (mod 4), in class 1 to type ``t - 1``. Nothing simpler tells them apart: the
in- and out-degree distributions, the synapse counts and the fraction of inhibitory neurons
are drawn the same way in both classes, so a model has to let activity flow through the
wiring to classify.

Everything is a library module or standard PyG:

* ``torch_geometric.loader.DataLoader`` batches graphs into one block-diagonal ``Batch``
  (``edge_index`` offset, node and edge tensors concatenated, ``batch`` maps nodes to
  graphs). The edge-type codes ``cell_type[src] * 4 + cell_type[dst]`` index one
  vocabulary shared by all graphs, so they survive batching unchanged;
* :class:`graphode.ConnectomeDynamics` takes the graph at every call: one strength per
  edge type (``weights="per_edge_type"``, Dale's law from each graph's ``sign``), one τ and
  one b shared by all neurons, and a learnable drive from the node features ``x``
  (:class:`graphode.NodeDrive`: here ``x`` marks the input neurons);
* :class:`graphode.GraphODEClassifier` solves the whole batch as one ODE and pools the
  activity of each graph with :class:`graphode.PooledReadout` into ``[num_graphs, 2]``.

Run::

    python examples/pyg_graph_classification.py --quick     # CPU, about a minute
    python examples/pyg_graph_classification.py             # more graphs and epochs
    python examples/pyg_graph_classification.py --quick --gradient adjoint

Writes ``graph_classification.png`` (two sample graphs, loss and accuracy per epoch) to
``--out-dir`` (default ``runs/examples/pyg_graph_classification``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _threads import add_threads_argument, apply_threads  # examples/_threads.py
from graphode import (  # first: it quiets a PyG import warning
    ConnectomeDynamics, GraphODEClassifier, NodeDrive, PooledReadout, validate_connectome,
)
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

NUM_CELL_TYPES = 4
FRAC_INHIBITORY = 0.2


def wired_graph(label: int, gen: torch.Generator) -> Data:
    """One connectome of 20–60 neurons whose type ``t`` projects to type ``t ± 1`` (mod 4)."""
    k = NUM_CELL_TYPES
    n = int(torch.randint(20, 61, (1,), generator=gen))
    cell_type = torch.randperm(n, generator=gen) % k
    step = 1 if label == 0 else -1
    members = [torch.nonzero(cell_type == t).flatten() for t in range(k)]
    src, dst = [], []
    for i in range(n):
        pool = members[(int(cell_type[i]) + step) % k]
        degree = min(pool.numel(), 1 + int(torch.poisson(torch.tensor(3.0), generator=gen)))
        src.append(torch.full((degree,), i))
        dst.append(pool[torch.randperm(pool.numel(), generator=gen)[:degree]])
    src, dst = torch.cat(src), torch.cat(dst)
    order = torch.argsort(dst * n + src)  # graphode's layout: edges sorted by (post, pre)
    src, dst = src[order], dst[order]
    inhibitory = torch.rand(n, generator=gen) < FRAC_INHIBITORY
    syn_count = 1.0 + torch.poisson(torch.full((src.numel(),), 2.0), generator=gen)
    total_in = torch.zeros(n).index_add_(0, dst, syn_count)
    input_mask = cell_type == 0
    data = Data(
        edge_index=torch.stack([src, dst]), num_nodes=n,
        syn_count=syn_count, syn_weight=syn_count / total_in[dst],
        sign=torch.where(inhibitory[src], -1.0, 1.0),
        cell_type=cell_type, cell_type_names=[f"type{t}" for t in range(k)],
        edge_type=cell_type[src] * k + cell_type[dst],
        edge_type_names=[f"type{a}->type{b}" for a in range(k) for b in range(k)],
        input_mask=input_mask, output_mask=torch.ones(n, dtype=torch.bool),
        x=input_mask.float().unsqueeze(1),  # node features [N, 1]: the input neurons
        y=torch.tensor([label]),
    )
    validate_connectome(data)
    del data.cell_type_names, data.edge_type_names  # per-graph name lists would become lists of lists in a Batch
    return data


def make_graphs(num_graphs: int, seed: int) -> list[Data]:
    """``num_graphs`` labelled graphs, classes alternating."""
    gen = torch.Generator().manual_seed(seed)
    return [wired_graph(i % 2, gen) for i in range(num_graphs)]


def build_model(gradient: str = "autodiff") -> GraphODEClassifier:
    dynamics = ConnectomeDynamics(
        num_cell_types=NUM_CELL_TYPES, num_edge_types=NUM_CELL_TYPES ** 2, weights="per_edge_type",
        tau=0.2, tau_mode="shared", bias=0.0, bias_mode="shared", node_input=NodeDrive(node_features=1),
    )
    # PooledReadout normalises activity within each (graph, cell type) group, which removes
    # the groups' levels; keep_group_mean=True encodes each group's mean and spread too,
    # and without positions (num_frequencies=0) a mean pool needs them.
    readout = PooledReadout(4, 2, NUM_CELL_TYPES, hidden=32, num_frequencies=0, aggr="mean", keep_group_mean=True)
    return GraphODEClassifier(dynamics, readout, t_end=1.0, num_records=4, gradient=gradient)


def run_epoch(model, loader, optimizer=None) -> tuple[float, float]:
    model.train(optimizer is not None)
    loss_sum = correct = count = 0
    with torch.set_grad_enabled(optimizer is not None):
        for batch in loader:
            logits = model(batch)
            loss = F.cross_entropy(logits, batch.y)
            if optimizer is not None:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            loss_sum += float(loss.detach()) * batch.num_graphs
            correct += int((logits.argmax(1) == batch.y).sum())
            count += batch.num_graphs
    return loss_sum / count, correct / count


def draw_graph(ax, data, title: str) -> None:
    n = int(data.num_nodes)
    src, dst = data.edge_index
    inhibitory_neuron = torch.zeros(n, dtype=torch.bool)
    inhibitory_neuron[src[data.sign < 0]] = True
    angle = 2 * math.pi * (data.cell_type + torch.arange(n) / n) / NUM_CELL_TYPES  # one sector per type
    xy = torch.stack([angle.cos(), angle.sin()], 1)
    for s, d, sg in zip(src.tolist(), dst.tolist(), data.sign.tolist()):
        ax.plot(*xy[[s, d]].T, color="tab:blue" if sg < 0 else "tab:red", lw=0.5, alpha=0.35)
    ax.scatter(*xy.T, s=28, c=["tab:blue" if i else "tab:red" for i in inhibitory_neuron], edgecolors="k", linewidths=0.4, zorder=3)
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal")
    ax.axis("off")


def plot(path: Path, graphs, history) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 4), gridspec_kw={"width_ratios": [1, 1, 1.3, 1.3]})
    for ax, g in zip(axes[:2], graphs):
        frac = float((torch.bincount(g.edge_index[0][g.sign < 0], minlength=g.num_nodes) > 0).float().mean())
        rule = "t → t+1" if int(g.y) == 0 else "t → t−1"
        draw_graph(ax, g, f"class {int(g.y)} ({rule}): {g.num_nodes} neurons, {g.num_edges} synapses\n"
                          f"{frac:.0%} of neurons inhibitory (blue); types by sector")
    epochs = [h["epoch"] for h in history]
    for key, ax, label in (("loss", axes[2], "cross-entropy"), ("acc", axes[3], "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
        ax.plot(epochs, [h[f"test_{key}"] for h in history], "s-", label="test")
        ax.axhline(math.log(2) if key == "loss" else 0.5, color="grey", ls=":", label="chance")
        ax.set(xlabel="epoch", ylabel=label, title=label)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[3].set_ylim(0, 1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="240 training graphs, 8 epochs")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--gradient", default="autodiff", choices=["autodiff", "checkpoint", "adjoint"])
    p.add_argument("--out-dir", default="runs/examples/pyg_graph_classification")
    add_threads_argument(p)
    args = p.parse_args(argv)
    apply_threads(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    num_train, num_test, epochs = (240, 120, 8) if args.quick else (1000, 400, 15)
    epochs = args.epochs or epochs

    torch.manual_seed(0)
    t0 = time.perf_counter()
    train_set, test_set = make_graphs(num_train, seed=1), make_graphs(num_test, seed=2)
    train_loader = DataLoader(train_set, batch_size=16, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=60)
    example = next(iter(train_loader))
    print(f"{len(train_set)} training / {len(test_set)} test graphs; one batch: {example}")

    model = build_model(args.gradient)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for epoch in range(1, epochs + 1):
        train_loss, train_acc = run_epoch(model, train_loader, optimizer)
        test_loss, test_acc = run_epoch(model, test_loader)
        history.append(dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss, test_acc=test_acc))
        print(f"epoch {epoch}: train loss {train_loss:.3f} acc {train_acc:.3f} | test loss {test_loss:.3f} acc {test_acc:.3f}")
    strengths = F.softplus(model.dynamics.synapses.theta.detach())
    tau = model.dynamics.tau_min + F.softplus(model.dynamics.tau_raw.detach())
    print(f"chance: loss ln 2 = {math.log(2):.3f}, accuracy 0.5; learned edge-type strengths "
          f"{strengths.min():.2f}–{strengths.max():.2f}, tau {float(tau):.3f}")
    print(f"final test accuracy {history[-1]['test_acc']:.3f}")
    plot(out / "graph_classification.png", [train_set[0], train_set[1]], history)
    print(f"wrote {out / 'graph_classification.png'} ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
