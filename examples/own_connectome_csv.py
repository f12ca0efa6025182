"""Your own connectome from a CSV edge list: load, simulate a step stimulus, plot voltages.

The files in ``examples/data/`` have the layout of a FlyWire export (hand-made, 30 neurons,
not real data): ``toy_flywire_connections.csv`` with ``pre_root_id, post_root_id, neuropil,
syn_count, nt_type`` (64-bit root ids, one row per connected pair) and
``toy_flywire_neurons.csv`` with ``root_id, cell_type, column``. They describe four columns
of a small ON-motion-like circuit (photoreceptors R1-6 → L1/L2 → Mi1/Tm3/Mi4 → T4) and two
wide-field cells (LPi, HS).

Steps:

1. ``graphode.load_connectome`` reads both files (FlyWire column names are recognised),
   turns neurotransmitters into signs (fly convention ACh +1, GABA/Glu -1, plus
   ``nt_signs={"hist": -1}`` for the photoreceptors' histamine), and normalises every
   neuron's input synapses to sum to one (``normalize="in_syn"``).
2. ``ConnectomeDynamics`` + ``solve`` simulate ``τ dv/dt = -v + Σ w f(v) + b + u(t)`` with a
   step current ``u(t)`` into chosen neurons (by root id).
3. Voltage traces per cell type go to ``traces.png``, the signed weight matrix to
   ``connectivity.png``, the traces as a table to ``traces.csv``.

Run::

    python examples/own_connectome_csv.py --quick
    python examples/own_connectome_csv.py --edges my_edges.csv --nodes my_neurons.csv --neurons ID1 ID2

With your own files, ``--neurons`` takes root ids (default: the neurons of ``--input-type``
in columns 0 and 1 of this toy).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from _threads import add_threads_argument, apply_threads  # examples/_threads.py
from graphode import BoundDynamics, Stimulus, load_connectome, solve
from graphode.connectome import node_index

HERE = Path(__file__).resolve().parent


def step_stimulus(num_nodes: int, neurons: torch.Tensor, amplitude: float, on: float, off: float) -> Stimulus:
    """A current of ``amplitude`` into ``neurons`` between ``on`` and ``off``, zero elsewhere.

    Sampled values ``[B=1, S=3, N]`` with ``interpolation="constant"``: each sample holds
    until the next one.
    """
    values = torch.zeros(1, 3, num_nodes)
    values[0, 1, neurons] = amplitude
    return Stimulus(values=values, times=torch.tensor([0.0, on, off]), interpolation="constant")


def type_order(names: list[str]) -> list[str]:
    """The toy's cell types in pathway order (others, e.g. from your own files, alphabetically after)."""
    order = [n for n in ("R1-6", "L1", "L2", "Mi1", "Tm3", "Mi4", "T4", "LPi", "HS") if n in names]
    return order + [n for n in names if n not in order]


def plot_traces(path: Path, data, ts, v, stimulated, on, off) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = data.cell_type_names
    order = type_order(names)
    cols = 3
    rows = -(-len(order) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.4 * rows), sharex=True, squeeze=False)
    column = getattr(data, "column", None)
    for ax, name in zip(axes.flat, order):
        members = torch.nonzero(data.cell_type == names.index(name)).flatten().tolist()
        for k, n in enumerate(members):
            c = int(column[n]) if column is not None else k
            # Columns often respond identically: draw the first ones wider so none hides another.
            width = 1.2 + 2.4 * (len(members) - 1 - k) / max(len(members) - 1, 1)
            ax.plot(ts, v[:, n], "--" if n in stimulated else "-", color="k" if c < 0 else f"C{c % 10}", lw=width)
        ax.axvspan(on, off, color="gold", alpha=0.25, lw=0)
        ax.set_title(name, fontsize=11)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(order):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("time")
    for ax in axes[:, 0]:
        ax.set_ylabel("voltage v")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=f"C{c}", lw=2, label=f"column {c}") for c in range(4)] if column is not None else []
    handles += [Line2D([], [], color="grey", ls="--", lw=2, label="driven neuron"),
                Line2D([], [], color="k", lw=2, label="wide-field cell")]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), bbox_to_anchor=(0.5, 0.955), frameon=False)
    fig.suptitle("step current into the dashed neurons during the shaded interval (network starts at rest)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_connectivity(path: Path, data) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = int(data.num_nodes)
    names = type_order(data.cell_type_names)
    rank_of_type = torch.tensor([names.index(t) for t in data.cell_type_names])
    within = data.column if "column" in data else torch.arange(n)
    order = torch.argsort(rank_of_type[data.cell_type] * (2 * n + 2) + within.long() + 1)  # by type, then column
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n)
    w = torch.zeros(n, n)
    src, dst = data.edge_index
    w[rank[dst], rank[src]] = data.sign * data.syn_weight  # rows: postsynaptic, columns: presynaptic
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(w, cmap="RdBu_r", vmin=-1, vmax=1)
    labels = [data.cell_type_names[int(t)] for t in data.cell_type[order]]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set(xlabel="presynaptic neuron", ylabel="postsynaptic neuron", title="signed, normalised weights w_ij")
    fig.colorbar(im, ax=ax, shrink=0.8, label="sign · syn_count / input synapses of target")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="(this example is quick either way)")
    p.add_argument("--edges", default=str(HERE / "data" / "toy_flywire_connections.csv"))
    p.add_argument("--nodes", default=str(HERE / "data" / "toy_flywire_neurons.csv"))
    p.add_argument("--neurons", nargs="*", type=int, default=None, help="root ids that receive the step current")
    p.add_argument("--input-type", default="R1-6", help="cell type driven when --neurons is not given")
    p.add_argument("--amplitude", type=float, default=1.0)
    p.add_argument("--out-dir", default="runs/examples/own_connectome_csv")
    add_threads_argument(p)
    args = p.parse_args(argv)
    apply_threads(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    # 1. Load. Column names are auto-detected; everything else is explicit.
    data, report = load_connectome(
        args.edges,
        nodes=args.nodes,
        nt_signs={"hist": -1},  # histamine (photoreceptors) is inhibitory; ACh/GABA/Glu are built in
        normalize="in_syn",  # each neuron's input weights sum to 1 in magnitude
        input_types=args.input_type,
        return_report=True,
    )
    print(data)
    print(f"{report.num_nodes} neurons, {report.num_edges} connections from {report.rows} rows "
          f"(merged duplicates: {report.duplicates_merged}, default-signed: {report.default_signed})")
    inhibitory = int((data.sign < 0).sum())
    print(f"cell types: {', '.join(data.cell_type_names)}; {inhibitory} of {data.num_edges} connections inhibitory")

    # 2. Choose the driven neurons by root id (64-bit ids are kept exactly).
    if args.neurons:
        ids = args.neurons
    else:
        driven_mask = data.input_mask.clone()
        if "column" in data:
            driven_mask &= (data.column == 0) | (data.column == 1)
        ids = data.node_id[driven_mask].tolist()
    stimulated = node_index(data, ids)
    print(f"step current into root ids {ids} → node indices {stimulated.tolist()}")

    # 3. Simulate: from rest (bias 0.5 gives every neuron resting activity, so inhibition
    #    shows), a step current from t = 1 to t = 3.
    torch.manual_seed(0)
    dynamics = BoundDynamics(data, activation="relu", tau=0.2, bias=0.5, weights="fixed", backend="pyg")
    on, off, t_end = 1.0, 3.0, 5.0
    stimulus = step_stimulus(data.num_nodes, stimulated, args.amplitude, on, off)
    ts = torch.linspace(0.0, t_end, 251)
    with torch.no_grad():
        # Let the network settle from v = 0 to its resting state without input, then start there.
        settle = solve(dynamics, torch.zeros(1, data.num_nodes), (0.0, 10.0), rtol=1e-5, atol=1e-6)
        v0 = settle.ys[:, -1]
        sol = solve(dynamics, v0, (0.0, t_end), args=(stimulus,), t_eval=ts, rtol=1e-5, atol=1e-6)
    v = sol.ys[0]  # [T, N]
    print(f"solved: {sol.stats.n_steps} steps, {sol.stats.n_f_evals} function evaluations")

    # 4. Report, plot and save.
    rest = v[int(torch.searchsorted(ts, torch.tensor(on))) - 1]
    during = v[int(torch.searchsorted(ts, torch.tensor(off))) - 1]
    print("\nresponse at the end of the step (v_step - v_rest), mean per cell type:")
    for t, name in enumerate(data.cell_type_names):
        m = data.cell_type == t
        print(f"  {name:>5}: {float((during - rest)[m].mean()):+.3f}")
    plot_traces(out / "traces.png", data, ts, v, set(stimulated.tolist()), on, off)
    plot_connectivity(out / "connectivity.png", data)
    with open(out / "traces.csv", "w") as fh:
        fh.write("time," + ",".join(str(int(i)) for i in data.node_id) + "\n")
        for k in range(len(ts)):
            fh.write(f"{float(ts[k]):.4f}," + ",".join(f"{float(x):.5f}" for x in v[k]) + "\n")
    print(f"\nwrote {out / 'traces.png'}, {out / 'connectivity.png'}, {out / 'traces.csv'} "
          f"({time.perf_counter() - t_start:.1f} s)")


if __name__ == "__main__":
    main()
