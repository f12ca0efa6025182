r"""Neuron dynamics on a connectome graph: the vector field of the ODE.

.. math::

    \tau \odot \frac{dv}{dt} = -v + A(v) + I_\text{gap}(v) + b + d + u(t),\qquad
    A(v)_i = \sum_{j \to i} w_{ij}\, f(v_j)

``A`` is :class:`~graphode.layer.ConnectomeConv` with weights from
:class:`~graphode.synapses.SynapseWeights`; ``tau > 0`` and ``b`` are learnable per cell
type (or shared, or fixed); ``d`` is an optional learnable drive per neuron from node
features ``x [N, F]`` and per-graph stimuli (:class:`~graphode.inputs.NodeDrive`);
``u(t)`` is the stimulus, per neuron (``[B, N]``) or through an input projection from
``F`` stimulus features. ``I_gap,i = Σ_j g_ij (v_j − v_i)`` is the optional current through
electrical synapses (``gap_junctions=``, :mod:`graphode.gap_junctions`).

:class:`ConnectomeDynamics` takes the graph at every call, as a PyG convolution takes
``edge_index``: one module serves every ``Data`` and every ``Batch`` of different
connectomes, its parameters indexed by the graphs' cell-type and edge-type codes (a
vocabulary of ``num_cell_types`` / ``num_edge_types``). :class:`BoundDynamics` is the form
for one fixed connectome (PyG's ``cached=True``): it holds the graph, checks it once, and
also allows per-synapse and per-neuron parameters, which only make sense for one graph.

Both are :class:`~graphode.field.VectorField` s: :func:`~graphode.solve` calls
``prepare`` once per solve (graph attributes, the stimulus, active perturbations),
``derive`` where the gradient method allows (weights ``[E]``, ``τ``, ``b``) and
``evaluate`` at every step. Perturbations (:mod:`graphode.circuits`) are data that
``prepare`` takes and the evaluation reads.

The state is ``[B, N]`` (torchode's layout: every sample has its own time and step size);
for a ``Batch`` of graphs ``N`` is the total number of nodes.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._graph_state import GraphTensors
from . import kernels
from ._layout import node_major
from .field import VectorField
from .gap_junctions import GapJunctions
from .layer import AutoBackend, ConnectomeConv
from .synapses import TYPE_MODES, SynapseWeights, check_synapses, inverse_softplus, synapse_magnitude, vocabulary_size

__all__ = [
    "ConnectomeDynamics", "BoundDynamics", "Stimulus", "as_stimulus", "Perturbation",
    "GraphInputs", "DynamicsInputs", "Derived", "NODE_MODES",
]

NODE_MODES = ("per_type", "shared", "fixed", "per_neuron")
TAU_BOUNDS = ("softplus", "clamp")


class Stimulus:
    """A stimulus ``u(t)``: constant, sampled in time, frames indexed by step, or any
    function of time.

    Args:
        values: ``[B, F]`` constant, or ``[B, S, F]`` sampled at ``times`` (or frames of
            ``dt``).
        times: ``[S]`` increasing sample times (for sampled values).
        interpolation: ``"linear"`` (default) or ``"constant"`` (previous sample; piecewise
            constant) between samples; values are held outside ``[times[0], times[-1]]``.
        dt, t0: alternatively to ``times``, ``values`` are frames: frame ``k`` is the
            stimulus of the step that starts at ``t0 + k·dt``. The frame read at time ``t``
            is the nearest step's, ``k = round((t − t0)/dt)`` (computed in float64, clamped
            to the first and last frame), so a fixed-step solve at ``dt`` from ``t0`` reads
            frame ``k`` throughout step ``k`` however time is rounded, as long as the
            solver's accumulated time is off by less than half a step (float64 time: any
            length; float32 time, which torchode accumulates step by step, drifts by 0.01
            step in 1,000 steps of 20 ms and first reads a neighbour's frame after about
            11,000). The stages of a multi-stage method read the frame of the step time
            nearest to them.
        fn: alternatively a callable ``fn(t: [B]) -> [B, F]``.

    ``tensors()`` lists the tensors the stimulus depends on, so that adjoint methods can
    return gradients for them.

    Shapes: ``__call__(t [B])`` → ``[B, F]``.
    """

    def __init__(
        self,
        values: Tensor | None = None,
        times: Tensor | None = None,
        interpolation: str | None = None,
        fn: Callable[[Tensor], Tensor] | None = None,
        *,
        dt: float | None = None,
        t0: float = 0.0,
    ):
        if (values is None) == (fn is None):
            raise ValueError("give exactly one of values= or fn=")
        if interpolation not in (None, "linear", "constant"):
            raise ValueError(f"interpolation must be 'linear' or 'constant', got {interpolation!r}")
        if dt is not None:
            if times is not None or interpolation is not None:
                raise ValueError("frames (dt=) are indexed by step: give neither times= nor interpolation= with them")
            if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (math.isfinite(dt) and dt > 0):
                raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
            if not math.isfinite(t0):
                raise ValueError(f"t0 must be finite, got {t0!r}")
            if values is None or values.dim() != 3 or values.size(1) == 0:
                got = None if values is None else tuple(values.shape)
                raise ValueError(f"frames (dt=) must be values [B, T, F] with T >= 1, got {got}")
        elif values is not None:
            if values.dim() == 3:
                if times is None or times.dim() != 1 or times.numel() != values.size(1):
                    raise ValueError(
                        f"sampled values [B, S, F] need times [S] (or dt= for frames); got values {tuple(values.shape)}"
                    )
                if not bool(torch.isfinite(times).all()):
                    raise ValueError("stimulus times hold NaN or inf")
                if times.numel() > 1 and not bool((times[1:] > times[:-1]).all()):
                    raise ValueError("stimulus times must be strictly increasing")
            elif values.dim() != 2:
                raise ValueError(f"stimulus values must be [B, F] or [B, S, F], got {tuple(values.shape)}")
        if values is not None:
            if not values.is_floating_point():
                raise TypeError(f"stimulus values must be floating point, got {values.dtype}: use values.float()")
            if not bool(torch.isfinite(values).all()):
                bad = (~torch.isfinite(values)).nonzero()[0].tolist()
                raise ValueError(f"stimulus values hold NaN or inf (first at index {bad}); a drive must be finite")
        self.values, self.times, self.fn = values, times, fn
        self.interpolation = "linear" if interpolation is None else interpolation
        self.dt, self.t0 = (None if dt is None else float(dt)), float(t0)

    def tensors(self) -> tuple[Tensor, ...]:
        return () if self.values is None else (self.values,)

    def with_tensors(self, tensors) -> "Stimulus":
        """The same stimulus reading ``tensors`` (as :meth:`tensors` lists them)."""
        return self._with_values(tensors[0])

    def _with_values(self, values: Tensor) -> "Stimulus":
        """This stimulus reading ``values`` of the same shape (a detached copy, another memory
        layout): the checks of ``__init__`` passed for them already, and would cost a device
        sync per solve."""
        if values.shape != self.values.shape:
            raise ValueError(f"stimulus values must keep their shape {tuple(self.values.shape)}, got {tuple(values.shape)}")
        out = copy.copy(self)
        out.values = values
        return out

    def frame_index(self, t: Tensor) -> Tensor:
        """Frames (``dt=``): the frame index ``[B]`` read at times ``t`` (``[B]`` or scalar)."""
        if self.dt is None:
            raise ValueError("frame_index needs frames (Stimulus(values=[B, T, F], dt=...))")
        b, frames = self.values.size(0), self.values.size(1)
        steps = (t.detach().to(torch.float64).reshape(-1) - self.t0) / self.dt
        return torch.round(steps).clamp(0, frames - 1).long().expand(b).to(self.values.device)

    def __call__(self, t: Tensor) -> Tensor:
        """``t``: ``[B]`` (or scalar) → ``[B, F]``."""
        if self.fn is not None:
            return self.fn(t)
        if self.values.dim() == 2:
            return self.values
        if self.dt is not None:
            rows = torch.arange(self.values.size(0), device=self.values.device)
            return self.values[rows, self.frame_index(t)]
        times = self.times.to(self.values.dtype)
        b = self.values.size(0)
        t = t.to(times.dtype).reshape(-1)
        if b > 1:  # one time per sample (or one shared); values [1, S, F] serve every sample
            t = t.expand(b)
        idx = torch.searchsorted(times, t.contiguous(), right=True) - 1  # last sample <= t
        lo = idx.clamp(0, times.numel() - 1)
        rows = torch.arange(b, device=self.values.device) if b > 1 else torch.zeros_like(lo)
        v_lo = self.values[rows, lo]
        if self.interpolation == "constant" or times.numel() == 1:
            return v_lo
        hi = (idx + 1).clamp(0, times.numel() - 1)
        span = (times[hi] - times[lo]).clamp_min(torch.finfo(times.dtype).tiny)
        frac = ((t - times[lo]) / span).clamp(0, 1).where(hi != lo, torch.zeros_like(t))
        return v_lo + frac.unsqueeze(1) * (self.values[rows, hi] - v_lo)


def as_stimulus(u) -> Stimulus | None:
    """Accept ``None``, a ``[B, F]`` tensor, a callable of time, or a :class:`Stimulus`."""
    if u is None or isinstance(u, Stimulus):
        return u
    if isinstance(u, Tensor):
        return Stimulus(values=u)
    if callable(u):
        return Stimulus(fn=u)
    raise TypeError(f"cannot use {type(u).__name__} as a stimulus")



class Perturbation:
    """A change to the dynamics that the field reads as data: the base of
    :class:`~graphode.circuits.Silence`, :class:`~graphode.circuits.Clamp` and
    :class:`~graphode.circuits.Drive`.

    :meth:`ConnectomeDynamics.prepare` resolves each active perturbation's neurons once per
    solve; the solve then reads them from its inputs, so the backward pass of every gradient
    method sees the perturbations that the forward solve saw. Subclasses override the
    hooks they need (each gets ``index [K]``, the node indices of ``neurons``):

    - ``output_gain(index, n) -> [N] | None``: a factor on each neuron's outgoing synapses;
    - ``substitute(t, v, index) -> v``: the state every synapse reads;
    - ``rate(t, v, v_read, dvdt, tau, index) -> dvdt``: the derivative after the field.
    """

    neurons: Any
    order = 0  # rates are applied in this order (stable): a clamp (1) after every drive (0)

    def output_gain(self, index: Tensor, num_nodes: int) -> Tensor | None:
        return None

    def substitute(self, t: Tensor, v: Tensor, index: Tensor) -> Tensor:
        return v

    def rate(self, t: Tensor, v: Tensor, v_read: Tensor, dvdt: Tensor, tau: Tensor, index: Tensor) -> Tensor:
        return dvdt

    def resolve(self, num_nodes: int) -> Tensor:
        """The node indices ``[K]`` of ``neurons`` in a graph of ``num_nodes``."""
        raise NotImplementedError  # pragma: no cover


@dataclass
class GraphInputs:
    """What the dynamics read from a graph, once per solve (all on the graph's device).

    ``edge_index [2, E]``, ``sign [E]``, ``magnitude [E]`` (``syn_weight`` or
    ``syn_count``), ``edge_type [E]`` and ``cell_type [N]`` (None where the
    parameterisation needs none), ``node_features [N, F]`` for a node drive (or None);
    with gap junctions ``gap_index [2, G]``, ``gap_weight [G]`` (normalised where asked)
    and ``gap_code [G]`` (``gap_type`` or pair numbers, see
    :meth:`~graphode.gap_junctions.GapJunctions.graph_inputs`; None where not needed).
    """

    num_nodes: int
    edge_index: Tensor
    sign: Tensor | None
    magnitude: Tensor | None
    edge_type: Tensor | None
    cell_type: Tensor | None
    node_features: Tensor | None = None
    gap_index: Tensor | None = None
    gap_weight: Tensor | None = None
    gap_code: Tensor | None = None


@dataclass
class DynamicsInputs:
    """The inputs of one solve: the graph, the stimulus, the perturbations (each with its
    resolved node indices)."""

    graph: GraphInputs
    stimulus: Stimulus | None
    perturbations: tuple[tuple[Perturbation, Tensor], ...] = ()


@dataclass
class Derived:
    """Parameters as the evaluation reads them: ``weights [E]`` (edge order of
    ``edge_index``), ``tau`` and ``bias`` ``[N]`` or ``[1]`` (``bias`` includes the node
    drive); with gap junctions their conductances ``gap [G]`` (order of ``gap_index``) and
    each neuron's total conductance ``gap_total [N]`` (else None)."""

    weights: Tensor
    tau: Tensor
    bias: Tensor
    gap: Tensor | None = None
    gap_total: Tensor | None = None


class ConnectomeDynamics(VectorField):
    r"""The vector field ``dv/dt = (−v + A(v) + I_gap(v) + b + d + u(t)) / τ`` on the graph of each call.

    Args:
        num_cell_types: size of the cell-type vocabulary (``per_type`` τ and b); the graphs'
            ``cell_type`` codes must lie in ``[0, num_cell_types)``.
        num_edge_types: size of the edge-type vocabulary (``weights="per_edge_type"`` or
            ``"count_per_type"``).
        activation: neuron nonlinearity ``f`` (see :class:`~graphode.layer.ConnectomeConv`).
        backend: message-passing backend (a name or a backend object, see :mod:`graphode.layer`).
        weights: ``per_edge_type``, ``count_per_type`` or ``fixed`` (see :mod:`graphode.synapses`), or a
            :class:`~graphode.synapses.SynapseWeights`.
        gain: scale of the synaptic magnitudes (> 0).
        dale: keep synapse signs fixed.
        tau: initial time constant (> ``tau_min``), in the time units of the solve: a number,
            or one value per parameter (``[num_cell_types]`` for ``per_type``).
        tau_mode, bias_mode: ``per_type`` (one per cell type), ``shared`` (one learnable
            value), ``fixed`` (no parameter).
        tau_min: lower bound of τ (keeps the system from becoming arbitrarily stiff).
        tau_bound: how τ stays above ``tau_min``: ``"softplus"`` (``τ = tau_min +
            softplus(θ)``, smooth) or ``"clamp"`` (``τ = max(θ, tau_min)``, θ the time
            constant itself: the published fly visual system model, with ``tau_min = dt``).
        bias: initial resting drive ``b``: a number, or one value per parameter.
        node_input: a learnable drive per neuron from node features and per-graph stimuli
            (:class:`~graphode.inputs.NodeDrive`), added to ``b``.
        input_projection: a module mapping stimulus features ``[B, F]`` to drive ``[B, N]``;
            without it the stimulus is per neuron already.
        recurrent: set False to drop ``A(v)`` (the "no recurrent connections" ablation).
        gap_junctions: electrical synapses, ``I_gap,i = Σ_j g_ij (v_j − v_i)`` on the graph's
            ``gap_index``: None (off; a graph with gap junctions is then refused, so that none
            is left out unnoticed), a mode (``"shared"``, ``"per_type"``, ``"fixed"``; see
            :mod:`graphode.gap_junctions`) or a :class:`~graphode.gap_junctions.GapJunctions`.
        num_gap_types: size of the ``gap_type`` vocabulary (``gap_junctions="per_type"``).
        fuse: the fused leaky-integrator kernel: None (on CUDA when Triton is there), True
            (also in Triton's interpreter, for tests), False (never).
        num_nodes: the number of neurons, for ``per_neuron`` parameters (set by
            :class:`BoundDynamics`).

    Shapes:
        forward(t ``[B]``, v ``[B, N]``, graph, stimulus=None) → ``[B, N]``; ``graph`` is a
        PyG ``Data`` or ``Batch`` with ``edge_index``, ``sign``, ``syn_weight`` (or
        ``syn_count``), and ``edge_type`` / ``cell_type`` / ``x`` where the chosen modes
        read them (with gap junctions also ``gap_index [2, G]``, ``gap_weight [G]`` and, per
        type, ``gap_type [G]``). The stimulus may be anything :func:`as_stimulus` accepts.
    """

    def __init__(
        self,
        num_cell_types: int | None = None,
        num_edge_types: int | None = None,
        *,
        activation: str | Callable[[Tensor], Tensor] = "relu",
        backend="auto",
        weights: str | SynapseWeights = "per_edge_type",
        gain: float = 1.0,
        dale: bool = True,
        tau: float | Tensor = 1.0,
        tau_mode: str = "per_type",
        tau_min: float = 0.05,
        tau_bound: str = "softplus",
        bias: float | Tensor = 0.0,
        bias_mode: str = "per_type",
        node_input: nn.Module | None = None,
        input_projection: nn.Module | None = None,
        recurrent: bool = True,
        gap_junctions: str | GapJunctions | None = None,
        num_gap_types: int | None = None,
        fuse: bool | None = None,
        num_nodes: int | None = None,
    ):
        super().__init__()
        if hasattr(num_cell_types, "edge_index"):
            raise TypeError(
                "ConnectomeDynamics takes the graph at every call (forward(t, v, graph, stimulus)): build it with "
                "ConnectomeDynamics.from_data(data, ...) or vocabulary sizes, or use BoundDynamics(data, ...) "
                "for one fixed connectome"
            )
        tau, bias = torch.as_tensor(tau, dtype=torch.float64), torch.as_tensor(bias, dtype=torch.float64)
        if not (bool(torch.isfinite(tau).all()) and math.isfinite(tau_min) and tau_min >= 0 and bool((tau > tau_min).all())):
            raise ValueError(f"tau ({tau.tolist()}) must be finite and exceed tau_min ({tau_min} >= 0)")
        if not bool(torch.isfinite(bias).all()):
            raise ValueError(f"bias must be finite, got {bias.tolist()}")
        if tau_bound not in TAU_BOUNDS:
            raise ValueError(f"tau_bound must be one of {', '.join(TAU_BOUNDS)}, got {tau_bound!r}")
        self.num_cell_types = None if num_cell_types is None else int(num_cell_types)
        self.conv = ConnectomeConv(activation=activation, backend=backend)
        if isinstance(weights, SynapseWeights):
            self.synapses = weights
        else:
            self.synapses = SynapseWeights(weights, num_edge_types=num_edge_types, gain=gain, dale=dale)
        self.recurrent = recurrent
        if isinstance(gap_junctions, str):
            gap_junctions = GapJunctions(gap_junctions, num_gap_types=num_gap_types)
        elif gap_junctions is not None and not isinstance(gap_junctions, GapJunctions):
            raise TypeError(f"gap_junctions must be None, a mode name or a GapJunctions, got {type(gap_junctions).__name__}")
        self.gap_junctions = gap_junctions
        self.gap_conv = None
        if gap_junctions is not None:
            # Σ_j g_ij v_j on the chemical synapses' backend; an AutoBackend's choices are
            # timed for one activation, so the identity gets its own.
            gap_backend = self.conv.backend
            if isinstance(gap_backend, AutoBackend):
                gap_backend = AutoBackend(gap_backend.candidates, gap_backend.repeats)
            self.gap_conv = ConnectomeConv(activation="identity", backend=gap_backend)
        self.tau_min, self.tau_bound = float(tau_min), tau_bound
        if fuse not in (None, True, False):
            raise ValueError(f"fuse must be None, True or False, got {fuse!r}")
        self.fuse = fuse
        self.tau_mode, self.bias_mode = tau_mode, bias_mode
        raw_tau = tau.float() if tau_bound == "clamp" else inverse_softplus((tau - tau_min).float())
        self._node_parameter("tau_raw", raw_tau, tau_mode, num_nodes)
        self._node_parameter("bias", bias, bias_mode, num_nodes)
        self.node_input = node_input
        self.input_projection = input_projection
        self.perturbations: list[Perturbation] = []  # applied by graphode.circuits

    @classmethod
    def from_data(cls, data, **options) -> "ConnectomeDynamics":
        """Dynamics for graphs like ``data``: the vocabularies sized from its
        ``cell_type``/``edge_type`` codes (their ``*_names``, else the largest code + 1)
        where the chosen modes need them. For a dataset of graphs, pass the sizes of the
        whole dataset's vocabulary instead."""
        if "per_type" in (options.get("tau_mode", "per_type"), options.get("bias_mode", "per_type")):
            options.setdefault("num_cell_types", vocabulary_size(data, "cell_type"))
        weights = options.get("weights", "per_edge_type")
        if weights in TYPE_MODES:
            options.setdefault("num_edge_types", vocabulary_size(data, "edge_type"))
        if options.get("gap_junctions") == "per_type":
            options.setdefault("num_gap_types", vocabulary_size(data, "gap_type"))
        if weights == "count_per_type":  # its initial strengths come from the graph's counts
            options["weights"] = SynapseWeights.from_data(
                data, weights, num_edge_types=options["num_edge_types"],
                gain=options.pop("gain", 1.0), dale=options.pop("dale", True),
            )
        return cls(**options)

    def _node_parameter(self, name: str, value: Tensor, mode: str, num_nodes: int | None) -> None:
        """Register ``name``: one value per cell type, one shared, one fixed, or one per neuron;
        ``value`` is one number for all, or one per parameter."""
        label = name.replace("_raw", "")
        if mode not in NODE_MODES:
            raise ValueError(f"unknown parameter mode {mode!r}; choose from {', '.join(NODE_MODES)}")
        if mode == "per_type" and (self.num_cell_types is None or self.num_cell_types < 1):
            raise ValueError(
                f"{label}_mode='per_type' needs num_cell_types >= 1 (the cell-type "
                f"vocabulary), got {self.num_cell_types}; or choose 'shared' or 'fixed'"
            )
        if mode == "per_neuron" and num_nodes is None:
            raise ValueError(
                f"{label}_mode='per_neuron' has one parameter per neuron of one "
                "connectome: use BoundDynamics(data, ...)"
            )
        size = {"per_type": self.num_cell_types, "per_neuron": num_nodes}.get(mode, 1)
        value = value.float().reshape(-1)
        if value.numel() == 1:
            value = value.expand(size)
        elif value.numel() != size:
            raise ValueError(f"{label} gives {value.numel()} initial values; {label}_mode={mode!r} has {size} parameters")
        value = value.clone()
        if mode == "fixed":
            self.register_buffer(name, value)
        else:
            setattr(self, name, nn.Parameter(value))

    # -- prepare: once per solve ---------------------------------------------------------
    def graph_inputs(self, graph) -> GraphInputs:
        """Read and check what this module needs from ``graph`` (a ``Data``/``Batch``)."""
        edge_index = getattr(graph, "edge_index", None)
        if not isinstance(edge_index, Tensor):
            raise TypeError(
                f"graph must be a PyG Data or Batch with edge_index, got {type(graph).__name__}"
                " (BoundDynamics holds its graph: call it without one)"
            )
        n = int(graph.num_nodes)
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"graph.edge_index must be [2, E], got {tuple(edge_index.shape)}")
        e = edge_index.size(1)
        mode = self.synapses.mode
        sign = magnitude = edge_type = cell_type = None
        if mode != "per_edge" or self.synapses.dale:
            sign = _required(graph, "sign", f"weights={mode!r}")
            magnitude = None if mode == "per_edge" else synapse_magnitude(graph, mode)  # per_edge reads signs only
            check_synapses(sign, magnitude)
        for key, value in (("sign", sign), ("syn_weight/syn_count", magnitude)):
            if value is not None and value.shape != (e,):
                raise ValueError(f"graph.{key} must be [E] = [{e}] (one per edge), got {tuple(value.shape)}")
        if mode in TYPE_MODES:
            edge_type = _codes(graph, "edge_type", self.synapses.num_edge_types, f"weights={mode!r}")
            if edge_type.shape != (e,):
                raise ValueError(f"graph.edge_type must be [E] = [{e}], got {tuple(edge_type.shape)}")
        if "per_type" in (self.tau_mode, self.bias_mode):
            cell_type = _codes(graph, "cell_type", self.num_cell_types, "per_type tau/bias")
            if cell_type.numel() != n:
                raise ValueError(f"graph.cell_type must be [{n}], got {tuple(cell_type.shape)}")
        features = None if self.node_input is None else self.node_input.features(graph)
        return GraphInputs(n, edge_index, sign, magnitude, edge_type, cell_type, features, *self._gap_inputs(graph))

    def _gap_inputs(self, graph) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        if self.gap_junctions is not None:
            return self.gap_junctions.graph_inputs(graph)
        gap_index = getattr(graph, "gap_index", None)
        if isinstance(gap_index, Tensor) and gap_index.numel():
            raise ValueError(
                f"the graph has gap junctions (gap_index, {gap_index.size(-1)} entries) but these dynamics have no "
                "gap-junction term: pass gap_junctions='shared' (or another mode, see graphode.gap_junctions), or "
                "delete graph.gap_index to simulate the chemical synapses alone"
            )
        return None, None, None

    def prepare(self, graph, stimulus=None) -> DynamicsInputs:
        """The graph and stimulus of one solve: attributes checked, the stimulus wrapped,
        the active perturbations resolved (see the module docs)."""
        return self._inputs(self.graph_inputs(graph), stimulus)

    def _inputs(self, graph: GraphInputs, stimulus) -> DynamicsInputs:
        stimulus = as_stimulus(stimulus)
        if (
            self.input_projection is None and stimulus is not None and stimulus.fn is None
            and stimulus.values.dim() == 2 and stimulus.values.size(1) == graph.num_nodes
        ):
            # A constant per-neuron drive is added at every evaluation: store it in the
            # state's layout (graphode._layout), so that the addition is not a transpose.
            values = node_major(stimulus.values)
            if values is not stimulus.values:
                stimulus = stimulus._with_values(values)
        device = graph.edge_index.device
        active = sorted(self.perturbations, key=lambda p: p.order)
        perturbations = tuple((p, p.resolve(graph.num_nodes).to(device)) for p in active)
        return DynamicsInputs(graph, stimulus, perturbations)

    # -- derive: the parameters as the evaluation reads them ------------------------------
    def _node_values(self, values: Tensor, mode: str, cell_type: Tensor | None, n: int) -> Tensor:
        if mode == "per_type":
            return values.index_select(0, cell_type)  # backward: index_add_, not a sort-based index_put_
        if mode == "per_neuron" and values.numel() != n:
            raise ValueError(f"these per-neuron parameters belong to a graph of {values.numel()} neurons, not {n}")
        return values

    def derive(self, inputs: DynamicsInputs) -> Derived:
        g = inputs.graph
        weights = self.synapses(g.sign, g.magnitude, g.edge_type)
        for p, index in inputs.perturbations:
            gain = p.output_gain(index, g.num_nodes)
            if gain is not None:
                weights = weights * gain.to(weights.device, weights.dtype)[g.edge_index[0]]
        if self.tau_bound == "clamp":  # max(θ, τ_min): no gradient below the floor, as published
            tau = torch.maximum(self.tau_raw, self.tau_raw.new_tensor(self.tau_min))
        else:
            tau = self.tau_min + F.softplus(self.tau_raw)
        tau = self._node_values(tau, self.tau_mode, g.cell_type, g.num_nodes)
        bias = self._node_values(self.bias, self.bias_mode, g.cell_type, g.num_nodes)
        if weights.dtype != tau.dtype:  # a graph stored in another precision than the module
            weights = weights.to(tau.dtype)
        if self.node_input is not None:
            bias = bias + self.node_input(g.node_features).reshape(-1)
        gap = gap_total = None
        if self.gap_junctions is not None:
            gap = self.gap_junctions(g.gap_weight, g.gap_code).to(tau.dtype)
            gap_total = gap.new_zeros(g.num_nodes).index_add(0, g.gap_index[1], gap)
        return Derived(weights, tau, bias, gap, gap_total)

    def time_scale(self, inputs: DynamicsInputs, derived: Derived) -> float:
        """The state's fastest relaxation: the smallest time constant, or with gap junctions
        the smallest ``τ_i / (1 + 2 Σ_j g_ij)`` (Gershgorin's bound on the coupled decay rates)."""
        tau = derived.tau
        if derived.gap_total is not None and derived.gap_total.numel():
            tau = tau / (1 + 2 * derived.gap_total)
        return float(tau.min())

    def tau(self, graph=None) -> Tensor:
        """Time constants per neuron of ``graph`` ``[N]`` (``[1]`` when not per type)."""
        return self.derive(self.prepare(graph)).tau

    # -- evaluate --------------------------------------------------------------------------
    def drive(self, t: Tensor, stimulus: Stimulus | None) -> Tensor | None:
        """The stimulus current per neuron at time ``t``: ``[B, N]`` or None."""
        if stimulus is None:
            return None
        u = stimulus(t)
        return u if self.input_projection is None else self.input_projection(u)

    def evaluate(self, t: Tensor, v: Tensor, inputs: DynamicsInputs, derived: Derived) -> Tensor:
        n = inputs.graph.num_nodes
        if v.dim() != 2 or v.size(1) != n:
            raise ValueError(f"state must be [B, {n}] for this graph, got {tuple(v.shape)}")
        v_read = v
        for p, index in inputs.perturbations:
            v_read = p.substitute(t, v_read, index)
        x = v_read.t()  # [N, B], the layout of the message passing
        a = self.conv(x, inputs.graph.edge_index, derived.weights) if self.recurrent else None
        if self.gap_junctions is not None:  # I_gap = Σ_j g_ij v_j − (Σ_j g_ij) v_i, added to A(v)
            i_gap = self.gap_conv(x, inputs.graph.gap_index, derived.gap) - derived.gap_total.unsqueeze(1) * x
            a = i_gap if a is None else a + i_gap
        a = None if a is None else a.t()
        u = self.drive(t, inputs.stimulus)
        if u is not None and (u.dim() != 2 or u.size(1) != n or u.size(0) not in (1, v.size(0))):
            raise ValueError(
                f"the stimulus gives a drive of shape {tuple(u.shape)}; the state is {tuple(v.shape)}: "
                f"give [B, {n}] (or [1, {n}]) per neuron, or an input_projection"
            )
        bias, tau = derived.bias, derived.tau
        if kernels.leaky_supported(v, a, u, bias, tau, fuse=self.fuse):
            # one kernel each way instead of four elementwise ops, two of them broadcasting
            # per-neuron vectors (slow, strided kernels), and their backward
            out = kernels.LeakyIntegrator.apply(v, a, u, bias, tau)
        else:
            rhs = bias - v
            if a is not None:
                rhs = rhs + a
            if u is not None:
                rhs = rhs + u
            out = rhs / tau
        for p, index in inputs.perturbations:
            out = p.rate(t, v, v_read, out, tau, index)
        return out

    def forward(self, t: Tensor, v: Tensor, graph, stimulus=None) -> Tensor:
        return super().forward(t, v, graph, stimulus)


def _required(graph, key: str, why: str) -> Tensor:
    value = getattr(graph, key, None)
    if value is None:
        batch_note = (
            " (a PyG Batch keeps the attributes of its first graph: every graph of the batch needs it)"
            if hasattr(graph, "num_graphs") else ""
        )
        raise ValueError(f"the graph has no {key}, which {why} needs{batch_note}")
    return value


def _codes(graph, key: str, size: int | None, why: str) -> Tensor:
    codes = _required(graph, key, why)
    if codes.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"graph.{key} must hold integer codes, got {codes.dtype}")
    if codes.numel():
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= size:
            raise ValueError(
                f"graph.{key} holds codes in [{lo}, {hi}], outside this module's vocabulary [0, {size}): "
                f"build the module with num_{key}s >= {hi + 1} (the vocabulary of every graph it will see)"
            )
    return codes.long()


class BoundDynamics(GraphTensors, ConnectomeDynamics):
    """:class:`ConnectomeDynamics` bound to one connectome (PyG's ``cached=True``).

    The graph is checked once and kept (out of the ``state_dict``, behind a fingerprint:
    :mod:`graphode._graph_state`); the vocabularies are sized from it; and per-synapse
    (``weights="per_edge"``, the default) and per-neuron (``tau_mode``/``bias_mode`` =
    ``"per_neuron"``) parameters are allowed. ``per_type`` modes fall back to
    ``per_neuron`` on a graph without ``cell_type``.

    Args:
        data: the connectome ``Data`` (graphode layout).
        gap_junctions: as :class:`ConnectomeDynamics`, and also ``"per_edge"`` (one
            conductance per junction pair of ``data``); a mode name is built on ``data``
            (:meth:`~graphode.gap_junctions.GapJunctions.from_data`).
        **options: as :class:`ConnectomeDynamics` (the vocabulary sizes come from ``data``).

    Shapes:
        forward(t ``[B]``, v ``[B, N]``, stimulus=None) → ``[B, N]``: the graph is the bound
        one, so the solver's ``args`` are ``(stimulus,)``.
    """

    def __init__(self, data, *, weights: str | SynapseWeights = "per_edge", tau_mode: str = "per_type", bias_mode: str = "per_type",
                 gain: float = 1.0, dale: bool = True, gap_junctions: str | GapJunctions | None = None, **options):
        if getattr(data, "cell_type", None) is None:
            tau_mode = "per_neuron" if tau_mode == "per_type" else tau_mode
            bias_mode = "per_neuron" if bias_mode == "per_type" else bias_mode
        n = int(data.num_nodes)
        if "per_type" in (tau_mode, bias_mode):
            options.setdefault("num_cell_types", vocabulary_size(data, "cell_type"))
        if isinstance(weights, SynapseWeights):
            if gain != 1.0 or dale is not True:
                raise ValueError("gain= and dale= belong to the SynapseWeights given as weights=: set them there")
            synapses = weights
        else:
            synapses = SynapseWeights.from_data(data, weights, gain=gain, dale=dale)
        if isinstance(gap_junctions, str):
            gap_junctions = GapJunctions.from_data(data, gap_junctions)
        super().__init__(weights=synapses, tau_mode=tau_mode, bias_mode=bias_mode, num_nodes=n,
                         gap_junctions=gap_junctions, **options)
        graph = self.graph_inputs(data)  # checks the graph once
        self.num_nodes = n
        tensors = {f.name: getattr(graph, f.name) for f in dataclasses.fields(graph)}
        self.register_graph(**{k: v for k, v in tensors.items() if isinstance(v, Tensor)})

    def bound_graph(self) -> GraphInputs:
        """The bound graph's inputs (the module's buffers, on its device)."""
        fields = {f.name: None for f in dataclasses.fields(GraphInputs)}
        fields.update({k: getattr(self, k) for k in self._graph_names}, num_nodes=self.num_nodes)
        return GraphInputs(**fields)

    def prepare(self, stimulus=None) -> DynamicsInputs:
        if hasattr(stimulus, "edge_index"):
            raise TypeError("BoundDynamics holds its graph: pass only the stimulus (args=(stimulus,))")
        return self._inputs(self.bound_graph(), stimulus)

    def tau(self) -> Tensor:
        """Time constants per neuron ``[N]`` (``[1]`` when shared)."""
        return self.derive(self.prepare()).tau

    def neuron_bias(self) -> Tensor:
        """``b`` (plus the node drive) per neuron ``[N]`` (``[1]`` when shared)."""
        return self.derive(self.prepare()).bias

    def synaptic_weights(self) -> Tensor:
        """Signed synaptic weights ``[E]`` in ``edge_index`` order (perturbations included)."""
        return self.derive(self.prepare()).weights

    def gap_conductances(self) -> Tensor:
        """Gap-junction conductances ``[G]`` in ``gap_index`` order (needs ``gap_junctions``)."""
        if self.gap_junctions is None:
            raise ValueError("these dynamics have no gap junctions (gap_junctions=None)")
        return self.derive(self.prepare()).gap

    def forward(self, t: Tensor, v: Tensor, stimulus=None) -> Tensor:
        return VectorField.forward(self, t, v, stimulus)
