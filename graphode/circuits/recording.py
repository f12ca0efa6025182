"""Simulate the (perturbed) dynamics and record chosen neurons.

:func:`simulate` solves a dynamics or a :class:`~graphode.models.ConnectomeClassifier`
under perturbations; :func:`record` returns a :class:`Recording` of chosen neurons
(``ts [T]``, ``values [B, T, K]``, neuron indices, ids and cell types) with
``.to_dataframe()`` (tidy: sample, time, neuron, neuron_id, cell_type, value) and
``.by_cell_type()`` (mean response per cell type).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .._solve import Solution, solve
from ..dynamics import BoundDynamics, Stimulus
from ..models import ConnectomeClassifier
from .perturbation import Clamp, Perturbation, _dynamics_of, _evaluate, active_perturbations, perturb
from .selection import _index_to_mask, _is_batch, _neuron_ids, _resolve_neurons, neuron_cell_types, select_neurons

__all__ = ["simulate", "record", "Recording", "CellTypeResponses"]


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
    **solve_options,
) -> Solution:
    """Solve ``target``'s dynamics with ``perturbations`` (and any already applied).

    Args:
        target: a BoundDynamics, a ConnectomeDynamics (then pass ``graph``), a model with
            ``.dynamics`` (its dynamics are solved), or a
            :class:`~graphode.models.ConnectomeClassifier`: then ``stimulus`` is its
            images and :meth:`~graphode.models.ConnectomeClassifier.simulate` runs it (its
            ``t_eval`` is the default, its solver options are overridden by
            ``solve_options``).
        stimulus: for a dynamics, its stimulus (``[B, N]`` tensor, callable, ``Stimulus``).
        graph: the graph (``Data`` / ``Batch``) of a ConnectomeDynamics that is not bound.
        t_eval: ``[T]`` output times (default: the model's, or ``t_span[1]``).
        t_span: default ``(0, t_eval[-1])``; a classifier simulates ``(0, t_end)``.
        y0: initial state ``[B, N]`` (default zeros; clamped neurons start at the command).
        batch_size: B when neither ``y0`` nor the stimulus fixes it (default 1).
        perturbations: :class:`~graphode.circuits.Silence`, ``Clamp``, ``Drive`` for this
            solve only.
        **solve_options: passed to :func:`~graphode.solve` (method, rtol, ...).

    Returns:
        :class:`~graphode.Solution`; clamped neurons (``tau=None``) read their command
        value.

    Shapes:
        stimulus ``[B, N]`` (a classifier's: its images ``[B, H, W]``), y0 ``[B, N]`` →
        ``ys [B, T, N]``.

    The solve reads the perturbations (and those applied with
    :func:`~graphode.circuits.perturb` / ``apply``) as data, so gradients are right with
    every ``gradient=`` method, whenever ``backward()`` runs.
    """
    dyn = _dynamics_of(target)
    for p in perturbations:
        if not isinstance(p, Perturbation):
            raise TypeError(f"expected Silence, Clamp or Drive, got {type(p).__name__}")
    dtype = dyn.tau_raw.dtype
    if isinstance(target, ConnectomeClassifier):
        if graph is not None or t_span is not None:
            raise ValueError("simulate: a ConnectomeClassifier simulates its own graph over (0, t_end): "
                             "pass neither graph= nor t_span=")
        if not isinstance(stimulus, Tensor):
            raise ValueError("simulate: a ConnectomeClassifier is simulated on images: pass them as the stimulus")
        n, device = dyn.num_nodes, dyn.edge_index.device
        t_span = (0.0, float(target.config["t_end"]))
        stimulus = stimulus.to(device)

        def run(y0):
            return target.simulate(stimulus, t_eval, y0=y0, **solve_options)
    else:
        if isinstance(dyn, BoundDynamics):
            if graph is not None:
                raise ValueError("simulate: these dynamics are bound to their graph; do not pass graph=")
            n, device, graph_args = dyn.num_nodes, dyn.edge_index.device, ()
        elif graph is None:
            raise ValueError("simulate: a ConnectomeDynamics takes its graph per call: pass graph=data")
        else:
            n, device, graph_args = int(graph.num_nodes), graph.edge_index.device, (graph,)
        if t_eval is not None:
            t_eval = torch.as_tensor(t_eval, dtype=torch.float64).flatten()
        if t_span is None:
            if t_eval is None:
                raise ValueError("simulate needs t_eval or t_span")
            t_span = (0.0, float(t_eval[-1]))

        def run(y0):
            return solve(dyn, y0, t_span, args=(*graph_args, stimulus), t_eval=t_eval, **solve_options)
    b = y0.size(0) if y0 is not None else (_batch_of(stimulus) or batch_size or 1)
    if y0 is None:
        y0 = torch.zeros(b, n, dtype=dtype, device=device)
    clamps = [p for p in [*active_perturbations(dyn), *perturbations] if isinstance(p, Clamp)]
    clamps = [(c, c.resolve(n).to(device)) for c in clamps]
    t0 = torch.full((b,), float(t_span[0]), dtype=dtype, device=device)
    for c, idx in clamps:
        y0 = y0.index_copy(1, idx, _evaluate(c.value, t0, b, idx.numel(), y0, "Clamp value"))
    with perturb(dyn, *perturbations):  # the solve takes them as data when it starts
        sol = run(y0)
    ys = sol.ys
    for c, idx in clamps:
        if c.tau is None:  # held state: report the command value
            ts = sol.ts.to(device=device, dtype=dtype)
            ys = ys.index_copy(2, idx, c.values_at(ts, b, ys))
    return Solution(sol.ts, ys, sol.stats)


@dataclass
class CellTypeResponses:
    """Responses summarised per cell type; ``responses["L1"]`` is ``[B, T]``.

    Attributes:
        ts: ``[T]`` times.
        values: ``[B, T, C]`` one summary per cell type.
        cell_types: ``[C]`` the cell type names.
        counts: ``[C]`` the recorded neurons of each type.
        reduce: how the neurons of a type were summarised.

    Shapes:
        values ``[B, T, C]`` for ``C`` cell types at ``T`` times.
    """

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


_REDUCE = {
    "mean": lambda x: x.mean(2),
    "sum": lambda x: x.sum(2),
    "max": lambda x: x.amax(2),
    "min": lambda x: x.amin(2),
    "median": lambda x: x.median(2).values,
}


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

    Shapes:
        values ``[B, T, K]`` for ``K`` neurons at ``T`` times.
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
        n = int(data.num_nodes)
        mask = select_neurons(data, cell_types=cell_types)
        if neurons is not None:
            mask &= _index_to_mask(_resolve_neurons(neurons, n, "neurons"), n)
        index = torch.nonzero(mask).flatten()
        types = neuron_cell_types(data)
        ids = _neuron_ids(data)
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
        if reduce not in _REDUCE:
            raise ValueError(f"reduce must be mean, sum, max, min or median, got {reduce!r}")
        order = list(dict.fromkeys(self.cell_types))
        types = np.asarray(self.cell_types, dtype=object)
        cols, counts = [], []
        for name in order:
            sel = torch.from_numpy(np.nonzero(types == name)[0]).to(self.values.device)
            cols.append(_REDUCE[reduce](self.values.index_select(2, sel)))
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
    **simulate_options,
) -> Recording:
    """Simulate ``target`` and record the neurons chosen by ``neurons`` and/or ``cell_types``.

    Args:
        target: as for :func:`simulate`; a ConnectomeDynamics that is not bound to a graph
            is simulated on ``data``.
        data: the connectome (``Data`` / ``Batch``) the neurons are chosen from.
        stimulus: as for :func:`simulate`.
        neurons: a mask ``[N]`` or node indices.
        cell_types: cell type names; all neurons when neither is given.
        t_eval: ``[T]`` output times.
        **simulate_options: the other options of :func:`simulate` (``perturbations=``, ...).

    Shapes:
        → :class:`Recording` with ``values [B, T, K]``.
    """
    if not isinstance(_dynamics_of(target), BoundDynamics):
        simulate_options.setdefault("graph", data)
    sol = simulate(target, stimulus, t_eval=t_eval, **simulate_options)
    return Recording.from_solution(sol, data, neurons=neurons, cell_types=cell_types)
