"""Gradient error and memory of every gradient method as the simulated time grows.

The fly visual system at ``--extent`` (B = ``--batch`` random stimuli, per-edge-type
synapses, τ = 0.2 at start), Dopri5 at ``--tol``, loss on the output cells at t = T. The
reference is ``Checkpoint`` at ``--ref-tol``. For each T/τ: the relative error of the
parameter gradient (against a float64 reference whatever ``--dtype``), the time of forward
+ backward and the peak memory (CUDA) of
graphode's three methods, and of torchdiffeq's ``odeint`` / ``odeint_adjoint`` (dopri5,
same tolerances, same vector field) when torchdiffeq is installed, side by side in one run.

    python benchmarks/bench_long_horizons.py --extent 4 --device cpu               # CPU
    python benchmarks/bench_long_horizons.py --extent 8 --device cuda --dtype float64
"""

from __future__ import annotations

import argparse
import time

import torch

from graphode import BoundDynamics, fly_visual_system, solve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--extent", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--ref-tol", type=float, default=1e-8)
    p.add_argument("--t-over-tau", type=float, nargs="+", default=[5, 25, 100, 400])
    p.add_argument("--max-seconds", type=float, default=120.0, help="skip a method's longer horizons once one run takes this long")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    data = fly_visual_system(args.extent).to(device)
    n = int(data.num_nodes)
    g = torch.Generator().manual_seed(0)
    stimulus = torch.rand(args.batch, n, generator=g, dtype=torch.float64).to(device) * data.input_mask.to(device)
    readout = torch.randn(args.batch, n, generator=g, dtype=torch.float64).to(device) * data.output_mask.to(device)
    tau0 = 0.2
    try:
        import torchdiffeq
    except ImportError:
        torchdiffeq = None

    def run(method: str, t_end: float, tol: float, dtype: torch.dtype = dtype):
        torch.manual_seed(0)
        dyn = BoundDynamics(data, weights="per_edge_type", tau=tau0, bias=0.5).to(device, dtype)
        y0 = torch.zeros(args.batch, n, device=device, dtype=dtype)
        u, r = stimulus.to(dtype), readout.to(dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        if method.startswith("torchdiffeq"):
            class Field(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.dyn = dyn

                def forward(self, t, y):
                    return self.dyn(t.reshape(1).expand(y.size(0)), y, u)

            solver = torchdiffeq.odeint_adjoint if method.endswith("adjoint") else torchdiffeq.odeint
            kw = dict(adjoint_params=tuple(dyn.parameters())) if method.endswith("adjoint") else {}
            ys = solver(Field(), y0, torch.tensor([0.0, t_end], device=device, dtype=dtype), rtol=tol, atol=tol,
                        method="dopri5", **kw)
            y_end = ys[-1]
        else:
            y_end = solve(dyn, y0, (0.0, t_end), args=(u,), rtol=tol, atol=tol, gradient=method,
                          max_steps=1_000_000).ys[:, -1]
        (y_end * r).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else float("nan")
        return torch.cat([q.grad.flatten() for q in dyn.parameters()]), seconds, peak

    methods = ["autodiff", "checkpoint", "adjoint"] + (["torchdiffeq odeint", "torchdiffeq odeint_adjoint"] if torchdiffeq else [])
    lines = [
        f"fly visual system extent {args.extent} ({n} neurons), B = {args.batch}, {args.dtype}, {device}, Dopri5 "
        f"rtol = atol = {args.tol:g}; reference: checkpoint at {args.ref_tol:g} in float64. Cells: relative gradient error, "
        "seconds (forward + backward), peak GB\n",
        "| T/τ | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    print("\n".join(lines), flush=True)
    slow = set()
    for ratio in args.t_over_tau:
        t_end = tau0 * ratio
        reference, _, _ = run("checkpoint", t_end, args.ref_tol, torch.float64)
        cells = []
        for method in methods:
            if method in slow:
                cells.append("skipped")
                continue
            try:
                grad, seconds, peak = run(method, t_end, args.tol)
            except (AssertionError, RuntimeError) as exc:  # e.g. torchdiffeq's step-size underflow
                cells.append(f"failed ({str(exc).splitlines()[0][:40]})")
                slow.add(method)
                continue
            err = float((grad.double() - reference).norm() / reference.norm())
            cells.append(f"{err:.1e}, {seconds:.2f} s" + ("" if peak != peak else f", {peak:.2f} GB"))
            if seconds > args.max_seconds:
                slow.add(method)
        lines.append(f"| {ratio:g} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
