"""ConnectomeConv / SparseGraph / backends against independent dense float64 references."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch
from torch_geometric.data import Batch, Data

from graphode.layer import (
    ACTIVATIONS,
    AutoBackend,
    Backend,
    ConnectomeConv,
    CSRBackend,
    PygBackend,
    SparseGraph,
    SparseTensorBackend,
    TorchScatterBackend,
    TritonBackend,
    available_backends,
    resolve_backend,
)
from graphode.synapses import SynapseWeights

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
    # Interpreted Triton (this CPU) is for correctness tests, never measured; on CUDA it is.
    expected = [b for b in available_backends(x.device) if b != "triton" or x.device.type == "cuda"]
    # the size class: B = 3, N = 8, E = 20 rounded up to powers of two
    ((key, choice),) = conv.backend.choices.items()
    assert key == (x.device, torch.float64, 4, 8, 32)
    assert choice in expected
    conv(x, edge_index, w)
    assert len(conv.backend.choices) == 1
    ranking = conv.benchmark(conv.graph_for(edge_index, N), x, w)
    assert sorted(b for b, _ in ranking) == sorted(expected)
    assert all(t > 0 for _, t in ranking)
    torch.testing.assert_close(out, dense(edge_index, w, N) @ x.clamp_min(0), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# backend objects
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls", [PygBackend, TorchScatterBackend, SparseTensorBackend, CSRBackend, TritonBackend, AutoBackend],
    ids=lambda c: c.__name__,
)
def test_backend_objects_run_like_dense(cls, make_graph, dense, ref_act):
    backend = cls()
    if not backend.available("cpu"):
        pytest.skip(f"{backend.name} is not available here")
    edge_index, w = make_graph(N, E, seed=30, shuffle=True)
    graph = SparseGraph.from_edge_index(edge_index, N)
    assert graph.perm is not None  # run takes the weights in target-sorted order
    conv = ConnectomeConv("tanh", backend=backend)
    assert conv.backend is backend and f"backend={backend.name}" in repr(conv)
    x = _x(seed=31)
    g_out = torch.randn(N, B, dtype=torch.float64, generator=torch.Generator().manual_seed(32))

    xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    out = backend.run(conv, graph, xs, graph.sorted_weights(ws))
    (out * g_out).sum().backward()
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ref = dense(edge_index, wr, N) @ ref_act["tanh"](xr)
    (ref * g_out).sum().backward()

    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ws.grad, wr.grad, rtol=1e-12, atol=1e-12)


class _Stub(Backend):
    """Counts its runs, waits ``delay`` seconds, and computes the sum with the CSR backend."""

    def __init__(self, name, delay=0.0, available=True):
        self.name, self.delay, self.is_available, self.calls = name, delay, available, 0

    def available(self, device):
        return self.is_available

    def run(self, conv, graph, x, w_sorted):
        self.calls += 1
        time.sleep(self.delay)
        return CSRBackend().run(conv, graph, x, w_sorted)


def test_auto_times_once_per_size_class(make_graph, dense):
    fast, slow = _Stub("fast"), _Stub("slow", delay=0.02)
    auto = AutoBackend(candidates=[slow, fast], repeats=1)
    conv = ConnectomeConv("relu", backend=auto)
    per_decision = 2  # runs of each candidate per decision: a warm-up and one timed run
    cpu, f64 = torch.device("cpu"), torch.float64

    # N in 5..8, E in 9..16, B in 3..4: one size class, (B, N, E) -> (4, 8, 16)
    for k, (n, e, b) in enumerate([(8, 16, 4), (5, 9, 3), (7, 13, 4), (6, 10, 3)]):
        edge_index, w = make_graph(n, e, seed=40 + k)
        x = _x(n=n, b=b, seed=50 + k)
        torch.testing.assert_close(conv(x, edge_index, w), dense(edge_index, w, n) @ x.clamp_min(0), rtol=1e-12, atol=1e-12)
        assert slow.calls == per_decision
        assert fast.calls == per_decision + k + 1
    assert auto.choices == {(cpu, f64, 4, 8, 16): "fast"}

    # a ninth node is the next class, and so is float32: each is timed once more
    edge_index, w = make_graph(9, 16, seed=60)
    x = _x(n=9, seed=61)
    torch.testing.assert_close(conv(x, edge_index, w), dense(edge_index, w, 9) @ x.clamp_min(0), rtol=1e-12, atol=1e-12)
    conv(x.float(), edge_index, w.float())
    assert slow.calls == 3 * per_decision
    assert fast.calls == 3 * per_decision + 6
    assert auto.choices == {
        (cpu, f64, 4, 8, 16): "fast", (cpu, f64, 4, 16, 16): "fast", (cpu, torch.float32, 4, 16, 16): "fast",
    }
    graph = conv.graph_for(edge_index, 9)
    assert [name for name, _ in conv.benchmark(graph, x, w)] == ["fast", "slow"]


def test_auto_skips_unavailable_candidates(make_graph, dense):
    edge_index, w = make_graph(N, E, seed=62)
    x = _x()
    absent = _Stub("absent", available=False)
    conv = ConnectomeConv("relu", backend=AutoBackend(candidates=["csr", absent]))
    torch.testing.assert_close(conv(x, edge_index, w), dense(edge_index, w, N) @ x.clamp_min(0), rtol=1e-12, atol=1e-12)
    assert absent.calls == 0 and list(conv.backend.choices.values()) == ["csr"]
    with pytest.raises(RuntimeError, match="none of its candidates"):
        ConnectomeConv("relu", backend=AutoBackend(candidates=[absent]))(x, edge_index, w)


def test_resolve_backend():
    for name, cls in [("pyg", PygBackend), ("torch_scatter", TorchScatterBackend),
                      ("sparse_tensor", SparseTensorBackend), ("csr", CSRBackend), ("triton", TritonBackend)]:
        backend = resolve_backend(name)
        assert type(backend) is cls and backend.name == name
    first, second = resolve_backend("auto"), resolve_backend("auto")
    assert isinstance(first, AutoBackend) and first is not second  # each layer its own choices
    stub = _Stub("stub")
    assert resolve_backend(stub) is stub
    with pytest.raises(ValueError, match=r"'cusparse'.*'auto', pyg, torch_scatter, sparse_tensor, csr, triton"):
        resolve_backend("cusparse")
    with pytest.raises(TypeError, match="int: 3"):
        resolve_backend(3)
    with pytest.raises(TypeError, match="NoneType"):
        ConnectomeConv("relu", backend=None)
    with pytest.raises(ValueError, match="fuses the activation"):
        ConnectomeConv(lambda v: v, backend=TritonBackend())


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
    with pytest.raises(ImportError, match="pip install"):
        ConnectomeConv("relu", backend=resolve_backend(backend))  # the object, too
    # auto still works with what is left
    edge_index, w = make_graph(N, E, seed=17)
    conv = ConnectomeConv("relu", backend="auto")
    x = _x()
    torch.testing.assert_close(conv(x, edge_index, w), dense(edge_index, w, N) @ x.clamp_min(0))
    assert backend not in conv.backend.choices.values() and len(conv.backend.choices) == 1


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
    w = syn.of(fly2)
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
