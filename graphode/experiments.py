r"""Circuit experiments: select neurons, silence, clamp or drive them, record, lesion-scan.

Connectome modellers perturb the circuit and watch what happens. This module does that
on a :class:`~graphode.dynamics.ConnectomeDynamics` (or any model holding one as
``.dynamics``, e.g. a trained :class:`~graphode.models.ConnectomeClassifier`) without
rebuilding the graph and without copying the synapse tensors.

Selecting neurons
    :func:`select_neurons` returns a boolean mask ``[N]`` from original ids
    (``data.node_id`` / ``data.node_names``), node indices, cell type names, a mask or a
    predicate over the graph (``where=lambda d: d.pos[:, 0] > 0``). Several criteria are
    intersected. It works on a ``Data`` and on a PyG ``Batch`` (cell type names are then
    looked up per graph through ``data.batch``).

Perturbations (all reversible, all composable, several at once)
    :class:`Silence` — the selected neurons' output is multiplied by ``gain`` (0: silenced):
    every synapse *leaving* them contributes nothing, ``a_i = Σ_j w_ij · g_j · f(v_j)``.
    The neurons themselves still integrate their input. Where the dynamics derive their
    weights, each edge's weight is multiplied by its presynaptic neuron's gain
    (``w_e · g[src_e]``, a transient ``[E]`` product like the weights themselves, not a
    copy of any parameter), so gradients still
    reach every other synapse and are exactly zero for the silenced neurons' outgoing ones.

    :class:`Clamp` — voltage clamp to a constant, a per-neuron / per-sample tensor, or a time
    course ``value(t)``. Exact: wherever the network reads a clamped neuron's voltage it
    reads the command value ``c(t)`` (the state is substituted before the vector field is
    evaluated) and the clamped neuron's own derivative is 0 (``tau=None``, default;
    :func:`simulate` starts it at ``c(t0)`` and reports ``c(t)`` in its output), or relaxes
    to ``c(t)`` with time constant ``tau``.

    :class:`Drive` — inject an extra current ``I(t)`` into the selected neurons:
    ``τ dv/dt = −v + A(v) + b + u(t) + I(t)``. ``I`` is a constant, a tensor, a callable of
    ``t`` or a :class:`~graphode.dynamics.Stimulus`; :func:`poisson_drive` makes a seeded
    Poisson pulse train (piecewise constant on a time grid).

    Apply them for a block with ``with perturb(dynamics, Silence(m1), Drive(m2, 0.5)):``
    (or ``with silence(dynamics, mask):``), or persistently with ``handle = p.apply(model)``
    and ``handle.remove()`` — e.g. to train a network with a lesion — or for one solve
    with ``simulate(..., perturbations=[...])``. They are data that the dynamics read
    (:class:`graphode.dynamics.Perturbation`): a solve takes the ones applied when it
    starts and keeps them through its backward pass, so they act in every
    :func:`~graphode.solve.solve` of the dynamics, including ``ConnectomeClassifier.forward``,
    and gradients are right with every gradient method wherever ``backward()`` runs. (A
    current or clamp value that itself requires grad is differentiated by autodiff and
    checkpoint; the adjoint refuses it.)

Recording
    :func:`simulate` solves the (perturbed) dynamics; :func:`record` returns a
    :class:`Recording` of chosen neurons (``ts [T]``, ``values [B, T, K]``, neuron indices,
    ids and cell types) with ``.to_dataframe()`` (tidy: sample, time, neuron, neuron_id,
    cell_type, value) and ``.by_cell_type()`` (mean response per cell type).

Lesion experiments
    :func:`lesion_scan` silences each group in turn, evaluates a user metric, restores the
    network and returns a tidy table; :func:`plot_lesions` draws it as a bar chart (PNG).

Example (``examples/circuit_experiments.py`` is a complete one)::

    import torch
    from graphode import fly_visual_system, BoundDynamics
    from graphode.experiments import (select_neurons, Silence, Drive, perturb, record,
                                      lesion_scan, plot_lesions)

    data = fly_visual_system(extent=4)
    dyn = BoundDynamics(data, tau=0.2, bias=0.5)
    flash = torch.zeros(1, data.num_nodes); flash[:, data.input_mask] = 1.0
    ts = torch.linspace(0, 1, 21)
    control = record(dyn, data, flash, cell_types=["L1", "L2", "Mi1"], t_eval=ts)
    with perturb(dyn, Silence(select_neurons(data, cell_types="L1"))):
        lesioned = record(dyn, data, flash, cell_types=["L1", "L2", "Mi1"], t_eval=ts)
    print(lesioned.by_cell_type().to_dataframe())
    table = lesion_scan(dyn, ["L1", "L2", "L3"], lambda d: float(
        record(d, data, flash, cell_types="Mi1", t_eval=ts).values.mean()), data=data)
    plot_lesions(table, "lesions.png")
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .dynamics import BoundDynamics, ConnectomeDynamics, Perturbation as DynamicsPerturbation, Stimulus
from .field import arg_tensors
from .solve import Solution, solve

__all__ = [
    "select_neurons",
    "neuron_cell_types",
    "neuron_ids",
    "neuron_table",
    "Perturbation",
    "PerturbationHandle",
    "Silence",
    "Clamp",
    "Drive",
    "PulseTrain",
    "poisson_drive",
    "perturb",
    "silence",
    "active_perturbations",
    "simulate",
    "record",
    "Recording",
    "CellTypeResponses",
    "lesion_scan",
    "plot_lesions",
]


# ------------------------------------------------------------------------------- selection
def _num_nodes(data) -> int:
    return int(data.num_nodes)


def _is_batch(data) -> bool:
    return getattr(data, "batch", None) is not None and getattr(data, "num_graphs", None) is not None


def _flat_names(names: Sequence) -> list:
    """Flatten a Batch's list-of-lists (per graph) into one list; a plain list is kept."""
    if len(names) and isinstance(names[0], (list, tuple)):
        return [x for sub in names for x in sub]
    return list(names)


def neuron_cell_types(data) -> list[str]:
    """The cell type name of every neuron, ``list[str]`` of length N.

    For a ``Batch`` the codes in ``data.cell_type`` are relative to each graph's own
    ``cell_type_names``; they are resolved per graph through ``data.batch``. Without cell
    types every neuron is ``"unknown"``.
    """
    n = _num_nodes(data)
    codes = getattr(data, "cell_type", None)
    names = getattr(data, "cell_type_names", None)
    if codes is None:
        return ["unknown"] * n
    codes = codes.tolist()
    if names is None:
        return [str(c) for c in codes]
    if len(names) and isinstance(names[0], (list, tuple)):  # Batch: one name list per graph
        graph = data.batch.tolist()
        return [str(names[g][c]) for g, c in zip(graph, codes)]
    return [str(names[c]) for c in codes]


def neuron_ids(data) -> list | None:
    """The original id of every neuron (``data.node_id`` or ``data.node_names``), or None."""
    node_id = getattr(data, "node_id", None)
    if node_id is not None:
        return node_id.tolist()
    names = getattr(data, "node_names", None)
    if names is not None:
        return _flat_names(names)
    return None


def neuron_table(data) -> pd.DataFrame:
    """One row per neuron: ``neuron`` (index), ``neuron_id``, ``cell_type``, ``graph``
    (for a Batch), and ``x``, ``y`` when ``data.pos`` exists."""
    n = _num_nodes(data)
    table = {"neuron": np.arange(n)}
    ids = neuron_ids(data)
    table["neuron_id"] = ids if ids is not None else np.arange(n)
    table["cell_type"] = neuron_cell_types(data)
    if _is_batch(data):
        table["graph"] = data.batch.cpu().numpy()
    pos = getattr(data, "pos", None)
    if pos is not None:
        table["x"] = pos[:, 0].cpu().numpy()
        table["y"] = pos[:, 1].cpu().numpy()
    return pd.DataFrame(table)


def _as_list(x) -> list:
    if isinstance(x, (str, bytes, int, np.integer)):
        return [x]
    if isinstance(x, Tensor):
        return x.flatten().tolist()
    if isinstance(x, np.ndarray):
        return x.flatten().tolist()
    return list(x)


def _show(items: Sequence, limit: int = 8) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _index_to_mask(index, n: int, what: str = "index") -> Tensor:
    idx = torch.as_tensor(_as_list(index), dtype=torch.long)
    if idx.numel() and (idx.min() < -n or idx.max() >= n):
        bad = idx[(idx < -n) | (idx >= n)].tolist()
        raise ValueError(f"{what}: neuron indices out of range [0, {n}): {_show(bad)}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[idx % n if idx.numel() else idx] = True
    return mask


def _check_mask(mask, n: int, what: str) -> Tensor:
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"{what} must be a boolean tensor [N]; got dtype {mask.dtype} (use index= for indices)")
    if mask.shape != (n,):
        raise ValueError(f"{what} must have shape [{n}], got {tuple(mask.shape)}")
    return mask.cpu()


def select_neurons(
    data,
    *,
    ids=None,
    index=None,
    cell_types=None,
    mask=None,
    where: Callable[[Any], Any] | None = None,
) -> Tensor:
    """Select neurons of a connectome; returns a BoolTensor ``[N]`` (on the CPU).

    Args:
        data: a connectome ``Data`` or a PyG ``Batch`` of them.
        ids: original neuron id(s), looked up in ``data.node_id`` (integers) or
            ``data.node_names`` (strings). In a Batch an id present in several graphs
            selects it in each.
        index: node index(es) ``0..N-1`` (negative counts from the end).
        cell_types: cell type name(s) (``data.cell_type_names``; per graph in a Batch), or
            integer type codes.
        mask: a boolean tensor ``[N]``.
        where: a predicate over the graph, ``where(data) -> BoolTensor [N]`` (e.g.
            ``lambda d: d.pos[:, 0] > 0``) or an index tensor.

    Criteria given together are intersected (AND); with none, every neuron is selected.

    Raises:
        ValueError: unknown ids or cell types (naming them, and listing the known types),
            indices out of range, or a mask/predicate result of the wrong shape.
    """
    n = _num_nodes(data)
    out = torch.ones(n, dtype=torch.bool)
    if ids is not None:
        wanted = _as_list(ids)
        node_id = getattr(data, "node_id", None)
        if node_id is not None:
            try:
                q = torch.as_tensor([int(i) for i in wanted], dtype=torch.long)
            except (TypeError, ValueError):
                raise ValueError(f"ids: this graph has integer node_id; got {_show(wanted)}") from None
            known = node_id.cpu().long()
            found = torch.isin(q, known)
            if not bool(found.all()):
                raise ValueError(f"ids: {int((~found).sum())} id(s) not in the graph: {_show(q[~found].tolist())}")
            sel = torch.isin(known, q)
        elif getattr(data, "node_names", None) is not None:
            names = _flat_names(data.node_names)
            q = {str(i) for i in wanted}
            known_names = set(names)
            missing = [i for i in wanted if str(i) not in known_names]
            if missing:
                raise ValueError(f"ids: {len(missing)} id(s) not in the graph: {_show(missing)}")
            sel = torch.tensor([nm in q for nm in names], dtype=torch.bool)
        else:
            raise ValueError("ids: the graph has neither node_id nor node_names; select by index= instead")
        out &= sel
    if index is not None:
        out &= _index_to_mask(index, n, "index")
    if cell_types is not None:
        wanted = _as_list(cell_types)
        if getattr(data, "cell_type", None) is None:
            raise ValueError("cell_types: the graph has no cell_type attribute")
        codes = data.cell_type.cpu()
        by_name = [w for w in wanted if isinstance(w, str)]
        by_code = [int(w) for w in wanted if not isinstance(w, str)]
        sel = torch.zeros(n, dtype=torch.bool)
        if by_name:
            per_neuron = neuron_cell_types(data)
            known = sorted(set(per_neuron), key=per_neuron.index)
            missing = [w for w in by_name if w not in set(known)]
            if missing:
                raise ValueError(f"cell_types: unknown cell type(s) {_show(missing)}; known types: {_show(known, 80)}")
            q = set(by_name)
            sel |= torch.tensor([t in q for t in per_neuron], dtype=torch.bool)
        if by_code:
            q = torch.as_tensor(by_code, dtype=torch.long)
            bad = q[~torch.isin(q, codes)].tolist()
            if bad:
                raise ValueError(f"cell_types: no neuron has type code(s) {_show(bad)}")
            sel |= torch.isin(codes, q)
        out &= sel
    if mask is not None:
        out &= _check_mask(mask, n, "mask")
    if where is not None:
        res = where(data)
        res = torch.as_tensor(res)
        if res.dtype == torch.bool:
            out &= _check_mask(res, n, "where(data)")
        else:
            out &= _index_to_mask(res, n, "where(data)")
    return out


def _resolve_neurons(neurons, n: int, what: str) -> Tensor:
    """Mask ``[N]`` or index sequence → LongTensor of node indices (mask order ascending,
    index order as given; duplicates rejected)."""
    if neurons is None:
        raise ValueError(f"{what}: neurons must be given (a mask [N] or indices)")
    if isinstance(neurons, Tensor) and neurons.dtype == torch.bool:
        return torch.nonzero(_check_mask(neurons, n, what)).flatten()
    idx = torch.as_tensor(_as_list(neurons), dtype=torch.long)
    if idx.numel() and (idx.min() < -n or idx.max() >= n):
        raise ValueError(f"{what}: neuron indices out of range [0, {n})")
    idx = idx % n if idx.numel() else idx
    if idx.unique().numel() != idx.numel():
        raise ValueError(f"{what}: duplicate neuron indices")
    return idx


def _count(neurons) -> int | None:
    if neurons is None:
        return None
    if isinstance(neurons, Tensor) and neurons.dtype == torch.bool:
        return int(neurons.sum())
    return len(_as_list(neurons))


# ---------------------------------------------------------------------- values over time
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
        if is_fn and x.numel() == b and not isinstance(value, (Stimulus, PulseTrain)):
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


class PulseTrain:
    """A piecewise-constant current ``I(t)`` on a time grid: ``values[b, s, k]`` holds on
    ``[times[s], times[s] + dt)``, zero outside ``[times[0], times[-1] + dt)``.

    ``values`` is ``[B, S, K]`` (``B = 1`` is shared by every sample). Called with ``t [B]``
    it returns ``[B, K]``; each sample reads its own time (torchode steps samples apart).
    """

    def __init__(self, values: Tensor, times: Tensor, dt: float):
        if values.dim() != 3 or times.dim() != 1 or times.numel() != values.size(1):
            raise ValueError(
                f"PulseTrain needs values [B, S, K] and times [S]; got {tuple(values.shape)}, {tuple(times.shape)}"
            )
        self.values, self.times, self.dt = values, times, float(dt)

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.values,)

    def with_tensors(self, tensors) -> "PulseTrain":
        """The same pulse train reading ``tensors[0]`` as its values."""
        return PulseTrain(tensors[0], self.times, self.dt)

    def __call__(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t).reshape(-1).to(self.times.dtype)
        b = t.numel()
        idx = torch.searchsorted(self.times, t.contiguous(), right=True) - 1
        inside = (idx >= 0) & (t < self.times[-1] + self.dt)
        idx = idx.clamp(0, self.times.numel() - 1)
        rows = torch.zeros(b, dtype=torch.long) if self.values.size(0) == 1 else torch.arange(b)
        if self.values.size(0) not in (1, b):
            raise ValueError(f"PulseTrain has {self.values.size(0)} samples, the solve {b}")
        v = self.values[rows.to(self.values.device), idx.to(self.values.device)]
        return v * inside.to(v.dtype).unsqueeze(1).to(v.device)


# ------------------------------------------------------------------------------ perturbations
def _dynamics_of(target) -> ConnectomeDynamics:
    """The ConnectomeDynamics of ``target`` (itself, or ``target.dynamics``)."""
    if isinstance(target, ConnectomeDynamics):
        return target
    dyn = getattr(target, "dynamics", None)
    if isinstance(dyn, ConnectomeDynamics):
        return dyn
    raise TypeError(f"expected a ConnectomeDynamics or a model with .dynamics, got {type(target).__name__}")


def active_perturbations(target) -> list["Perturbation"]:
    """The perturbations currently applied to ``target``'s dynamics, in application order."""
    return list(_dynamics_of(target).perturbations)


class PerturbationHandle:
    """Returned by :meth:`Perturbation.apply`; ``remove()`` undoes it (also on leaving a
    ``with`` block). Removing twice is harmless."""

    def __init__(self, dynamics: ConnectomeDynamics, perturbation: "Perturbation"):
        self.dynamics, self.perturbation = dynamics, perturbation

    def remove(self) -> None:
        self.dynamics.perturbations = [p for p in self.dynamics.perturbations if p is not self.perturbation]

    @property
    def active(self) -> bool:
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
    """

    neurons: Any

    def apply(self, target) -> PerturbationHandle:
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
    clamped neurons' own derivative is 0 (``tau=None``) — :func:`simulate` then starts them
    at ``value(t0)`` and reports ``value(t)`` at every output time — or
    ``(value(t) − v)/tau`` (``tau > 0``: the state itself follows the command, useful when
    the solve is run by code that reads the raw state, such as a classifier's readout;
    :func:`simulate` starts it at ``value(t0)`` and reports the state). Clamps act after
    every :class:`Drive`.
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
            [B, K]``, a :class:`~graphode.dynamics.Stimulus` or a :class:`PulseTrain`
            (see :func:`poisson_drive`).
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
    (piecewise constant). Reproducible: the pulses come from ``torch.Generator(seed)``.

    Args:
        neurons: BoolTensor ``[N]`` or indices (K neurons).
        rate: events per unit time, a scalar or ``[K]``.
        batch_size: 1 (the same pulses for every sample) or B (independent per sample).

    Returns:
        a :class:`Drive` whose ``current`` is a :class:`PulseTrain` (``current.values`` holds
        the pulses ``[B, S, K]``).
    """
    k = _count(neurons)
    if k is None:
        raise ValueError("poisson_drive: neurons must be given")
    t0, t1 = float(t_span[0]), float(t_span[1])
    if not (t1 > t0 and dt > 0):
        raise ValueError(f"poisson_drive: need t_span increasing and dt > 0, got {t_span}, {dt}")
    s = max(1, int(math.ceil((t1 - t0) / dt - 1e-9)))
    times = t0 + dt * torch.arange(s, dtype=torch.float64)
    lam = torch.as_tensor(rate, dtype=torch.float64) * dt
    if (lam < 0).any():
        raise ValueError("poisson_drive: rate must be >= 0")
    gen = torch.Generator().manual_seed(int(seed))
    counts = torch.poisson(lam.expand(batch_size, s, k).contiguous(), generator=gen)
    return Drive(neurons, PulseTrain((amplitude * counts).to(dtype), times, dt))


@contextlib.contextmanager
def perturb(target, *perturbations: Perturbation) -> Iterator[ConnectomeDynamics]:
    """Apply perturbations for the duration of a ``with`` block; yields the dynamics.

    ``target`` is a ConnectomeDynamics or a model with ``.dynamics``; everything is
    restored on exit, also after an exception. A solve started inside the block keeps the
    perturbations through its backward pass, wherever ``backward()`` runs.
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
    """``with silence(dynamics_or_model, mask):`` — shorthand for ``perturb(target, Silence(mask))``."""
    return perturb(target, Silence(neurons, gain))


# ------------------------------------------------------------------------------- simulation
def _model_solver_kwargs(model) -> dict:
    cfg = getattr(model, "config", {}) or {}
    keys = ("method", "rtol", "atol", "dt0", "max_steps", "gradient", "checkpoints")
    return {k: cfg[k] for k in keys if k in cfg}


def _batch_of(stimulus) -> int | None:
    if isinstance(stimulus, Tensor) and stimulus.dim() >= 2:
        return stimulus.size(0)
    if isinstance(stimulus, Stimulus) and stimulus.values is not None:
        return stimulus.values.size(0)
    return None


def simulate(
    target,
    stimulus=None,
    *,
    graph=None,
    t_eval=None,
    t_span: tuple[float, float] | None = None,
    y0: Tensor | None = None,
    batch_size: int | None = None,
    perturbations: Sequence[Perturbation] = (),
    **solve_kwargs,
) -> Solution:
    """Solve ``target``'s dynamics with ``perturbations`` (and any already applied).

    Args:
        target: a BoundDynamics, a ConnectomeDynamics (then pass ``graph``), or a model
            with ``.dynamics`` and ``.input_map`` (a :class:`~graphode.models.ConnectomeClassifier`):
            then ``stimulus`` is its images, and its solver settings, ``t_end`` and
            ``t_eval`` are the defaults.
        stimulus: for a dynamics, its stimulus (``[B, N]`` tensor, callable, ``Stimulus``).
        graph: the graph (``Data`` / ``Batch``) of a ConnectomeDynamics that is not bound.
        t_eval: ``[T]`` output times (default: the model's, or ``t_span[1]``).
        t_span: default ``(0, t_eval[-1])`` (a model's: ``(0, t_end)``).
        y0: initial state ``[B, N]`` (default zeros; clamped neurons start at the command).
        batch_size: B when neither ``y0`` nor the stimulus fixes it (default 1).
        **solve_kwargs: passed to :func:`~graphode.solve.solve` (method, rtol, ...).

    Returns:
        :class:`~graphode.solve.Solution`; clamped neurons (``tau=None``) read their
        command value.

    ``perturbations`` act in this solve only; the solve reads them (and those applied with
    :func:`perturb` / ``apply``) as data, so gradients are right with every ``gradient=``
    method, whenever ``backward()`` runs.
    """
    dyn = _dynamics_of(target)
    dtype = dyn.tau_raw.dtype
    if isinstance(dyn, BoundDynamics):
        if graph is not None:
            raise ValueError("simulate: these dynamics are bound to their graph; do not pass graph=")
        n, device, graph_args = dyn.num_nodes, dyn.edge_index.device, ()
    elif graph is None:
        raise ValueError("simulate: a ConnectomeDynamics takes its graph per call: pass graph=data")
    else:
        n, device, graph_args = int(graph.num_nodes), graph.edge_index.device, (graph,)
    if not isinstance(target, ConnectomeDynamics) and hasattr(target, "input_map"):
        cfg = getattr(target, "config", {})
        kw = {**_model_solver_kwargs(target), **solve_kwargs}
        if t_span is None:
            t_span = (0.0, float(cfg.get("t_end", 1.0)))
        if t_eval is None:
            t_eval = getattr(target, "t_eval", None)
        stim = None if stimulus is None else target.input_map(stimulus.to(device=device, dtype=dtype))
    else:
        kw = dict(solve_kwargs)
        stim = stimulus
    if t_eval is not None:
        t_eval = torch.as_tensor(t_eval, dtype=torch.float64).flatten()
    if t_span is None:
        if t_eval is None:
            raise ValueError("simulate needs t_eval or t_span")
        t_span = (0.0, float(t_eval[-1]))
    b = y0.size(0) if y0 is not None else (_batch_of(stim) or batch_size or 1)
    if y0 is None:
        y0 = torch.zeros(b, n, dtype=dtype, device=device)
    for p in perturbations:
        if not isinstance(p, Perturbation):
            raise TypeError(f"expected Silence, Clamp or Drive, got {type(p).__name__}")
    clamps = [p for p in [*active_perturbations(dyn), *perturbations] if isinstance(p, Clamp)]
    clamps = [(c, c.resolve(n).to(device)) for c in clamps]
    t0 = torch.full((b,), float(t_span[0]), dtype=dtype, device=device)
    for c, idx in clamps:
        y0 = y0.index_copy(1, idx, _evaluate(c.value, t0, b, idx.numel(), y0, "Clamp value"))
    with perturb(dyn, *perturbations):  # the solve takes them as data when it starts
        sol = solve(dyn, y0, t_span, args=(*graph_args, stim), t_eval=t_eval, **kw)
    ys = sol.ys
    for c, idx in clamps:
        if c.tau is None:  # held state: report the command value
            ts = sol.ts.to(device=device, dtype=dtype)
            ys = ys.index_copy(2, idx, c.values_at(ts, b, ys))
    return Solution(sol.ts, ys, sol.stats)


# -------------------------------------------------------------------------------- recording
@dataclass
class CellTypeResponses:
    """Responses summarised per cell type: ``values [B, T, C]`` for ``cell_types [C]``
    (``counts [C]`` neurons each) at ``ts [T]``; ``responses["L1"]`` is ``[B, T]``."""

    ts: Tensor
    values: Tensor
    cell_types: list[str]
    counts: list[int]
    reduce: str = "mean"

    def __getitem__(self, cell_type: str) -> Tensor:
        try:
            return self.values[..., self.cell_types.index(cell_type)]
        except ValueError:
            raise KeyError(f"{cell_type!r} not recorded; recorded types: {self.cell_types}") from None

    def to_dataframe(self) -> pd.DataFrame:
        """Tidy table: ``sample, time, cell_type, n_neurons, value`` (one row per entry)."""
        b, t, c = self.values.shape
        vals = self.values.detach().cpu().numpy()
        return pd.DataFrame(
            {
                "sample": np.repeat(np.arange(b), t * c),
                "time": np.tile(np.repeat(self.ts.detach().cpu().numpy(), c), b),
                "cell_type": np.tile(np.asarray(self.cell_types, dtype=object), b * t),
                "n_neurons": np.tile(np.asarray(self.counts), b * t),
                "value": vals.reshape(-1),
            }
        )


def _id_array(ids: list) -> np.ndarray:
    if ids and isinstance(ids[0], str):
        return np.asarray(ids, dtype=object)
    return np.asarray(ids, dtype=np.int64)


@dataclass
class Recording:
    """Activity of ``K`` recorded neurons.

    Attributes:
        ts: ``[T]`` times.
        values: ``[B, T, K]`` voltages (sample, time, neuron).
        neuron_index: ``[K]`` node indices of the recorded neurons.
        cell_types: ``[K]`` cell type name of each.
        ids: ``[K]`` original ids (``node_id`` / ``node_names``), or None.
        graph: ``[K]`` graph of each neuron in a Batch, or None.
    """

    ts: Tensor
    values: Tensor
    neuron_index: Tensor
    cell_types: list[str]
    ids: list | None = None
    graph: Tensor | None = None

    @classmethod
    def from_solution(cls, sol: Solution, data, neurons=None, cell_types=None) -> "Recording":
        """Pick neurons (a mask / indices and/or cell type names) out of a solution."""
        mask = select_neurons(data, cell_types=cell_types)
        if neurons is not None:
            mask &= _index_to_mask(_resolve_neurons(neurons, _num_nodes(data), "neurons"), _num_nodes(data))
        index = torch.nonzero(mask).flatten()
        types = neuron_cell_types(data)
        ids = neuron_ids(data)
        graph = data.batch.cpu()[index] if _is_batch(data) else None
        return cls(
            ts=sol.ts,
            values=sol.ys.index_select(2, index.to(sol.ys.device)),
            neuron_index=index,
            cell_types=[types[i] for i in index.tolist()],
            ids=None if ids is None else [ids[i] for i in index.tolist()],
            graph=graph,
        )

    def __len__(self) -> int:
        return self.neuron_index.numel()

    def to_dataframe(self) -> pd.DataFrame:
        """Tidy table, one row per (sample, time, neuron): ``sample, time, neuron,
        neuron_id, cell_type, value`` (and ``graph`` for a Batch)."""
        b, t, k = self.values.shape
        vals = self.values.detach().cpu().numpy()
        ids = self.ids if self.ids is not None else self.neuron_index.tolist()
        cols = {
            "sample": np.repeat(np.arange(b), t * k),
            "time": np.tile(np.repeat(self.ts.detach().cpu().numpy(), k), b),
            "neuron": np.tile(self.neuron_index.cpu().numpy(), b * t),
            "neuron_id": np.tile(_id_array(ids), b * t),
            "cell_type": np.tile(np.asarray(self.cell_types, dtype=object), b * t),
        }
        if self.graph is not None:
            cols["graph"] = np.tile(self.graph.numpy(), b * t)
        cols["value"] = vals.reshape(-1)
        return pd.DataFrame(cols)

    def by_cell_type(self, reduce: str = "mean") -> CellTypeResponses:
        """Summary response per cell type over its recorded neurons (``mean``, ``sum``,
        ``max``, ``min`` or ``median``); types in order of first appearance."""
        if reduce not in ("mean", "sum", "max", "min", "median"):
            raise ValueError(f"reduce must be mean, sum, max, min or median, got {reduce!r}")
        order = list(dict.fromkeys(self.cell_types))
        types = np.asarray(self.cell_types, dtype=object)
        cols, counts = [], []
        for name in order:
            sel = torch.from_numpy(np.nonzero(types == name)[0]).to(self.values.device)
            x = self.values.index_select(2, sel)
            if reduce == "mean":
                y = x.mean(2)
            elif reduce == "sum":
                y = x.sum(2)
            elif reduce == "max":
                y = x.amax(2)
            elif reduce == "min":
                y = x.amin(2)
            else:
                y = x.median(2).values
            cols.append(y)
            counts.append(int(sel.numel()))
        values = torch.stack(cols, 2) if cols else self.values.new_zeros(*self.values.shape[:2], 0)
        return CellTypeResponses(self.ts, values, order, counts, reduce)


def record(
    target,
    data,
    stimulus=None,
    *,
    neurons=None,
    cell_types=None,
    t_eval=None,
    **simulate_kwargs,
) -> Recording:
    """Simulate ``target`` (see :func:`simulate`, which takes the other keywords, e.g.
    ``perturbations=``) and record the neurons chosen by ``neurons`` (a mask or indices)
    and/or ``cell_types`` (names); all neurons when neither is given. A ConnectomeDynamics
    that is not bound to a graph is simulated on ``data``."""
    if not isinstance(_dynamics_of(target), BoundDynamics):
        simulate_kwargs.setdefault("graph", data)
    sol = simulate(target, stimulus, t_eval=t_eval, **simulate_kwargs)
    return Recording.from_solution(sol, data, neurons=neurons, cell_types=cell_types)


# ---------------------------------------------------------------------------------- lesions
def _metrics(value) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    return {"metric": float(value)}


def lesion_scan(
    target,
    groups: Mapping[str, Any] | Sequence[str] | None,
    evaluate: Callable[[Any], Any],
    *,
    data=None,
    gain: float = 0.0,
    no_grad: bool = True,
) -> pd.DataFrame:
    """Silence each group of neurons in turn and measure a metric.

    Args:
        target: a ConnectomeDynamics or a model with ``.dynamics``.
        groups: ``{name: mask or indices}``, or a list of cell type names (needs ``data``),
            or None for every cell type of ``data``.
        evaluate: ``evaluate(target) -> float | {name: float}`` — e.g. a trained
            classifier's accuracy on a held-out batch, or chosen neurons' mean response.
            Called once on the intact network (the baseline) and once per lesion.
        data: the connectome, for cell type groups.
        gain: output gain of the lesioned neurons (0: silenced).
        no_grad: evaluate under ``torch.no_grad()``.

    Returns:
        a DataFrame with one row per group (per metric, for dict metrics): ``group,
        n_neurons, metric, value, baseline, delta`` (value − baseline) and
        ``relative_delta`` (delta / |baseline|, NaN for a zero baseline). The network is
        restored after every group, also after an error.
    """
    dyn = _dynamics_of(target)
    if groups is None or (not isinstance(groups, Mapping)):
        if data is None:
            raise ValueError("lesion_scan: cell type groups need data=")
        names = list(dict.fromkeys(neuron_cell_types(data))) if groups is None else _as_list(groups)
        groups = {str(name): select_neurons(data, cell_types=name) for name in names}
    ctx = torch.no_grad() if no_grad else contextlib.nullcontext()
    rows = []
    with ctx:
        base = _metrics(evaluate(target))
        for name, neurons in groups.items():
            n = _count(neurons)
            with perturb(dyn, Silence(neurons, gain)):
                got = _metrics(evaluate(target))
            for metric, b in base.items():
                v = got[metric]
                rows.append(
                    {
                        "group": name,
                        "n_neurons": n,
                        "metric": metric,
                        "value": v,
                        "baseline": b,
                        "delta": v - b,
                        "relative_delta": (v - b) / abs(b) if b != 0 else float("nan"),
                    }
                )
    return pd.DataFrame(rows, columns=["group", "n_neurons", "metric", "value", "baseline", "delta", "relative_delta"])


def plot_lesions(
    df: pd.DataFrame,
    path: str | Path,
    *,
    metric: str | None = None,
    column: str = "delta",
    title: str | None = None,
    sort: bool = True,
) -> Path:
    """Bar chart of a :func:`lesion_scan` table (``column`` per group; one metric), PNG.

    Uses matplotlib's Agg canvas directly (no pyplot, no display needed). Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics = list(dict.fromkeys(df["metric"]))
    if metric is None:
        if len(metrics) > 1:
            raise ValueError(f"the table holds several metrics {metrics}; pass metric=")
        metric = metrics[0]
    sub = df[df["metric"] == metric]
    if sort:
        sub = sub.sort_values(column)
    vals = sub[column].to_numpy(dtype=float)
    labels = [f"{g} ({n})" for g, n in zip(sub["group"], sub["n_neurons"])]
    fig = Figure(figsize=(7.5, 1.6 + 0.32 * max(len(sub), 1)), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colors = ["#c0392b" if v < 0 else "#2e86c1" for v in vals]
    ax.barh(np.arange(len(vals)), vals, color=colors)
    ax.set_yticks(np.arange(len(vals)), labels)
    ax.axvline(0.0, color="black", lw=0.8)
    what = {"delta": f"Δ {metric} (lesioned − control)", "relative_delta": f"relative Δ {metric}",
            "value": f"{metric} with lesion"}.get(column, column)
    ax.set_xlabel(what)
    ax.set_ylabel("silenced group (neurons)")
    if title is None:
        base = sub["baseline"].iloc[0] if len(sub) else float("nan")
        title = f"Lesion scan: {metric} (control {base:.4g})"
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
