"""One entry point for solving a vector field: :func:`solve`.

:func:`solve` integrates ``dy/dt = field(t, y, *args)`` for a batch ``y0 [B, N]`` with
torchode and returns the states at ``t_eval`` plus solver statistics. The strategies are
objects that carry their own options, as in diffrax's ``diffeqsolve``:

- ``method``: a Runge–Kutta method (:mod:`graphode.solvers`: ``Dopri5()``, ``Tsit5()``,
  ``Heun()``, ``Euler()``);
- ``controller``: the step-size control (``Adaptive(rtol, atol, dt0)`` or ``FixedStep(dt)``);
- ``gradient``: how gradients are computed (:mod:`graphode.gradients`: ``Autodiff()``,
  ``Checkpoint(segments)``, ``Adjoint(segments)``).

Names are accepted as a convenience and resolved once here: ``method="dopri5"``,
``gradient="checkpoint"`` with ``checkpoints=8``, and ``rtol``/``atol``/``dt0`` for the
controller when none is given. A failed solve (step budget exhausted, step size underflow,
non-finite state) raises :class:`~graphode.solvers.SolverError` naming the status and the
samples, never returns garbage.

The field is a :class:`~graphode.field.VectorField` (its inputs prepared once per solve, its
parameters derived where the gradient method allows) or any callable ``f(t, y, *args)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .field import VectorField, as_field
from .gradients import Autodiff, Gradient, resolve_gradient
from .solvers import Adaptive, FixedStep, Method, SolverConfig, SolveStats, resolve_controller, resolve_method

__all__ = ["solve", "Solution"]


@dataclass
class Solution:
    """``ts [T]`` evaluation times, ``ys [B, T, N]`` states, ``stats`` solver work.

    Shapes:
        ts ``[T]``, ys ``[B, T, N]``, y_final ``[B, N]``.
    """

    ts: Tensor
    ys: Tensor
    stats: SolveStats = dc_field(repr=False)

    @property
    def y_final(self) -> Tensor:
        """``[B, N]`` the state at the last evaluation time."""
        return self.ys[:, -1]


def solve(
    field: VectorField | Callable[..., Tensor],
    y0: Tensor,
    t_span: tuple[float, float] = (0.0, 1.0),
    *,
    args: Sequence[Any] = (),
    t_eval: Tensor | Sequence[float] | None = None,
    method: str | Method = "dopri5",
    controller: Adaptive | FixedStep | None = None,
    gradient: str | Gradient = "autodiff",
    max_steps: int = 10_000,
    rtol: float | None = None,
    atol: float | None = None,
    dt0: float | None = None,
    checkpoints: int | None = None,
) -> Solution:
    """Integrate ``dy/dt = field(t, y, *args)`` from ``t_span[0]`` to ``t_span[1]``.

    Args:
        field: a :class:`~graphode.field.VectorField` (e.g.
            :class:`~graphode.dynamics.ConnectomeDynamics`, whose ``args`` are
            ``(graph, stimulus)``) or a callable ``field(t [B], y [B, N], *args) -> [B, N]``;
            for the adjoint gradient its parameters are those of the module.
        y0: ``[B, N]`` initial states.
        t_span: start and end time, shared by the batch.
        args: extra arguments of ``field`` (a graph, a stimulus); tensors in them that
            require grad receive gradients with every method (graphs are constants to
            the adjoint).
        t_eval: ``[T]`` increasing times in ``t_span`` at which to return states
            (default: only the end time).
        method: a :class:`~graphode.solvers.Method` or its name (``dopri5``, default;
            ``tsit5``; ``heun`` and ``euler`` take fixed steps).
        controller: ``Adaptive(rtol, atol, dt0)`` or ``FixedStep(dt)``; default: adaptive
            from ``rtol`` (1e-3), ``atol`` (1e-4) and ``dt0``, or ``FixedStep(dt0)`` for a
            fixed-step method.
        gradient: a :class:`~graphode.gradients.Gradient` or its name (``autodiff``,
            default; ``checkpoint``; ``adjoint``).
        max_steps: step budget per sample: per segment for checkpoint and for the adjoint's
            backward pass, for the whole interval otherwise.
        rtol, atol, dt0: the default controller's options (only without ``controller``).
        checkpoints: the segment count of a gradient given by name (default 8).

    Returns:
        :class:`Solution` with ``ys [B, T, N]``.

    Shapes:
        y0 ``[B, N]``, t_eval ``[T]`` → ``Solution`` with ``ys [B, T, N]``.
    """
    method = resolve_method(method)
    controller = resolve_controller(method, controller, rtol, atol, dt0)
    gradient = resolve_gradient(gradient, checkpoints)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    if not isinstance(y0, Tensor) or y0.dim() != 2:
        raise ValueError(f"y0 must be a [B, N] tensor, got {tuple(y0.shape) if isinstance(y0, Tensor) else type(y0).__name__}")
    if y0.numel() == 0:
        raise ValueError(f"y0 is empty ({tuple(y0.shape)}): nothing to simulate")
    if not y0.is_floating_point():
        raise TypeError(f"y0 must be a floating-point tensor (float32 or float64), got {y0.dtype}: use y0.float()")
    if not torch.isfinite(y0).all():
        raise ValueError("y0 holds NaN or inf values")
    t0, t1 = float(t_span[0]), float(t_span[1])
    if not (math.isfinite(t0) and math.isfinite(t1) and t1 > t0):
        raise ValueError(f"t_span must be two finite, increasing times, got {t_span}")
    tdtype = torch.float64 if y0.dtype == torch.float64 else torch.float32
    if t_eval is None:
        t_eval = torch.tensor([t1], dtype=tdtype)
    t_eval = torch.as_tensor(t_eval, dtype=tdtype).flatten().cpu()
    if (
        t_eval.numel() == 0 or not bool(torch.isfinite(t_eval).all())
        or t_eval[0] < t0 or t_eval[-1] > t1 or bool((t_eval[1:] <= t_eval[:-1]).any())
    ):
        raise ValueError(f"t_eval must be finite, increasing and inside t_span {t_span}, got {t_eval.tolist()}")
    field = as_field(field)
    stats = SolveStats(method=method.name, gradient=gradient.name)
    config = SolverConfig(method, controller, max_steps)
    grid, ys = gradient.states(field, tuple(args), y0, gradient.grid(t0, t1, t_eval), config, stats)
    if not isinstance(gradient, Autodiff):
        stats.segments = grid.numel() - 1
    keep = torch.searchsorted(grid, t_eval).to(ys.device)
    return Solution(t_eval, ys[:, keep], stats)
