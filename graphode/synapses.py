"""Learnable signed synaptic weights ``w_ij = sign_ij · g(θ)`` for a connectome graph.

Real connectomes have heavy-tailed fan-in and synapse counts: a neuron may receive tens of
synapses from one partner and thousands in total. Using raw counts as weights (the seed
tutorial's ``abs(connectome)``) drives every unit into saturation, and the network forgets
its input. graphode therefore starts from ``syn_weight`` — each connection's synapse count
divided by its target's total input synapses, so every neuron's incoming magnitudes sum to
one — times a ``gain``. With signs this keeps the recurrent input of order one.

Parameterisations (``mode``):

``"per_edge"``
    one parameter per connection: ``|w| = softplus(β θ)/β`` (β = 20, nearly ``relu`` but
    never exactly zero, so a synapse can regrow); initialised to ``gain · syn_weight``.
``"per_edge_type"``
    one strength per (source type, target type) pair as in the published fly visual
    system model: ``|w| = softplus(θ_type) · gain · syn_weight``, ``θ`` initialised so that
    ``softplus(θ) = 1``.
``"fixed"``
    no parameters: ``w = sign · gain · syn_weight``.

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

from ._graph_state import GraphTensors

__all__ = ["SynapseWeights", "inverse_softplus"]

_BETA = 20.0


def inverse_softplus(y: Tensor, beta: float = 1.0) -> Tensor:
    """θ with ``softplus(β θ)/β = y`` for ``y > 0``, stable for small and large ``y``."""
    by = (beta * y).clamp_min(1e-12)
    return (by + torch.log(-torch.expm1(-by))) / beta


class SynapseWeights(GraphTensors):
    """Signed synaptic weights of one connectome, ``forward() -> [E]``.

    Args:
        sign: ``[E]`` ±1 per connection.
        magnitude: ``[E]`` ≥ 0 initial magnitudes (usually ``data.syn_weight``).
        edge_type: ``[E]`` edge-type ids, needed for ``mode="per_edge_type"``.
        mode: ``"per_edge"``, ``"per_edge_type"`` or ``"fixed"`` (see module docs).
        gain: scale of the initial magnitudes.
        dale: keep signs fixed (magnitudes ≥ 0).
    """

    def __init__(
        self,
        sign: Tensor,
        magnitude: Tensor,
        edge_type: Tensor | None = None,
        *,
        mode: str = "per_edge",
        gain: float = 1.0,
        dale: bool = True,
    ):
        super().__init__()
        if sign.dim() != 1 or magnitude.shape != sign.shape:
            raise ValueError(f"sign and magnitude must both be [E], got {tuple(sign.shape)} and {tuple(magnitude.shape)}")
        if not torch.isfinite(magnitude).all() or (magnitude < 0).any():
            raise ValueError("synapse magnitudes must be finite and >= 0")
        if not ((sign == 1) | (sign == -1)).all():
            raise ValueError("signs must be +1 or -1")
        if mode not in ("per_edge", "per_edge_type", "fixed"):
            raise ValueError(f"unknown weight mode {mode!r}; choose per_edge, per_edge_type or fixed")
        if not dale and mode != "per_edge":
            raise ValueError("dale=False needs mode='per_edge'")
        self.mode, self.dale, self.gain = mode, dale, float(gain)
        sign = sign.float()
        graph = {"sign": sign, "magnitude": magnitude.float() * gain}
        if mode == "per_edge_type":
            if edge_type is None or edge_type.shape != sign.shape:
                raise ValueError("mode='per_edge_type' needs edge_type [E]")
            graph["edge_type"] = edge_type.long()
        # Graph data, rebuilt with the model: out of the state_dict, guarded by a fingerprint.
        self.register_graph(**graph)
        if mode == "per_edge":
            init = self.magnitude if dale else sign * self.magnitude
            theta = inverse_softplus(init, _BETA) if dale else init
            self.theta = nn.Parameter(theta.clone())
        elif mode == "per_edge_type":
            n_types = int(edge_type.max()) + 1 if edge_type.numel() else 0
            self.theta = nn.Parameter(torch.full((n_types,), math.log(math.e - 1.0)))

    @classmethod
    def from_data(cls, data, **kwargs) -> "SynapseWeights":
        """From a connectome ``Data`` (uses ``sign``, ``syn_weight`` and ``edge_type``)."""
        magnitude = getattr(data, "syn_weight", None)
        if magnitude is None:
            magnitude = data.syn_count
        return cls(data.sign, magnitude, getattr(data, "edge_type", None), **kwargs)

    def forward(self) -> Tensor:
        if self.mode == "fixed":
            return self.sign * self.magnitude
        if self.mode == "per_edge_type":
            return self.sign * F.softplus(self.theta)[self.edge_type] * self.magnitude
        if not self.dale:
            return self.theta
        return self.sign * F.softplus(_BETA * self.theta) / _BETA

    def extra_repr(self) -> str:
        return f"mode={self.mode}, edges={self.sign.numel()}, gain={self.gain}, dale={self.dale}"
