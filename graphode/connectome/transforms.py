"""PyG transforms on connectome graphs (used for ablations and controls)."""

from __future__ import annotations

import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

__all__ = ["DegreePreservingShuffle"]


class DegreePreservingShuffle(BaseTransform):
    """Rewire a connectome at random keeping every neuron's in- and out-degree.

    Sources are permuted across all connections while targets stay (the configuration
    model): each neuron keeps its number of incoming and outgoing connections, each
    connection keeps its synapse count, weight and sign, but who connects to whom is
    random. Rewiring that would create a self-loop or a duplicate connection is repaired
    by re-permuting those sources with random others until none is left (or, after
    ``max_rounds``, an error is raised: nothing is silently dropped).

    Attributes stay with the connection's slot at its target (``syn_count``, ``sign``,
    ``syn_weight``, ``edge_type``), so every neuron keeps its incoming weight distribution
    (normalised weights stay normalised) and weight-sharing groups keep their sizes.
    """

    def __init__(self, seed: int = 0, max_rounds: int = 100):
        self.seed, self.max_rounds = seed, max_rounds

    def forward(self, data: Data) -> Data:
        gen = torch.Generator().manual_seed(self.seed)
        n = int(data.num_nodes)
        src, dst = data.edge_index[0].clone(), data.edge_index[1]
        src = src[torch.randperm(src.numel(), generator=gen)]
        for _ in range(self.max_rounds):
            bad = _bad_edges(src, dst, n)
            if not bool(bad.any()):
                break
            # Re-permute the sources of the bad connections together with as many random
            # others; a permutation of unique positions keeps every out-degree exactly.
            others = torch.randint(src.numel(), (int(bad.sum()),), generator=gen)
            idx = torch.cat([torch.nonzero(bad).flatten(), others]).unique()
            src[idx] = src[idx[torch.randperm(idx.numel(), generator=gen)]]
        else:
            raise RuntimeError(
                f"DegreePreservingShuffle: {int(_bad_edges(src, dst, n).sum())} duplicate or self-loop "
                f"connections remain after {self.max_rounds} rounds (graph too dense to rewire)"
            )
        out = data.clone()
        order = torch.argsort(dst * n + src, stable=True)
        out.edge_index = torch.stack([src[order], dst[order]])
        for key in ("syn_count", "sign", "syn_weight", "edge_type"):
            if getattr(data, key, None) is not None:
                out[key] = data[key][order]
        return out


def _bad_edges(src: torch.Tensor, dst: torch.Tensor, n: int) -> torch.Tensor:
    """Mask of self-loops and of all but the first copy of duplicate connections."""
    key = dst * n + src
    order = torch.argsort(key, stable=True)
    dup_sorted = torch.zeros_like(key, dtype=torch.bool)
    dup_sorted[1:] = key[order][1:] == key[order][:-1]
    dup = torch.zeros_like(dup_sorted)
    dup[order] = dup_sorted
    return dup | (src == dst)
