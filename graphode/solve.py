"""Solving the neuron dynamics with torchode, and three ways to get gradients.

:func:`solve` integrates ``dy/dt = field(t, y, *args)`` for a batch ``y0 [B, N]`` with a
torchode solver and returns the states at ``t_eval`` plus solver statistics. A failed solve
(step budget exhausted, step size underflow, non-finite state) raises :class:`SolverError`
naming the status and the samples, never returns garbage.

Gradient methods (``gradient=``):

``"autodiff"``
    ``torchode.AutoDiffAdjoint``: backpropagation through every solver operation. Exact
    gradients of the discrete solve, fastest for short solves, memory grows linearly with
    the number of steps.
``"checkpoint"``
    the interval is cut into ``checkpoints`` segments; only the states at segment
    boundaries are kept and each segment is re-solved with autodiff during the backward
    pass. Exact gradients of the discrete solve (the re-solve takes the same steps), memory
    of one segment plus the boundaries, about twice the forward work.
``"adjoint"``
    a continuous adjoint: the adjoint state ``a(t)`` and the parameter gradients are
    integrated backwards in time with the same torchode solver. Parameter gradients are
    accumulated *summed over the batch* (one copy of each parameter, unlike torchode's
    ``BacksolveAdjoint`` which keeps one per sample), the whole batch is one backward
    problem so vector-Jacobian products use plain ``torch.autograd.grad`` (sparse layers
    work), and the forward state is restored from the stored forward solution at every
    checkpoint, because leaky dynamics are unstable when integrated backwards. Memory does
    not grow with the number of solver steps, only with ``checkpoints``; the gradient error
    is of the order of the solver tolerance.

Which to use: ``autodiff`` for small graphs and short horizons (default), ``checkpoint``
when autodiff runs out of memory and exact gradients matter, ``adjoint`` for long horizons
or very large graphs where even one segment's graph does not fit.
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Sequence

import torch
import torchode as to
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from . import runge_kutta as rk
from ._layout import node_major, node_major_grad

__all__ = ["solve", "Solution", "SolveStats", "SolverError", "METHODS", "GRADIENTS"]

# Runge–Kutta steps that keep their stages apart (graphode.runge_kutta); Euler has one stage.
METHODS = {"dopri5": rk.Dopri5, "tsit5": rk.Tsit5, "euler": to.Euler, "heun": rk.Heun}
ADAPTIVE = {"dopri5", "tsit5"}
GRADIENTS = ("autodiff", "checkpoint", "adjoint")
STATUS = {
    0: "success",
    1: "general error",
    2: "step size fell below dt_min",
    3: "reached the maximum number of steps",
    4: "non-finite state or error norm",
}


class SolverError(RuntimeError):
    """A solve did not reach the end of its interval."""

    def __init__(self, status: Tensor, context: str, max_steps: int):
        bad = torch.nonzero(status).flatten().tolist()
        code = int(status[bad[0]])
        msg = (
            f"ODE solve failed ({context}): status {code} = {STATUS.get(code, 'unknown')} "
            f"for {len(bad)} of {status.numel()} samples (first: {bad[:5]})."
        )
        if code == 3:
            msg += f" Raise max_steps (now {max_steps}) or loosen rtol/atol."
        elif code == 4:
            msg += " The state diverged: check weights' gain, time constants and input scale."
        super().__init__(msg)
        self.status = status


@dataclass
class SolveStats:
    """Solver work of one :func:`solve` call.

    ``n_f_evals``: vector-field evaluations of the forward solve (shared by the batch);
    ``n_steps``/``n_accepted``: the largest per-sample step counts; ``backward_f_evals``:
    evaluations of the augmented field during the backward pass (``adjoint``, filled in
    once backward has run) or of the re-solve (``checkpoint``).
    """

    method: str
    gradient: str
    n_f_evals: int = 0
    n_steps: int = 0
    n_accepted: int = 0
    backward_f_evals: int = 0
    segments: int = 1

    @property
    def n_rejected(self) -> int:
        return self.n_steps - self.n_accepted

    def add(self, stats: dict[str, Tensor]) -> None:
        self.n_f_evals += int(stats["n_f_evals"].max())
        self.n_steps += int(stats["n_steps"].max())
        self.n_accepted += int(stats["n_accepted"].max())


@dataclass
class Solution:
    """``ts [T]`` evaluation times, ``ys [B, T, N]`` states, ``stats`` solver work."""

    ts: Tensor
    ys: Tensor
    stats: SolveStats = dc_field(repr=False)

    @property
    def y_final(self) -> Tensor:
        """``[B, N]`` the state at the last evaluation time."""
        return self.ys[:, -1]


@dataclass
class _Config:
    method: str
    rtol: float
    atol: float
    dt0: float | None
    max_steps: int


def _precomputed(field, enabled: bool = True) -> contextlib.AbstractContextManager:
    """``field.precomputed(enabled)`` where the field has it: parameters computed once per
    block (``enabled``), or computed at every evaluation even inside an enclosing block."""
    block = getattr(field, "precomputed", None)
    return block(enabled) if block is not None else contextlib.nullcontext()


def _arg_tensors(args: Sequence[Any]) -> list[Tensor]:
    """Tensors that ``args`` depend on (plain tensors and ``Stimulus.tensors()``)."""
    out = []
    for a in args:
        if isinstance(a, Tensor):
            out.append(a)
        elif hasattr(a, "tensors"):
            out.extend(a.tensors())
    return out


def _torchode_solve(
    f: Callable[[Tensor, Tensor], Tensor], y0: Tensor, t_grid: Tensor, cfg: _Config, stats: SolveStats, context: str
) -> Tensor:
    """Solve from ``t_grid[0]`` to ``t_grid[-1]``; returns the states at ``t_grid``: ``[B, T, N]``."""
    y0 = node_major(y0)
    b = y0.size(0)
    term = to.ODETerm(lambda t, y: node_major_grad(f(t, y)))
    step = METHODS[cfg.method](term=term)
    if cfg.method in ADAPTIVE:
        controller = rk.IntegralController(atol=cfg.atol, rtol=cfg.rtol, term=term)
        dt0 = None if cfg.dt0 is None else torch.full((b,), cfg.dt0, dtype=t_grid.dtype, device=y0.device)
    else:
        if cfg.dt0 is None:
            raise ValueError(f"the fixed-step method {cfg.method!r} needs dt0")
        controller = to.FixedStepController()
        dt0 = torch.full((b,), cfg.dt0, dtype=t_grid.dtype, device=y0.device)
    # Step sizes are treated as constants (as in diffrax): differentiating the controller
    # adds error-estimate derivatives that are wrong at ReLU kinks (2–4% off finite
    # differences, measured).
    # torchode flags status 3 once n_steps >= max_steps, even when that last step reached
    # the end; + 1 lets a solve take exactly max_steps steps.
    solver = to.AutoDiffAdjoint(step, controller, max_steps=cfg.max_steps + 1, backprop_through_step_size_control=False)
    t_eval = t_grid.to(y0.device).unsqueeze(0).expand(b, -1)
    problem = to.InitialValueProblem(y0=y0, t_start=t_eval[:, 0], t_end=t_eval[:, -1], t_eval=t_eval)
    sol = solver.solve(problem, dt0=dt0)
    status = sol.status
    # Fixed-step controllers never report a non-finite state: check the result itself.
    finite = torch.isfinite(sol.ys).flatten(1).all(1)
    if not bool(finite.all()):
        status = torch.where(finite | (status != 0), status, torch.full_like(status, 4))
    if bool((status != 0).any()):
        raise SolverError(status, context, cfg.max_steps)
    stats.add(sol.stats)
    return sol.ys


def solve(
    field: Callable[..., Tensor],
    y0: Tensor,
    t_span: tuple[float, float] = (0.0, 1.0),
    *,
    args: Sequence[Any] = (),
    t_eval: Tensor | Sequence[float] | None = None,
    method: str = "dopri5",
    rtol: float = 1e-3,
    atol: float = 1e-4,
    dt0: float | None = None,
    max_steps: int = 10_000,
    gradient: str = "autodiff",
    checkpoints: int = 8,
) -> Solution:
    """Integrate ``dy/dt = field(t, y, *args)`` from ``t_span[0]`` to ``t_span[1]``.

    Args:
        field: the vector field, ``field(t [B], y [B, N], *args) -> [B, N]``; for the
            ``adjoint`` gradient it should be an ``nn.Module`` (its parameters get gradients).
            A field with a ``prepare_args(args) -> args`` method gets to convert ``args``
            once here instead of at every evaluation (ConnectomeDynamics wraps its stimulus).
        y0: ``[B, N]`` initial states.
        t_span: start and end time, shared by the batch.
        args: extra arguments of ``field`` (e.g. a stimulus); tensors in them that require
            grad receive gradients with every method.
        t_eval: ``[T]`` increasing times in ``t_span`` at which to return states
            (default: only the end time).
        method: ``dopri5`` (adaptive, default), ``tsit5`` (adaptive), ``euler``, ``heun``
            (fixed steps of ``dt0``).
        rtol, atol: tolerances of the adaptive step-size controller.
        dt0: initial step (adaptive) or the step (fixed-step methods).
        max_steps: step budget per sample (per segment for ``checkpoint``/``adjoint``).
        gradient: ``autodiff``, ``checkpoint`` or ``adjoint`` (see module docs).
        checkpoints: number of segments for ``checkpoint`` and ``adjoint``.

    Returns:
        :class:`Solution` with ``ys [B, T, N]``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    if gradient not in GRADIENTS:
        raise ValueError(f"unknown gradient method {gradient!r}; choose from {GRADIENTS}")
    if y0.dim() != 2:
        raise ValueError(f"y0 must be [B, N], got {tuple(y0.shape)}")
    if not torch.isfinite(y0).all():
        raise ValueError("y0 holds NaN or inf values")
    t0, t1 = float(t_span[0]), float(t_span[1])
    if not t1 > t0:
        raise ValueError(f"t_span must increase, got {t_span}")
    tdtype = torch.float64 if y0.dtype == torch.float64 else torch.float32
    if t_eval is None:
        t_eval = torch.tensor([t1], dtype=tdtype)
    t_eval = torch.as_tensor(t_eval, dtype=tdtype).flatten().cpu()
    if t_eval.numel() == 0 or t_eval[0] < t0 or t_eval[-1] > t1 or (t_eval[1:] <= t_eval[:-1]).any():
        raise ValueError(f"t_eval must be increasing and inside t_span {t_span}, got {t_eval.tolist()}")
    if checkpoints < 1:
        raise ValueError("checkpoints must be >= 1")
    prepare_args = getattr(field, "prepare_args", None)
    if prepare_args is not None:
        args = tuple(prepare_args(tuple(args)))
    cfg = _Config(method, rtol, atol, dt0, max_steps)
    stats = SolveStats(method=method, gradient=gradient)

    def f(t: Tensor, y: Tensor) -> Tensor:
        return field(t, y, *args)

    if gradient == "autodiff":
        grid = torch.unique(torch.cat([torch.tensor([t0], dtype=tdtype), t_eval]))
        with _precomputed(field):
            ys = _torchode_solve(f, y0, grid, cfg, stats, "forward")
        keep = torch.searchsorted(grid, t_eval)
        return Solution(t_eval, ys[:, keep.to(ys.device)], stats)

    grid = torch.unique(torch.cat([torch.linspace(t0, t1, checkpoints + 1, dtype=tdtype), t_eval]))
    stats.segments = grid.numel() - 1
    keep = torch.searchsorted(grid, t_eval).to(y0.device)
    if gradient == "checkpoint":
        with _precomputed(field) if not torch.is_grad_enabled() else contextlib.nullcontext():
            ys = _checkpointed(f, y0, grid, cfg, stats, field)
    else:
        params = [p for p in getattr(field, "parameters", lambda: [])() if p.requires_grad]
        grad_tensors = params + [a for a in _arg_tensors(args) if a.requires_grad]
        runner = _AdjointRunner(field, args, grid, cfg, stats, len(params))
        ys = _AdjointSolve.apply(runner, y0, *grad_tensors)
    return Solution(t_eval, ys[:, keep], stats)


def _checkpointed(f, y0: Tensor, grid: Tensor, cfg: _Config, stats: SolveStats, field) -> Tensor:
    """States at ``grid`` ``[B, K, N]``, keeping only segment boundaries for backward."""
    forward_done = False

    def counted(t: Tensor, y: Tensor) -> Tensor:
        stats.backward_f_evals += 1
        return f(t, y)

    def segment(y: Tensor, ta: Tensor, tb: Tensor) -> Tensor:
        # Calls after the forward loop are autograd's re-solves during backward. autograd
        # stops a re-solve as soon as it has recomputed every saved tensor (checkpoint's
        # early stop), so this function may never return there: count evaluations as they
        # happen instead of reading the re-solve's stats at the end.
        target = SolveStats(cfg.method, "checkpoint") if forward_done else stats
        g = counted if forward_done else f
        # A differentiated segment computes the parameters at every evaluation, in the
        # forward and in its recomputation alike (which may run inside a caller's
        # precomputed block), so both save the same tensors.
        with _precomputed(field, enabled=False) if torch.is_grad_enabled() else contextlib.nullcontext():
            y_end = _torchode_solve(g, y, torch.stack([ta, tb]), cfg, target, f"segment [{float(ta):g}, {float(tb):g}]")
        return y_end[:, -1]

    ys = [y0]
    for k in range(grid.numel() - 1):
        if torch.is_grad_enabled():
            y = _checkpoint(segment, ys[-1], grid[k], grid[k + 1], use_reentrant=False, determinism_check="none")
        else:
            y = segment(ys[-1], grid[k], grid[k + 1])
        ys.append(y)
    forward_done = True
    return torch.stack(ys, dim=1)


class _AdjointRunner:
    """Holds what the adjoint needs between forward and backward."""

    def __init__(self, field, args, grid: Tensor, cfg: _Config, stats: SolveStats, n_params: int):
        self.field, self.args, self.grid, self.cfg, self.stats = field, tuple(args), grid, cfg, stats
        self.n_params = n_params

    def forward(self, y0: Tensor) -> Tensor:
        with _precomputed(self.field):  # runs without gradients: the backward re-evaluates the field
            return _torchode_solve(lambda t, y: self.field(t, y, *self.args), y0, self.grid, self.cfg, self.stats, "forward")

    def backward_segment(self, k: int, y_k: Tensor, a_k: Tensor, grad_tensors: Sequence[Tensor]):
        """Integrate state, adjoint and parameter gradients from ``grid[k]`` back to ``grid[k-1]``.

        The augmented state is one flat vector (batch 1 for torchode): ``[v, a, g]`` with
        ``v, a: [B, N]`` stored node-major (see :mod:`graphode._layout`) and ``g`` the
        batch-summed gradients of ``grad_tensors``.
        """
        b, n = y_k.shape
        bn = b * n
        t_k = self.grid[k].to(y_k.device, y_k.dtype)
        sizes = [p.numel() for p in grad_tensors]
        field, args = self.field, self.args

        def aug(s: Tensor, z: Tensor) -> Tensor:
            v = z[0, :bn].detach().view(n, b).t().requires_grad_(True)
            a = z[0, bn : 2 * bn].view(n, b).t()
            t = (t_k - s.to(y_k.dtype)).reshape(1).expand(b)
            with torch.enable_grad():
                fv = field(t, v, *args)
                grads = torch.autograd.grad(fv, (v, *grad_tensors), grad_outputs=a, allow_unused=True)
            parts = [-fv.detach().t().reshape(-1), grads[0].t().reshape(-1)]
            for g, p in zip(grads[1:], grad_tensors):
                parts.append(torch.zeros(p.numel(), dtype=z.dtype, device=z.device) if g is None else g.reshape(-1).to(z.dtype))
            return torch.cat(parts).unsqueeze(0)

        z0 = torch.cat([y_k.t().reshape(-1), a_k.t().reshape(-1), y_k.new_zeros(sum(sizes))]).unsqueeze(0)
        span = (self.grid[k] - self.grid[k - 1]).to(self.grid.dtype)
        back_stats = SolveStats(self.cfg.method, "adjoint")
        cfg = self.cfg
        if cfg.method not in ADAPTIVE:  # fixed steps: the same step back as forward
            cfg = _Config(cfg.method, cfg.rtol, cfg.atol, min(cfg.dt0, float(span)), cfg.max_steps)
        with _precomputed(field, enabled=False):  # each evaluation is differentiated on its own
            z1 = _torchode_solve(
                aug, z0, torch.stack([torch.zeros((), dtype=span.dtype), span]), cfg, back_stats,
                f"adjoint segment [{float(self.grid[k - 1]):g}, {float(self.grid[k]):g}]",
            )[0, -1]
        self.stats.backward_f_evals += back_stats.n_f_evals
        a = z1[bn : 2 * bn].view(n, b).t()
        g_flat = z1[2 * bn :]
        gs = [chunk.view_as(p).to(p.dtype) for chunk, p in zip(torch.split(g_flat, sizes), grad_tensors)]
        return a, gs


class _AdjointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, runner: _AdjointRunner, y0: Tensor, *grad_tensors: Tensor) -> Tensor:
        with torch.no_grad():
            ys = runner.forward(y0)
        ctx.runner = runner
        runner.grad_tensors = grad_tensors  # the originals: the field's graph refers to them
        ctx.save_for_backward(ys)
        return ys

    @staticmethod
    def backward(ctx, grad_ys: Tensor):
        runner: _AdjointRunner = ctx.runner
        (ys,) = ctx.saved_tensors
        grad_tensors = runner.grad_tensors
        a = grad_ys[:, -1].clone()
        totals = [torch.zeros_like(p) for p in grad_tensors]
        for k in range(ys.size(1) - 1, 0, -1):
            a, gs = runner.backward_segment(k, ys[:, k], a, grad_tensors)
            for total, g in zip(totals, gs):
                total.add_(g)
            a = a + grad_ys[:, k - 1]
        return (None, a, *totals)
