"""Learnable signed synaptic weights ``w_ij = sign_ij · g(θ)``, computed from a graph.

Real connectomes have heavy-tailed fan-in and synapse counts: a neuron may receive tens of
synapses from one partner and thousands in total. Using raw counts as weights (the
torch-biopl tutorial's ``abs(connectome)``) drives every unit into saturation, and the
network forgets its input. graphode therefore starts from ``syn_weight`` — each
connection's synapse count divided by its target's total input synapses, so every neuron's
incoming magnitudes sum to one — times a ``gain``. With signs this keeps the recurrent input
of order one.

Parameterisations (``mode``):

``"per_edge_type"``
    one strength per (source type, target type) pair, shared by every graph whose edge-type
    codes index the same vocabulary: ``|w| = softplus(θ_type) · gain · syn_weight``, ``θ``
    initialised so that ``softplus(θ) = 1``. This normalised form is graphode's own: at
    the lattice border a target has fewer inputs, so its normalised weights differ from
    those of the same type in the centre.
``"count_per_type"``
    the published fly visual system model's form (Lappalainen et al., Nature 2024):
    ``w = sign · gain · syn_count · α_type`` on the raw (mean) synapse counts, one strength
    ``α ≥ 0`` per (source type, target type). ``α`` is projected onto ``α ≥ 0`` in place
    before every use (projected gradient descent, as published: a strength can reach 0 and
    grow back) and initialised by :meth:`SynapseWeights.from_data` to ``scale / ⟨n⟩_type``,
    ``⟨n⟩_type`` the mean ``syn_count`` of that type's connections in the graph
    (``scale = 0.01``; a type without connections there starts at ``scale``).
``"fixed"``
    no parameters: ``w = sign · gain · syn_weight``; works on any graph.
``"per_edge"``
    one parameter per connection of *one* connectome: ``|w| = softplus(β θ)/β`` (β = 20,
    nearly ``relu`` but never exactly zero, so a synapse can regrow); initialised to
    ``gain · syn_weight``. Built from that graph's ``sign`` and magnitudes
    (:meth:`SynapseWeights.from_data`), it refuses a graph with another number of edges.

With ``dale=True`` (default) the sign of every synapse is the graph's fixed ``sign`` and
only magnitudes learn, so the constraint holds exactly throughout training. (The fly visual
system's signs are per edge type, not per neuron; graphode keeps them per edge.) With
``dale=False`` the weights are free parameters initialised to the signed values
(``per_edge`` only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SynapseWeights", "mean_count_per_type", "WEIGHT_MODES"]

_BETA = 20.0
WEIGHT_MODES = ("per_edge_type", "count_per_type", "fixed", "per_edge")
TYPE_MODES = ("per_edge_type", "count_per_type")  # one parameter per edge type


def inverse_softplus(y: Tensor, beta: float = 1.0) -> Tensor:
    """θ with ``softplus(β θ)/β = y`` for ``y > 0``, stable for small and large ``y``."""
    by = (beta * y).clamp_min(1e-12)
    return (by + torch.log(-torch.expm1(-by))) / beta


def check_synapses(sign: Tensor, magnitude: Tensor | None, where: str = "graph") -> None:
    """Raise unless ``sign [E]`` is ±1 and ``magnitude [E]`` (where given) finite and ``>= 0``."""
    if sign.dim() != 1 or (magnitude is not None and magnitude.shape != sign.shape):
        got = None if magnitude is None else tuple(magnitude.shape)
        raise ValueError(f"{where}: sign and magnitude must both be [E], got {tuple(sign.shape)} and {got}")
    if not bool(((sign == 1) | (sign == -1)).all()):
        raise ValueError(f"{where}: sign must be +1 or -1 for every edge")
    if magnitude is None:
        return
    if not bool((torch.isfinite(magnitude) & (magnitude >= 0)).all()):
        raise ValueError(f"{where}: synapse magnitudes (syn_weight / syn_count) must be finite and >= 0")


class SynapseWeights(nn.Module):
    """Signed synaptic weights of a graph, ``forward(sign, magnitude, edge_type) -> [E]``.

    Args:
        mode: ``"per_edge_type"``, ``"count_per_type"``, ``"fixed"`` or ``"per_edge"`` (see
            module docs).
        num_edge_types: size of the edge-type vocabulary (``per_edge_type``, ``count_per_type``).
        gain: scale of the magnitudes.
        dale: keep signs fixed (magnitudes ≥ 0).
        sign, magnitude: ``[E]`` the one connectome a ``per_edge`` parameterisation is
            built for (its parameters are initialised from them).
        strength: ``[num_edge_types]`` initial ``α ≥ 0`` of ``count_per_type`` (default:
            ``scale`` for every type; :meth:`from_data` sets ``scale / ⟨n⟩_type``).
        scale: ``count_per_type``'s initial strength scale (0.01, as published).

    Shapes: forward(sign ``[E]``, magnitude ``[E]``, edge_type ``[E]`` or None) → ``[E]``.
    """

    def __init__(
        self,
        mode: str = "per_edge_type",
        *,
        num_edge_types: int | None = None,
        gain: float = 1.0,
        dale: bool = True,
        sign: Tensor | None = None,
        magnitude: Tensor | None = None,
        strength: Tensor | None = None,
        scale: float = 0.01,
    ):
        super().__init__()
        if mode not in WEIGHT_MODES:
            raise ValueError(f"unknown weight mode {mode!r}; choose from {', '.join(WEIGHT_MODES)}")
        if not dale and mode != "per_edge":
            raise ValueError("dale=False needs mode='per_edge'")
        if not (math.isfinite(gain) and gain > 0):
            raise ValueError(f"gain must be finite and > 0 (signs come from the graph), got {gain}")
        self.mode, self.dale, self.gain = mode, dale, float(gain)
        self.num_edges: int | None = None
        if strength is not None and mode != "count_per_type":
            raise ValueError(f"strength= is the initial alpha of mode='count_per_type', not of mode={mode!r}")
        if mode in TYPE_MODES:
            if num_edge_types is None or num_edge_types < 1:
                raise ValueError(f"mode={mode!r} needs num_edge_types >= 1, got {num_edge_types}")
        if mode == "per_edge_type":
            self.theta = nn.Parameter(torch.full((int(num_edge_types),), math.log(math.e - 1.0)))
        elif mode == "count_per_type":
            if not (math.isfinite(scale) and scale > 0):
                raise ValueError(f"scale must be finite and > 0, got {scale}")
            if strength is None:
                strength = torch.full((int(num_edge_types),), float(scale))
            strength = torch.as_tensor(strength, dtype=torch.float32)
            if strength.shape != (int(num_edge_types),):
                raise ValueError(f"strength must be [num_edge_types] = [{num_edge_types}], got {tuple(strength.shape)}")
            if not bool((torch.isfinite(strength) & (strength >= 0)).all()):
                raise ValueError("strength (the initial alpha of count_per_type) must be finite and >= 0")
            self.theta = nn.Parameter(strength.clone())
        elif mode == "per_edge":
            if sign is None or magnitude is None:
                raise ValueError(
                    "mode='per_edge' learns one weight per synapse of one connectome: build it with "
                    "SynapseWeights.from_data(data, mode='per_edge') (or BoundDynamics(data, weights='per_edge'))"
                )
            check_synapses(sign, magnitude)
            init = magnitude.float() * self.gain
            self.theta = nn.Parameter(inverse_softplus(init, _BETA) if dale else sign.float() * init)
            self.num_edges = int(sign.numel())

    @property
    def num_edge_types(self) -> int | None:
        return int(self.theta.numel()) if self.mode in TYPE_MODES else None

    @classmethod
    def from_data(cls, data, mode: str = "per_edge_type", **kwargs) -> "SynapseWeights":
        """For the graphs of ``data``: ``num_edge_types`` from its vocabulary
        (``edge_type_names``, else the largest code + 1); ``per_edge`` is built on ``data``;
        ``count_per_type`` starts at ``α = scale / ⟨n⟩_type``, the mean ``syn_count`` of each
        type's connections in ``data`` (:func:`mean_count_per_type`)."""
        if mode == "per_edge":
            return cls(mode, sign=data.sign, magnitude=synapse_magnitude(data), **kwargs)
        if mode in TYPE_MODES:
            kwargs.setdefault("num_edge_types", vocabulary_size(data, "edge_type"))
        if mode == "count_per_type" and kwargs.get("strength") is None:
            scale = float(kwargs.get("scale", 0.01))
            mean = mean_count_per_type(data, kwargs["num_edge_types"])
            kwargs["strength"] = torch.where(mean > 0, scale / mean, torch.full_like(mean, scale)).float()
        return cls(mode, **kwargs)

    def forward(self, sign: Tensor, magnitude: Tensor, edge_type: Tensor | None = None) -> Tensor:
        if self.mode == "per_edge":
            if sign.numel() != self.num_edges:
                raise ValueError(
                    f"these per-edge weights belong to a connectome with {self.num_edges} synapses, "
                    f"not {sign.numel()}: per-edge parameters fit one graph (use weights='per_edge_type' "
                    "to share strengths across graphs)"
                )
            if not self.dale:
                return self.theta
            return sign.to(self.theta.dtype) * F.softplus(_BETA * self.theta) / _BETA
        scaled = magnitude if self.gain == 1.0 else magnitude * self.gain
        if self.mode == "fixed":
            return sign * scaled
        if edge_type is None:
            raise ValueError(f"mode={self.mode!r} needs the graph's edge_type [E]")
        if self.mode == "count_per_type":
            self.project_()
            return sign * self.theta.index_select(0, edge_type) * scaled
        # index_select, not [edge_type]: its backward is one index_add_, where indexing's is a
        # sort-based index_put_ (2.2 ms per training step at 1.5M synapses on an H200, profiled).
        # On CUDA index_add_ sums with atomics, so the gradient's rounding may differ between
        # runs; torch.use_deterministic_algorithms(True) makes it deterministic.
        return sign * F.softplus(self.theta).index_select(0, edge_type) * scaled

    @torch.no_grad()
    def project_(self) -> None:
        """``count_per_type``: set every negative strength to 0 (the projection of projected
        gradient descent; :meth:`forward` applies it before every use)."""
        if self.mode == "count_per_type":
            self.theta.data.clamp_(min=0)

    def strength(self) -> Tensor:
        """The per-type strengths as the weights use them: ``[num_edge_types]``
        (``softplus(θ)`` for ``per_edge_type``, the projected ``α`` for ``count_per_type``)."""
        if self.mode == "per_edge_type":
            return F.softplus(self.theta)
        if self.mode == "count_per_type":
            return self.theta.clamp_min(0)
        raise ValueError(f"mode={self.mode!r} has no per-type strengths")

    def of(self, graph) -> Tensor:
        """The weights ``[E]`` of a graph (``Data``/``Batch``): ``forward`` on its ``sign``,
        magnitudes and ``edge_type``."""
        return self(graph.sign, synapse_magnitude(graph, self.mode), getattr(graph, "edge_type", None))

    def extra_repr(self) -> str:
        size = f"edge_types={self.num_edge_types}" if self.mode in TYPE_MODES else f"edges={self.num_edges}"
        return f"mode={self.mode}, {size}, gain={self.gain}, dale={self.dale}"


def synapse_magnitude(data, mode: str | None = None) -> Tensor:
    """The magnitudes ``[E]`` a weight mode scales: ``data.syn_count`` (raw counts) for
    ``count_per_type``; else ``data.syn_weight`` (normalised counts), falling back to
    ``data.syn_count``."""
    if mode == "count_per_type":
        magnitude = getattr(data, "syn_count", None)
        if magnitude is None:
            raise ValueError("weights='count_per_type' scales the raw synapse counts: the graph has no syn_count")
        return magnitude
    magnitude = getattr(data, "syn_weight", None)
    if magnitude is None:
        magnitude = getattr(data, "syn_count", None)
    if magnitude is None:
        raise ValueError("the graph has neither syn_weight nor syn_count: the synaptic weights need one of them")
    return magnitude


def mean_count_per_type(data, num_edge_types: int | None = None) -> Tensor:
    """The mean ``syn_count`` of each edge type's connections in ``data`` (0 for a type
    without connections).

    Shapes: ``data.syn_count [E]``, ``data.edge_type [E]`` → float64 ``[num_edge_types]``.
    """
    size = vocabulary_size(data, "edge_type") if num_edge_types is None else int(num_edge_types)
    count = synapse_magnitude(data, "count_per_type").double().cpu()
    codes = data.edge_type.long().cpu()
    total = torch.zeros(size, dtype=torch.float64).index_add_(0, codes, count)
    number = torch.bincount(codes, minlength=size).double()
    return torch.where(number > 0, total / number.clamp_min(1), torch.zeros_like(total))


def vocabulary_size(data, key: str) -> int:
    """How many codes ``data[key]`` may take: ``len(data[key + '_names'])`` (a single
    graph's names), else the largest code + 1."""
    codes = getattr(data, key, None)
    if codes is None:
        raise ValueError(f"the graph has no {key}: pass num_{key}s= explicitly or use another mode")
    names = getattr(data, f"{key}_names", None)
    largest = int(codes.max()) + 1 if codes.numel() else 1
    if isinstance(names, (list, tuple)) and names and not isinstance(names[0], (list, tuple)):
        return max(len(names), largest)
    return largest
