"""Where a training step of the MNIST classifier spends its time, on the GPU.

Builds the model exactly as ``graphode train`` does (``ConnectomeClassifier.from_config``),
optionally loads a trained checkpoint (a trained network takes more solver steps than a
fresh one), and times full training steps (forward solve, readout, loss, backward, Adam)
on real MNIST batches with each speed-up switched off and on, side by side in one run:

- ``contracted pool``: the readout's sum/mean pool computed by contraction
  (``PooledReadout._pool_linear``) instead of ``[B, M, H]`` features and PyG's scatter;
- ``derived once``: synaptic weights, τ and b derived once per solve
  (``VectorField.derive``, see :mod:`graphode.field`) instead of at every function
  evaluation;
- ``separate stages``: graphode's Runge–Kutta steps (:mod:`graphode.runge_kutta`: stages
  as separate tensors, error estimate and step-size decision without autograd history)
  instead of torchode's;
- ``node-major``: the ``[B, N]`` state stored node-major (:mod:`graphode._layout`), so
  that the sparse product needs no transposes, instead of row-major;
- ``fused combinations``: each Runge–Kutta stage input computed by one Triton kernel
  forward and one backward (``graphode.kernels.FusedCombination``) instead of one torch
  kernel per term;
- ``fused leaky``: the field's ``(b - v + a + u) / τ`` in one Triton kernel forward and one
  backward (``graphode.kernels.LeakyIntegrator``) instead of four torch ops, two of them
  broadcasting per-neuron vectors.

Then ``torch.profiler`` tables of the CUDA kernels of the variants in ``PROFILED``.

    python benchmarks/profile_train_step.py --extent 15 --batch 256 --hidden 128 \\
        --checkpoint runs/fly15/checkpoint.pt --out profile.md
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch
import torch.nn.functional as F
import torchode

from graphode.datasets import load_mnist
from graphode.models import ConnectomeClassifier
from graphode.training import load_checkpoint
from graphode.solvers import Dopri5, Method


def step_timings(model, images, labels, steps: int) -> dict:
    """Median seconds of each phase over ``steps`` training steps (after two warm-ups)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # small: keep the network as loaded
    rows = []
    for k in range(steps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        sol = model.simulate(images)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        logits = model.readout(sol.ys, model.output_mask, model.cell_type, model.pos)
        loss = F.cross_entropy(logits, labels)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        opt.step()
        torch.cuda.synchronize()
        t4 = time.perf_counter()
        if k >= 2:
            rows.append((t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3, sol.stats.n_f_evals))
        if k == 1:
            torch.cuda.reset_peak_memory_stats()
    med = [statistics.median(col) for col in zip(*rows)]
    return {"step": med[0], "solve": med[1], "readout": med[2], "backward": med[3], "adam": med[4],
            "f_evals": int(med[5]), "peak_gb": torch.cuda.max_memory_allocated() / 1e9}


FLAG_NAMES = ("contracted pool", "derived once", "separate stages", "node-major", "fused combinations", "fused leaky")
VARIANTS = [  # flags in FLAG_NAMES order
    (False, False, False, False, False, False),
    (True, False, False, False, False, False),
    (False, True, False, False, False, False),
    (True, True, False, False, False, False),
    (True, True, True, False, False, False),
    (True, True, False, True, False, False),
    (True, True, True, True, False, False),
    (True, True, True, True, True, False),
    (True, True, True, True, False, True),
    (True, True, True, True, True, True),
]
PROFILED = [(True, True, True, True, False, False), (True, True, True, True, True, True)]


class TorchodeDopri5(Method):
    """torchode's own Dopri5 step (stages in one buffer), for the ``separate stages`` rows."""

    name, adaptive, _step_class = "dopri5", True, torchode.Dopri5


def set_variant(model, contracted_pool: bool, derived_once: bool, separate_stages: bool = True,
                node_major: bool = True, fused_combinations: bool = False, fused_leaky: bool = False) -> None:
    """Switch the speed-ups of ``model`` (a ConnectomeClassifier): strategies by passing
    objects (the method and its fusion policy, the dynamics' fusion policy), the rest by
    instance attributes; only the node-major layout, which has no switch, is swapped in the
    modules that use it."""
    from graphode import dynamics as dynamics_module, runge_kutta, solvers
    from graphode._layout import node_major as graphode_node_major, node_major_grad as graphode_node_major_grad

    ro, dyn = model.readout, model.dynamics
    fuse = None if fused_combinations else False
    model.solver_options["method"] = Dopri5(fuse=fuse) if separate_stages else TorchodeDopri5(fuse=fuse)
    dyn.fuse = None if fused_leaky else False
    identity = lambda v: v  # noqa: E731
    solvers.node_major = dynamics_module.node_major = graphode_node_major if node_major else identity
    solvers.node_major_grad = runge_kutta.node_major_grad = graphode_node_major_grad if node_major else identity
    ro.__dict__.pop("_pool_linear", None)
    dyn.__dict__.pop("derive", None)
    dyn.__dict__.pop("evaluate", None)
    if not contracted_pool:
        def generic_pool(features, gate):
            h = ro.activity(features) * gate
            index = torch.zeros(h.size(1), dtype=torch.long, device=h.device)
            return ro.aggr(h, index=index, dim_size=1, dim=1).squeeze(1)

        ro._pool_linear = generic_pool
    if not derived_once:  # every evaluation derives the weights, τ and b again
        derive, evaluate = type(dyn).derive.__get__(dyn), type(dyn).evaluate.__get__(dyn)
        dyn.derive = lambda inputs: None
        dyn.evaluate = lambda t, v, inputs, derived: evaluate(t, v, inputs, derive(inputs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--extent", type=int, default=15)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--checkpoint", default=None, help="a graphode train checkpoint.pt to load the trained model from")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="rounds over all variants; the table shows medians")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    assert torch.cuda.is_available(), "this profile needs a GPU"
    out = []

    def emit(line=""):
        print(line, flush=True)
        out.append(line)

    if args.checkpoint:
        state = load_checkpoint(args.checkpoint)  # tensors and plain data only, checksum verified
        config = state["model_config"]
        model = ConnectomeClassifier.from_config(config)
        model.load_state_dict(state["model"])
    else:
        config = {"connectome": {"name": "fly_visual_system", "extent": args.extent}, "hidden": args.hidden}
        model = ConnectomeClassifier.from_config(config)
    model = model.cuda()
    images, labels = load_mnist("train", limit=args.batch)
    images, labels = images.cuda(), labels.cuda()
    emit(f"# Training-step profile\n\n{datetime.date.today()} · {torch.cuda.get_device_name()} · torch {torch.__version__}"
         f" · {model.num_nodes} neurons · B = {args.batch} · hidden {model.config['hidden']} · "
         f"{'trained checkpoint' if args.checkpoint else 'fresh model'} · median of {args.steps} steps,"
         f" then of {args.repeats} interleaved rounds\n")
    emit("| " + " | ".join(FLAG_NAMES) + " | step s | solve s | readout s | backward s | Adam s | f-evals | peak GB |")
    emit("|---" * (len(FLAG_NAMES) + 7) + "|")
    # Every variant starts from the same weights: the timed Adam steps change the network.
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    yes_no = {True: "yes", False: "no"}
    # Variants take turns, `repeats` rounds: a single pass per variant was off by up to 15%
    # (a slow spell of the GPU lands on whichever variant runs then); each cell is the
    # median over the rounds.
    rounds = {variant: [] for variant in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            model.load_state_dict(initial)
            set_variant(model, *variant)
            torch.cuda.empty_cache()
            rounds[variant].append(step_timings(model, images, labels, args.steps))
    for variant in VARIANTS:
        r = {key: statistics.median(run[key] for run in rounds[variant]) for key in rounds[variant][0]}
        r["f_evals"] = int(r["f_evals"])
        flags = " | ".join(yes_no[v] for v in variant)
        emit(f"| {flags} | {r['step']:.3f} | {r['solve']:.3f} |"
             f" {r['readout']:.3f} | {r['backward']:.3f} | {r['adam']:.4f} | {r['f_evals']} | {r['peak_gb']:.1f} |")
    set_variant(model, *VARIANTS[-1])
    with torch.no_grad():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(images)
        torch.cuda.synchronize()
    emit(f"\nEvaluation forward (no gradients), B = {args.batch}: {time.perf_counter() - t0:.3f} s\n")

    from torch.profiler import ProfilerActivity, profile

    for variant in PROFILED:
        set_variant(model, *variant)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            loss = F.cross_entropy(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            torch.cuda.synchronize()
        flags = ", ".join(f"{name} {yes_no[v]}" for name, v in zip(FLAG_NAMES, variant))
        emit(f"## CUDA kernels of one step ({flags})\n")
        emit("```")
        emit(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70))
        emit("```")
    # The last variant's operators with their input shapes: which torch op (and which
    # operand shapes: a broadcast, a transposed copy) a slow kernel belongs to.
    emit("\n## Operators of that step, by input shapes\n")
    emit("```")
    emit(prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=40, max_shapes_column_width=90))
    emit("```")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
