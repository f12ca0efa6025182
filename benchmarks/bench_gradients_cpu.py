"""Peak memory and time of one training step vs integration length, per gradient method.

One training step = ``solve`` of the fly visual system dynamics (``fly_visual_system(extent)``,
relu, per-edge synapses, per-type τ = 1 and bias) over ``[0, T]`` with a smooth moving drive
on the photoreceptors, plus ``backward`` of the mean squared activity of the output neurons
at 10 evaluation times. T is in units of τ.

Each (method, T) case runs in a fresh subprocess. Memory is the rise of the resident set
during the step: the peak (``VmHWM``) is reset to the current RSS through
``/proc/self/clear_refs`` right before the step (after a short warm-up step), and glibc's
mmap threshold is fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``) so that freed tensors go back
to the OS and RSS follows live memory (otherwise freed blocks stay in the heap and hide
later growth). The process's total peak RSS is printed too.

    PYTHONPATH=. python benchmarks/bench_gradients_cpu.py [--extent 5] [--batch 8] [--tol 1e-4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def run_case(method: str, T: float, extent: int, batch: int, tol: float, threads: int, backend: str) -> dict:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    from graphode.dynamics import BoundDynamics
    from graphode.flyvis import fly_visual_system
    from graphode import solve

    torch.set_num_threads(threads)
    data = fly_visual_system(extent)
    dyn = BoundDynamics(data, activation="relu", backend=backend, tau=1.0, weights="per_edge")
    g = torch.Generator().manual_seed(0)
    n = data.num_nodes
    y0 = 0.1 * torch.randn(batch, n, generator=g)
    mask = data.input_mask.float()
    # a drifting grating-like drive: phase per column position, one speed per sample
    phase = (data.pos[:, 0] * 2.0).unsqueeze(0) + torch.rand(batch, 1, generator=g) * 6.28
    speed = (1.0 + torch.rand(batch, 1, generator=g)) * 3.0

    def drive(t):
        return mask * torch.sin(speed * t.reshape(-1, 1) + phase)

    out_idx = data.output_mask.nonzero().flatten()

    def step(T: float):
        t_eval = torch.linspace(T / 10, T, 10)
        sol = solve(dyn, y0, (0.0, T), args=(drive,), t_eval=t_eval, rtol=tol, atol=tol, gradient=method)
        loss = sol.ys[:, :, out_idx].square().mean()
        loss.backward()
        dyn.zero_grad(set_to_none=True)
        return sol.stats

    step(0.1)  # warm-up: kernels, caches, the layer's index structure
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _status("VmRSS:")
    t0 = time.perf_counter()
    st = step(T)
    seconds = time.perf_counter() - t0
    return dict(
        method=method, T=T, neurons=n, synapses=int(data.edge_index.size(1)), seconds=seconds,
        peak_rise=_status("VmHWM:") - base, base=base, steps=st.n_steps, accepted=st.n_accepted,
        f_fwd=st.n_f_evals, f_bwd=st.backward_f_evals, segments=st.segments,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extent", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", default="csr")
    ap.add_argument("--lengths", default="1,3,10")
    ap.add_argument("--methods", default="autodiff,checkpoint,adjoint")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = ap.parse_args()
    if args.case:
        method, T = args.case.split(":")
        res = run_case(method, float(T), args.extent, args.batch, args.tol, args.threads, args.backend)
        print(json.dumps(res))
        return

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(REPO))
    rows = []
    for method in args.methods.split(","):
        for T in args.lengths.split(","):
            cmd = [sys.executable, __file__, "--case", f"{method}:{T}", "--extent", str(args.extent),
                   "--batch", str(args.batch), "--tol", str(args.tol), "--threads", str(args.threads),
                   "--backend", args.backend]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                print(f"{method} T={T} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  done {method:10s} T={T:>3s}  {r['seconds']:.1f} s", file=sys.stderr, flush=True)

    r0 = rows[0]
    print(
        f"\nfly_visual_system({args.extent}): {r0['neurons']:,} neurons, {r0['synapses']:,} synapses; "
        f"B = {args.batch}, relu, dopri5 rtol = atol = {args.tol:g}, backend {args.backend}, "
        f"{args.threads} threads, float32; T in units of τ; checkpoint/adjoint with 8 segments.\n"
        "Peak = rise of resident memory during one training step (forward solve + backward).\n"
    )
    print("| gradient | T/τ | steps (accepted) | f-evals fwd | f-evals bwd | time / step (s) | peak memory (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['T']:g} | {r['steps']} ({r['accepted']}) | {r['f_fwd']} | {r['f_bwd']} | "
            f"{r['seconds']:.2f} | {r['peak_rise'] / 2**20:.1f} |"
        )


if __name__ == "__main__":
    main()
