"""Gradient methods of a solve, as objects: :class:`Autodiff`, :class:`Checkpoint`, :class:`Adjoint`.

Each carries its own options and computes the states at a time grid from a
:class:`~graphode.field.VectorField`'s prepared inputs (:func:`~graphode.solve` calls
it; torchode's ``AutoDiffAdjoint`` / ``BacksolveAdjoint`` and diffrax's ``adjoint=`` are the
models):

:class:`Autodiff`
    backpropagation through every solver operation. Exact gradients of the discrete solve,
    fastest for short solves; memory grows linearly with the number of steps. The field's
    parameters are derived once per solve.
:class:`Checkpoint`
    the interval is cut into ``segments``; only the states at segment boundaries are kept
    and each segment is re-solved with autodiff during the backward pass. Exact gradients
    of the discrete solve (the re-solve takes the same steps), memory of one segment plus
    the boundaries.
:class:`Adjoint`
    a continuous adjoint: the adjoint state ``a(t)`` and the parameter gradients are
    integrated backwards in time with the same solver. Parameter gradients are accumulated
    *summed over the batch* (one copy of each parameter, unlike torchode's
    ``BacksolveAdjoint`` which keeps one per sample), the whole batch is one backward
    problem so vector-Jacobian products use plain ``torch.autograd.grad`` (sparse layers
    work), and the forward state is restored from the stored forward solution at every
    segment boundary (segments at most a few of the field's time constants long), because
    leaky dynamics are unstable when integrated backwards. Memory does not grow with the
    number of solver steps, only with the number of segments; the gradient error is of the
    order of the solver tolerance.

Which to use: ``Autodiff`` for short horizons (default; fastest), ``Checkpoint`` when
autodiff runs out of memory on a short horizon, ``Adjoint`` for solves longer than about
25 time constants (where the discrete methods' gradients go wrong at ordinary tolerances)
and for graphs where even one segment's graph does not fit.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from .field import VectorField, detached_args
from .solvers import FixedStep, SolverConfig, SolveStats, integrate

__all__ = ["Gradient", "Autodiff", "Checkpoint", "Adjoint", "GRADIENTS"]


class Gradient:
    """Base of the gradient methods.

    ``states(field, args, y0, grid, config, stats)`` → ``(grid, states)``: the times the
    solve stopped at ``[K]`` and the states there ``[B, K, N]``. It prepares the field's
    inputs from ``args`` once and derives its parameters where the method allows. ``grid``
    holds ``t_span``'s ends, the evaluation times and, for the segmented methods, the
    segment boundaries (:meth:`grid`); a method may stop at more times than these.

    Shapes:
        states: y0 ``[B, N]`` and grid ``[K]`` → the times stopped at ``[M]`` and the
        states there ``[B, M, N]``.
    """

    name = ""
    segments = 1

    def grid(self, t0: float, t1: float, t_eval: Tensor) -> Tensor:
        """The times the solve stops at: ``[K]`` increasing."""
        return torch.unique(torch.cat([torch.linspace(t0, t1, self.segments + 1, dtype=t_eval.dtype), t_eval]))

    def states(self, field: VectorField, args: tuple, y0: Tensor, grid: Tensor, config: SolverConfig,
               stats: SolveStats) -> tuple[Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()" if self.segments == 1 else f"{type(self).__name__}(segments={self.segments})"


def _segments(segments: int) -> int:
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ValueError(f"segments must be an integer >= 1, got {segments!r}")
    return segments


class Autodiff(Gradient):
    """Backpropagation through every step (see the module docs).

    Shapes:
        as :class:`Gradient`.
    """

    name = "autodiff"

    def grid(self, t0: float, t1: float, t_eval: Tensor) -> Tensor:
        return torch.unique(torch.cat([torch.tensor([t0], dtype=t_eval.dtype), t_eval]))

    def states(self, field, args, y0, grid, config, stats):
        inputs = field.prepare(*args)
        derived = field.derive(inputs)
        return grid, integrate(lambda t, y: field.evaluate(t, y, inputs, derived), y0, grid, config, stats, "forward")


class Checkpoint(Gradient):
    """Segments re-solved with autodiff in the backward pass (see the module docs).

    Args:
        segments: how many equal segments ``t_span`` is cut into (evaluation times add
            boundaries).

    Shapes:
        as :class:`Gradient`; one ``[B, N]`` state kept per segment boundary.
    """

    name = "checkpoint"

    def __init__(self, segments: int = 8):
        self.segments = _segments(segments)

    def states(self, field, args, y0, grid, config, stats):
        inputs = field.prepare(*args)
        differentiated = torch.is_grad_enabled()
        derived = None if differentiated else field.derive(inputs)
        forward_done = False
        # Each segment starts with the step size the previous one ended with (selecting a
        # first step afresh costs evaluations and small steps in every segment); the
        # recomputation starts from the same step as the forward, so it takes the same steps.
        first_steps: list[Tensor | None] = [None]

        def segment(y: Tensor, ta: Tensor, tb: Tensor, k: int) -> Tensor:
            # Calls after the forward loop are autograd's re-solves during backward. autograd
            # stops a re-solve as soon as it has recomputed every saved tensor (checkpoint's
            # early stop), so this function may never return there: count evaluations as
            # they happen instead of reading the re-solve's stats at the end.
            target = SolveStats(config.method.name, self.name) if forward_done else stats
            # A differentiated segment derives the parameters itself, in the forward and in
            # its recomputation alike, so both save the same tensors.
            d = field.derive(inputs) if differentiated else derived

            def f(t: Tensor, y_: Tensor) -> Tensor:
                if forward_done:
                    stats.backward_f_evals += 1
                return field.evaluate(t, y_, inputs, d)

            y_end, carried = integrate(f, y, torch.stack([ta, tb]), config, target,
                                       f"segment [{float(ta):g}, {float(tb):g}]", dt0=first_steps[k], return_step=True)
            if not forward_done:
                first_steps.append(carried)
            return y_end[:, -1]

        ys = [y0]
        for k in range(grid.numel() - 1):
            if differentiated:
                y = _checkpoint(segment, ys[-1], grid[k], grid[k + 1], k, use_reentrant=False, determinism_check="none")
            else:
                y = segment(ys[-1], grid[k], grid[k + 1], k)
            ys.append(y)
        forward_done = True
        return grid, torch.stack(ys, dim=1)


class Adjoint(Gradient):
    """The batch-summed continuous adjoint (see the module docs).

    Integrated backwards, the state of leaky dynamics expands like ``e^{t/τ}``: over a
    segment of length ``L`` a reconstruction error grows by ``e^{L/τ}``. The forward state
    is therefore restored at every segment boundary, and segments are at most
    ``max_segment`` of the field's smallest time constant long
    (:meth:`~graphode.field.VectorField.time_scale`, read once per solve): the gradient
    error stays of the order of the solver tolerance however long the solve, and memory
    grows only by one ``[B, N]`` state per segment, never with the number of steps.

    Args:
        segments: the least number of equal segments ``t_span`` is cut into.
        max_segment: the longest segment in units of the field's time scale (None: only
            ``segments``; also for a field without a time scale).

    Shapes:
        as :class:`Gradient`; one ``[B, N]`` state kept per segment boundary.
    """

    name = "adjoint"

    def __init__(self, segments: int = 8, max_segment: float | None = 2.0):
        self.segments = _segments(segments)
        if max_segment is not None and not (isinstance(max_segment, (int, float)) and max_segment > 0):
            raise ValueError(f"max_segment must be > 0 (in units of the field's time scale) or None, got {max_segment!r}")
        self.max_segment = None if max_segment is None else float(max_segment)

    def _refined(self, grid: Tensor, scale: float | None) -> Tensor:
        """``grid`` with every interval longer than ``max_segment · scale`` cut into equal parts."""
        if self.max_segment is None or scale is None or not scale > 0:
            return grid
        longest = self.max_segment * scale
        parts = [grid[:1]]
        for a, b in zip(grid[:-1], grid[1:]):
            pieces = max(1, math.ceil(float(b - a) / longest - 1e-9))
            parts.append(torch.linspace(float(a), float(b), pieces + 1, dtype=grid.dtype)[1:])
        return torch.cat(parts)

    def states(self, field, args, y0, grid, config, stats):
        params = [p for p in field.parameters() if p.requires_grad]
        # The backward differentiates each evaluation for detached copies of the argument
        # tensors; autograd then carries their gradients on through the originals' history.
        detached, originals, leaves = detached_args(args)
        inputs = field.prepare(*detached)
        for p, _ in getattr(inputs, "perturbations", ()):
            if any(t.requires_grad for t in getattr(p, "tensors", tuple)()):
                raise ValueError(
                    f"{p!r} holds values that require grad: the adjoint returns gradients for the field's "
                    "parameters and its arguments only; use gradient='autodiff' or 'checkpoint', or pass the "
                    "current as part of the stimulus"
                )
        with torch.no_grad():  # the forward pass: no gradients, the backward derives again
            derived = field.derive(inputs)
        grid = self._refined(grid, field.time_scale(inputs, derived))
        runner = _AdjointRunner(field, inputs, derived, grid, config, stats, params + leaves)
        return grid, _AdjointSolve.apply(runner, y0, *params, *originals)

    def __repr__(self) -> str:
        return f"Adjoint(segments={self.segments}, max_segment={self.max_segment})"


class _AdjointRunner:
    """Holds what the adjoint needs between forward and backward."""

    def __init__(self, field: VectorField, inputs: Any, derived: Any, grid: Tensor, config: SolverConfig,
                 stats: SolveStats, leaves: Sequence[Tensor]):
        self.field, self.inputs, self.derived = field, inputs, derived
        self.grid, self.config, self.stats = grid, config, stats
        self.leaves = list(leaves)  # the tensors each backward evaluation is differentiated for
        self.back_step: Tensor | None = None  # the backward solve's step, carried across segments

    def forward(self, y0: Tensor) -> Tensor:
        f = lambda t, y: self.field.evaluate(t, y, self.inputs, self.derived)  # noqa: E731
        return integrate(f, y0, self.grid, self.config, self.stats, "forward")

    def backward_segment(self, k: int, y_k: Tensor, a_k: Tensor):
        """Integrate state, adjoint and parameter gradients from ``grid[k]`` back to ``grid[k-1]``.

        The augmented state is one flat vector (batch 1 for torchode): ``[v, a, g]`` with
        ``v, a: [B, N]`` stored node-major (see :mod:`graphode._layout`) and ``g`` the
        batch-summed gradients of the leaves (parameters, then argument tensors).
        """
        b, n = y_k.shape
        bn = b * n
        t_k = self.grid[k].to(y_k.device, y_k.dtype)
        leaves = self.leaves
        sizes = [p.numel() for p in leaves]
        field, inputs = self.field, self.inputs

        def aug(s: Tensor, z: Tensor) -> Tensor:
            v = z[0, :bn].detach().view(n, b).t().requires_grad_(True)
            a = z[0, bn : 2 * bn].view(n, b).t()
            t = (t_k - s.to(y_k.dtype)).reshape(1).expand(b)
            with torch.enable_grad():
                # each evaluation is differentiated on its own: derive the parameters with it
                fv = field.evaluate(t, v, inputs, field.derive(inputs))
                grads = torch.autograd.grad(fv, (v, *leaves), grad_outputs=a, allow_unused=True)
            parts = [-fv.detach().t().reshape(-1), grads[0].t().reshape(-1)]
            for g, p in zip(grads[1:], leaves):
                parts.append(torch.zeros(p.numel(), dtype=z.dtype, device=z.device) if g is None else g.reshape(-1).to(z.dtype))
            return torch.cat(parts).unsqueeze(0)

        z0 = torch.cat([y_k.t().reshape(-1), a_k.t().reshape(-1), y_k.new_zeros(sum(sizes))]).unsqueeze(0)
        span = (self.grid[k] - self.grid[k - 1]).to(self.grid.dtype)
        back_stats = SolveStats(self.config.method.name, "adjoint")
        config = self.config
        if isinstance(config.controller, FixedStep):  # fixed steps of the forward's length, within the segment
            config = SolverConfig(config.method, config.controller.within(float(span)), config.max_steps)
        zs, self.back_step = integrate(
            aug, z0, torch.stack([torch.zeros((), dtype=span.dtype), span]), config, back_stats,
            f"adjoint segment [{float(self.grid[k - 1]):g}, {float(self.grid[k]):g}]", dt0=self.back_step, return_step=True,
        )
        z1 = zs[0, -1]
        self.stats.backward_f_evals += back_stats.n_f_evals
        a = z1[bn : 2 * bn].view(n, b).t()
        g_flat = z1[2 * bn :]
        gs = [chunk.view_as(p).to(p.dtype) for chunk, p in zip(torch.split(g_flat, sizes), leaves)]
        return a, gs


class _AdjointSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, runner: _AdjointRunner, y0: Tensor, *grad_tensors: Tensor) -> Tensor:
        with torch.no_grad():
            ys = runner.forward(y0)
        ctx.runner = runner
        ctx.save_for_backward(ys)
        return ys

    @staticmethod
    def backward(ctx, grad_ys: Tensor):
        runner: _AdjointRunner = ctx.runner
        (ys,) = ctx.saved_tensors
        a = grad_ys[:, -1].clone()
        totals = [torch.zeros_like(p) for p in runner.leaves]
        for k in range(ys.size(1) - 1, 0, -1):
            a, gs = runner.backward_segment(k, ys[:, k], a)
            for total, g in zip(totals, gs):
                total.add_(g)
            a = a + grad_ys[:, k - 1]
        return (None, a, *totals)


GRADIENTS: dict[str, type[Gradient]] = {g.name: g for g in (Autodiff, Checkpoint, Adjoint)}


def resolve_gradient(gradient: str | Gradient, segments: int | None = None) -> Gradient:
    """A :class:`Gradient` from itself or its name (``autodiff``, ``checkpoint``,
    ``adjoint``; ``segments`` for the latter two)."""
    if isinstance(gradient, Gradient):
        if segments is not None:
            raise ValueError(f"pass the segment count inside the gradient object ({type(gradient).__name__}(segments=...)), not as checkpoints=")
        return gradient
    if not isinstance(gradient, str) or gradient not in GRADIENTS:
        raise ValueError(f"unknown gradient method {gradient!r}; choose a Gradient object or one of {tuple(GRADIENTS)}")
    if segments is not None and (isinstance(segments, bool) or not isinstance(segments, int) or segments < 1):
        raise ValueError(f"checkpoints (the segment count) must be an integer >= 1, got {segments!r}")
    if gradient == "autodiff":
        return Autodiff()
    return GRADIENTS[gradient]() if segments is None else GRADIENTS[gradient](segments)
