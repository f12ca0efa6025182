"""The MNIST classifier's training step, this checkout against another revision, in one run.

Each revision runs in its own process (``PYTHONPATH`` points at its package), the
revisions taking turns for ``--rounds`` rounds, so a slow spell of the GPU does not land on
one of them; each process times ``--steps`` full training steps (forward solve, readout,
loss, backward, Adam) of ``ConnectomeClassifier.from_config`` at the fly visual system's
full extent after two warm-up steps, on the same random images, and reports the median.
The table gives the medians over the rounds and the ratio to the baseline.

    git archive REV graphode | tar -x -C /tmp/baseline      # the baseline's package
    python benchmarks/bench_revisions.py --baseline /tmp/baseline --out results.md

Several baselines (``--baseline A B ...``, each row named by its folder) measure a series
of changes one by one and together in the same run; ratios are to the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    import torch
    import torch.nn.functional as F

    from graphode.models import ConnectomeClassifier

    torch.manual_seed(0)
    config = {
        "connectome": {"name": "fly_visual_system", "extent": args.extent}, "hidden": args.hidden,
        "rtol": args.tol, "atol": args.tol, "backend": args.backend, "gradient": args.gradient[0],
    }
    model = ConnectomeClassifier.from_config(config).cuda()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(args.batch, 28, 28, generator=g).cuda()
    labels = torch.randint(10, (args.batch,), generator=g).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    times, evals = [], []
    for k in range(args.steps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        if k >= 2:
            times.append(time.perf_counter() - t0)
            stats = model.last_solution.stats
            evals.append(stats.n_f_evals + stats.backward_f_evals)
        if k == 1:
            torch.cuda.reset_peak_memory_stats()
    print(json.dumps({"step": statistics.median(times), "f_evals": evals[-1],
                      "peak_gb": torch.cuda.max_memory_allocated() / 1e9}))


def run_revision(path: Path, args, gradient: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, __file__, "--worker", "--extent", str(args.extent), "--batch", str(args.batch),
           "--hidden", str(args.hidden), "--tol", str(args.tol), "--steps", str(args.steps),
           "--backend", args.backend, "--gradient", gradient]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd="/")
    if done.returncode != 0:
        raise RuntimeError(f"the revision at {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, nargs="+", help="folders holding baseline revisions' graphode packages")
    p.add_argument("--extent", type=int, default=15)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--tol", type=float, default=1e-4, help="rtol = atol of Dopri5")
    p.add_argument("--backend", default="auto")
    p.add_argument("--gradient", nargs="+", default=["autodiff"], help="one row per revision and gradient method")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.baseline or not all((b / "graphode" / "__init__.py").exists() for b in args.baseline):
        p.error("--baseline must name folders with a graphode package inside (see the module docs)")
    revisions = {b.resolve().name: b.resolve() for b in args.baseline}
    if len(revisions) != len(args.baseline) or "this checkout" in revisions:
        p.error("--baseline folders must have different names, other than 'this checkout' (the rows are named by them)")
    revisions["this checkout"] = ROOT
    first = args.baseline[0].resolve().name
    results = {(name, g): [] for g in args.gradient for name in revisions}
    for r in range(args.rounds):
        for (name, gradient), runs in results.items():
            runs.append(run_revision(revisions[name], args, gradient))
            print(f"round {r + 1}: {name}, {gradient}: {runs[-1]}", flush=True)
    lines = [
        f"Training step, fly visual system extent {args.extent}, B = {args.batch}, hidden {args.hidden}, "
        f"Dopri5 rtol = atol = {args.tol:g}, backend {args.backend}; medians of {args.steps} steps, then of "
        f"{args.rounds} interleaved rounds\n",
        f"| revision | gradient | s / step | × {first} | × this checkout's autodiff | f-evals | peak GB | per round (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    median = {key: statistics.median(x["step"] for x in runs) for key, runs in results.items()}
    autodiff = median.get(("this checkout", "autodiff"))
    for (name, gradient), runs in results.items():
        step = median[(name, gradient)]
        versus = "" if autodiff is None else f"{step / autodiff:.2f}"
        lines.append(f"| {name} | {gradient} | {step:.4f} | {step / median[(first, gradient)]:.3f} | {versus} | "
                     f"{runs[-1]['f_evals']} | {max(x['peak_gb'] for x in runs):.1f} | "
                     f"{', '.join('%.4f' % x['step'] for x in runs)} |")
    print("\n".join(lines))
    if args.out:
        from graphode._atomic import atomic_write

        text = ("\n".join(lines) + "\n").encode()
        atomic_write(args.out, lambda fh: fh.write(text))


if __name__ == "__main__":
    main()
