"""ConnectomeConv / SparseGraph / SynapseWeights against independent dense float64 references."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch_geometric.data import Batch, Data

import graphode.layer as layer_mod
from graphode.layer import ACTIVATIONS, ConnectomeConv, SparseGraph, available_backends
from graphode.synapses import SynapseWeights, inverse_softplus

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("single_thread")]

BACKENDS = available_backends() + ["auto"]
ACTS = sorted(ACTIVATIONS)
N, E, B = 8, 20, 3


def _x(n=N, b=B, seed=1):
    x = torch.randn(n, b, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    # keep relu away from its kink so that gradients are unambiguous
    return torch.where(x.abs() < 0.05, x + 0.1, x)


# ---------------------------------------------------------------------------------------
# forward and gradients against dense float64
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_and_grads_match_dense(backend, activation, make_graph, dense, ref_act):
    edge_index, w = make_graph(N, E, seed=2)
    x = _x()
    g_out = torch.randn(N, B, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    conv = ConnectomeConv(activation, backend=backend)

    xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    out = conv(xs, edge_index, ws)
    (out * g_out).sum().backward()

    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ref = dense(edge_index, wr, N) @ ref_act[activation](xr)
    (ref * g_out).sum().backward()

    assert out.shape == (N, B) and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ws.grad, wr.grad, rtol=1e-12, atol=1e-12)
    assert out[N - 1].abs().max() == 0  # the node without inputs


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend, make_graph):
    edge_index, w = make_graph(N, E, seed=4)
    conv = ConnectomeConv("tanh", backend=backend)
    x = _x(seed=5).requires_grad_(True)
    w = w.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w: conv(x, edge_index, w), (x, w))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsorted_edges_match_sorted(backend, make_graph, dense):
    edge_index, w = make_graph(N, E, seed=6)
    perm = torch.randperm(E, generator=torch.Generator().manual_seed(7))
    ei_u, w_u = edge_index[:, perm], w[perm]
    conv = ConnectomeConv("relu", backend=backend)
    assert conv.graph_for(ei_u, N).perm is not None
    assert conv.graph_for(edge_index, N).perm is None
    x = _x()
    g_out = torch.randn(N, B, dtype=torch.float64)

    w_s = w.clone().requires_grad_(True)
    out_s = conv(x, edge_index, w_s)
    (out_s * g_out).sum().backward()
    w_us = w_u.clone().requires_grad_(True)
    out_u = conv(x, ei_u, w_us)
    (out_u * g_out).sum().backward()

    torch.testing.assert_close(out_u, out_s, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(out_u, dense(ei_u, w_u, N) @ x.clamp_min(0), rtol=1e-12, atol=1e-12)
    # the weight gradient comes back in the caller's (unsorted) edge order
    torch.testing.assert_close(w_us.grad, w_s.grad[perm], rtol=1e-13, atol=1e-13)


def test_sparse_graph_structure_by_hand():
    # edges 0->2, 1->0, 2->0, 0->1 given unsorted; sorted by (dst, src): 1->0, 2->0, 0->1, 0->2
    ei = torch.tensor([[0, 1, 2, 0], [2, 0, 0, 1]])
    g = SparseGraph.from_edge_index(ei, 3)
    assert g.edge_index.tolist() == [[1, 2, 0, 0], [0, 0, 1, 2]]
    assert g.rowptr.tolist() == [0, 2, 3, 4]
    assert g.perm.tolist() == [1, 2, 3, 0]
    assert g.sorted_weights(torch.tensor([10.0, 11.0, 12.0, 13.0])).tolist() == [11.0, 12.0, 13.0, 10.0]
    # transposed: rows = sources 0: (->1, ->2), 1: (->0), 2: (->0)
    assert g.colptr.tolist() == [0, 2, 3, 4]
    assert g.t_row.tolist() == [1, 2, 0, 0]
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])  # sorted order
    At = g.csr_transposed(w).to_dense()
    torch.testing.assert_close(At, g.csr(w).to_dense().t())


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_dimensional_state(backend, make_graph, dense):
    edge_index, w = make_graph(N, E, seed=8)
    x = _x(b=1).squeeze(1)
    out = ConnectomeConv("sigmoid", backend=backend)(x, edge_index, w)
    assert out.shape == (N,)
    torch.testing.assert_close(out, dense(edge_index, w, N) @ torch.sigmoid(x), rtol=1e-12, atol=1e-12)


def test_sparse_tensor_adj_t_input(make_graph, dense):
    torch_sparse = pytest.importorskip("torch_sparse")
    edge_index, w = make_graph(N, E, seed=9)
    wr = w.clone().requires_grad_(True)
    adj_t = torch_sparse.SparseTensor(row=edge_index[1], col=edge_index[0], value=wr, sparse_sizes=(N, N))
    x = _x().requires_grad_(True)
    out = ConnectomeConv("tanh", backend="csr")(x, adj_t)  # adj_t bypasses the backend choice
    xr = x.detach().clone().requires_grad_(True)
    wd = w.clone().requires_grad_(True)
    ref = dense(edge_index, wd, N) @ torch.tanh(xr)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(wr.grad, wd.grad, rtol=1e-12, atol=1e-12)
    out1 = ConnectomeConv("tanh")(x.detach()[:, 0], adj_t)
    torch.testing.assert_close(out1, ref.detach()[:, 0], rtol=1e-12, atol=1e-12)


def test_custom_callable_activation(make_graph, dense):
    edge_index, w = make_graph(N, E, seed=10)
    x = _x()
    conv = ConnectomeConv(lambda v: v**3, backend="csr")
    torch.testing.assert_close(conv(x, edge_index, w), dense(edge_index, w, N) @ x**3, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_of_two_graphs_is_block_diagonal(backend, make_graph):
    ei1, w1 = make_graph(8, 20, seed=11)
    ei2, w2 = make_graph(5, 9, seed=12)
    batch = Batch.from_data_list(
        [Data(edge_index=ei1, w=w1, num_nodes=8), Data(edge_index=ei2, w=w2, num_nodes=5)]
    )
    assert batch.num_nodes == 13 and batch.edge_index.shape == (2, 29)
    x = _x(n=13, seed=13)
    conv = ConnectomeConv("softplus", backend=backend)
    out = conv(x, batch.edge_index, batch.w)
    separate = torch.cat([conv(x[:8], ei1, w1), conv(x[8:], ei2, w2)])
    torch.testing.assert_close(out, separate, rtol=1e-12, atol=1e-12)
    # the batch must not mix the graphs: inputs of graph 2 do not reach graph 1
    x2 = x.clone()
    x2[8:] += 1.0
    torch.testing.assert_close(conv(x2, batch.edge_index, batch.w)[:8], out[:8], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# structure cache
# ---------------------------------------------------------------------------------------
def test_structure_is_cached_and_invalidated_by_in_place_edits(make_graph, dense):
    edge_index, w = make_graph(N, E, seed=14)
    conv = ConnectomeConv("identity", backend="csr")
    x = _x()
    conv(x, edge_index, w)
    g1 = conv.graph_for(edge_index, N)
    conv(x, edge_index, w)
    assert conv.graph_for(edge_index, N) is g1
    assert len(conv._graphs) == 1

    # rewire edge 0 in place to a source it does not have yet
    present = set((edge_index[1] * N + edge_index[0]).tolist())
    d0 = int(edge_index[1, 0])
    new_src = next(s for s in range(N) if d0 * N + s not in present)
    before = conv(x, edge_index, w)
    edge_index[0, 0] = new_src
    g2 = conv.graph_for(edge_index, N)
    assert g2 is not g1
    after = conv(x, edge_index, w)
    torch.testing.assert_close(after, dense(edge_index, w, N) @ x, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(after, before)
    # a prebuilt SparseGraph is used as is
    torch.testing.assert_close(conv(x, g2, g2.sorted_weights(w)), dense(edge_index, w, N) @ x, rtol=1e-12, atol=1e-12)


def test_cache_never_serves_a_freed_graph():
    """New edge_index tensors of the same shape (e.g. successive data-loader batches) may
    reuse a freed tensor's memory; the cache must not return the old structure."""
    n, e = 50, 300
    conv = ConnectomeConv("identity", backend="csr")
    x = torch.randn(n, 2, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        keys = torch.randperm(n * n, generator=gen)[:e].sort().values
        ei = torch.stack([keys % n, keys // n])
        w = torch.randn(e, dtype=torch.float64, generator=gen)
        W = torch.zeros(n, n, dtype=torch.float64)
        W[ei[1], ei[0]] = w
        torch.testing.assert_close(conv(x, ei, w), W @ x, rtol=1e-12, atol=1e-12)
        del ei, keys


def test_auto_chooses_an_available_backend_once(make_graph, dense):
    edge_index, w = make_graph(N, E, seed=15)
    conv = ConnectomeConv("relu", backend="auto")
    x = _x()
    out = conv(x, edge_index, w)
    assert len(conv._chosen) == 1
    # Interpreted Triton (this CPU) is for correctness tests, never measured; on CUDA it is.
    expected = [b for b in available_backends(x.device) if b != "triton" or x.device.type == "cuda"]
    (choice,) = conv._chosen.values()
    assert choice in expected
    conv(x, edge_index, w)
    assert len(conv._chosen) == 1
    ranking = conv.benchmark(conv.graph_for(edge_index, N), x, w)
    assert sorted(b for b, _ in ranking) == sorted(expected)
    assert all(t > 0 for _, t in ranking)
    torch.testing.assert_close(out, dense(edge_index, w, N) @ x.clamp_min(0), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
def test_input_errors(make_graph):
    edge_index, w = make_graph(N, E, seed=16)
    conv = ConnectomeConv("relu", backend="csr")
    x = _x()
    with pytest.raises(ValueError, match="x must be"):
        conv(x.unsqueeze(0), edge_index, w)
    with pytest.raises(ValueError, match="edge_weight"):
        conv(x, edge_index, w[:-1])
    with pytest.raises(ValueError, match="edge_weight"):
        conv(x, edge_index, w.unsqueeze(1))
    with pytest.raises(ValueError, match="edge_weight"):
        conv(x, edge_index, None)
    bad = edge_index.clone()
    bad[1, 0] = N
    with pytest.raises(ValueError, match="outside"):
        conv(x, bad, w)
    bad = edge_index.clone()
    bad[0, 3] = -1
    with pytest.raises(ValueError, match="outside"):
        conv(x, bad, w)
    with pytest.raises(ValueError, match="int64"):
        conv(x, edge_index.int(), w)
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        conv(x, edge_index[0], w)
    graph = SparseGraph.from_edge_index(edge_index, N)
    with pytest.raises(ValueError, match="nodes"):
        conv(_x(n=N + 1), graph, w)


def test_unknown_backend_and_activation():
    with pytest.raises(ValueError, match="unknown backend"):
        ConnectomeConv("relu", backend="cusparse")
    with pytest.raises(ValueError, match="unknown activation"):
        ConnectomeConv("gelu")


@pytest.mark.parametrize(("backend", "package"), [("torch_scatter", "torch_scatter"), ("sparse_tensor", "torch_sparse")])
def test_backend_with_missing_package(backend, package, monkeypatch, make_graph, dense):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == package else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert backend not in available_backends()
    assert {"pyg", "csr"} <= set(available_backends())
    with pytest.raises(ImportError, match=package.replace("_", "-")):
        ConnectomeConv("relu", backend=backend)
    # auto still works with what is left
    edge_index, w = make_graph(N, E, seed=17)
    conv = ConnectomeConv("relu", backend="auto")
    x = _x()
    torch.testing.assert_close(conv(x, edge_index, w), dense(edge_index, w, N) @ x.clamp_min(0))
    assert next(iter(conv._chosen.values())) != backend


# ---------------------------------------------------------------------------------------
# SynapseWeights
# ---------------------------------------------------------------------------------------
def _syn_inputs(e=12, seed=20):
    g = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.rand(e, generator=g) < 0.4, -1.0, 1.0)
    mag = 0.05 + torch.rand(e, generator=g)
    etype = torch.randint(0, 4, (e,), generator=g)
    etype[:4] = torch.arange(4)  # every type present
    return sign, mag, etype


def test_inverse_softplus():
    y = torch.tensor([1e-6, 1e-3, 0.5, 3.0, 40.0], dtype=torch.float64)
    for beta in (1.0, 20.0):
        torch.testing.assert_close(torch.nn.functional.softplus(beta * inverse_softplus(y, beta)) / beta, y, rtol=1e-10, atol=0)


@pytest.mark.parametrize("dale", [True, False])
def test_per_edge_init(dale):
    sign, mag, _ = _syn_inputs()
    syn = SynapseWeights(sign, mag, mode="per_edge", gain=2.5, dale=dale)
    torch.testing.assert_close(syn(), 2.5 * mag * sign, rtol=1e-6, atol=1e-6)
    assert [n for n, _ in syn.named_parameters()] == ["theta"]
    assert syn.theta.shape == sign.shape


def test_dale_signs_survive_large_updates():
    sign, mag, _ = _syn_inputs()
    syn = SynapseWeights(sign, mag, mode="per_edge", dale=True).double()
    opt = torch.optim.SGD(syn.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        # d/dw of this loss is 50·sign: a plain step w -= 0.1·50·sign would flip every sign
        (syn() * sign).sum().mul(50.0).backward()
        opt.step()
        w = syn().detach()
        assert torch.isfinite(w).all()
        assert torch.equal(torch.sign(w), sign.double())  # same signs, magnitudes > 0
    assert (syn().detach().abs() < 1e-3).all()  # the magnitudes did shrink towards zero
    # pushed the other way, magnitudes grow and signs still stay
    syn = SynapseWeights(sign, mag, mode="per_edge", dale=True).double()
    w0 = syn().detach()
    opt = torch.optim.SGD(syn.parameters(), lr=0.1)
    (-(syn() * sign).sum()).backward()
    opt.step()
    w = syn().detach()
    assert torch.equal(torch.sign(w), sign.double()) and (w.abs() > w0.abs()).all()


def test_free_signs_without_dale():
    sign, mag, _ = _syn_inputs()
    syn = SynapseWeights(sign, mag, mode="per_edge", dale=False)
    opt = torch.optim.SGD(syn.parameters(), lr=10.0)
    (syn() * sign).sum().backward()
    opt.step()
    w = syn().detach()
    assert torch.equal(torch.sign(w), -sign)  # every sign flipped
    torch.testing.assert_close(w, sign * mag - 10.0 * sign)


def test_per_edge_type_shares_one_strength_per_type():
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    mag = torch.tensor([0.5, 0.25, 1.0, 2.0, 0.125])
    etype = torch.tensor([0, 1, 0, 2, 1])
    syn = SynapseWeights(sign, mag, etype, mode="per_edge_type", gain=2.0)
    assert syn.theta.shape == (3,)
    torch.testing.assert_close(syn(), torch.tensor([1.0, -0.5, 2.0, -4.0, 0.25]), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        syn.theta.copy_(torch.log(torch.exp(torch.tensor([3.0, 0.5, 2.0])) - 1))  # softplus = 3, 0.5, 2
    torch.testing.assert_close(syn(), torch.tensor([3.0, -0.25, 6.0, -8.0, 0.125]), rtol=1e-5, atol=1e-6)
    # the gradient of one strength collects all its edges: d/dθ_0 Σ w = σ(θ_0)·(1 + 2)
    syn.theta.grad = None
    syn().sum().backward()
    sig = torch.sigmoid(syn.theta.detach())
    expected = torch.stack([sig[0] * 2.0 * (0.5 + 1.0), sig[1] * 2.0 * (-0.25 + 0.125), sig[2] * 2.0 * (-2.0)])
    torch.testing.assert_close(syn.theta.grad, expected, rtol=1e-5, atol=1e-6)


def test_fixed_has_no_parameters():
    sign, mag, _ = _syn_inputs()
    syn = SynapseWeights(sign, mag, mode="fixed", gain=0.5)
    assert list(syn.parameters()) == []
    torch.testing.assert_close(syn(), 0.5 * sign * mag)
    assert not syn().requires_grad


def test_from_data_falls_back_to_syn_count():
    sign, mag, etype = _syn_inputs()
    syn = SynapseWeights.from_data(Data(sign=sign, syn_count=mag, edge_type=etype), mode="fixed")
    torch.testing.assert_close(syn(), sign * mag)
    syn = SynapseWeights.from_data(Data(sign=sign, syn_weight=mag / 2, syn_count=mag, edge_type=etype), mode="per_edge_type")
    torch.testing.assert_close(syn(), sign * mag / 2, rtol=1e-6, atol=1e-6)


def test_synapse_bad_inputs():
    sign, mag, etype = _syn_inputs()
    with pytest.raises(ValueError, match=r"\[E\]"):
        SynapseWeights(sign, mag[:-1])
    with pytest.raises(ValueError, match=r"\[E\]"):
        SynapseWeights(sign.unsqueeze(0), mag.unsqueeze(0))
    with pytest.raises(ValueError, match=">= 0"):
        SynapseWeights(sign, -mag)
    with pytest.raises(ValueError, match="finite"):
        SynapseWeights(sign, torch.where(torch.arange(len(mag)) == 0, float("nan"), mag))
    with pytest.raises(ValueError, match="signs"):
        SynapseWeights(sign * 0.5, mag)
    with pytest.raises(ValueError, match="unknown weight mode"):
        SynapseWeights(sign, mag, mode="per_neuron")
    with pytest.raises(ValueError, match="dale=False"):
        SynapseWeights(sign, mag, etype, mode="per_edge_type", dale=False)
    with pytest.raises(ValueError, match="edge_type"):
        SynapseWeights(sign, mag, mode="per_edge_type")
    with pytest.raises(ValueError, match="edge_type"):
        SynapseWeights(sign, mag, etype[:-1], mode="per_edge_type")


# ---------------------------------------------------------------------------------------
# the fly visual system
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fly2():
    from graphode.flyvis import fly_visual_system

    return fly_visual_system(2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fly_visual_system_matches_scipy(backend, fly2):
    import numpy as np
    import scipy.sparse as sp

    n = fly2.num_nodes
    syn = SynapseWeights.from_data(fly2, mode="per_edge", gain=1.3).double()
    w = syn()
    src, dst = fly2.edge_index.numpy()
    A = sp.csr_matrix((w.detach().numpy(), (dst, src)), shape=(n, n))
    x = torch.randn(n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(21))
    ref = A @ np.maximum(x.numpy(), 0)
    out = ConnectomeConv("relu", backend=backend)(x, fly2.edge_index, w)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-10, atol=1e-12)
    # incoming magnitudes of every neuron with inputs sum to gain (syn_weight normalisation)
    in_abs = np.asarray(abs(A).sum(1)).ravel()
    has_in = np.bincount(dst, minlength=n) > 0
    np.testing.assert_allclose(in_abs[has_in], 1.3, rtol=1e-5)
