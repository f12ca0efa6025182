"""Readouts: from recorded neuron activity to class logits.

:class:`PooledReadout` is a graph-level readout in PyG's style. Each output neuron ``m``
(``output_mask``) is encoded from its recorded activity ``a_m [R]`` (R samples in time),
its cell type and its position::

    h_m = (W_a a_m) ⊙ tanh(W_c [emb(type_m), fourier(pos_m)])      [H]

so the context decides, per neuron, which activity features count and with what sign.
Activities are first normalised per sample over the neurons of each cell type
(:class:`CellTypeNorm`): stimulus-driven deviations are small next to the resting levels,
and without normalisation the readout barely learns (33% vs 83% test accuracy of a
linear probe on the untrained network, measured). Normalising removes each group's level,
though: with ``keep_group_mean=True`` the group's per-sample mean and log standard
deviation are given to the encoder as extra activity features (``a_m`` is then
``[3R]``). Without them and without positions, a ``sum`` or ``mean`` pool cannot depend on
the activity at all (see :class:`PooledReadout`).
The ``h_m`` are aggregated over the output neurons of each graph with a
``torch_geometric.nn.aggr`` module (``sum``, ``mean``, ``max`` or ``attention``), using the
``batch`` vector when several graphs are batched, and an MLP maps the result to logits.
For ``sum`` and ``mean`` over a single graph the encoder's linearity lets the pool be
computed by contraction, without materialising ``h`` (see :meth:`PooledReadout._pool_linear`);
the result is the same function.

:class:`LinearReadout` is the torch-biopl tutorial's readout, for comparison: the final state of
every neuron, flattened, through ``Linear(N, 256) → ReLU → Dropout(0.5) → Linear(256, C)``.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn
from torch_geometric.nn import aggr as pyg_aggr

__all__ = ["PooledReadout", "LinearReadout", "CellTypeNorm"]


def fourier_features(pos: Tensor, num_frequencies: int) -> Tensor:
    """``[M, 2]`` positions → ``[M, 4·num_frequencies]`` sines and cosines at octave scales.

    Positions are scaled to ``[-1, 1]`` by their largest absolute coordinate first.
    """
    scale = pos.abs().max().clamp_min(1e-6)
    p = pos / scale
    freqs = (2.0 ** torch.arange(num_frequencies, dtype=p.dtype, device=p.device)) * math.pi / 2
    ang = p.unsqueeze(-1) * freqs  # [M, 2, K]
    return torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(1)


class CellTypeNorm(nn.Module):
    """Normalise each sample's activity over the neurons of each cell type.

    For every sample, record and group (a cell type, or a cell type within one graph of a
    batch), the activity is centred and scaled by its mean and standard deviation across
    the group's neurons. What remains is the spatial pattern of the response, at unit
    scale, whatever the type's resting level. Statistics are per sample, so training and
    evaluation compute the same function (batch statistics with running averages went
    stale while the connectome learned: test accuracy swung from 90% to 50% between
    epochs at full scale, measured), and processes under DDP need no synchronisation.

    With ``return_stats=True`` the removed statistics come back too, per neuron: the
    group's mean and its log standard deviation ``log sqrt(var + eps)`` (finite for a
    group without spread, where ``var = 0``).

    Shapes: forward(activity ``[B, M, R]``, group ``[M]``, num_groups) → ``[B, M, R]``,
    or three ``[B, M, R]`` (normalised, mean, log std) with ``return_stats=True``.
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(
        self, activity: Tensor, group: Tensor, num_groups: int, return_stats: bool = False
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        b, _, r = activity.shape
        count = torch.bincount(group, minlength=num_groups).clamp_min(1).to(activity.dtype)[None, :, None]
        mean = activity.new_zeros(b, num_groups, r).index_add_(1, group, activity) / count
        # index_select, not [:, group]: its backward is an index_add_, where indexing's is a
        # sort-based index_put_ (profiled: 2.3 ms per training step at full scale); on CUDA its
        # atomics may round differently between runs (see torch.use_deterministic_algorithms)
        mean = mean.index_select(1, group)
        centred = activity - mean
        var = activity.new_zeros(b, num_groups, r).index_add_(1, group, centred.square()) / count
        var = var.index_select(1, group) + self.eps
        normed = centred * torch.rsqrt(var)
        if not return_stats:
            return normed
        return normed, mean, 0.5 * torch.log(var)


def _make_aggr(name: str, hidden: int) -> pyg_aggr.Aggregation:
    if name == "sum":
        return pyg_aggr.SumAggregation()
    if name == "mean":
        return pyg_aggr.MeanAggregation()
    if name == "max":
        return pyg_aggr.MaxAggregation()
    if name == "attention":
        return pyg_aggr.AttentionalAggregation(gate_nn=nn.Linear(hidden, 1))
    raise ValueError(f"unknown aggregation {name!r}; choose sum, mean, max or attention")


class PooledReadout(nn.Module):
    """Per-neuron encoder + PyG aggregation over output neurons + MLP.

    Args:
        num_records: R, activity samples per neuron.
        num_classes: C.
        num_cell_types: size of the cell-type embedding table.
        hidden: H, encoder width.
        type_dim: cell-type embedding width.
        num_frequencies: Fourier frequencies of the position encoding (0: no positions).
        aggr: ``sum``, ``mean``, ``max`` or ``attention`` (a ``torch_geometric.nn.aggr``
            module; ``sum``/``mean`` over one graph are computed by contraction instead,
            the same function: see :meth:`_pool_linear`).
        dropout: dropout before the final layer.
        keep_group_mean: also encode each normalisation group's per-sample mean and log
            standard deviation (the activity layer then reads ``3R`` features: normalised
            activity, group mean, group log std). Needed for a ``sum``/``mean`` pool without
            positions: there each group's normalised activity sums to zero and the gate
            depends on the cell type only, so ``Σ_m h_m`` does not depend on the activity
            (only the Linear's bias survives); a warning says so when this is off.

    Shapes:
        forward(states ``[B, R, N]``, output_mask ``[N]``, cell_type ``[N]``, pos ``[N, 2]``
        or None, batch ``[N]`` or None, num_graphs) → logits ``[B, C]``, or
        ``[B·G, C]`` (sample-major) when ``batch`` describes ``G`` graphs.
    """

    def __init__(
        self,
        num_records: int,
        num_classes: int,
        num_cell_types: int,
        *,
        hidden: int = 64,
        type_dim: int = 16,
        num_frequencies: int = 6,
        aggr: str = "sum",
        dropout: float = 0.0,
        keep_group_mean: bool = False,
    ):
        super().__init__()
        if num_frequencies == 0 and aggr in ("sum", "mean") and not keep_group_mean:
            warnings.warn(
                f"PooledReadout(num_frequencies=0, aggr={aggr!r}) gives logits that do not depend on the "
                "activity: CellTypeNorm removes each cell type's mean, so a type's normalised activity sums "
                "to zero, and without positions the gate depends on the cell type only, so every input "
                "pools to the same features. Pass keep_group_mean=True (config key 'keep_group_mean') to "
                "encode the group means, or use positions or aggr='max'/'attention'.",
                stacklevel=2,
            )
        self.num_frequencies = num_frequencies
        self.num_cell_types = num_cell_types
        self.keep_group_mean = bool(keep_group_mean)
        self.activity_norm = CellTypeNorm()
        self.type_embedding = nn.Embedding(num_cell_types, type_dim)
        self.activity = nn.Linear(3 * num_records if keep_group_mean else num_records, hidden)
        self.context = nn.Linear(type_dim + 4 * num_frequencies, hidden)
        self.aggr_name = aggr
        self.aggr = _make_aggr(aggr, hidden)
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def _gate(self, cell_type: Tensor, pos: Tensor | None, dtype: torch.dtype) -> Tensor:
        """Per-neuron context gate ``tanh(W_c [emb(type), fourier(pos)])``: ``[M, H]``."""
        ctx = [self.type_embedding(cell_type)]
        if self.num_frequencies:
            if pos is None:
                raise ValueError("this readout uses positions: pass pos (or num_frequencies=0)")
            ctx.append(fourier_features(pos.to(dtype), self.num_frequencies))
        return torch.tanh(self.context(torch.cat(ctx, dim=-1)))

    def _features(self, activity: Tensor, group: Tensor) -> Tensor:
        """Normalised activity ``[B, M, R]`` (``[B, M, 3R]`` with ``keep_group_mean``)."""
        num_groups = int(group.max()) + 1
        if self.keep_group_mean:
            stats = self.activity_norm(activity, group, num_groups, return_stats=True)
            return torch.cat(stats, dim=-1)  # normalised, group mean, group log std
        return self.activity_norm(activity, group, num_groups)

    def encode(self, activity: Tensor, cell_type: Tensor, pos: Tensor | None, group: Tensor | None = None) -> Tensor:
        """``activity [B, M, R]`` → per-neuron features ``[B, M, H]``; ``group [M]`` are the
        normalisation groups (default: the cell types)."""
        gate = self._gate(cell_type, pos, activity.dtype)
        features = self._features(activity, cell_type if group is None else group)
        return self.activity(features) * gate

    def _pool_linear(self, features: Tensor, gate: Tensor) -> Tensor:
        """``Σ_m (W_a a_m + c) ⊙ gate_m`` over all neurons of one graph (``/ M`` for mean),
        without the ``[B, M, H]`` per-neuron features.

        The encoder is linear in the activity, so the sum factors into ``[B, K, H]``
        contractions (``K`` activity features): at the fly visual system's 24,000 output
        neurons, B = 256 and H = 128, the per-neuron tensor alone is 3.1 GB, and PyG's
        scatter into one graph serialises every addition on the same outputs.
        It reads ``self.activity``'s weight and bias directly, so forward hooks on that
        ``Linear`` do not run here (they do on the batched and ``max``/``attention`` paths).
        """
        summed = torch.einsum("bmk,mh->bkh", features, gate)  # [B, K, H]
        pooled = torch.einsum("bkh,hk->bh", summed, self.activity.weight) + self.activity.bias * gate.sum(0)
        return pooled / features.size(1) if self.aggr_name == "mean" else pooled

    def forward(
        self,
        states: Tensor,
        output_mask: Tensor,
        cell_type: Tensor,
        pos: Tensor | None = None,
        batch: Tensor | None = None,
        num_graphs: int | None = None,
    ) -> Tensor:
        if states.dim() != 3:
            raise ValueError(f"states must be [B, R, N], got {tuple(states.shape)}")
        idx = torch.nonzero(output_mask).flatten()
        if idx.numel() == 0:
            raise ValueError("output_mask selects no neurons")
        activity = states.index_select(2, idx).transpose(1, 2)  # [B, M, R]
        types = cell_type[idx]
        gate = self._gate(types, None if pos is None else pos[idx], activity.dtype)  # [M, H]
        group = types if batch is None else batch[idx] * self.num_cell_types + types
        features = self._features(activity, group)
        if batch is None and self.aggr_name in ("sum", "mean"):
            return self.head(self._pool_linear(features, gate))
        h = self.activity(features) * gate  # [B, M, H]
        if batch is None:
            index, g = torch.zeros_like(idx), 1
        else:
            index, g = batch[idx], int(num_graphs if num_graphs is not None else int(batch.max()) + 1)
        pooled = self.aggr(h, index=index, dim_size=g, dim=1).reshape(-1, h.size(-1))  # [B·G, H]
        return self.head(pooled)


class LinearReadout(nn.Module):
    """The torch-biopl tutorial's readout over the final state of all neurons.

    Shapes: forward(states ``[B, R, N]``, ...) → ``[B, C]`` (uses ``states[:, -1]``).
    """

    def __init__(self, num_nodes: int, num_classes: int, hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_nodes, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )

    def forward(self, states: Tensor, *unused, **unused_kw) -> Tensor:
        return self.net(states[:, -1])
