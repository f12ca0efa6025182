"""Solver strategies: Runge–Kutta methods and step-size controllers, as objects.

:func:`~graphode.solve` takes a method (``method=Dopri5()``) and a step-size
controller (``controller=Adaptive(rtol=1e-4, atol=1e-4)`` or ``FixedStep(dt=0.02)``), each
an object carrying its own options, as diffrax's ``diffeqsolve(solver=...,
stepsize_controller=...)`` does. Names (``method="dopri5"``) are a convenience that
:func:`resolve_method` turns into these objects once.

Methods: :class:`Dopri5` and :class:`Tsit5` (adaptive, 5th order with a 4th-order error
estimate), :class:`Heun` (2nd order) and :class:`Euler` (1st order). Dopri5, Tsit5 and Heun
run torchode's tableaus with their stages kept apart (:mod:`graphode.runge_kutta`); their
``fuse`` option is the stage sums' kernel-fusion policy (:func:`graphode.kernels.fusing`).

:func:`integrate` runs one torchode solve over a time grid and turns a failed solve into a
:class:`SolverError` that names the status, the samples and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchode as to
from torch import Tensor

from . import runge_kutta as rk
from ._layout import node_major, node_major_grad

__all__ = ["Method", "Dopri5", "Tsit5", "Heun", "Euler", "Adaptive", "FixedStep", "METHODS", "SolveStats", "SolverError"]

STATUS = {
    0: "success",
    1: "general error",
    2: "step size fell below dt_min",
    3: "reached the maximum number of steps",
    4: "non-finite state or error norm",
}


class Method:
    """A Runge–Kutta method: ``step(term)`` builds its torchode step.

    Args:
        fuse: kernel-fusion policy of the stage sums: None (on CUDA when Triton is there),
            True (also in Triton's interpreter), False (never).

    Shapes:
        steps states ``[B, N]`` with one time and step size per sample ``[B]``.
    """

    name: str = ""
    adaptive: bool = False
    _step_class: type = to.Euler

    def __init__(self, fuse: bool | None = None):
        if fuse not in (None, True, False):
            raise ValueError(f"fuse must be None, True or False, got {fuse!r}")
        self.fuse = fuse

    def step(self, term: to.ODETerm):
        step = self._step_class(term=term)
        step.fuse = self.fuse
        return step

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fuse={self.fuse})"


class Dopri5(Method):
    """Dormand–Prince 5(4), adaptive (the default).

    Shapes:
        as :class:`Method`.
    """

    name, adaptive, _step_class = "dopri5", True, rk.Dopri5


class Tsit5(Method):
    """Tsitouras 5(4), adaptive.

    Shapes:
        as :class:`Method`.
    """

    name, adaptive, _step_class = "tsit5", True, rk.Tsit5


class Heun(Method):
    """Heun's method, 2nd order, fixed steps.

    Shapes:
        as :class:`Method`.
    """

    name, adaptive, _step_class = "heun", False, rk.Heun


class Euler(Method):
    """Explicit Euler, 1st order, fixed steps (torchode's; one stage, nothing to fuse).

    Shapes:
        as :class:`Method`.
    """

    name, adaptive, _step_class = "euler", False, to.Euler


METHODS: dict[str, type[Method]] = {m.name: m for m in (Dopri5, Tsit5, Heun, Euler)}


def resolve_method(method: str | Method) -> Method:
    """A :class:`Method` from itself or its name (``dopri5``, ``tsit5``, ``heun``, ``euler``)."""
    if isinstance(method, Method):
        return method
    if isinstance(method, str) and method in METHODS:
        return METHODS[method]()
    raise ValueError(f"unknown method {method!r}; choose a Method object or one of {sorted(METHODS)}")


def _positive(name: str, value: float | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class Adaptive:
    """Adaptive step sizes (torchode's integral controller): a step is accepted when its
    error estimate is within ``atol + rtol · |y|``; ``dt0`` is the first step (None: chosen
    by torchode).

    Shapes:
        the tolerances apply to every entry of the ``[B, N]`` state; each sample takes its own steps.
    """

    rtol: float = 1e-3
    atol: float = 1e-4
    dt0: float | None = None

    def __post_init__(self):
        _positive("rtol", self.rtol)
        _positive("atol", self.atol)
        _positive("dt0", self.dt0, allow_none=True)

    def build(self, term: to.ODETerm, b: int, dtype: torch.dtype, device) -> tuple:
        dt0 = None if self.dt0 is None else torch.full((b,), self.dt0, dtype=dtype, device=device)
        return rk.IntegralController(atol=self.atol, rtol=self.rtol, term=term), dt0


@dataclass(frozen=True)
class FixedStep:
    """Fixed steps of ``dt`` (the last step of an interval is shortened to end on it).

    Shapes:
        one step size ``dt`` for every sample of the ``[B, N]`` state.
    """

    dt: float

    def __post_init__(self):
        _positive("dt", self.dt)

    def build(self, term: to.ODETerm, b: int, dtype: torch.dtype, device) -> tuple:
        return to.FixedStepController(), torch.full((b,), self.dt, dtype=dtype, device=device)

    def within(self, span: float) -> "FixedStep":
        """The same steps for an interval of length ``span`` (at most one step long)."""
        return self if self.dt <= span else FixedStep(span)


Controller = Adaptive | FixedStep


def resolve_controller(method: Method, controller: Controller | None = None, rtol: float | None = None,
                       atol: float | None = None, dt0: float | None = None) -> Controller:
    """The step-size controller of a solve: ``controller`` itself (checked against the
    method), or one built from the convenience options: ``Adaptive(rtol=1e-3, atol=1e-4,
    dt0)`` for an adaptive method, ``FixedStep(dt0)`` for a fixed-step one."""
    if controller is not None:
        given = [name for name, v in (("rtol", rtol), ("atol", atol), ("dt0", dt0)) if v is not None]
        if given:
            raise ValueError(f"pass {', '.join(given)} inside controller= ({type(controller).__name__}(...)), not beside it")
        if not isinstance(controller, (Adaptive, FixedStep)):
            raise TypeError(f"controller must be Adaptive(...) or FixedStep(dt), got {type(controller).__name__}")
        if isinstance(controller, Adaptive) and not method.adaptive:
            raise ValueError(f"{type(method).__name__} has no error estimate: use controller=FixedStep(dt)")
        return controller
    _positive("dt0", dt0, allow_none=True)
    if method.adaptive:
        return Adaptive(rtol=1e-3 if rtol is None else rtol, atol=1e-4 if atol is None else atol, dt0=dt0)
    if dt0 is None:
        raise ValueError(f"the fixed-step method {method.name!r} needs its step: dt0=... or controller=FixedStep(dt)")
    return FixedStep(dt0)


class SolverError(RuntimeError):
    """A solve did not reach the end of its interval.

    Shapes:
        ``status [B]``: the solver status of each sample (0: reached the end).
    """

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
    """Solver work of one :func:`~graphode.solve` call.

    ``n_f_evals``: vector-field evaluations of the forward solve (shared by the batch);
    ``n_steps``/``n_accepted``: the largest per-sample step counts; ``backward_f_evals``:
    evaluations of the augmented field during the backward pass (``Adjoint``, filled in
    once backward has run) or of the re-solve (``Checkpoint``).

    Shapes:
        no tensors: counts for the whole batch of ``B`` samples.
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


@dataclass(frozen=True)
class SolverConfig:
    """What every integration of one solve shares: method, controller, step budget."""

    method: Method
    controller: Controller
    max_steps: int


def integrate(
    f, y0: Tensor, t_grid: Tensor, config: SolverConfig, stats: SolveStats, context: str,
    dt0: Tensor | None = None, return_step: bool = False,
) -> Tensor | tuple[Tensor, Tensor | None]:
    """Solve ``dy/dt = f(t, y)`` from ``t_grid[0]`` to ``t_grid[-1]``: the states at
    ``t_grid``, ``[B, T, N]``; raises :class:`SolverError` when the solve fails.

    ``dt0 [B]`` overrides an adaptive controller's first step (a solve continued from
    another); with ``return_step`` the result is ``(states, step)``, ``step [B]`` the step
    size to continue with (None for fixed steps)."""
    y0 = node_major(y0)
    b = y0.size(0)
    term = to.ODETerm(lambda t, y: node_major_grad(f(t, y)))
    step = config.method.step(term)
    controller, first = config.controller.build(term, b, t_grid.dtype, y0.device)
    if dt0 is None or isinstance(config.controller, FixedStep):
        dt0 = first
    # Step sizes are treated as constants (as in diffrax): differentiating the controller
    # adds error-estimate derivatives that are wrong at ReLU kinks (2–4% off finite
    # differences, measured).
    # torchode flags status 3 once n_steps >= max_steps, even when that last step reached
    # the end; + 1 lets a solve take exactly max_steps steps.
    solver = to.AutoDiffAdjoint(step, controller, max_steps=config.max_steps + 1, backprop_through_step_size_control=False)
    t_eval = t_grid.to(y0.device).unsqueeze(0).expand(b, -1)
    problem = to.InitialValueProblem(y0=y0, t_start=t_eval[:, 0], t_end=t_eval[:, -1], t_eval=t_eval)
    sol = solver.solve(problem, dt0=dt0)
    status = sol.status
    # Fixed-step controllers never report a non-finite state: check the result itself.
    finite = torch.isfinite(sol.ys).flatten(1).all(1)
    if not bool(finite.all()):
        status = torch.where(finite | (status != 0), status, torch.full_like(status, 4))
    if bool((status != 0).any()):
        raise SolverError(status, context, config.max_steps)
    stats.add(sol.stats)
    if return_step:
        carried = controller.next_step() if isinstance(controller, rk.IntegralController) else None
        if carried is not None and dt0 is not None:
            # a segment shorter than the step it was given says little about the next one
            span = (t_grid[-1] - t_grid[0]).to(carried)
            carried = torch.where(span < dt0, dt0.to(carried), carried)
        return sol.ys, carried
    return sol.ys
