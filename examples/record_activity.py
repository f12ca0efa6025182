"""Record neuron activity in the fly visual system and plot it: per cell type and on the lattice.

A bright vertical bar sweeps across the retina (``--stimulus bar``, default) or the whole
field flashes (``--stimulus flash``). Each frame is projected onto the photoreceptors R1–R8 by
:func:`graphode.hex_retina`; the frames become a time-varying
:class:`graphode.Stimulus` (linear interpolation between frames). The network first settles
to rest, then :func:`graphode.solve` records every neuron's voltage at ``t_eval``:
``sol.ys`` is ``[1, T, N]``.

Outputs in ``--out-dir`` (default ``runs/examples/record_activity``):

``cell_types.png``
    left: the change from rest of every cell type's mean voltage over time (heatmap, 65
    types, grouped by neuropil); right: traces of selected types.
``hex_map.png``
    one cell type's response on the hexagonal lattice (``data.pos``) at four moments: the
    bar's travelling wave, neuron by neuron.
``cell_type_means.csv``
    the mean voltage per cell type and time (rows: times, columns: types).

The network is untrained (signs and normalised synapse counts of the connectome, τ = 0.1,
b = 0.5): the responses show the recording tools, not fly physiology. To record a trained
model, simulate ``model.dynamics`` (a :class:`graphode.ConnectomeClassifier`'s) the same way;
:func:`graphode.circuits.record` wraps these steps with neuron selection and tables.

Run::

    python examples/record_activity.py --quick                     # extent 4, 3,865 neurons
    python examples/record_activity.py --stimulus flash --map-type L1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from _threads import add_threads_argument, apply_threads  # examples/_threads.py
from graphode import BoundDynamics, Stimulus, fly_visual_system, hex_retina, solve

TRACE_TYPES = ["R1", "L1", "L2", "L3", "Mi1", "Tm3", "Mi4", "Mi9", "T4a", "T4b", "T5a", "Tm1"]
IMAGE = (64, 64)  # fine enough for a smoothly moving bar


def bar_frames(num_frames: int, width: float = 8.0) -> torch.Tensor:
    """``[S, H, W]`` frames of a bright vertical bar moving left to right, dark background."""
    h, w = IMAGE
    cols = torch.arange(w, dtype=torch.float32)
    centres = torch.linspace(-width, w + width, num_frames)
    # soft edges (1 px) so that consecutive frames change smoothly
    profile = torch.sigmoid((width / 2 - (cols[None, :] - centres[:, None]).abs()) / 1.0)  # [S, W]
    return profile[:, None, :].expand(num_frames, h, w).contiguous()


def make_stimulus(kind: str, data, t_on: float, t_off: float) -> tuple[Stimulus, dict]:
    retina = hex_retina(data, IMAGE)
    if kind == "bar":
        frames = bar_frames(41)
        times = torch.linspace(t_on, t_off, frames.size(0))
        drive = retina(frames)  # [S, N]: one drive vector per frame
        # dark before and after: prepend/append a blank frame
        blank = torch.zeros(1, data.num_nodes)
        values = torch.cat([blank, drive, blank])[None]  # [1, S + 2, N]
        times = torch.cat([torch.tensor([0.0]), times, torch.tensor([t_off + 1e-3])])
        return Stimulus(values=values, times=times, interpolation="linear"), {"frames": frames, "times": times[1:-1]}
    if kind == "flash":
        full = retina(torch.ones(1, *IMAGE))  # [1, N]
        values = torch.stack([torch.zeros_like(full[0]), full[0], torch.zeros_like(full[0])])[None]  # [1, 3, N]
        return Stimulus(values=values, times=torch.tensor([0.0, t_on, t_off]), interpolation="constant"), {}
    raise ValueError(f"unknown stimulus {kind!r}")


def cell_type_means(v: torch.Tensor, cell_type: torch.Tensor, num_types: int) -> torch.Tensor:
    """``v [T, N]`` → mean over the neurons of each type ``[T, num_types]``."""
    sums = v.new_zeros(v.size(0), num_types).index_add_(1, cell_type, v)
    return sums / torch.bincount(cell_type, minlength=num_types).clamp_min(1).to(v.dtype)


def plot_cell_types(path: Path, ts, means, rest, names, t_on, t_off, title, input_types=()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    change = (means - rest).T  # [types, T]
    fig, (ax_h, ax_t) = plt.subplots(1, 2, figsize=(14, 9), gridspec_kw={"width_ratios": [1.1, 1]})
    # Colour scale from the network's responses, not the photoreceptors' (which are driven directly
    # and would wash out everything else); they saturate instead.
    inner = [i for i, n in enumerate(names) if n not in input_types] or list(range(len(names)))
    lim = float(change[inner].abs().max()) or 1.0
    im = ax_h.imshow(change, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest",
                     extent=(float(ts[0]), float(ts[-1]), len(names) - 0.5, -0.5))
    ax_h.set_yticks(range(len(names)), names, fontsize=6.5)
    ax_h.set(xlabel="time", title="mean voltage change from rest, every cell type")
    for t in (t_on, t_off):
        ax_h.axvline(t, color="k", lw=0.8, ls="--")
    fig.colorbar(im, ax=ax_h, shrink=0.6, extend="both", label="Δv (mean over neurons of the type)")
    shown = [n for n in TRACE_TYPES if n in names]
    for k, name in enumerate(shown):
        i = names.index(name)
        ax_t.plot(ts, means[:, i] - rest[i], color=plt.cm.tab20(k % 20), lw=1.8, label=name)
    ax_t.axvspan(t_on, t_off, color="gold", alpha=0.2, lw=0, label="stimulus on")
    ax_t.set(xlabel="time", ylabel="Δv (mean over the type's neurons)", title="selected cell types")
    ax_t.grid(alpha=0.3)
    ax_t.legend(ncol=5, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.07), frameon=False)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_hex_map(path: Path, data, ts, v, rest, type_name, moments, frames_info) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    members = torch.nonzero(data.cell_type == data.cell_type_names.index(type_name)).flatten()
    pos = data.pos[members]
    change = v[:, members] - rest[members]  # [T, M]
    idx = [int(torch.argmin((ts - m).abs())) for m in moments]
    lim = float(change[idx].abs().max()) or 1.0
    fig, axes = plt.subplots(1, len(idx), figsize=(4.2 * len(idx), 4.6), squeeze=False)
    span = float(pos.abs().max()) + 1
    fig.canvas.draw()
    points_per_unit = axes[0, 0].get_window_extent().width * 72 / fig.dpi / (2 * span)
    spacing = float(torch.cdist(pos[:2], pos).sort(dim=1).values[:, 1].min()) if len(pos) > 1 else 1.0
    size = (0.95 * spacing * points_per_unit) ** 2  # hexagons that nearly touch their neighbours
    for ax, k in zip(axes[0], idx):
        sc = ax.scatter(pos[:, 0], pos[:, 1], c=change[k], cmap="RdBu_r", vmin=-lim, vmax=lim, s=size,
                        marker="h", edgecolors="0.6", linewidths=0.3)
        if frames_info:  # where the bar's centre is on the lattice at this moment
            j = int(torch.argmin((frames_info["times"] - ts[k]).abs()))
            profile = frames_info["frames"][j, 0]
            col = float((profile * torch.arange(IMAGE[1])).sum() / profile.sum().clamp_min(1e-6))
            x = (col - (IMAGE[1] - 1) / 2) / ((min(IMAGE) / 2 - 1.5) / float(data.pos.norm(dim=1).max()))
            if abs(x) < span:
                ax.axvline(x, color="gold", lw=3, alpha=0.7)
        ax.set_title(f"t = {float(ts[k]):.2f}", fontsize=11)
        ax.set_aspect("equal")
        ax.set_xlim(-span, span)
        ax.set_ylim(-span, span)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(sc, ax=axes[0].tolist(), shrink=0.8, label=f"{type_name}: Δv from rest")
    fig.suptitle(f"{type_name} responses on the hexagonal lattice ({len(members)} neurons; gold line: bar centre)"
                 if frames_info else f"{type_name} responses on the hexagonal lattice ({len(members)} neurons)", fontsize=12)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="extent 4 (3,865 neurons) instead of 8 (13,741)")
    p.add_argument("--stimulus", choices=["bar", "flash"], default="bar")
    p.add_argument("--map-type", default="Mi1", help="cell type drawn on the lattice")
    p.add_argument("--out-dir", default="runs/examples/record_activity")
    add_threads_argument(p)
    args = p.parse_args(argv)
    apply_threads(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    data = fly_visual_system(extent=4 if args.quick else 8)
    names = data.cell_type_names
    if args.map_type not in names:
        raise SystemExit(f"unknown cell type {args.map_type!r}; choose from {', '.join(names)}")
    print(f"fly visual system: {data.num_nodes} neurons, {data.num_edges} synapses, {len(names)} cell types")
    dynamics = BoundDynamics(data, activation="relu", tau=0.1, bias=0.5)

    t_on, t_off, t_end = 0.2, 1.2, 1.8
    stimulus, frames_info = make_stimulus(args.stimulus, data, t_on, t_off)
    ts = torch.linspace(0.0, t_end, 181)
    with torch.no_grad():
        rest = solve(dynamics, torch.zeros(1, data.num_nodes), (0.0, 3.0)).ys[0, -1]  # settle without input
        sol = solve(dynamics, rest[None], (0.0, t_end), args=(stimulus,), t_eval=ts, rtol=1e-4, atol=1e-5)
    v = sol.ys[0]  # [T, N]: every neuron at every recorded time
    print(f"recorded {tuple(sol.ys.shape)} (samples, times, neurons) with {sol.stats.n_steps} solver steps, "
          f"{sol.stats.n_f_evals} function evaluations")

    means = cell_type_means(v, data.cell_type, len(names))
    rest_means = cell_type_means(rest[None], data.cell_type, len(names))[0]
    change = means - rest_means
    peak = change.abs().max(0)
    top = torch.argsort(peak.values, descending=True)[:8]
    print("largest mean responses (Δv from rest, at time):")
    for i in top.tolist():
        k = int(peak.indices[i])
        print(f"  {names[i]:>9}: {float(change[k, i]):+.3f} at t = {float(ts[k]):.2f}")

    what = "a bright bar moving left to right" if args.stimulus == "bar" else "a full-field flash"
    plot_cell_types(out / "cell_types.png", ts, means, rest_means, names, t_on, t_off,
                    f"fly visual system ({data.num_nodes} neurons), {what} from t = {t_on} to {t_off}",
                    input_types={names[int(t)] for t in data.cell_type[data.input_mask].unique()})
    moments = torch.linspace(t_on + 0.15 * (t_off - t_on), t_off - 0.1 * (t_off - t_on), 4).tolist() \
        if args.stimulus == "bar" else [t_on - 0.05, t_on + 0.1, t_off - 0.05, t_off + 0.2]
    plot_hex_map(out / "hex_map.png", data, ts, v, rest, args.map_type, moments, frames_info)
    with open(out / "cell_type_means.csv", "w") as fh:
        fh.write("time," + ",".join(names) + "\n")
        for k in range(len(ts)):
            fh.write(f"{float(ts[k]):.4f}," + ",".join(f"{float(x):.5f}" for x in means[k]) + "\n")
    print(f"wrote {out / 'cell_types.png'}, {out / 'hex_map.png'}, {out / 'cell_type_means.csv'} "
          f"({time.perf_counter() - t_start:.1f} s)")


if __name__ == "__main__":
    main()
