"""Tests for graphode.connectome.synthetic.random_connectome."""

from __future__ import annotations

import pytest
import torch

from graphode.connectome.synthetic import random_connectome


@pytest.fixture(scope="module")
def graph():
    return random_connectome(2000, 40_000, seed=3)


@pytest.fixture(scope="module")
def local_graph():
    return random_connectome(2000, 40_000, locality=0.02, seed=3)


def _keys(data) -> torch.Tensor:
    src, dst = data.edge_index
    return dst * data.num_nodes + src


def _check_layout(data, num_nodes: int, num_edges: int, num_cell_types: int = 8) -> None:
    src, dst = data.edge_index
    assert data.edge_index.shape == (2, num_edges)
    assert data.edge_index.dtype == torch.long
    assert data.num_nodes == num_nodes
    assert bool(((data.edge_index >= 0) & (data.edge_index < num_nodes)).all())
    assert not bool((src == dst).any()), "self-loop present"
    keys = _keys(data)
    # Strictly increasing (target, source) keys: sorted and duplicate-free at once.
    assert bool((keys[1:] > keys[:-1]).all())
    assert data.syn_count.shape == data.sign.shape == data.syn_weight.shape == (num_edges,)
    assert data.syn_count.dtype == torch.float32
    assert bool((data.syn_count >= 1).all())
    assert torch.equal(data.syn_count, data.syn_count.round())
    assert set(data.sign.unique().tolist()) <= {-1.0, 1.0}
    assert data.cell_type.shape == (num_nodes,) and data.cell_type.dtype == torch.long
    assert int(data.cell_type.max()) < num_cell_types
    assert data.cell_type_names == [f"type{i}" for i in range(num_cell_types)]
    expected_edge_type = data.cell_type[src] * num_cell_types + data.cell_type[dst]
    assert torch.equal(data.edge_type, expected_edge_type)
    assert data.input_mask.dtype == data.output_mask.dtype == torch.bool
    assert data.input_mask.shape == data.output_mask.shape == (num_nodes,)
    data.validate(raise_on_error=True)


def test_layout_contract(graph):
    _check_layout(graph, 2000, 40_000)


def test_layout_contract_with_locality(local_graph):
    _check_layout(local_graph, 2000, 40_000)


@pytest.mark.parametrize(
    ("num_nodes", "num_edges"),
    [(1, 0), (2, 2), (10, 90), (30, 600), (200, 1000), (500, 20_000)],
)
def test_exact_edge_count_sparse_and_dense(num_nodes, num_edges):
    # (10, 90) is the complete digraph; (30, 600) takes the all-pairs path.
    data = random_connectome(num_nodes, num_edges, seed=1)
    _check_layout(data, num_nodes, num_edges)


def test_complete_graph_has_every_pair():
    data = random_connectome(6, 30, seed=0)
    src, dst = data.edge_index
    adjacency = torch.zeros(6, 6, dtype=torch.bool)
    adjacency[src, dst] = True
    assert torch.equal(adjacency, ~torch.eye(6, dtype=torch.bool))


def test_dales_law_sign_constant_per_source(graph):
    src = graph.edge_index[0]
    n = graph.num_nodes
    min_sign = torch.full((n,), 2.0).scatter_reduce(0, src, graph.sign, "amin")
    max_sign = torch.full((n,), -2.0).scatter_reduce(0, src, graph.sign, "amax")
    has_out = torch.bincount(src, minlength=n) > 0
    assert torch.equal(min_sign[has_out], max_sign[has_out])
    frac_inhibitory_sources = float((min_sign[has_out] < 0).float().mean())
    assert 0.14 < frac_inhibitory_sources < 0.26


@pytest.mark.parametrize("frac", [0.0, 1.0])
def test_frac_inhibitory_extremes(frac):
    data = random_connectome(100, 800, frac_inhibitory=frac, seed=0)
    expected = -1.0 if frac == 1.0 else 1.0
    assert bool((data.sign == expected).all())


def test_syn_weight_normalised_per_target(graph):
    dst = graph.edge_index[1]
    n = graph.num_nodes
    total = torch.zeros(n, dtype=torch.float64).index_add_(0, dst, graph.syn_weight.double())
    has_in = torch.bincount(dst, minlength=n) > 0
    torch.testing.assert_close(total[has_in], torch.ones(int(has_in.sum()), dtype=torch.float64))
    assert bool((total[~has_in] == 0).all())
    # syn_weight is syn_count rescaled per target, not something unrelated.
    into = torch.zeros(n).index_add_(0, dst, graph.syn_count)
    torch.testing.assert_close(graph.syn_weight, graph.syn_count / into[dst])


def test_degrees_are_heavy_tailed(graph):
    src, dst = graph.edge_index
    for degree in (torch.bincount(dst, minlength=2000), torch.bincount(src, minlength=2000)):
        assert degree.max() > 5 * degree.float().mean()
    # Synapse counts too: a long tail above the median.
    assert graph.syn_count.max() > 10 * graph.syn_count.median()


def test_locality_shortens_index_distance(graph, local_graph):
    def median_circular_offset(data) -> float:
        src, dst = data.edge_index
        offset = (src - dst).abs()
        return float(torch.minimum(offset, data.num_nodes - offset).float().median())

    assert median_circular_offset(local_graph) < 0.3 * median_circular_offset(graph)
    # Hubs survive locality: the out-degree tail is still heavy.
    out_degree = torch.bincount(local_graph.edge_index[0], minlength=2000)
    assert out_degree.max() > 5 * out_degree.float().mean()


def test_too_narrow_locality_warns_and_still_completes():
    with pytest.warns(RuntimeWarning, match="too narrow"):
        data = random_connectome(300, 20_000, locality=1e-4, seed=0)
    _check_layout(data, 300, 20_000)


def test_io_masks_follow_first_and_last_cell_types():
    data = random_connectome(400, 2000, num_cell_types=20, seed=0)
    # ceil(10% of 20) = 2 types at each end.
    assert torch.equal(data.input_mask, data.cell_type < 2)
    assert torch.equal(data.output_mask, data.cell_type >= 18)
    assert not bool((data.input_mask & data.output_mask).any())
    # Balanced assignment: every type has N / types neurons.
    assert torch.equal(torch.bincount(data.cell_type), torch.full((20,), 20))


def test_reproducible_with_seed_and_differs_across_seeds():
    a = random_connectome(500, 5000, seed=7)
    b = random_connectome(500, 5000, seed=7)
    c = random_connectome(500, 5000, seed=8)
    for key in ("edge_index", "syn_count", "sign", "cell_type"):
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a.edge_index, c.edge_index)
    assert not torch.equal(a.cell_type, c.cell_type)


def test_dtype_is_respected():
    data = random_connectome(50, 300, dtype=torch.float64)
    assert data.syn_count.dtype == data.sign.dtype == data.syn_weight.dtype == torch.float64


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((10, 91), {}, ValueError, "N\\*\\(N-1\\)"),
        ((1, 1), {}, ValueError, "at most"),
        ((-5, 10), {}, ValueError, "num_nodes"),
        ((0, 0), {}, ValueError, "num_nodes"),
        ((10, -1), {}, ValueError, "num_edges"),
        ((10, 20), {"frac_inhibitory": 1.5}, ValueError, "frac_inhibitory"),
        ((10, 20), {"frac_inhibitory": -0.1}, ValueError, "frac_inhibitory"),
        ((10, 20), {"degree_exponent": 1.0}, ValueError, "degree_exponent"),
        ((10, 20), {"locality": 0.0}, ValueError, "locality"),
        ((10, 20), {"num_cell_types": 1}, ValueError, "num_cell_types"),
        ((10.0, 20), {}, TypeError, "num_nodes"),
        ((10, 20), {"dtype": torch.long}, TypeError, "dtype"),
    ],
)
def test_bad_arguments_raise(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        random_connectome(*args, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_builds_on_cuda():
    data = random_connectome(1000, 10_000, device="cuda", seed=0)
    assert data.edge_index.is_cuda
    _check_layout(data.cpu(), 1000, 10_000)
