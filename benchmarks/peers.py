"""Peers: other ODE solvers integrating graphode's own vector field, for ``bench_gpu.py``.

Every row trains the same problem: ``BoundDynamics(data, tau=0.2, bias=0.5)`` (one learnable
weight per synapse, ``τ`` and ``b`` per cell type, relu), the drive of ``hex_retina`` from the
same images, the state at ``t = 1`` read by the same MLP readout (same initial parameters),
cross-entropy on the same labels, one Adam step. Rows:

- graphode ``solve`` with ``gradient=autodiff`` (the reference gradient), ``checkpoint`` and
  ``adjoint``;
- torchode ``AutoDiffAdjoint(Dopri5, IntegralController)`` (torchode's own Runge–Kutta step,
  backprop through its step-size control, torchode's default) on graphode's field;
- torchdiffeq ``odeint(method="dopri5")`` and ``odeint_adjoint`` (its ``adjoint_params`` the
  dynamics' parameters, default adjoint options); f-evals counted by a wrapper;
- explicit Euler, ``dt = 0.02`` over ``[0, 1]`` (50 steps), backprop through the unrolled
  loop (plain torch; the fly visual system model's published way);
- diffrax (JAX): the same model written in JAX (a BCOO sparse matrix over the same edges,
  weights from the same parameters), ``Dopri5`` + ``PIDController`` +
  ``RecursiveCheckpointAdjoint``, loss + gradient + an Adam update jitted as one function,
  timed after compilation.

The autodiff rows (graphode autodiff, torchode, torchdiffeq ``odeint``, Euler, diffrax)
derive the weights, ``τ`` and ``b`` from the parameters once per step and evaluate the field
with them; the adjoint rows derive them at every evaluation (each backward evaluation is
differentiated on its own).

Each row: seconds per training step (median of ``repeats`` after one warm-up step), f-evals
(forward + backward evaluations of the field; for rows that backpropagate through the
forward solve the backward pass has none of its own, and diffrax's is reported as
``6·num_steps + 1`` of the forward solve, its recomputations in the backward pass not
counted), peak memory in GB (CUDA only; JAX's ``peak_bytes_in_use`` since the process
started) and ``‖g − g_ref‖ / ‖g_ref‖`` of the first step's gradient against graphode's
autodiff gradient, over the dynamics' parameters and over the readout's. A peer whose
package is missing is a row saying so; an out-of-memory is a row saying so.

Reading the gradient column: with relu the field is not differentiable where a state
crosses 0, and the gradients of different step sequences agree only to about 1e-4
(relative) however tight the tolerance (float64, rtol = atol = 1e-9, fly extent 1: every
Dopri5 row 3e-4 to 5e-4 from graphode's autodiff and from each other); with a smooth
activation (tanh) they converge with the tolerance (1e-9 at 1e-8, ``tests/test_peers.py``).
Differences of 1e-3 to 1e-2 at rtol = 1e-4 are therefore the tolerance, not an error; an
error in a row's field shows as a difference of order one (the diffrax row also checks its
JAX field against graphode's at a random state).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from timing import sync  # benchmarks/timing.py, beside this script

from graphode import solve
from graphode.dynamics import BoundDynamics
from graphode.inputs import hex_retina

DYNAMICS_PARAMETERS = ("synapses.theta", "tau_raw", "bias")  # the order of the gradient vectors
EULER_DT = 0.02


def _empty_cache(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class Problem:
    """The one training problem every row solves (module docs).

    Shapes: ``images [B, H, W]``, ``labels [B]``; the state is ``[B, N]``.
    """

    dynamics: BoundDynamics
    retina: nn.Module
    readout: nn.Module
    images: Tensor
    labels: Tensor
    rtol: float
    atol: float
    initial: dict[str, Tensor]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def parameters(self) -> list[nn.Parameter]:
        return list(self.dynamics.parameters()) + list(self.readout.parameters())

    def named(self) -> dict[str, nn.Parameter]:
        out = {f"dynamics.{k}": p for k, p in self.dynamics.named_parameters()}
        out.update({f"readout.{k}": p for k, p in self.readout.named_parameters()})
        return out

    def restore(self) -> None:
        """Back to the initial parameters (every row starts from them)."""
        with torch.no_grad():
            for name, p in self.named().items():
                p.copy_(self.initial[name])
                p.grad = None

    def drive(self) -> Tensor:
        """``[B, N]`` the retina's drive (no parameters: computed without a graph)."""
        with torch.no_grad():
            return self.retina(self.images)

    def loss(self, v_final: Tensor) -> Tensor:
        return F.cross_entropy(self.readout(v_final), self.labels)

    def gradients(self) -> tuple[Tensor, Tensor]:
        """The current ``.grad`` s as float64 vectors: (dynamics, readout)."""
        named = self.named()
        dyn = [named[f"dynamics.{k}"].grad for k in DYNAMICS_PARAMETERS]
        head = [p.grad for k, p in named.items() if k.startswith("readout.")]
        flat = lambda gs: torch.cat([g.detach().reshape(-1).double().cpu() for g in gs])  # noqa: E731
        return flat(dyn), flat(head)


def make_problem(data, images: Tensor, labels: Tensor, *, rtol: float, atol: float, backend: str = "csr",
                 hidden: int = 256, seed: int = 0) -> Problem:
    """graphode's model on ``data`` (on ``images.device``, in ``images.dtype``) with a seeded
    MLP readout ``N → hidden → 10``.

    Shapes: ``images [B, H, W]``, ``labels [B]``.
    """
    device, dtype = images.device, images.dtype
    data = data.to(device)
    dynamics = BoundDynamics(data, tau=0.2, bias=0.5, backend=backend).to(device, dtype)
    names = tuple(k for k, _ in dynamics.named_parameters())
    if sorted(names) != sorted(DYNAMICS_PARAMETERS):
        raise ValueError(f"the peers expect the dynamics' parameters {DYNAMICS_PARAMETERS}, got {names}")
    retina = hex_retina(data, tuple(images.shape[1:])).to(device, dtype)
    n = int(data.num_nodes)
    torch.manual_seed(seed)
    readout = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, 10)).to(device, dtype)
    problem = Problem(dynamics, retina, readout, images, labels, rtol, atol, {})
    problem.initial = {k: p.detach().clone() for k, p in problem.named().items()}
    return problem


# -- the rows: each `step()` runs forward, loss and backward and returns its f-evals ----------
class CountingField(nn.Module):
    """``f(t, y)`` for torchdiffeq: graphode's field on a fixed drive, counting its calls.

    With ``derived`` the weights, ``τ`` and ``b`` are those tensors (autodiff through the
    solve); without, they are derived from the parameters at every call (the adjoint).

    Shapes: forward(t scalar or ``[B]``, y ``[B, N]``) → ``[B, N]``.
    """

    def __init__(self, dynamics: BoundDynamics, drive: Tensor, derived=None):
        super().__init__()
        self.dynamics = dynamics
        self.inputs = dynamics.prepare(drive)
        self.derived = derived
        self.calls = 0

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        derived = self.derived if self.derived is not None else self.dynamics.derive(self.inputs)
        return self.dynamics.evaluate(t.reshape(-1).expand(y.size(0)), y, self.inputs, derived)


def graphode_row(problem: Problem, gradient: str) -> Callable[[], int]:
    def step() -> int:
        v0 = problem.images.new_zeros(problem.images.size(0), problem.dynamics.num_nodes)
        sol = solve(problem.dynamics, v0, (0.0, 1.0), args=(problem.drive(),), rtol=problem.rtol, atol=problem.atol,
                    gradient=gradient, max_steps=100_000)
        problem.loss(sol.ys[:, -1]).backward()
        return sol.stats.n_f_evals + sol.stats.backward_f_evals

    return step


def torchode_row(problem: Problem) -> Callable[[], int]:
    import torchode as to

    def step() -> int:
        dyn = problem.dynamics
        inputs = dyn.prepare(problem.drive())
        derived = dyn.derive(inputs)
        term = to.ODETerm(lambda t, y: dyn.evaluate(t, y, inputs, derived))
        solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=problem.atol, rtol=problem.rtol, term=term))
        b = problem.images.size(0)
        v0 = problem.images.new_zeros(b, dyn.num_nodes)
        t = torch.tensor([0.0, 1.0], device=problem.device, dtype=v0.dtype).expand(b, 2)
        sol = solver.solve(to.InitialValueProblem(y0=v0, t_eval=t))
        if not bool((sol.status == 0).all()):
            raise RuntimeError(f"torchode's solve failed (status {sol.status.tolist()})")
        problem.loss(sol.ys[:, -1]).backward()
        return int(sol.stats["n_f_evals"].max())

    return step


def torchdiffeq_row(problem: Problem, adjoint: bool) -> Callable[[], int]:
    import torchdiffeq

    def step() -> int:
        dyn = problem.dynamics
        drive = problem.drive()
        field = CountingField(dyn, drive) if adjoint else CountingField(dyn, drive, dyn.derive(dyn.prepare(drive)))
        v0 = problem.images.new_zeros(problem.images.size(0), dyn.num_nodes)
        t = torch.tensor([0.0, 1.0], device=problem.device, dtype=v0.dtype)
        options = dict(method="dopri5", rtol=problem.rtol, atol=problem.atol)
        if adjoint:
            ys = torchdiffeq.odeint_adjoint(field, v0, t, adjoint_params=tuple(dyn.parameters()), **options)
        else:
            ys = torchdiffeq.odeint(field, v0, t, **options)
        problem.loss(ys[-1]).backward()
        return field.calls

    return step


def euler_row(problem: Problem, dt: float = EULER_DT) -> Callable[[], int]:
    steps = round(1.0 / dt)

    def step() -> int:
        dyn = problem.dynamics
        inputs = dyn.prepare(problem.drive())
        derived = dyn.derive(inputs)
        b = problem.images.size(0)
        v = problem.images.new_zeros(b, dyn.num_nodes)
        for k in range(steps):
            t = v.new_full((b,), k * dt)
            v = v + dt * dyn.evaluate(t, v, inputs, derived)
        problem.loss(v).backward()
        return steps

    return step


def measure_torch(problem: Problem, step: Callable[[], int], reference: tuple[Tensor, Tensor] | None,
                  repeats: int = 3) -> dict:
    """Time ``step`` as a training step (Adam, lr 1e-3) from the initial parameters; the
    gradient of its first call is compared with ``reference``."""
    device = problem.device
    problem.restore()
    try:
        step()  # the gradient at the initial parameters (and the warm-up)
        grads = problem.gradients()
        opt = torch.optim.Adam(problem.parameters(), lr=1e-3)
        opt.step()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times, nfe = [], 0
        for _ in range(repeats):
            opt.zero_grad()
            sync(device)
            t0 = time.perf_counter()
            nfe = step()
            opt.step()
            sync(device)
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
        row = {"seconds": statistics.median(times), "f_evals": nfe, "peak_gb": peak, "grads": grads}
    except torch.OutOfMemoryError:
        row = {"note": "out of memory"}
    finally:
        problem.restore()
        _empty_cache(device)
    if reference is not None and "grads" in row:
        row.update(relative_differences(row["grads"], reference))
    return row


def relative_differences(grads: tuple[Tensor, Tensor], reference: tuple[Tensor, Tensor]) -> dict:
    """``‖g − g_ref‖ / ‖g_ref‖`` over the dynamics' parameters and over the readout's."""
    out = {}
    for key, g, r in zip(("grad_dynamics", "grad_readout"), grads, reference):
        out[key] = float((g - r).norm() / r.norm().clamp_min(1e-300))
    return out


# -- diffrax ---------------------------------------------------------------------------------
def diffrax_row(problem: Problem, reference: tuple[Tensor, Tensor] | None, repeats: int = 3) -> dict:
    """The same problem in JAX, solved by diffrax (module docs); the whole training step jitted."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch
    try:
        import jax
        import jax.numpy as jnp
        from jax.experimental import sparse as jsparse
        import diffrax
    except ImportError as err:
        return {"note": f"not installed ({err.name})"}
    import numpy as np

    _empty_cache(problem.device)
    jax.config.update("jax_default_matmul_precision", "highest")  # as torch with TF32 off
    platform = "gpu" if problem.device.type == "cuda" else "cpu"
    try:
        jdev = jax.devices(platform)[0]
    except RuntimeError:
        return {"note": f"JAX has no {platform} device"}
    if problem.images.dtype == torch.float64 and not jax.config.jax_enable_x64:
        return {"note": "float64 needs jax_enable_x64"}

    def to_jax(t: Tensor):
        return jax.device_put(np.asarray(t.detach().cpu().numpy()), jdev)

    problem.restore()
    dyn = problem.dynamics
    graph = dyn.bound_graph()
    n = dyn.num_nodes
    named = problem.named()
    params = {k: to_jax(named[f"dynamics.{k}"]) for k in DYNAMICS_PARAMETERS}
    linears = [m for m in problem.readout if isinstance(m, nn.Linear)]
    params["readout"] = [(to_jax(m.weight), to_jax(m.bias)) for m in linears]
    order = torch.argsort(graph.edge_index[1] * n + graph.edge_index[0])  # row-major (target, source)
    indices = to_jax(torch.stack([graph.edge_index[1][order], graph.edge_index[0][order]], 1).int())
    order_j = to_jax(order.int())
    sign = to_jax(graph.sign.to(problem.images.dtype))
    cell_type = to_jax(graph.cell_type.int())
    drive = to_jax(problem.drive())
    labels = to_jax(problem.labels.int())
    beta, tau_min = 20.0, dyn.tau_min  # graphode's per-edge softplus sharpness, τ's floor
    if dyn.tau_bound != "softplus" or dyn.synapses.mode != "per_edge" or not dyn.synapses.dale:
        return {"note": "the JAX model covers per-edge weights with Dale's signs and softplus tau only"}
    rtol, atol = problem.rtol, problem.atol

    def field(t, v, args):
        matrix, tau, bias, u = args
        a = (matrix @ jax.nn.relu(v).T).T
        return (-v + a + bias + u) / tau

    def loss_fn(p):
        w = (sign * jax.nn.softplus(beta * p["synapses.theta"]) / beta)[order_j]
        matrix = jsparse.BCOO((w, indices), shape=(n, n), indices_sorted=True, unique_indices=True)
        tau = (tau_min + jax.nn.softplus(p["tau_raw"]))[cell_type]
        bias = p["bias"][cell_type]
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), diffrax.Dopri5(), t0=0.0, t1=1.0, dt0=None, y0=jnp.zeros_like(drive),
            args=(matrix, tau, bias, drive), stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            adjoint=diffrax.RecursiveCheckpointAdjoint(), max_steps=4096,  # diffrax's default
        )
        h = sol.ys[-1]
        (w1, b1), (w2, b2) = p["readout"]
        logits = jax.nn.relu(h @ w1.T + b1) @ w2.T + b2
        loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, labels[:, None], 1)[:, 0])
        return loss, sol.stats["num_steps"]

    def train_step(p, state):  # Adam (lr 1e-3, torch's defaults), no optax
        (loss, num_steps), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
        m, v, k = state
        k = k + 1
        m = jax.tree_util.tree_map(lambda m_, g_: 0.9 * m_ + 0.1 * g_, m, g)
        v = jax.tree_util.tree_map(lambda v_, g_: 0.999 * v_ + 0.001 * g_ * g_, v, g)
        p = jax.tree_util.tree_map(
            lambda p_, m_, v_: p_ - 1e-3 * (m_ / (1 - 0.9**k)) / (jnp.sqrt(v_ / (1 - 0.999**k)) + 1e-8), p, m, v)
        return p, (m, v, k), g, num_steps

    # The JAX field is graphode's: compare one evaluation at a random state.
    v = torch.rand_like(problem.drive()) - 0.5
    with torch.no_grad():
        inputs = dyn.prepare(problem.drive())
        expected = dyn.evaluate(torch.zeros(v.size(0), device=v.device, dtype=v.dtype), v, inputs, dyn.derive(inputs))
    p0 = params
    matrix = jsparse.BCOO(((sign * jax.nn.softplus(beta * p0["synapses.theta"]) / beta)[order_j], indices), shape=(n, n))
    got = field(0.0, to_jax(v), (matrix, (tau_min + jax.nn.softplus(p0["tau_raw"]))[cell_type], p0["bias"][cell_type], drive))
    field_error = float((torch.from_numpy(np.array(got)).to(expected) - expected).norm() / expected.norm())
    if field_error > 1e-4:
        return {"note": f"the JAX field differs from graphode's by {field_error:.1e} (relative)"}

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    # committed to the device as the step's outputs are, so that the second call does not compile again
    state = jax.device_put((zeros, zeros, jnp.zeros((), drive.dtype)), jdev)
    try:
        step = jax.jit(train_step)
        t0 = time.perf_counter()
        p, state, g, num_steps = step(params, state)  # compiles; the gradient at the initial parameters
        jax.block_until_ready(p)
        compile_s = time.perf_counter() - t0
        grads = (
            torch.cat([torch.from_numpy(np.array(g[k])).reshape(-1).double() for k in DYNAMICS_PARAMETERS]),
            torch.cat([torch.from_numpy(np.array(x)).reshape(-1).double() for wb in g["readout"] for x in wb]),
        )
        p, state, g, num_steps = step(p, state)  # a warm-up step, as the torch rows have
        jax.block_until_ready(p)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            p, state, g, num_steps = step(p, state)
            jax.block_until_ready(p)
            times.append(time.perf_counter() - t0)
    except Exception as err:  # XLA reports an out-of-memory as a runtime error
        if "RESOURCE_EXHAUSTED" in str(err) or "out of memory" in str(err).lower():
            return {"note": "out of memory"}
        raise
    stats = jdev.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    row = {"seconds": statistics.median(times), "f_evals": 6 * int(num_steps) + 1,
           "peak_gb": None if peak is None else peak / 1e9, "grads": grads, "compile_s": compile_s,
           "field_error": field_error}
    if reference is not None:
        row.update(relative_differences(grads, reference))
    return row


# -- the section -----------------------------------------------------------------------------
def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_peers(problem: Problem, repeats: int = 3, log: Callable[[str], None] = print) -> list[tuple[str, dict]]:
    """Every row of the section, graphode's autodiff first (its gradient is the reference)."""
    rows: list[tuple[str, dict]] = []

    def add(label: str, make: Callable[[], Callable[[], int]], needs: str | None = None) -> None:
        if needs is not None and not _available(needs):
            rows.append((label, {"note": f"not installed ({needs})"}))
        else:
            reference = rows[0][1].get("grads") if rows else None
            rows.append((label, _guarded(lambda: measure_torch(problem, make(), reference, repeats))))
        log(f"peer {label}: " + _brief(rows[-1][1]))

    add("graphode solve, gradient=autodiff (reference)", lambda: graphode_row(problem, "autodiff"))
    reference = rows[0][1].get("grads")
    if reference is not None:
        rows[0][1].update(relative_differences(reference, reference))
    add("graphode solve, gradient=checkpoint", lambda: graphode_row(problem, "checkpoint"))
    add("graphode solve, gradient=adjoint", lambda: graphode_row(problem, "adjoint"))
    add("torchode AutoDiffAdjoint(Dopri5, IntegralController)", lambda: torchode_row(problem), "torchode")
    add("torchdiffeq odeint(dopri5)", lambda: torchdiffeq_row(problem, adjoint=False), "torchdiffeq")
    add("torchdiffeq odeint_adjoint(dopri5)", lambda: torchdiffeq_row(problem, adjoint=True), "torchdiffeq")
    add(f"explicit Euler dt = {EULER_DT}, backprop through the loop", lambda: euler_row(problem))
    label = "diffrax (JAX) Dopri5 + PIDController + RecursiveCheckpointAdjoint, BCOO, step jitted"
    rows.append((label, _guarded(lambda: diffrax_row(problem, reference, repeats))))
    log(f"peer {label}: " + _brief(rows[-1][1]))
    return rows


def _guarded(measure: Callable[[], dict]) -> dict:
    """A row, or a row saying why it failed: one peer's failure does not end the benchmark."""
    try:
        return measure()
    except Exception as err:  # noqa: BLE001 - reported in the table
        return {"note": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"}


def _brief(row: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "grads")


def peers_table(rows: list[tuple[str, dict]]) -> list[str]:
    """Markdown lines of the section's table."""
    fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    lines = [
        "| run | seconds / step | function evals (fwd+bwd) | peak GB | ‖g − g_autodiff‖ / ‖g_autodiff‖ (dynamics) | (readout) |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        if "note" in r:
            lines.append(f"| {label} | {r['note']} | | | | |")
            continue
        lines.append(
            f"| {label} | {r['seconds']:.3f} | {r['f_evals']} | {fmt(r['peak_gb'], '.1f')} | "
            f"{fmt(r.get('grad_dynamics'), '.1e')} | {fmt(r.get('grad_readout'), '.1e')} |"
        )
    return lines
