"""Circuit experiments on the fly visual system: flash, record, silence, activate, lesion-scan.

A bright disc flashes on the retina (photoreceptors R1–R8 read it through
:func:`graphode.inputs.hex_retina`). The network first settles to its resting state (under
the perturbation of each condition), then the disc is shown from ``t = 0.5`` to ``1.0``.
Responses are recorded per cell type in the central columns for

* control,
* L1 silenced, L2 silenced (their outgoing synapses contribute nothing),
* Mi1 activated (a constant extra current into every Mi1 neuron),

and a lesion scan silences one cell type at a time and measures the change of the
ON pathway's (Mi1, Tm3: the inputs of T4) flash response in the central columns.

Outputs in ``--out-dir`` (default ``runs/circuit_experiments``):

``traces.png``          voltage per cell type over time, one line per condition
``hex_map.png``         flash response of one cell type on the hexagonal lattice, per condition
``lesions.png``         change of the Mi1/Tm3 flash response when each cell type is silenced
``responses.csv``       tidy per-cell-type responses of every condition
``lesions.csv``         the lesion table

The network is untrained (the connectome's signs and normalised synapse counts, τ = 0.2,
b = 0.5), so the responses illustrate the tools rather than fly physiology.

    PYTHONPATH=. python examples/circuit_experiments.py --quick
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from graphode import BoundDynamics, Stimulus, fly_visual_system, hex_retina
from graphode.circuits import (
    Drive,
    Recording,
    Silence,
    lesion_scan,
    perturb,
    plot_lesions,
    select_neurons,
    simulate,
)

TRACE_TYPES = ["R1", "L1", "L2", "L3", "Mi1", "Tm3", "Mi4", "Mi9", "T4a", "T5a"]
LESION_TYPES = ["L1", "L2", "L3", "L4", "L5", "C3", "Mi4", "Mi9", "Tm1", "Tm2", "Tm9", "CT1(M10)", "T4a", "Lawf2"]
LESION_TYPES_QUICK = LESION_TYPES[:8]
METRIC_TYPES = ["Mi1", "Tm3"]  # the ON pathway (inputs of T4)
T_ON, T_OFF, T_END, T_SETTLE = 0.5, 1.0, 2.0, 4.0
SOLVER = dict(rtol=1e-4, atol=1e-5)


def disc_image(size: int = 28, radius: float = 7.0) -> torch.Tensor:
    grid = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    c = (size - 1) / 2
    return (((yy - c) ** 2 + (xx - c) ** 2) <= radius**2).float().unsqueeze(0)  # [1, H, W]


def flash_stimulus(data, intensity: float = 1.0) -> Stimulus:
    """Disc on from T_ON to T_OFF, per-neuron drive ``[1, 3, N]``, piecewise constant."""
    drive = hex_retina(data, (28, 28), gain=intensity)(disc_image())
    values = torch.stack([torch.zeros_like(drive), drive, torch.zeros_like(drive)], 1)
    return Stimulus(values=values, times=torch.tensor([0.0, T_ON, T_OFF]), interpolation="constant")


def run_condition(dyn, data, stim, perturbations, ts, central) -> dict:
    """Settle to rest under the perturbation, then flash; record the central columns."""
    with perturb(dyn, *perturbations):
        rest = simulate(dyn, None, t_eval=[T_SETTLE], **SOLVER).ys[:, -1]
        sol = simulate(dyn, stim, t_eval=ts, t_span=(0.0, T_END), y0=rest, **SOLVER)
    # (record(dyn, data, stim, neurons=central, ...) does both steps; the maps need every neuron)
    return {"recording": Recording.from_solution(sol, data, neurons=central), "all": sol.ys[0]}  # [T, N]


def flash_response(ys: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """Mean voltage during the flash minus the mean before it: ``[..., N]`` from ``[..., T, N]``."""
    on = (ts >= T_ON) & (ts < T_OFF)
    pre = ts < T_ON
    return ys[..., on, :].mean(-2) - ys[..., pre, :].mean(-2)


def plot_traces(results: dict, path: Path, extent: int) -> None:
    names = TRACE_TYPES
    cols = 5
    rows = int(np.ceil(len(names) / cols))
    fig = Figure(figsize=(3.1 * cols, 2.6 * rows + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    colours = ["black", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(len(names))]
    for ax, name in zip(axes, names):
        for (label, res), colour in zip(results.items(), colours):
            by = res["recording"].by_cell_type()
            ax.plot(by.ts.numpy(), by[name][0].numpy(), color=colour, lw=1.6 if label == "control" else 1.2,
                    ls="-" if label == "control" else "--", label=label)
        ax.axvspan(T_ON, T_OFF, color="gold", alpha=0.25, lw=0)
        n = res["recording"].by_cell_type().counts[by.cell_types.index(name)]
        ax.set_title(f"{name} (mean of {n})", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[-cols:]:
        ax.set_xlabel("time")
    for ax in axes[::cols]:
        ax.set_ylabel("voltage v")
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(axes[0].axvspan(0, 0, color="gold", alpha=0.25, lw=0))
    labels.append("flash on")
    fig.suptitle(f"Fly visual system (extent {extent}), central columns: responses to a bright disc flash",
                 y=0.985, fontsize=12)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.945), ncol=len(labels),
               frameon=False, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.90))
    fig.savefig(path)


def plot_hex_map(results: dict, data, ts: torch.Tensor, cell_type: str, path: Path) -> None:
    mask = select_neurons(data, cell_types=cell_type)
    pos = data.pos[mask].numpy()
    maps = {label: flash_response(res["all"], ts)[mask].numpy() for label, res in results.items()}
    lim = max(float(np.abs(m).max()) for m in maps.values()) or 1.0
    fig = Figure(figsize=(3.0 * len(maps) + 1.2, 3.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, len(maps), i + 1) for i in range(len(maps))]
    pad = 0.9
    span = max(np.ptp(pos[:, 0]), np.ptp(pos[:, 1])) + 2 * pad
    size = (0.95 * 2.6 * 72 / span) ** 2  # marker area in pt²: about one column across
    for ax, (label, m) in zip(axes, maps.items()):
        sc = ax.scatter(pos[:, 0], pos[:, 1], c=m, cmap="RdBu_r", vmin=-lim, vmax=lim, marker="h", s=size,
                        edgecolors="0.4", linewidths=0.4)
        ax.set_title(label, fontsize=11)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlim(pos[:, 0].min() - pad, pos[:, 0].max() + pad)
        ax.set_ylim(pos[:, 1].min() - pad, pos[:, 1].max() + pad)
    cbar = fig.colorbar(sc, ax=axes, shrink=0.9)
    cbar.set_label("flash response Δv\n(during − before flash)")
    fig.suptitle(f"{cell_type} on the hexagonal lattice ({mask.sum()} cells), one hexagon per column", fontsize=12)
    fig.savefig(path)


@torch.no_grad()
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="extent 2 (a few seconds); default extent 4")
    p.add_argument("--extent", type=int, default=None, help="lattice radius (overrides --quick)")
    p.add_argument("--out-dir", type=Path, default=Path("runs/circuit_experiments"))
    p.add_argument("--map-type", default="Mi1", help="cell type drawn on the hexagonal map")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    extent = args.extent if args.extent is not None else (2 if args.quick else 4)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    data = fly_visual_system(extent)
    dyn = BoundDynamics(data, tau=0.2, bias=0.5)
    stim = flash_stimulus(data)
    ts = torch.linspace(0.0, T_END, 81)
    radius = max(1.0, extent / 2)
    central = select_neurons(data, where=lambda d: d.pos.norm(dim=1) <= radius + 1e-6)
    print(f"fly visual system, extent {extent}: {data.num_nodes} neurons, {data.edge_index.size(1)} synapses; "
          f"recording {int(central.sum())} neurons within {radius:g} columns of the centre")

    conditions = {
        "control": [],
        "silence L1": [Silence(select_neurons(data, cell_types="L1"))],
        "silence L2": [Silence(select_neurons(data, cell_types="L2"))],
        "activate Mi1": [Drive(select_neurons(data, cell_types="Mi1"), 1.0)],
    }
    results = {}
    for label, perts in conditions.items():
        results[label] = run_condition(dyn, data, stim, perts, ts, central)
        print(f"  {label:>13}: done ({time.perf_counter() - t_start:.1f} s)")

    frames = []
    for label, res in results.items():
        df = res["recording"].by_cell_type().to_dataframe()
        df.insert(0, "condition", label)
        frames.append(df)
    responses = pd.concat(frames, ignore_index=True)
    responses.to_csv(out / "responses.csv", index=False)
    plot_traces(results, out / "traces.png", extent)
    plot_hex_map(results, data, ts, args.map_type, out / "hex_map.png")

    # Lesion scan: the central ON-pathway (Mi1, Tm3) flash response with each cell type silenced.
    on_cells = select_neurons(data, cell_types=METRIC_TYPES) & central

    def on_response(d) -> float:
        rest = simulate(d, None, t_eval=[T_SETTLE], **SOLVER).ys[:, -1]
        sol = simulate(d, stim, t_eval=ts, t_span=(0.0, T_END), y0=rest, **SOLVER)
        return float(flash_response(sol.ys[0], ts)[on_cells].mean())

    groups = LESION_TYPES_QUICK if extent <= 2 else LESION_TYPES
    lesions = lesion_scan(dyn, groups, on_response, data=data)
    lesions["metric"] = "Mi1/Tm3 flash response"
    lesions.to_csv(out / "lesions.csv", index=False)
    plot_lesions(lesions, out / "lesions.png",
                 title=f"Silencing one cell type: change of the central Mi1/Tm3 flash response\n"
                       f"(control {lesions['baseline'].iloc[0]:.3g}; extent {extent})")

    summary = responses[(responses["time"] > T_ON) & (responses["time"] < T_OFF)]
    table = summary.pivot_table(index="cell_type", columns="condition", values="value", aggfunc="mean")
    print("\nmean voltage during the flash (central columns):")
    print(table.loc[[t for t in TRACE_TYPES if t in table.index], list(conditions)].round(3).to_string())
    print("\nlesion scan (central Mi1/Tm3 flash response):")
    print(lesions[["group", "n_neurons", "value", "delta"]].round(4).to_string(index=False))
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"\nwrote {files} to {out} in {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
