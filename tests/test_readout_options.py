"""PooledReadout's keep_group_mean option: the blind spot of a linear pool over normalised
activity without positions, and the extra features that remove it."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch_geometric.data import Batch, Data

from graphode.models import DEFAULT_CONFIG, ConnectomeClassifier
from graphode.readout import CellTypeNorm, PooledReadout

F64 = torch.float64


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


def test_classifier_passes_keep_group_mean_and_old_configs_load():
    spec = {"name": "random", "num_nodes": 40, "num_edges": 160, "seed": 0}
    common = dict(connectome=spec, input="random", image_size=(4, 4), num_records=2, hidden=8, backend="pyg")
    model = ConnectomeClassifier.from_config({**common, "keep_group_mean": True})
    assert model.readout.keep_group_mean and model.readout.activity.in_features == 6
    cfg = model.to_config()
    assert cfg["keep_group_mean"] is True
    assert ConnectomeClassifier.from_config(cfg).to_config() == cfg

    # a config written before the key existed: the default (off) applies, with its warning
    old = {k: v for k, v in {**DEFAULT_CONFIG, **common}.items() if k != "keep_group_mean"}
    with pytest.warns(UserWarning, match="keep_group_mean"):
        model = ConnectomeClassifier.from_config(old)
    assert not model.readout.keep_group_mean and model.readout.activity.in_features == 2
    assert model.to_config()["keep_group_mean"] is False
