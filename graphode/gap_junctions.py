r"""Electrical synapses (gap junctions): a current ``I_gap,i = Σ_j g_ij (v_j − v_i)``.

A gap junction is a channel between two neurons that passes current in both directions,
in proportion to their voltage difference. With gap junctions the dynamics
(:class:`~graphode.dynamics.ConnectomeDynamics`, ``gap_junctions=``) are

.. math::

    \tau_i \frac{dv_i}{dt} = -v_i + \sum_{j \to i} w_{ij}\, f(v_j)
        + \sum_j g_{ij}\,(v_j - v_i) + b_i + d_i + u_i(t)

The coupling is linear in the voltages (no nonlinearity ``f``), symmetric
(``g_ij = g_ji``) and conserves current: what leaves one neuron enters the other.

Graph layout (PyG ``Data``/``Batch`` attributes):

``gap_index [2, G]`` int64
    both directions of every junction: ``(i, j)`` and ``(j, i)``, in any order. Row 0 is
    the neuron the current comes from, row 1 the neuron it enters (as in ``edge_index``).
    Its name ends in ``index``, so a PyG ``Batch`` offsets it by each graph's node count.
    No self pairs, no repeated pairs.
``gap_weight [G]`` float
    the junction's strength, finite and > 0 (a conductance in units of the leak
    conductance, or a junction count), equal for both directions of a pair.
``gap_type [G]`` int, optional
    a code per junction (equal for both directions) indexing ``gap_type_names``, for
    ``mode="per_type"``.

:func:`check_gap_junctions` validates this layout. Graphs without gap junctions simply
have no ``gap_index`` (or an empty ``[2, 0]`` one).

Conductances ``g_ij = s · ŵ_ij`` (:class:`GapJunctions`), with ``ŵ`` the ``gap_weight``
(or its symmetric normalisation, below) and a positive scale ``s = softplus(θ)``:

``"shared"``
    one learnable ``s`` for every junction (default);
``"per_type"``
    one ``s`` per ``gap_type`` code (a vocabulary of ``num_gap_types``);
``"per_edge"``
    one ``s`` per junction (pair) of *one* connectome, shared by its two directions so that
    ``g`` stays symmetric through training; built on that graph
    (:meth:`GapJunctions.from_data`);
``"fixed"``
    no parameter: ``s = scale``.

Every mode starts at ``s = scale``. ``normalize="symmetric"`` divides each weight by the
geometric mean of its two neurons' total junction weight, ``ŵ_ij = w_ij / sqrt(W_i W_j)``
with ``W_i = Σ_j w_ij`` (for junction counts of very different totals). It keeps
``g`` symmetric, which the per-target normalisation of chemical synapses would not.

The current is computed by message passing: ``Σ_j g_ij v_j`` is a
:class:`~graphode.layer.ConnectomeConv` with the identity activation on ``gap_index``
(the dynamics' backend), from which ``(Σ_j g_ij) v_i`` is subtracted. Voltage clamps
(:class:`~graphode.circuits.Clamp`) act on it: a clamped neuron's junctions read the
command voltage. :class:`~graphode.circuits.Silence` scales chemical output only:
electrical coupling of a silenced neuron stays.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .connectome.layout import check_gap_junctions
from .synapses import inverse_softplus, vocabulary_size

__all__ = [
    "GapJunctions", "check_gap_junctions", "gap_pairs", "normalized_gap_weight", "GAP_MODES", "GAP_NORMALIZATIONS",
]

GAP_MODES = ("shared", "per_type", "per_edge", "fixed")
GAP_NORMALIZATIONS = (None, "symmetric")
def gap_pairs(gap_index: Tensor, num_nodes: int) -> tuple[Tensor, int]:
    """The undirected pair of each entry: ``pair [G]`` in ``[0, P)``, equal for ``(i, j)``
    and ``(j, i)``, numbered by ``(min(i, j), max(i, j))``; and ``P``.

    Shapes: gap_index ``[2, G]`` → (``[G]``, int).
    """
    lo, hi = torch.minimum(gap_index[0], gap_index[1]), torch.maximum(gap_index[0], gap_index[1])
    keys, pair = torch.unique(lo * num_nodes + hi, return_inverse=True)
    return pair, int(keys.numel())


def normalized_gap_weight(gap_index: Tensor, gap_weight: Tensor, num_nodes: int) -> Tensor:
    """``w_ij / sqrt(W_i W_j)`` with ``W_i = Σ_j w_ij`` (``normalize="symmetric"``).

    Shapes: gap_index ``[2, G]``, gap_weight ``[G]`` → ``[G]``.
    """
    total = gap_weight.new_zeros(num_nodes).index_add_(0, gap_index[1], gap_weight)
    return gap_weight / torch.sqrt(total[gap_index[0]] * total[gap_index[1]])


class GapJunctions(nn.Module):
    """Learnable positive gap-junction conductances ``g [G] = s · ŵ`` (module docs).

    Args:
        mode: ``"shared"``, ``"per_type"``, ``"per_edge"`` or ``"fixed"``.
        num_gap_types: size of the ``gap_type`` vocabulary (``per_type``).
        scale: the initial (``fixed``: the constant) scale ``s`` (> 0).
        normalize: None (the weights as they are) or ``"symmetric"``.
        num_pairs: the number of junction pairs of the one connectome a ``per_edge``
            module is built for (:meth:`from_data` sets it).

    Shapes:
        forward(weight ``[G]``, code ``[G]`` or None) → ``[G]``: ``weight`` the (normalised)
        ``gap_weight``, ``code`` the ``gap_type`` codes (``per_type``) or pair numbers
        (``per_edge``, :func:`gap_pairs`), as :meth:`graph_inputs` returns them.
    """

    def __init__(
        self,
        mode: str = "shared",
        *,
        num_gap_types: int | None = None,
        scale: float = 1.0,
        normalize: str | None = None,
        num_pairs: int | None = None,
    ):
        super().__init__()
        if mode not in GAP_MODES:
            raise ValueError(f"unknown gap junction mode {mode!r}; choose from {', '.join(GAP_MODES)}")
        if normalize not in GAP_NORMALIZATIONS:
            raise ValueError(f"normalize must be None or 'symmetric', got {normalize!r}")
        if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be finite and > 0 (conductances are positive), got {scale!r}")
        self.mode, self.normalize, self.scale = mode, normalize, float(scale)
        self.num_pairs: int | None = None
        size = 1
        if mode == "per_type":
            if num_gap_types is None or num_gap_types < 1:
                raise ValueError(f"mode='per_type' needs num_gap_types >= 1 (the gap_type vocabulary), got {num_gap_types}")
            size = int(num_gap_types)
        elif mode == "per_edge":
            if num_pairs is None or num_pairs < 0:
                raise ValueError(
                    "mode='per_edge' learns one conductance per junction pair of one connectome: build it with "
                    "GapJunctions.from_data(data, 'per_edge') (or BoundDynamics(data, gap_junctions='per_edge'))"
                )
            self.num_pairs = size = int(num_pairs)
        if mode != "fixed":
            self.theta = nn.Parameter(inverse_softplus(torch.full((size,), self.scale)))

    @property
    def num_gap_types(self) -> int | None:
        return int(self.theta.numel()) if self.mode == "per_type" else None

    @classmethod
    def from_data(cls, data, mode: str = "shared", **kwargs) -> "GapJunctions":
        """For the graphs of ``data``: ``num_gap_types`` from its vocabulary
        (``gap_type_names``, else the largest code + 1); ``per_edge`` is built on ``data``'s
        junction pairs."""
        if mode == "per_type":
            kwargs.setdefault("num_gap_types", vocabulary_size(data, "gap_type"))
        elif mode == "per_edge":
            check_gap_junctions(data)
            if getattr(data, "gap_index", None) is None:
                raise ValueError("mode='per_edge' needs a graph with gap_index (one conductance per junction pair)")
            kwargs["num_pairs"] = gap_pairs(data.gap_index, int(data.num_nodes))[1]
        return cls(mode, **kwargs)

    def graph_inputs(self, graph, where: str = "graph") -> tuple[Tensor, Tensor, Tensor | None]:
        """Check ``graph``'s junctions (:func:`check_gap_junctions`) and read what
        :meth:`forward` needs: ``(gap_index [2, G], weight [G], code [G] or None)``, the
        weight normalised where asked."""
        check_gap_junctions(graph, where)
        index = getattr(graph, "gap_index", None)
        if index is None:
            raise ValueError(
                f"gap_junctions (mode={self.mode!r}) need {where}.gap_index [2, G] and gap_weight [G]; give a graph "
                "without gap junctions an empty gap_index [2, 0] and gap_weight [0]"
            )
        n = int(graph.num_nodes)
        weight = graph.gap_weight
        if self.normalize == "symmetric":
            weight = normalized_gap_weight(index, weight, n)
        code = None
        if self.mode == "per_type":
            code = getattr(graph, "gap_type", None)
            if code is None:
                raise ValueError(f"gap_junctions mode='per_type' needs {where}.gap_type [G]")
            if code.numel() and int(code.max()) >= self.num_gap_types:
                raise ValueError(
                    f"{where}.gap_type holds codes up to {int(code.max())}, outside this module's vocabulary "
                    f"[0, {self.num_gap_types}): build it with num_gap_types >= {int(code.max()) + 1}"
                )
            code = code.long()
        elif self.mode == "per_edge":
            code, pairs = gap_pairs(index, n)
            if pairs != self.num_pairs:
                raise ValueError(
                    f"these per-edge gap conductances belong to a connectome with {self.num_pairs} junction pairs, "
                    f"not {pairs}: per-edge parameters fit one graph (use mode='shared' or 'per_type' across graphs)"
                )
        return index, weight, code

    def forward(self, weight: Tensor, code: Tensor | None = None) -> Tensor:
        if self.mode == "fixed":
            return weight * self.scale
        s = F.softplus(self.theta)
        if self.mode == "shared":
            return s * weight
        if code is None or code.shape != weight.shape:
            got = None if code is None else tuple(code.shape)
            raise ValueError(f"mode={self.mode!r} needs a code per junction [{weight.numel()}], got {got}")
        return s[code] * weight

    def extra_repr(self) -> str:
        size = {"per_type": f", gap_types={self.num_gap_types}", "per_edge": f", pairs={self.num_pairs}"}.get(self.mode, "")
        return f"mode={self.mode}{size}, scale={self.scale}, normalize={self.normalize}"
