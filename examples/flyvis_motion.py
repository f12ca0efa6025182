"""Train the published fly visual system model to decode the direction of moving edges, and
measure the direction selectivity of T4a–d and T5a–d before and after.

The model is :func:`graphode.flyvis.model.published_dynamics` (the parameterisation of
Lappalainen et al. 2024: per-type τ and resting potentials, one non-negative strength per
edge type on raw synapse counts), integrated as published by explicit Euler at 20 ms with
frame ``k`` at step ``k`` (:func:`graphode.flyvis.model.simulate`), from the steady state
after grey input. The task: ON and OFF edges (:func:`graphode.flyvis.stimuli.moving_edge`)
move in one of eight directions at a random speed; a linear decoder reads the mean rectified
activity of each of the eight T4/T5 subtypes over the lattice and the sweep and predicts the
direction as a unit vector (squared error). The decoder gets no hint of which subtype should
prefer which direction: any preference the subtypes acquire comes from the connectome and
the task.

Direction selectivity is measured as in the published analyses
(:mod:`graphode.flyvis.analysis`): the central cell's peak rectified response to edges in
12 directions, the DSI ``|Σ r e^{iθ}| / max(Σ r_on, Σ r_off)`` (T4 on ON edges, T5 on OFF
edges) and the preferred direction ``arg Σ r e^{iθ}``, compared with the known preferences
(a front to back = 180°, b back to front = 0°, c upwards = 90°, d downwards = 270°, in the
angles of :mod:`graphode.flyvis.stimuli`). A subtype "matches" when its preferred direction
lies within 45° of the known one.

Outputs in ``--out-dir`` (default ``runs/examples/flyvis_motion``): ``tuning_before.png``,
``tuning_after.png`` (polar tuning of the eight subtypes, the known direction in red),
``loss.png``, ``direction_selectivity.csv`` (per subtype, before and after: DSI, preferred
direction, the known direction, the angular error, whether it matches).

Run::

    python examples/flyvis_motion.py --quick                  # extent 2, a few steps, CPU, < 1 min
    python examples/flyvis_motion.py                          # extent 8, 1,500 steps (94 s on one H200)
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch

from _threads import add_threads_argument, apply_threads  # examples/_threads.py
from graphode.flyvis import fly_visual_system
from graphode.flyvis.analysis import (
    angular_distance, direction_selectivity_index, moving_edge_responses, peak_responses, preferred_direction,
    type_index,
)
from graphode.flyvis.model import activity_penalty, grey_steady_state, published_dynamics, simulate
from graphode.flyvis.plots import polar_tuning, traces
from graphode.flyvis.stimuli import KNOWN_PREFERRED_DIRECTIONS, moving_edge

SUBTYPES = list(KNOWN_PREFERRED_DIRECTIONS)  # T4a-d, T5a-d
TASK_DIRECTIONS = [0, 45, 90, 135, 180, 225, 270, 315]
TUNING_ANGLES = list(range(0, 360, 30))


def direction_tuning(dyn, data, speed: float, relative: bool) -> dict[str, dict]:
    """DSI, preferred direction and tuning curve of every T4/T5 subtype (central cells)."""
    responses = moving_edge_responses(dyn, data, TUNING_ANGLES, speed=speed, t_pre=0.5, relative=relative)
    peaks = peak_responses(responses).permute(0, 2, 1)  # [ON/OFF, K, A]
    norm = torch.maximum(peaks[0].sum(-1), peaks[1].sum(-1))
    dsi = direction_selectivity_index(peaks, TUNING_ANGLES, normalisation=norm)
    pd = preferred_direction(peaks, TUNING_ANGLES)
    out = {}
    for name in SUBTYPES:
        k = data.cell_type_names.index(name)
        polarity = 0 if name.startswith("T4") else 1  # T4: ON edges, T5: OFF edges
        out[name] = {
            "dsi": float(dsi[polarity, k]), "pd": float(pd[polarity, k]), "curve": peaks[polarity, k].cpu(),
            "error": float(angular_distance(pd[polarity, k], KNOWN_PREFERRED_DIRECTIONS[name])),
        }
    return out


def batch(extent: int, size: int, speeds: tuple[float, float], gen: torch.Generator, device):
    """``size`` random edges: frames [B, T, C] (the same length: one speed per batch) and targets [B, 2]."""
    angles = [TASK_DIRECTIONS[i] for i in torch.randint(len(TASK_DIRECTIONS), (size,), generator=gen).tolist()]
    intensity = torch.randint(2, (size,), generator=gen).tolist()
    lo, hi = speeds
    speed = lo + (hi - lo) * float(torch.rand(1, generator=gen))
    frames = torch.stack([moving_edge(extent, a, speed, float(i), t_pre=0.1, t_post=0.1) for a, i in zip(angles, intensity)])
    target = torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles])
    return frames.to(device), target.to(device)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="extent 2, 8 steps: a smoke run on the CPU")
    p.add_argument("--extent", type=int, default=None, help="lattice radius (default 8; 2 with --quick)")
    p.add_argument("--iters", type=int, default=None, help="training steps (default 1500; 8 with --quick)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4,
                   help="Adam learning rate of the model's parameters (the strengths start near 1e-3)")
    p.add_argument("--speed", type=float, default=13.0, help="edge speed of the tuning measurement (columns/s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--activity-penalty", type=float, default=0.0,
                   help="weight of the published activity penalty on the resting potentials (published: 0.1)")
    p.add_argument("--voltages", dest="relative", action="store_false",
                   help="measure tuning on the rectified voltages (published) instead of their change from grey")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--out-dir", type=Path, default=Path("runs/examples/flyvis_motion"))
    add_threads_argument(p)
    args = p.parse_args(argv)
    apply_threads(args)
    extent = args.extent or (2 if args.quick else 8)
    iters = args.iters or (8 if args.quick else 1500)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    data = fly_visual_system(extent)
    dyn = published_dynamics(data, seed=args.seed).to(device)
    print(f"extent {extent}: {data.num_nodes} neurons, {data.num_edges} connections, "
          f"{sum(p.numel() for p in dyn.parameters())} parameters, device {device}")
    codes = torch.tensor(type_index(data, SUBTYPES))
    # the decoder reads interior cells only (2 columns from the border): no cues from where edges enter
    u, v = data.uv[:, 0], data.uv[:, 1]
    interior = torch.stack([u.abs(), v.abs(), (u + v).abs()]).max(0).values <= max(extent - 2, 0)
    member = ((data.cell_type[None, :] == codes[:, None]) & interior[None, :]).float()
    member = (member / member.sum(1, keepdim=True)).to(device)  # [8, N]: mean over each subtype's cells
    decoder = torch.nn.Linear(len(SUBTYPES), 2).to(device)

    before = direction_tuning(dyn, data, args.speed, args.relative)
    opt = torch.optim.Adam([{"params": dyn.parameters(), "lr": args.lr}, {"params": decoder.parameters(), "lr": 1e-2}])
    losses, start = [], time.time()
    for step in range(iters):
        frames, target = batch(extent, args.batch_size, (5.0, 25.0), gen, device)
        with torch.no_grad():
            v0 = grey_steady_state(dyn, frames.size(0), duration=0.5)
        states = simulate(dyn, frames, v0)  # [B, T, N]
        # each subtype's mean rectified change from the grey state, over the sweep (after 0.1 s of grey)
        features = (torch.relu(states[:, 5:] - states[:, 4:5]) @ member.T).mean(1)  # [B, 8]
        features = (features - features.mean(0)) / (features.std(0) + 1e-6)  # standardised over the batch
        loss = ((decoder(features) - target) ** 2).sum(1).mean()
        opt.zero_grad()
        if args.activity_penalty > 0:  # published: the penalty trains the resting potentials only
            penalty = activity_penalty(states, data, weight=args.activity_penalty)
            (bias_grad,) = torch.autograd.grad(penalty, dyn.bias, retain_graph=True)
        loss.backward()
        if args.activity_penalty > 0:
            dyn.bias.grad += bias_grad
        opt.step()
        losses.append(float(loss.detach()))
        if step % max(1, iters // 10) == 0 or step == iters - 1:
            print(f"step {step:4d}  loss {losses[-1]:.4f}  ({time.time() - start:.1f} s)", flush=True)
    after = direction_tuning(dyn, data, args.speed, args.relative)

    print(f"{'type':5s} {'known':>6s} | {'DSI before':>10s} {'PD before':>9s} | {'DSI after':>10s} {'PD after':>9s}")
    rows, matched = [], {"before": 0, "after": 0}
    for name in SUBTYPES:
        known = KNOWN_PREFERRED_DIRECTIONS[name]
        cells = []
        for tag, result in (("before", before), ("after", after)):
            r = result[name]
            match = bool(r["error"] < 45.0)  # False where there is no preferred direction (NaN)
            matched[tag] += match
            pd = "none" if math.isnan(r["pd"]) else f"{r['pd']:.0f}°"
            cells.append(f"{r['dsi']:10.3g} {pd + ('*' if match else ' '):>9s}")
            rows += [[name, tag, r["dsi"], r["pd"], known, r["error"], match]]
        print(f"{name:5s} {known:5.0f}° | {cells[0]} | {cells[1]}")
    print(f"(* within 45° of the known direction)  {matched['before']} of {len(SUBTYPES)} subtypes match before "
          f"training, {matched['after']} after; loss first {losses[0]:.4f} last {losses[-1]:.4f}")
    with open(args.out_dir / "direction_selectivity.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["type", "when", "dsi", "preferred_direction", "known_direction", "angular_error", "match"])
        w.writerows(rows)
    for tag, result in (("before", before), ("after", after)):
        polar_tuning(TUNING_ANGLES, {n: r["curve"] for n, r in result.items()}, marks=KNOWN_PREFERRED_DIRECTIONS,
                     title=f"peak responses to moving edges, {tag} training", path=args.out_dir / f"tuning_{tag}.png")
    traces({"loss": torch.tensor(losses)}, dt=1.0, ylabel="loss", title="training loss (x: step)",
           path=args.out_dir / "loss.png")
    return {"before": before, "after": after, "losses": losses}


if __name__ == "__main__":
    main()
