"""Solver work against accuracy: which method and tolerance give a training step's accuracy
for the fewest vector-field evaluations.

The model is the MNIST classifier as ``graphode train`` builds it
(``ConnectomeClassifier.from_config``, the fly visual system at ``--extent``), fresh or
loaded from a trained ``--checkpoint``, on the first ``--batch`` MNIST test images. The
reference is the same model and images in float64, Dopri5 at ``rtol = atol = --ref-tol``
(its gradient through ``Checkpoint``, so that a tight solve fits in memory); a second
float64 solve at ``100 · --ref-tol`` bounds the reference's own error.

Each case is one float32 training step with the model's gradient method (autodiff by
default): Dopri5 and Tsit5 with graphode's integral controller at each ``--tols``, the same
with torchode's PI controller (``pcoeff = 0.4, icoeff = 0.3``: the β₁ = 0.7/p, β₂ = 0.4/p
PI controller of Hairer and of OrdinaryDiffEq's Tsit5; a benchmark-only controller, not
part of graphode's API) and, for context, Heun and Euler at ``--fixed-steps`` fixed steps.
Per case:

- f-evals: vector-field evaluations of the forward solve (``Solution.stats.n_f_evals``,
  shared by the batch) and of forward + backward (the backward's vector-Jacobian products
  through the field, counted as they run);
- errors against the reference: the largest per-sample relative L2 error of the recorded
  states ``[T, N]`` and of the logits ``[C]``, the relative L2 error of the loss gradient
  over all parameters and over the dynamics' parameters (synapses, τ, b) alone, and the
  share of samples whose predicted class (argmax) is the reference's;
- seconds of the forward solve and of the whole step (forward, readout, loss, backward),
  medians over ``--repeats``.

The all-parameter gradient is mostly the readout's; the dynamics' gradient converges slowly
with the tolerance (ReLU kinks: against a float64 solve at 1e-11, 0.9% off at 1e-8, 0.2% at
1e-10 on the CPU model), so its column is good to about the reference's own error, printed
above the table.

The table goes to ``--out`` (markdown, written atomically) under a summary of the cheapest
cases that reach a gradient error of 1e-2 and 1e-3 and the reference's prediction on 99.9%
of the images; a plot of the errors against the f-evals (one line per method) beside it as
``.png``.

    python benchmarks/bench_solvers.py --device cpu --extent 4 --batch 16 --ref-tol 1e-9 \\
        --out benchmarks/results/bench_solvers_cpu_extent4.md
    python benchmarks/bench_solvers.py --device cuda --extent 15 --batch 256 --repeats 3 \\
        --out benchmarks/results/bench_solvers_h200_extent15.md [--checkpoint runs/fly15/checkpoint.pt]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchode
from torch import Tensor
from timing import sync  # benchmarks/timing.py, beside this script

from graphode import solvers
from graphode._atomic import atomic_write
from graphode.datasets import load_mnist
from graphode.gradients import Checkpoint
from graphode.models import ConnectomeClassifier
from graphode.solvers import Adaptive, Dopri5, Euler, FixedStep, Heun, Method, SolverError, Tsit5
from graphode.training import load_checkpoint

TOLS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5)
FIXED_STEPS = (8, 16, 32, 64)  # powers of two: float32 times add up to t_end exactly (40 steps of 0.025 take a 41st)
PI = dict(pcoeff=0.4, icoeff=0.3, dcoeff=0.0)  # Hairer's PI controller for 5th-order methods
DEFAULT_CASE = ("dopri5", "1e-03")  # the training default: Dopri5 at rtol = atol = 1e-3


# -- a PI controller for the benchmark only ----------------------------------------------------
class _NoGradPID(torchode.PIDController):
    """torchode's PID controller deciding without autograd history, as graphode's
    ``IntegralController`` does (the step sizes are constants to the gradient)."""

    def adapt_step_size(self, t0, dt, y0, step_result, state, stats):
        with torch.no_grad():
            return super().adapt_step_size(t0, dt, y0, step_result, state, stats)


@dataclass(frozen=True)
class _PIDAdaptive(Adaptive):
    """``Adaptive`` whose ``build`` gives torchode's PID controller (same safety factor 0.9
    and step-factor limits 0.2 … 10 as the integral controller); ``pcoeff = 0, icoeff = 1,
    dcoeff = 0`` is the integral controller itself.

    Shapes:
        as :class:`graphode.solvers.Adaptive`.
    """

    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0

    def build(self, term, b: int, dtype: torch.dtype, device) -> tuple:
        dt0 = None if self.dt0 is None else torch.full((b,), self.dt0, dtype=dtype, device=device)
        controller = _NoGradPID(self.atol, self.rtol, self.pcoeff, self.icoeff, self.dcoeff, term=term)
        return controller.to(device), dt0


# -- counting the backward's evaluations -------------------------------------------------------
@contextlib.contextmanager
def counting_vjps():
    """Count the vector-Jacobian products through the vector field that backward computes.

    Every evaluation of a solve passes through ``graphode.solvers.node_major_grad`` (the
    torchode term of :func:`graphode.solvers.integrate`); a hook on its output runs when
    backward reaches that evaluation. Yields a one-element list holding the count.

    Shapes:
        no tensors.
    """
    count = [0]
    original = solvers.node_major_grad

    def hooked(v: Tensor) -> Tensor:
        v = original(v)
        if torch.is_grad_enabled() and v.requires_grad:
            v.register_hook(lambda grad: count.__setitem__(0, count[0] + 1))
        return v

    solvers.node_major_grad = hooked
    try:
        yield count
    finally:
        solvers.node_major_grad = original


# -- errors ------------------------------------------------------------------------------------
def max_relative_error(x: Tensor, reference: Tensor) -> float:
    """The largest per-sample relative L2 error of ``x [B, ...]`` against ``reference [B, ...]``."""
    ref = reference.double().flatten(1)
    diff = x.double().flatten(1).to(ref.device) - ref
    return float((diff.norm(dim=1) / ref.norm(dim=1).clamp_min(1e-300)).max())


def relative_error(x: Tensor, reference: Tensor) -> float:
    """``‖x - reference‖ / ‖reference‖`` over all entries (flat vectors ``[P]``)."""
    ref = reference.double()
    return float((x.double().to(ref.device) - ref).norm() / ref.norm().clamp_min(1e-300))


# -- one training step -------------------------------------------------------------------------
@dataclass
class Case:
    """One solver setting: ``label`` names the line in the plot, ``setting`` the row."""

    label: str
    setting: str
    method: Method
    controller: Adaptive | FixedStep


def step(model: ConnectomeClassifier, images: Tensor, labels: Tensor, **options) -> dict:
    """One training step's forward and backward with solver ``options``: the recorded states
    ``[B, T, N]``, logits ``[B, C]``, the gradients (all parameters, dynamics only, flat),
    evaluation counts and seconds."""
    device = images.device
    model.zero_grad(set_to_none=True)
    with counting_vjps() as vjps:
        sync(device)
        t0 = time.perf_counter()
        sol = model.simulate(images, **options)
        sync(device)
        t1 = time.perf_counter()
        logits = model.readout(sol.ys, model.output_mask, model.cell_type, model.pos)
        F.cross_entropy(logits, labels).backward()
        sync(device)
        t2 = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    grad = torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten() for p in params])
    dyn = [p for p in model.dynamics.parameters() if p.requires_grad]
    dyn_grad = torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten() for p in dyn])
    stats = sol.stats
    return dict(
        ys=sol.ys.detach(), logits=logits.detach(), grad=grad, dyn_grad=dyn_grad, f_evals=stats.n_f_evals,
        backward_evals=vjps[0] + stats.backward_f_evals, steps=stats.n_steps, rejected=stats.n_rejected,
        forward_s=t1 - t0, step_s=t2 - t0,
    )


def cases(tols, fixed_steps, t_end: float, pi: bool) -> list[Case]:
    out = []
    for name, method in (("dopri5", Dopri5), ("tsit5", Tsit5)):
        out += [Case(name, f"{tol:.0e}", method(), Adaptive(rtol=tol, atol=tol)) for tol in tols]
        if pi:
            out += [Case(f"{name} + PI", f"{tol:.0e}", method(), _PIDAdaptive(rtol=tol, atol=tol, **PI)) for tol in tols]
    for name, method in (("heun", Heun), ("euler", Euler)):
        out += [Case(name, f"{n} steps", method(), FixedStep(t_end / n)) for n in fixed_steps]
    return out


# -- output ------------------------------------------------------------------------------------
def fewest(rows: list[dict], ok) -> dict | None:
    """The row with the fewest forward + backward evaluations among those where ``ok(row)``."""
    good = [r for r in rows if "error" not in r and ok(r)]
    return min(good, key=lambda r: (r["total_evals"], r["f_evals"])) if good else None


def summary(rows: list[dict]) -> str:
    default = next((r for r in rows if (r["label"], r["setting"]) == DEFAULT_CASE and "error" not in r), None)

    def describe(r: dict | None) -> str:
        if r is None:
            return "none of the cases"
        return (f"{r['label']} at {r['setting']} ({r['f_evals']} forward, {r['total_evals']} forward + backward "
                f"evaluations; gradient error {r['grad_err']:.1e}, agreement {100 * r['agree']:.1f}%)")

    parts = [
        f"Fewest evaluations for a gradient error ≤ 1e-2: {describe(fewest(rows, lambda r: r['grad_err'] <= 1e-2))}",
        f"for ≤ 1e-3: {describe(fewest(rows, lambda r: r['grad_err'] <= 1e-3))}",
        f"for the reference's prediction on ≥ 99.9% of the images: {describe(fewest(rows, lambda r: r['agree'] >= 0.999))}",
    ]
    text = "; ".join(parts) + "."
    if default is not None:
        text += f" The training default, {describe(default)}."
    return text


def plot(path: Path, rows: list[dict], title: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(12, 4), layout="tight")
    axes = fig.subplots(1, 3)
    panels = (("grad_err", "gradient (all parameters)"), ("logit_err", "logits"), ("state_err", "recorded states"))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    for ax, (key, name) in zip(axes, panels):
        for label in labels:
            pts = sorted((r["total_evals"], r[key]) for r in rows if r["label"] == label and "error" not in r)
            if pts:
                ax.plot(*zip(*pts), "o-" if "PI" not in label else "s--", label=label, ms=4)
        ax.set(xscale="log", yscale="log", xlabel="f-evals, forward + backward", ylabel="relative error", title=name)
        ax.grid(alpha=0.3, which="both")
        ax.xaxis.set_minor_formatter(NullFormatter())  # log-axis minor labels overlap
    axes[0].axhline(1e-3, color="grey", ls=":")
    axes[0].axhline(1e-2, color="grey", ls=":")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--extent", type=int, default=None, help="fly visual system extent (default 4; a checkpoint's own)")
    p.add_argument("--hidden", type=int, default=None, help="readout width (default: the model config's)")
    p.add_argument("--checkpoint", default=None, help="a graphode train checkpoint.pt to load the trained model from")
    p.add_argument("--batch", type=int, default=16, help="MNIST test images (the first ones)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tols", type=float, nargs="+", default=list(TOLS), help="rtol = atol of the adaptive cases")
    p.add_argument("--fixed-steps", type=int, nargs="+", default=list(FIXED_STEPS), help="step counts of Heun and Euler")
    p.add_argument("--no-pi", action="store_true", help="leave out the PI-controller cases")
    p.add_argument("--ref-tol", type=float, default=1e-10, help="rtol = atol of the float64 reference")
    p.add_argument("--ref-segments", type=int, default=32, help="Checkpoint segments of the reference's gradient")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per case (medians)")
    p.add_argument("--out", default=None, help="markdown table; the plot goes beside it as .png")
    args = p.parse_args()
    if args.batch < 1 or args.repeats < 1:
        raise SystemExit(f"--batch and --repeats must be >= 1, got {args.batch} and {args.repeats}")
    device = torch.device(args.device)
    from tqdm.auto import tqdm

    if args.checkpoint:
        state = load_checkpoint(args.checkpoint)  # tensors and plain data only, checksum verified
        config = dict(state["model_config"])
        extent = config.get("connectome", {}).get("extent")
        if args.extent is not None and args.extent != extent:
            raise SystemExit(f"--extent {args.extent} differs from the checkpoint's connectome {config['connectome']}")
        if args.hidden is not None:
            raise SystemExit("--hidden: the checkpoint fixes the readout width")
        model = ConnectomeClassifier.from_config(config)
        model.load_state_dict(state["model"])
    else:
        config = {"connectome": {"name": "fly_visual_system", "extent": 4 if args.extent is None else args.extent}}
        if args.hidden is not None:
            config["hidden"] = args.hidden
        torch.manual_seed(0)
        model = ConnectomeClassifier.from_config(config)
    model = model.to(device).float()
    images, labels = load_mnist("test", limit=args.batch)
    images, labels = images.to(device), labels.to(device)
    t_end = float(model.config["t_end"])
    gradient = model.solver_options["gradient"]

    # The reference: float64, Dopri5 at ref_tol, gradient by Checkpoint (memory independent of the steps).
    reference_model = copy.deepcopy(model).double()
    ref_options = dict(method=Dopri5(), gradient=Checkpoint(args.ref_segments), max_steps=args.max_steps)
    t0 = time.perf_counter()
    ref = step(reference_model, images.double(), labels, controller=Adaptive(rtol=args.ref_tol, atol=args.ref_tol), **ref_options)
    ref_seconds = time.perf_counter() - t0
    check = step(reference_model, images.double(), labels, controller=Adaptive(rtol=100 * args.ref_tol, atol=100 * args.ref_tol),
                 **ref_options)
    ref_errors = dict(state=max_relative_error(check["ys"], ref["ys"]), logits=max_relative_error(check["logits"], ref["logits"]),
                      grad=relative_error(check["grad"], ref["grad"]), dyn=relative_error(check["dyn_grad"], ref["dyn_grad"]))
    if check["f_evals"] == ref["f_evals"]:
        print(f"warning: the reference at {args.ref_tol:g} and at {100 * args.ref_tol:g} took the same steps (its "
              f"{args.ref_segments} segments bound them), so their difference says nothing: tighten --ref-tol or lower "
              "--ref-segments", flush=True)
    del reference_model
    ref_pred = ref["logits"].argmax(1)
    print(f"reference: {ref['f_evals']} forward evaluations, {ref_seconds:.1f} s; at {100 * args.ref_tol:g}: "
          f"state {ref_errors['state']:.1e}, logits {ref_errors['logits']:.1e}, gradient {ref_errors['grad']:.1e} "
          f"(dynamics {ref_errors['dyn']:.1e}) off", flush=True)

    step(model, images, labels, method=Dopri5(), controller=Adaptive(rtol=1e-2, atol=1e-2), max_steps=args.max_steps)  # warm-up
    rows = []
    for case in tqdm(cases(args.tols, args.fixed_steps, t_end, not args.no_pi), desc="cases"):
        row = dict(label=case.label, setting=case.setting)
        options = dict(method=case.method, controller=case.controller, max_steps=args.max_steps)
        try:
            runs = [step(model, images, labels, **options) for _ in range(args.repeats)]
        except (SolverError, torch.cuda.OutOfMemoryError) as exc:
            row["error"] = "out of memory" if isinstance(exc, torch.cuda.OutOfMemoryError) else str(exc).split(":")[0]
            rows.append(row)
            torch.cuda.empty_cache() if device.type == "cuda" else None
            continue
        r = runs[0]
        row.update(
            f_evals=r["f_evals"], total_evals=r["f_evals"] + r["backward_evals"], steps=r["steps"], rejected=r["rejected"],
            state_err=max_relative_error(r["ys"], ref["ys"]), logit_err=max_relative_error(r["logits"], ref["logits"]),
            grad_err=relative_error(r["grad"], ref["grad"]), dyn_grad_err=relative_error(r["dyn_grad"], ref["dyn_grad"]),
            agree=float((r["logits"].argmax(1) == ref_pred).double().mean()),
            forward_s=statistics.median(x["forward_s"] for x in runs), step_s=statistics.median(x["step_s"] for x in runs),
        )
        rows.append(row)

    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    title = (f"fly visual system extent {model.config['connectome'].get('extent')} ({model.num_nodes} neurons), "
             f"B = {args.batch} MNIST test images, {'trained checkpoint' if args.checkpoint else 'fresh model (seed 0)'}")
    lines = [
        "# Solver work against accuracy\n",
        summary(rows) + "\n",
        f"{datetime.date.today()} · {hardware} · torch {torch.__version__} · {title} · float32, gradient "
        f"{type(gradient).__name__} · hidden {model.config['hidden']}, t_end {t_end:g}, τ {model.config['tau']:g} at start.\n",
        f"Reference: float64, Dopri5 at rtol = atol = {args.ref_tol:g} ({ref['f_evals']} forward evaluations, gradient by "
        f"Checkpoint({args.ref_segments})); the same at {100 * args.ref_tol:g} is off it by {ref_errors['state']:.1e} (states), "
        f"{ref_errors['logits']:.1e} (logits), {ref_errors['grad']:.1e} (gradient), {ref_errors['dyn']:.1e} (dynamics' gradient).\n",
        "Columns: f-evals of the forward solve and of forward + backward (the backward's vector-Jacobian products "
        "through the field, counted); steps (rejected); the largest per-sample relative L2 error of the recorded states "
        "and of the logits; the relative L2 error of the loss gradient over all parameters and over the dynamics' "
        f"(synapses, τ, b); the share of images whose argmax is the reference's; seconds (median of {args.repeats}). "
        f"'+ PI': torchode's PID controller with pcoeff {PI['pcoeff']}, icoeff {PI['icoeff']}, dcoeff {PI['dcoeff']} "
        "instead of graphode's integral controller.\n",
        f"Command: `python {' '.join(sys.argv)}`\n",
        "| method | rtol = atol / steps | f-evals fwd | f-evals fwd + bwd | steps (rejected) | states err | logits err "
        "| grad err | dynamics grad err | argmax agree | forward s | step s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | {r['setting']} | {r['error']} |" + " |" * 9)
            continue
        lines.append(
            f"| {r['label']} | {r['setting']} | {r['f_evals']} | {r['total_evals']} | {r['steps']} ({r['rejected']}) "
            f"| {r['state_err']:.1e} | {r['logit_err']:.1e} | {r['grad_err']:.1e} | {r['dyn_grad_err']:.1e} "
            f"| {100 * r['agree']:.1f}% | {r['forward_s']:.3f} | {r['step_s']:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if args.out:
        out = Path(args.out)
        atomic_write(out, lambda fh: fh.write(text.encode()))
        try:
            plot(out.with_suffix(".png"), rows, title)
        except ImportError as exc:
            print(f"no plot: {exc}")


if __name__ == "__main__":
    main()
