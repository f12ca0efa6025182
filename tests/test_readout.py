"""Readouts against manual pooling and PyG aggregation; PooledReadout's keep_group_mean option:
the blind spot of a linear pool over normalised activity without positions, and the extra
features that remove it."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch_geometric.data import Batch, Data

from graphode.readout import CellTypeNorm, LinearReadout, PooledReadout

F64 = torch.float64


def test_cell_type_norm_per_sample_and_group():
    a = torch.tensor([[[1.0], [3.0], [10.0], [10.0]]])  # B=1, M=4, R=1
    group = torch.tensor([0, 0, 1, 1])
    out = CellTypeNorm(eps=1e-12)(a, group, 2)
    torch.testing.assert_close(out[0, :2, 0], torch.tensor([-1.0, 1.0]))
    assert bool((out[0, 2:] == 0).all())  # no spatial variation: nothing left


@pytest.mark.parametrize("aggr", ["sum", "mean"])
def test_pooled_readout_equals_manual_pooling(aggr):
    torch.manual_seed(0)
    b, r, n = 3, 2, 12
    states = torch.randn(b, r, n, dtype=torch.float64)
    out_mask = torch.tensor([False, True] * 6)
    cell_type = torch.arange(n) % 3
    pos = torch.randn(n, 2, dtype=torch.float64)
    ro = PooledReadout(r, 4, 3, hidden=5, aggr=aggr).double()
    idx = torch.nonzero(out_mask).flatten()
    h = ro.encode(states[:, :, idx].transpose(1, 2), cell_type[idx], pos[idx])  # [B, M, H]
    pooled = torch.stack([sum(h[bb, m] for m in range(len(idx))) for bb in range(b)])
    if aggr == "mean":
        pooled = pooled / len(idx)
    torch.testing.assert_close(ro(states, out_mask, cell_type, pos), ro.head(pooled))


@pytest.mark.parametrize("aggr", ["sum", "mean"])
@pytest.mark.parametrize("keep_group_mean", [False, True])
def test_contracted_pool_has_the_gradients_of_pyg_aggregation(aggr, keep_group_mean):
    """The single-graph sum/mean pool is computed by contraction; its values and gradients
    (to the states and every parameter) equal encode() + the PyG aggregation module."""
    torch.manual_seed(2)
    b, r, n = 4, 3, 20
    states = torch.randn(b, r, n, dtype=torch.float64, requires_grad=True)
    out_mask = torch.rand(n) < 0.8
    cell_type = torch.arange(n) % 4
    pos = torch.randn(n, 2, dtype=torch.float64)
    ro = PooledReadout(r, 3, 4, hidden=6, aggr=aggr, keep_group_mean=keep_group_mean).double()
    weights = torch.randn(b, 3, dtype=torch.float64)

    def generic():
        idx = torch.nonzero(out_mask).flatten()
        h = ro.encode(states[:, :, idx].transpose(1, 2), cell_type[idx], pos[idx])
        return ro.head(ro.aggr(h, index=torch.zeros_like(idx), dim_size=1, dim=1).squeeze(1))

    def grads(fn):
        ro.zero_grad()
        states.grad = None
        out = fn()
        (out * weights).sum().backward()
        return out.detach(), [states.grad.clone()] + [p.grad.clone() for p in ro.parameters()]

    out_fast, g_fast = grads(lambda: ro(states, out_mask, cell_type, pos))
    out_ref, g_ref = grads(generic)
    torch.testing.assert_close(out_fast, out_ref)
    for got, want in zip(g_fast, g_ref):
        torch.testing.assert_close(got, want)


def test_pooled_readout_on_a_batch_of_graphs_equals_each_graph():
    torch.manual_seed(1)
    ro = PooledReadout(2, 3, 4, hidden=6, aggr="sum").double()
    graphs = []
    for n in (7, 9):
        graphs.append(Data(num_nodes=n, cell_type=torch.arange(n) % 4, pos=torch.randn(n, 2, dtype=torch.float64),
                           output_mask=torch.rand(n) < 0.7))
    batch = Batch.from_data_list(graphs)
    states = torch.randn(2, 2, batch.num_nodes, dtype=torch.float64)
    joint = ro(states, batch.output_mask, batch.cell_type, batch.pos, batch=batch.batch, num_graphs=2).view(2, 2, 3)
    # positions are scaled by the largest coordinate of the input: give each graph the same scale
    start = 0
    for g, d in enumerate(graphs):
        sl = slice(start, start + d.num_nodes)
        ref = ro(states[:, :, sl], d.output_mask, d.cell_type, d.pos * 0 + batch.pos[sl])
        if not torch.allclose(batch.pos.abs().max(), d.pos.abs().max()):
            start += d.num_nodes
            continue  # Fourier scaling differs for the graph without the largest coordinate
        torch.testing.assert_close(joint[:, g], ref)
        start += d.num_nodes


def test_linear_readout_uses_final_state():
    ro = LinearReadout(6, 3)
    s = torch.randn(2, 4, 6)
    s2 = s.clone()
    s2[:, :-1] = 0
    ro.eval()
    torch.testing.assert_close(ro(s), ro(s2))


def _readout(keep_group_mean: bool, aggr: str = "mean") -> PooledReadout:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PooledReadout(3, 4, 2, hidden=8, num_frequencies=0, aggr=aggr, keep_group_mean=keep_group_mean).double()


def _offset_pair():
    """Two inputs ``[1, R=3, N=6]`` on 6 output neurons of 2 cell types: the second is the
    first plus a different constant per (type, record), so the pattern within every type
    is the same and only the types' levels differ."""
    g = torch.Generator().manual_seed(1)
    cell_type = torch.tensor([0, 1, 0, 1, 0, 1])
    a = torch.randn(1, 3, 6, generator=g, dtype=F64)
    offset = torch.tensor([[2.0, -1.0], [0.5, 3.0], [-4.0, 1.5]], dtype=F64)  # [R, type]
    b = a + offset[:, cell_type].unsqueeze(0)
    return a, b, torch.ones(6, dtype=torch.bool), cell_type


@pytest.mark.parametrize("aggr", ["sum", "mean"])
def test_linear_pool_without_positions_warns(aggr):
    with pytest.warns(UserWarning, match="keep_group_mean"):
        PooledReadout(3, 4, 2, num_frequencies=0, aggr=aggr)


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_frequencies=0, aggr="max"), dict(num_frequencies=0, aggr="attention"),
     dict(num_frequencies=6, aggr="mean"), dict(num_frequencies=0, aggr="mean", keep_group_mean=True)],
)
def test_no_warning_where_the_pool_sees_the_activity(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PooledReadout(3, 4, 2, **kwargs)


def test_without_group_mean_an_offset_is_invisible():
    with pytest.warns(UserWarning, match="keep_group_mean"):
        torch.manual_seed(0)
        ro = PooledReadout(3, 4, 2, hidden=8, num_frequencies=0, aggr="mean").double()
    a, b, mask, cell_type = _offset_pair()
    torch.testing.assert_close(ro(a, mask, cell_type), ro(b, mask, cell_type))
    # ... and so is everything else: a linear pool of normalised features ignores the input
    torch.testing.assert_close(ro(torch.randn_like(a), mask, cell_type), ro(a, mask, cell_type))


def test_with_group_mean_an_offset_changes_the_logits():
    ro = _readout(keep_group_mean=True)
    assert ro.activity.in_features == 3 * 3
    a, b, mask, cell_type = _offset_pair()
    la, lb = ro(a, mask, cell_type), ro(b, mask, cell_type)
    assert (la - lb).abs().max() > 1e-3, (la, lb)


def test_with_group_mean_graphs_of_a_batch_differ():
    ro = _readout(keep_group_mean=True)
    a, b, mask, cell_type = _offset_pair()
    batch = Batch.from_data_list([Data(num_nodes=6, cell_type=cell_type, output_mask=mask)] * 2)
    states = torch.cat([a, b], dim=2)  # graph 0 sees a, graph 1 sees b
    joint = ro(states, batch.output_mask, batch.cell_type, None, batch=batch.batch, num_graphs=2)
    torch.testing.assert_close(joint[0], ro(a, mask, cell_type)[0])
    torch.testing.assert_close(joint[1], ro(b, mask, cell_type)[0])


def test_group_features_by_hand():
    # B=1, M=3 output neurons, R=2; types [0, 0, 1]
    activity = torch.tensor([[[1.0, 4.0], [3.0, 4.0], [5.0, -2.0]]], dtype=F64)
    cell_type = torch.tensor([0, 0, 1])
    eps = 1e-5
    # type 0: record 0 mean 2, var 1; record 1 mean 4, var 0. type 1 (one neuron): var 0.
    normed = torch.tensor([[-1 / math.sqrt(1 + eps), 0.0], [1 / math.sqrt(1 + eps), 0.0], [0.0, 0.0]], dtype=F64)
    mean = torch.tensor([[2.0, 4.0], [2.0, 4.0], [5.0, -2.0]], dtype=F64)
    log_std = 0.5 * torch.log(torch.tensor([[1 + eps, eps], [1 + eps, eps], [eps, eps]], dtype=F64))
    out = CellTypeNorm(eps=eps)(activity, cell_type, 2, return_stats=True)
    for got, want in zip(out, (normed, mean, log_std)):
        torch.testing.assert_close(got[0], want)
    assert torch.isfinite(out[2]).all()  # groups without spread give log sqrt(eps), not -inf

    torch.manual_seed(0)
    ro = PooledReadout(2, 3, 2, hidden=4, num_frequencies=0, aggr="mean", keep_group_mean=True).double()
    gate = torch.tanh(ro.context(ro.type_embedding(cell_type)))
    features = torch.cat([normed, mean, log_std], dim=-1)  # [M, 3R]
    h = (features @ ro.activity.weight.T + ro.activity.bias) * gate
    torch.testing.assert_close(ro.encode(activity, cell_type, None)[0], h)
    states = activity.transpose(1, 2)  # [B, R, N]
    torch.testing.assert_close(ro(states, torch.ones(3, dtype=torch.bool), cell_type)[0], ro.head(h.mean(0)))
