"""PyG transforms: the degree-preserving shuffle keeps every neuron's in- and out-degree."""

from __future__ import annotations

import torch

from graphode.flyvis import fly_visual_system
from graphode.transforms import DegreePreservingShuffle


def test_degree_preserving_shuffle():
    data = fly_visual_system(2)
    shuffled = DegreePreservingShuffle(seed=1)(data)
    n = data.num_nodes
    for row in (0, 1):
        assert torch.equal(torch.bincount(shuffled.edge_index[row], minlength=n), torch.bincount(data.edge_index[row], minlength=n))
    src, dst = shuffled.edge_index
    assert not bool((src == dst).any())
    key = dst * n + src
    assert key.unique().numel() == key.numel()
    assert bool((key[1:] > key[:-1]).all())
    assert not torch.equal(shuffled.edge_index, data.edge_index)
    sums = torch.zeros(n).index_add_(0, dst, shuffled.syn_weight)
    torch.testing.assert_close(sums, torch.zeros(n).index_add_(0, data.edge_index[1], data.syn_weight))
