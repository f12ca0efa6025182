r"""Silence, clamp or drive neurons: reversible, composable perturbations of the dynamics.

:class:`Silence`
    The selected neurons' output is multiplied by ``gain`` (0: silenced): every synapse
    *leaving* them contributes nothing, ``a_i = Σ_j w_ij · g_j · f(v_j)``. The neurons
    themselves still integrate their input. Where the dynamics derive their weights, each
    edge's weight is multiplied by its presynaptic neuron's gain (``w_e · g[src_e]``, a
    transient ``[E]`` product like the weights themselves, not a copy of any parameter),
    so gradients still reach every other synapse and are exactly zero for the silenced
    neurons' outgoing ones.
:class:`Clamp`
    Voltage clamp to a constant, a per-neuron / per-sample tensor, or a time course
    ``value(t)``. Exact: wherever the network reads a clamped neuron's voltage it reads the
    command value ``c(t)`` (the state is substituted before the vector field is evaluated)
    and the clamped neuron's own derivative is 0 (``tau=None``, default;
    :func:`~graphode.circuits.simulate` starts it at ``c(t0)`` and reports ``c(t)`` in its
    output), or relaxes to ``c(t)`` with time constant ``tau``.
:class:`Drive`
    An extra current ``I(t)`` into the selected neurons:
    ``τ dv/dt = −v + A(v) + b + u(t) + I(t)``. ``I`` is a constant, a tensor, a callable of
    ``t`` or a :class:`~graphode.dynamics.Stimulus`; :func:`poisson_drive` makes a seeded
    Poisson pulse train (piecewise constant on a time grid).

Apply them for a block with ``with perturb(dynamics, Silence(m1), Drive(m2, 0.5)):`` (or
``with silence(dynamics, mask):``), or persistently with ``handle = p.apply(model)`` and
``handle.remove()`` — e.g. to train a network with a lesion — or for one solve with
``simulate(..., perturbations=[...])``. They are data that the dynamics read
(:class:`graphode.dynamics.Perturbation`): a solve takes the ones applied when it starts
and keeps them through its backward pass, so they act in every :func:`~graphode.solve` of
the dynamics, including ``ConnectomeClassifier.forward``, and gradients are right with
every gradient method wherever ``backward()`` runs. (A current or clamp value that itself
requires grad is differentiated by autodiff and checkpoint; the adjoint refuses it.)
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from ..dynamics import ConnectomeDynamics, Perturbation as DynamicsPerturbation, Stimulus
from ..field import arg_tensors
from .selection import _count, _resolve_neurons

__all__ = [
    "Perturbation", "PerturbationHandle", "Silence", "Clamp", "Drive", "poisson_drive", "perturb", "silence",
    "active_perturbations",
]


def _evaluate(value, t: Tensor, b: int, k: int, like: Tensor, what: str) -> Tensor:
    """A constant / tensor / callable of ``t [B]`` → ``[B, K]`` in ``like``'s dtype/device.

    Constants: scalar, ``[K]`` (per neuron) or ``[B, K]`` / ``[B, 1]`` / ``[1, K]``. Callables
    get ``t [B]`` and return a scalar, ``[B]`` (per sample), ``[B, 1]`` or ``[B, K]``.
    """
    is_fn = callable(value) and not isinstance(value, Tensor)
    if is_fn:
        tt = t.reshape(-1).expand(b) if t.numel() in (1, b) else t
        x = value(tt)
    else:
        x = value
    if isinstance(x, Tensor):
        x = x.to(dtype=like.dtype, device=like.device)
    else:  # python / numpy numbers straight to the state's dtype (no float32 rounding)
        x = torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=like.dtype, device=like.device)
    if x.dim() == 0:
        return x.expand(b, k)
    if x.dim() == 1:
        if is_fn and x.numel() == b and not isinstance(value, Stimulus):
            return x.unsqueeze(1).expand(b, k)
        if x.numel() == k:
            return x.unsqueeze(0).expand(b, k)
        if x.numel() == 1:
            return x.reshape(1, 1).expand(b, k)
    if x.dim() == 2 and x.size(0) in (1, b) and x.size(1) in (1, k):
        return x.expand(b, k)
    raise ValueError(
        f"{what}: cannot broadcast a value of shape {tuple(x.shape)} to [batch {b}, neurons {k}]"
    )


def _dynamics_of(target) -> ConnectomeDynamics:
    """The ConnectomeDynamics of ``target`` (itself, or ``target.dynamics``)."""
    if isinstance(target, ConnectomeDynamics):
        return target
    dyn = getattr(target, "dynamics", None)
    if isinstance(dyn, ConnectomeDynamics):
        return dyn
    raise TypeError(f"expected a ConnectomeDynamics or a model with .dynamics, got {type(target).__name__}")


def active_perturbations(target) -> list["Perturbation"]:
    """The perturbations currently applied to ``target``'s dynamics, in application order.

    Shapes:
        target: a ConnectomeDynamics or a model with ``.dynamics`` → a list.
    """
    return list(_dynamics_of(target).perturbations)


class PerturbationHandle:
    """Returned by :meth:`Perturbation.apply`; ``remove()`` undoes it (also on leaving a
    ``with`` block). Removing twice is harmless.

    Shapes:
        holds no tensors.
    """

    def __init__(self, dynamics: ConnectomeDynamics, perturbation: "Perturbation"):
        self.dynamics, self.perturbation = dynamics, perturbation

    def remove(self) -> None:
        """Take the perturbation off the dynamics."""
        self.dynamics.perturbations = [p for p in self.dynamics.perturbations if p is not self.perturbation]

    @property
    def active(self) -> bool:
        """Whether the perturbation is still applied."""
        return any(p is self.perturbation for p in self.dynamics.perturbations)

    def __enter__(self) -> "PerturbationHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class Perturbation(DynamicsPerturbation):
    """Base class of :class:`Silence`, :class:`Clamp` and :class:`Drive`.

    ``apply(target)`` adds it to ``target``'s dynamics (a ConnectomeDynamics or a model
    with ``.dynamics``) until the returned handle's ``remove()``. Every solve started
    meanwhile reads it as data (:class:`graphode.dynamics.Perturbation`), in its forward
    and backward passes alike.

    Shapes:
        neurons: BoolTensor ``[N]`` or ``K`` node indices.
    """

    neurons: Any

    def apply(self, target) -> PerturbationHandle:
        """Add this perturbation to ``target``'s dynamics; returns the handle that removes it."""
        dyn = _dynamics_of(target)
        if any(p is self for p in dyn.perturbations):
            raise ValueError(f"{self!r} is applied to these dynamics already")
        dyn.perturbations = [*dyn.perturbations, self]
        return PerturbationHandle(dyn, self)

    def resolve(self, num_nodes: int) -> Tensor:
        return _resolve_neurons(self.neurons, num_nodes, type(self).__name__)


class Silence(Perturbation):
    """Silence neurons: their output ``f(v)`` is scaled by ``gain`` (default 0) before the
    message passing, so their outgoing synapses contribute ``gain ×`` their normal input
    (nothing, at 0). Their own voltage still integrates their inputs.

    Args:
        neurons: BoolTensor ``[N]`` or node indices.
        gain: output gain of the selected neurons (0 silences, 0.5 halves, 2 doubles).

    Method: every edge weight is multiplied by its presynaptic neuron's gain where the
    weights are derived (``Σ_j w_ij g_j f(v_j)``); the synapse parameters and the graph are
    untouched, and the gradient to a silenced neuron's outgoing weights is 0.

    Shapes:
        neurons: ``[N]`` mask or ``K`` indices; ``output_gain`` → ``[N]``.
    """

    def __init__(self, neurons, gain: float = 0.0):
        self.neurons, self.gain = neurons, float(gain)

    def output_gain(self, index: Tensor, num_nodes: int) -> Tensor:
        node_gain = torch.ones(num_nodes, dtype=torch.float64, device=index.device)
        return node_gain.index_fill_(0, index, self.gain)

    def __repr__(self) -> str:
        return f"Silence({_count(self.neurons)} neurons, gain={self.gain:g})"


class Clamp(Perturbation):
    """Voltage-clamp neurons to ``value`` (a constant, a tensor ``[K]`` / ``[B, K]``, or a
    callable ``value(t [B]) -> [B] | [B, K]``).

    Method (exact): at each evaluation of the vector field the clamped neurons' entries of
    the state are replaced by ``value(t)``, so every synapse reads the command voltage; the
    clamped neurons' own derivative is 0 (``tau=None``) — :func:`~graphode.circuits.simulate`
    then starts them at ``value(t0)`` and reports ``value(t)`` at every output time — or
    ``(value(t) − v)/tau`` (``tau > 0``: the state itself follows the command, useful when
    the solve is run by code that reads the raw state, such as a classifier's readout;
    :func:`~graphode.circuits.simulate` starts it at ``value(t0)`` and reports the state).
    Clamps act after every :class:`Drive`.

    Shapes:
        neurons: ``[N]`` mask or ``K`` indices; value: scalar, ``[K]``, ``[B, K]`` or a
        callable of ``t [B]``.
    """

    order = 1

    def __init__(self, neurons, value, tau: float | None = None):
        if tau is not None and not tau > 0:
            raise ValueError(f"Clamp tau must be None or > 0, got {tau}")
        self.neurons, self.value, self.tau = neurons, value, tau

    def tensors(self) -> tuple[Tensor, ...]:
        """The tensors the command value depends on."""
        return tuple(arg_tensors([self.value]))

    def substitute(self, t: Tensor, v: Tensor, index: Tensor) -> Tensor:
        return v.index_copy(1, index, _evaluate(self.value, t, v.size(0), index.numel(), v, "Clamp value"))

    def rate(self, t: Tensor, v: Tensor, v_read: Tensor, dvdt: Tensor, tau: Tensor, index: Tensor) -> Tensor:
        if self.tau is None:
            new = dvdt.new_zeros(dvdt.size(0), index.numel())
        else:
            new = (v_read.index_select(1, index) - v.index_select(1, index)) / self.tau
        return dvdt.index_copy(1, index, new)

    def values_at(self, ts: Tensor, b: int, like: Tensor) -> Tensor:
        """The command value at each of ``ts [T]``: ``[B, T, K]``."""
        k = _count(self.neurons)
        return torch.stack(
            [_evaluate(self.value, t.reshape(1).expand(b).to(like.dtype), b, k, like, "Clamp value") for t in ts], 1
        )

    def __repr__(self) -> str:
        val = "callable" if callable(self.value) else self.value
        return f"Clamp({_count(self.neurons)} neurons, value={val}, tau={self.tau})"


class Drive(Perturbation):
    """Inject an extra current into neurons: ``τ dv/dt = −v + A(v) + b + u(t) + I(t)``.

    Args:
        neurons: BoolTensor ``[N]`` or node indices (``K`` neurons; per-neuron values follow
            ascending index order for a mask, the given order for indices).
        current: a constant, a tensor ``[K]`` / ``[B, K]``, a callable ``I(t [B]) -> [B] |
            [B, K]`` or a :class:`~graphode.dynamics.Stimulus` (see :func:`poisson_drive`).

    Shapes:
        neurons: ``[N]`` mask or ``K`` indices; current: scalar, ``[K]``, ``[B, K]`` or a
        function of ``t [B]``.
    """

    def __init__(self, neurons, current):
        self.neurons, self.current = neurons, current

    def tensors(self) -> tuple[Tensor, ...]:
        """The tensors the current depends on."""
        return tuple(arg_tensors([self.current]))

    def rate(self, t: Tensor, v: Tensor, v_read: Tensor, dvdt: Tensor, tau: Tensor, index: Tensor) -> Tensor:
        cur = _evaluate(self.current, t, dvdt.size(0), index.numel(), dvdt, "Drive current")
        tau = tau.index_select(0, index) if tau.numel() > 1 else tau
        return dvdt.index_add(1, index, cur / tau.to(dvdt.dtype))

    def __repr__(self) -> str:
        kind = type(self.current).__name__ if callable(self.current) else self.current
        return f"Drive({_count(self.neurons)} neurons, current={kind})"


def poisson_drive(
    neurons,
    *,
    rate: float | Tensor,
    t_span: tuple[float, float],
    dt: float,
    amplitude: float = 1.0,
    seed: int = 0,
    batch_size: int = 1,
    dtype: torch.dtype = torch.float64,
) -> Drive:
    """A Poisson-like random drive: on a grid of bins of width ``dt`` over ``t_span``, each
    selected neuron receives ``amplitude × n`` with ``n ~ Poisson(rate · dt)`` per bin
    (piecewise constant, zero outside the bins). Reproducible: the pulses come from
    ``torch.Generator(seed)``.

    Args:
        neurons: BoolTensor ``[N]`` or indices (K neurons).
        rate: events per unit time, a scalar or ``[K]``.
        t_span: the interval the ``S`` bins cover.
        dt: the bin width.
        amplitude: the current of one event.
        seed: the seed of the pulses.
        batch_size: 1 (the same pulses for every sample) or B (independent per sample).
        dtype: the dtype of the current.

    Returns:
        a :class:`Drive` whose ``current`` is a piecewise-constant
        :class:`~graphode.dynamics.Stimulus`: ``current.values [B, S + 2, K]`` holds the
        pulses of the ``S`` bins between a zero sample before and one after them.

    Shapes:
        neurons: ``[N]`` mask or ``K`` indices → current ``[B, K]`` at each time.
    """
    k = _count(neurons)
    if k is None:
        raise ValueError("poisson_drive: neurons must be given")
    t0, t1 = float(t_span[0]), float(t_span[1])
    if not (t1 > t0 and dt > 0):
        raise ValueError(f"poisson_drive: need t_span increasing and dt > 0, got {t_span}, {dt}")
    s = max(1, int(math.ceil((t1 - t0) / dt - 1e-9)))
    lam = torch.as_tensor(rate, dtype=torch.float64) * dt
    if (lam < 0).any():
        raise ValueError("poisson_drive: rate must be >= 0")
    gen = torch.Generator().manual_seed(int(seed))
    counts = torch.poisson(lam.expand(batch_size, s, k).contiguous(), generator=gen)
    zero = counts.new_zeros(batch_size, 1, k)
    values = torch.cat([zero, amplitude * counts, zero], 1).to(dtype)
    times = t0 + dt * torch.arange(-1, s + 1, dtype=torch.float64)  # the bins' starts, and one before and after
    return Drive(neurons, Stimulus(values=values, times=times, interpolation="constant"))


@contextlib.contextmanager
def perturb(target, *perturbations: Perturbation) -> Iterator[ConnectomeDynamics]:
    """Apply perturbations for the duration of a ``with`` block; yields the dynamics.

    ``target`` is a ConnectomeDynamics or a model with ``.dynamics``; everything is
    restored on exit, also after an exception. A solve started inside the block keeps the
    perturbations through its backward pass, wherever ``backward()`` runs.

    Shapes:
        perturbations: any number of :class:`Silence`, :class:`Clamp`, :class:`Drive`.
    """
    handles = []
    try:
        for p in perturbations:
            if not isinstance(p, Perturbation):
                raise TypeError(f"expected Silence, Clamp or Drive, got {type(p).__name__}")
            handles.append(p.apply(target))
        yield _dynamics_of(target)
    finally:
        for h in reversed(handles):
            h.remove()


def silence(target, neurons, gain: float = 0.0):
    """``with silence(dynamics_or_model, mask):`` — shorthand for ``perturb(target, Silence(mask))``.

    Shapes:
        neurons: BoolTensor ``[N]`` or node indices.
    """
    return perturb(target, Silence(neurons, gain))
