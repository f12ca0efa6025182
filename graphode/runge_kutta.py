"""torchode's explicit Runge–Kutta steps, with the stages kept as separate tensors.

torchode's ``ExplicitRungeKutta.step`` writes every stage ``k_i [B, N]`` into one
preallocated ``[S, B, N]`` buffer and forms each stage input with an ``einsum`` over that
buffer. Under autodiff this is costly at connectome scale: every in-place stage write is
recorded as a ``CopySlices`` node whose backward clones the gradient of the whole buffer,
and the ``einsum`` over a buffer slice writes into a fresh ``[B, N]`` even when a stage
has two terms. Profiled on the fly visual system (B = 256, N = 45,669), device-to-device
copies and fills were a quarter of a training step.

The steps here compute the same Butcher tableau (torchode's own ``TABLEAU``s and
interpolants) with

- the stages in a Python list, each stage input ``y0 + dt · Σ_j a_ij k_j`` built from the
  nonzero ``a_ij`` only;
- the error estimate (which only feeds step-size control, never differentiated: see
  ``backprop_through_step_size_control``) and the controller's decision computed without
  recording autograd history;
- the stacked ``[S, B, N]`` stages built only when a dense-output interpolation is needed
  (a step that passes an evaluation time).

They are drop-in ``step_method`` objects for ``torchode.AutoDiffAdjoint`` with
``backprop_through_step_size_control=False`` (as :func:`graphode.solve` runs it): the
step sizes must be constants to the gradient, since the error estimate and the controller
record no derivatives. Accepted steps, solutions and gradients equal torchode's up to
floating-point summation order (tests compare them in float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchode as to
from torch import Tensor
from torchode.interpolation import FourthOrderPolynomialInterpolation
from torchode.single_step_methods.base import StepResult
from torchode.single_step_methods.runge_kutta import ButcherTableau, ERKInterpolationData, ERKState

from . import kernels
from ._layout import node_major_grad

__all__ = ["Dopri5", "Tsit5", "Heun", "IntegralController"]


@dataclass(frozen=True)
class _Weights:
    """A tableau's coefficients as Python floats: ``a[i]`` the weights of stage ``i``'s
    input, ``b`` the solution's, ``b_err`` the error estimate's."""

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_err: tuple[float, ...]

    @classmethod
    def of(cls, tableau: ButcherTableau) -> "_Weights":
        a = tableau.a.tolist()
        return cls(
            a=tuple(tuple(row[:i]) for i, row in enumerate(a)),
            b=tuple(tableau.b.tolist()),
            b_err=tuple(tableau.b_err.tolist()),
        )


def combine(
    y0: Tensor | None, dt: Tensor, weights: tuple[float, ...], stages: list[Tensor], fuse: bool | None = None
) -> Tensor:
    """``y0 + dt · Σ_j weights[j] · stages[j]`` (``dt · Σ …`` without ``y0``).

    ``y0, stages[j]: [B, N]``, ``dt: [B, 1]``; zero weights are skipped. The result has the
    memory layout of the stages. On CUDA, float32 operands go through one fused Triton
    kernel forward and one backward (:class:`graphode.kernels.FusedCombination`); torch
    needs a kernel per term each way. ``fuse`` is the fusion policy
    (:func:`graphode.kernels.fusing`).
    """
    terms = [(w, k) for w, k in zip(weights, stages) if w != 0.0]
    if not terms:
        return torch.zeros_like(stages[0]) if y0 is None else y0
    coefficients, used = zip(*terms)
    if kernels.combination_supported(y0, dt, list(used), fuse):
        return kernels.FusedCombination.apply(dt, coefficients, y0, *used)
    acc = None
    for w, k in terms:
        acc = k * w if acc is None else acc.add(k, alpha=w)
    return acc * dt if y0 is None else torch.addcmul(y0, dt, acc)


class _SeparateStages:
    """Mixin over ``torchode.ExplicitRungeKutta`` (see the module docs).

    Its ``ERKInterpolationData.k`` holds the list of stages, not torchode's stacked tensor;
    only this class's ``build_interpolation`` reads it.
    """

    _weights: _Weights  # the class's TABLEAU as Python floats, set once per subclass
    fuse: bool | None = None  # the stage sums' fusion policy (graphode.kernels.fusing)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._weights = _Weights.of(cls.TABLEAU)

    def step(self, term, running, y0: Tensor, t0: Tensor, dt: Tensor, state: ERKState, *, stats, args):
        term_ = self.term if term is None else term
        tableau = state.tableau
        weights = self._weights
        dt_data = dt.to(dtype=y0.dtype).unsqueeze(1)
        reuse = tableau.fsal and state.prev_vf1 is not None
        stages = [state.prev_vf1 if reuse else term_.vf(t0, y0, stats, args)]
        t_nodes = torch.addcmul(t0, tableau.c[:, None], dt)
        y_i = y0
        for i in range(1, tableau.n_stages):
            y_i = combine(y0, dt_data, weights.a[i], stages, self.fuse)
            stages.append(term_.vf(t_nodes[i], y_i, stats, args))
        y1 = y_i if tableau.ssal else combine(y0, dt_data, weights.b, stages, self.fuse)
        with torch.no_grad():
            error = combine(None, dt_data, weights.b_err, stages, self.fuse)
        if tableau.fsal:
            state = ERKState(state.tableau, stages[-1])
        # ``k`` is the list of stages here; build_interpolation stacks it when needed.
        return StepResult(y1, error), ERKInterpolationData(tableau, t0, dt, y0, y1, stages), state, None

    def build_interpolation(self, data: ERKInterpolationData):
        # Gradients reach the interpolant row-major (torchode gathers them out of its
        # [B, T, N] output buffer). Converted where they enter, they stay node-major through
        # every step before; otherwise each accumulation into the steps' node-major
        # gradients runs strided (graphode._layout).
        return super().build_interpolation(data._replace(
            y0=node_major_grad(data.y0), y1=node_major_grad(data.y1), k=torch.stack([node_major_grad(k) for k in data.k]),
        ))


class Dopri5(_SeparateStages, to.Dopri5):
    """Dormand–Prince 5(4) (torchode's tableau and interpolant), stages kept separate.

    The dense output is torchode's ``FourthOrderPolynomialInterpolation.from_k`` written on
    the list of stages: the midpoint is one stage sum (:func:`combine`) where torchode
    stacks the seven stages and contracts them.

    Shapes:
        torchode's step interface: states ``[B, N]``, times and step sizes ``[B]``.
    """

    _MIDPOINT = tuple(to.Dopri5.TABLEAU.b_other[0].tolist())  # the midpoint's stage weights

    def build_interpolation(self, data: ERKInterpolationData):
        dt = data.dt.to(dtype=data.y0.dtype).unsqueeze(1)
        y0, y1 = data.y0, data.y1
        f0, f1 = dt * data.k[0], dt * data.k[-1]
        y_mid = combine(y0, dt, self._MIDPOINT, data.k, self.fuse)
        a = (2 * (f1 - f0)).add(y1 + y0, alpha=-8).add(y_mid, alpha=16)
        b = (5 * f0).add(f1, alpha=-3).add(y0, alpha=18).add(y1, alpha=14).add(y_mid, alpha=-32)
        c = f1.add(f0, alpha=-4).add(y0, alpha=-11).add(y1, alpha=-5).add(y_mid, alpha=16)
        # The interpolant's gradients arrive row-major (see _SeparateStages): converted at
        # its five coefficients, they stay node-major through every step before.
        coefficients = tuple(node_major_grad(x) for x in (y0, f0, c, b, a))
        return FourthOrderPolynomialInterpolation(data.t0, data.t0 + data.dt, coefficients)


class Tsit5(_SeparateStages, to.Tsit5):
    """Tsitouras 5(4) (torchode's tableau and interpolant), stages kept separate.

    Shapes:
        as :class:`Dopri5`.
    """


class Heun(_SeparateStages, to.Heun):
    """Heun's method (torchode's tableau and interpolant), stages kept separate.

    Shapes:
        as :class:`Dopri5`.
    """


class IntegralController(to.IntegralController):
    """torchode's integral step-size controller, deciding without autograd history.

    Step sizes are constants to the gradient (``backprop_through_step_size_control=False``),
    so the error norm and the accept/reject decision need no graph; torchode's controller
    records one anyway, which holds ``|y0|``, ``|y1|`` and the error bounds of every step
    until backward.

    It also remembers the step sizes it proposed after the last two accepted steps
    (:meth:`next_step`), so that a solve continued from where this one ended (the next
    segment of a checkpointed or adjoint solve) starts with a fitting step instead of
    selecting one afresh.

    Shapes:
        step sizes ``[B]``, one per sample.
    """

    _accepted: tuple[Tensor, Tensor] | None = None

    def adapt_step_size(self, t0, dt, y0, step_result, state, stats):
        with torch.no_grad():
            accept, dt_next, state, status = super().adapt_step_size(t0, dt, y0, step_result, state, stats)
            # samples that reached the end take steps of 0 (and propose 0) until all have
            taken = accept & (dt != 0)
            if self._accepted is None:
                self._accepted = (dt_next, dt_next)
            else:
                previous, last = self._accepted
                self._accepted = (torch.where(taken, last, previous), torch.where(taken, dt_next, last))
        return accept, dt_next, state, status

    def next_step(self) -> Tensor | None:
        """``[B]`` a step size to continue with: the larger of the last two proposals after
        accepted steps (the very last step is usually shortened to end on the interval's
        end, and so is the proposal after it)."""
        return None if self._accepted is None else torch.maximum(*self._accepted).abs()
