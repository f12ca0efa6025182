"""Gap junctions against independent references: a dense float64 conductance matrix built
by hand, the closed form of two coupled neurons, matrix exponentials of the linear
system, central finite differences, and each graph of a batch solved alone."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.data import Batch, Data

from graphode import kernels, solve
from graphode.dynamics import BoundDynamics, ConnectomeDynamics
from graphode.circuits import Clamp, Silence, perturb
from graphode.gap_junctions import GapJunctions, check_gap_junctions
from graphode.gradients import Adjoint, Autodiff, Checkpoint
from graphode.layer import available_backends
from graphode.solvers import Adaptive, FixedStep, Heun

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("single_thread")]

F64 = torch.float64
K = 2  # cell types
T = 3  # gap junction types


def _graph(n: int = 7, e: int = 12, pairs: int = 6, seed: int = 0) -> Data:
    """Random chemical synapses plus ``pairs`` random junctions, both directions stored in a
    shuffled order, float64 weights."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randperm(n * n, generator=g)
    keys = keys[keys // n != keys % n][:e].sort().values
    edge_index = torch.stack([keys % n, keys // n])
    upper = [(i, j) for i in range(n) for j in range(i + 1, n)]
    chosen = torch.tensor(upper)[torch.randperm(len(upper), generator=g)[:pairs]].t()  # [2, P]
    w = 0.2 + torch.rand(pairs, generator=g, dtype=F64)
    types = torch.randint(0, T, (pairs,), generator=g)
    order = torch.randperm(2 * pairs, generator=g)
    return Data(
        edge_index=edge_index,
        sign=torch.where(torch.rand(e, generator=g) < 0.3, -1.0, 1.0).to(F64),
        syn_weight=0.1 + torch.rand(e, generator=g, dtype=F64),
        cell_type=torch.arange(n) % K,
        gap_index=torch.cat([chosen, chosen.flip(0)], 1)[:, order],
        gap_weight=torch.cat([w, w])[order],
        gap_type=torch.cat([types, types])[order],
        gap_type_names=[f"gap{k}" for k in range(T)],
        num_nodes=n,
    )


def _randomize(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.4 * torch.randn(p.shape, dtype=p.dtype, generator=g))


def _softplus(x):
    return torch.log1p(torch.exp(x))


def _pairs(data):
    """The junction pairs (i < j) in the order of (i, j), written out in Python."""
    return sorted({(min(i, j), max(i, j)) for i, j in data.gap_index.t().tolist()})


def _dense_G(data, mode, theta, normalize=None):
    """``G [N, N]`` with ``G[i, j] = s · ŵ_ij``, entry by entry."""
    n = data.num_nodes
    W = torch.zeros(n, n, dtype=F64)
    S = torch.zeros(n, n, dtype=theta.dtype)
    pairs = _pairs(data)
    for k, (i, j) in enumerate(data.gap_index.t().tolist()):
        W[j, i] = float(data.gap_weight[k])  # row: the neuron the current enters
        if mode in ("shared", "fixed"):
            S[j, i] = theta[0]
        elif mode == "per_type":
            S[j, i] = theta[int(data.gap_type[k])]
        else:
            S[j, i] = theta[pairs.index((min(i, j), max(i, j)))]
    if normalize == "symmetric":
        total = W.sum(1)
        W = W / torch.sqrt(total[:, None] * total[None, :]).clamp_min(1e-300)
    return S * W


def _scales(module):
    if module.mode == "fixed":
        return torch.tensor([module.scale], dtype=F64)
    return _softplus(module.theta.detach())


def _dense_W(data):
    n = data.num_nodes
    W = torch.zeros(n, n, dtype=F64)
    W[data.edge_index[1], data.edge_index[0]] = data.sign * data.syn_weight
    return W


def _reference_field(v, u, W, G, tau, b, act=torch.tanh):
    """``(−v + W f(v) + G v − diag(G 1) v + b + u) / τ`` in dense float64."""
    coupling = v @ G.t() - G.sum(1) * v
    return (-v + act(v) @ W.t() + coupling + b + u) / tau


@pytest.mark.parametrize("normalize", [None, "symmetric"])
@pytest.mark.parametrize("mode", ["shared", "per_type", "per_edge", "fixed"])
def test_vector_field_equals_a_dense_reference(mode, normalize):
    data = _graph()
    gap = GapJunctions.from_data(data, mode, scale=0.7, normalize=normalize)
    dyn = BoundDynamics(data, activation="tanh", weights="fixed", backend="csr", tau=0.5, bias=0.1,
                        gap_junctions=gap).double()
    _randomize(dyn)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(3, data.num_nodes, dtype=F64, generator=g)
    u = torch.randn(3, data.num_nodes, dtype=F64, generator=g)
    tau = (0.05 + _softplus(dyn.tau_raw.detach()))[data.cell_type]
    b = dyn.bias.detach()[data.cell_type]
    G = _dense_G(data, mode, _scales(dyn.gap_junctions), normalize)
    assert torch.equal(G, G.t()) or torch.allclose(G, G.t(), rtol=1e-15, atol=0)
    out = dyn(torch.zeros(3, dtype=F64), v, u)
    torch.testing.assert_close(out, _reference_field(v, u, _dense_W(data), G, tau, b), rtol=1e-12, atol=1e-12)
    # the conductances in gap_index order, and the parameter count of each mode
    rows, cols = data.gap_index[1], data.gap_index[0]
    torch.testing.assert_close(dyn.gap_conductances().detach(), G[rows, cols], rtol=1e-12, atol=0)
    expected = {"shared": 1, "per_type": T, "per_edge": len(_pairs(data)), "fixed": 0}[mode]
    assert sum(p.numel() for p in dyn.gap_junctions.parameters()) == expected


def test_gap_current_gradient_matches_finite_differences_of_the_field():
    data = _graph()
    dyn = BoundDynamics(data, activation="tanh", weights="fixed", backend="csr", gap_junctions="per_type").double()
    _randomize(dyn)
    g = torch.Generator().manual_seed(4)
    v = torch.randn(2, data.num_nodes, dtype=F64, generator=g)
    t = torch.zeros(2, dtype=F64)
    assert torch.autograd.gradcheck(lambda theta: torch.func.functional_call(
        dyn, {**dict(dyn.named_parameters()), "gap_junctions.theta": theta}, (t, v)), (dyn.gap_junctions.theta.detach().clone().requires_grad_(),))


@pytest.mark.parametrize(
    ("method", "controller", "tol"),
    [
        ("dopri5", Adaptive(rtol=1e-11, atol=1e-12), 1e-8),
        ("tsit5", Adaptive(rtol=1e-11, atol=1e-12), 1e-8),
        ("heun", FixedStep(1e-3), 2e-5),
        ("euler", FixedStep(1e-3), 3e-2),
    ],
    ids=["dopri5", "tsit5", "heun", "euler"],
)
def test_two_coupled_neurons_follow_the_closed_form(method, controller, tol):
    """No synapses: v1 − v2 decays at (1 + 2g)/τ, v1 + v2 at 1/τ."""
    g_val, tau = 0.8, 0.4
    data = Data(
        edge_index=torch.zeros(2, 0, dtype=torch.long), sign=torch.zeros(0), syn_weight=torch.zeros(0), num_nodes=2,
        gap_index=torch.tensor([[0, 1], [1, 0]]), gap_weight=torch.tensor([1.0, 1.0]),
    )
    dyn = BoundDynamics(data, activation="identity", backend="csr", tau=tau, tau_mode="fixed", bias=0.0,
                        bias_mode="fixed", gap_junctions=GapJunctions("fixed", scale=g_val)).double()
    assert float(dyn.tau()) == pytest.approx(tau, rel=1e-6)
    tau = float(dyn.tau())  # τ round-trips through a float32 softplus parameter
    v0 = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=F64)
    ts = torch.tensor([0.1, 0.5, 1.0], dtype=F64)
    sol = solve(dyn, v0, (0.0, 1.0), t_eval=ts, method=method, controller=controller)
    diff0, sum0 = v0[:, 0] - v0[:, 1], v0[:, 0] + v0[:, 1]
    diff = diff0[:, None] * torch.exp(-(1 + 2 * g_val) * ts / tau)
    total = sum0[:, None] * torch.exp(-ts / tau)
    torch.testing.assert_close(sol.ys[..., 0] - sol.ys[..., 1], diff, rtol=tol, atol=tol / 100)
    torch.testing.assert_close(sol.ys[..., 0] + sol.ys[..., 1], total, rtol=tol, atol=tol / 100)
    # the adjoint's time scale is the fastest rate's: τ / (1 + 2g)
    inputs = dyn.prepare()
    assert dyn.time_scale(inputs, dyn.derive(inputs)) == pytest.approx(tau / (1 + 2 * g_val))


def _linear_solution(M, c, y0, ts):
    """``y(t)`` of ``dy/dt = M y + c`` by the matrix exponential of ``[[M, c], [0, 0]]``."""
    n = M.size(0)
    Z = torch.zeros(n + 1, n + 1, dtype=F64)
    Z[:n, :n], Z[:n, n] = M, c
    z0 = torch.cat([y0, torch.ones(y0.size(0), 1, dtype=F64)], 1)
    return torch.stack([z0 @ torch.linalg.matrix_exp(Z * float(t)).t() for t in ts], 1)[..., :n]  # [B, T, N]


@pytest.mark.parametrize("gradient", [Autodiff(), Checkpoint(segments=3), Adjoint(segments=2)], ids=repr)
def test_solve_and_conductance_gradients_match_the_dense_reference(gradient):
    data = _graph(pairs=10, seed=2)
    assert sorted(set(data.gap_type.tolist())) == list(range(T))
    tau, bias = 0.6, 0.2
    dyn = BoundDynamics(data, activation="identity", weights="fixed", backend="csr", tau=tau, tau_mode="fixed",
                        bias=bias, bias_mode="fixed", gap_junctions="per_type").double()
    _randomize(dyn)
    n = data.num_nodes
    g = torch.Generator().manual_seed(5)
    y0 = torch.randn(2, n, dtype=F64, generator=g)
    readout = torch.randn(2, 2, n, dtype=F64, generator=g)
    ts = [0.4, 1.5]
    W = _dense_W(data)

    def reference_loss(theta):
        G = _dense_G(data, "per_type", _softplus(theta))
        M = (W + G - torch.diag(G.sum(1)) - torch.eye(n, dtype=F64)) / tau
        ys = _linear_solution(M, torch.full((n,), bias / tau, dtype=F64), y0, ts)
        return ys, (ys * readout).sum()

    theta = dyn.gap_junctions.theta.detach().clone()
    ref_ys, _ = reference_loss(theta)
    sol = solve(dyn, y0, (0.0, 1.5), t_eval=ts, gradient=gradient, controller=Adaptive(rtol=1e-10, atol=1e-11))
    torch.testing.assert_close(sol.ys, ref_ys, rtol=1e-7, atol=1e-8)
    (sol.ys * readout).sum().backward()
    h = 1e-6
    fd = torch.stack([
        (reference_loss(theta + h * e)[1] - reference_loss(theta - h * e)[1]) / (2 * h) for e in torch.eye(T, dtype=F64)
    ])
    assert fd.abs().min() > 1e-3  # every type's conductance matters here
    torch.testing.assert_close(dyn.gap_junctions.theta.grad, fd, rtol=1e-5, atol=1e-7)


def _field_and_grads(dyn, v, u):
    v = v.clone().requires_grad_(True)
    out = dyn(torch.zeros(v.size(0), dtype=v.dtype), v, u)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad((out * weights).sum(), (v, dyn.gap_junctions.theta, dyn.tau_raw))
    return out.detach(), grads


@pytest.mark.parametrize("backend", available_backends() + ["auto"])
def test_every_backend_gives_the_dense_result(backend):
    data = _graph(seed=3)
    dyn = BoundDynamics(data, activation="tanh", weights="fixed", backend=backend, gap_junctions="per_edge").double()
    _randomize(dyn)
    g = torch.Generator().manual_seed(6)
    v = torch.randn(4, data.num_nodes, dtype=F64, generator=g)
    u = torch.randn(4, data.num_nodes, dtype=F64, generator=g)
    out, grads = _field_and_grads(dyn, v, u)
    theta = dyn.gap_junctions.theta.detach().clone().requires_grad_(True)
    tau_raw = dyn.tau_raw.detach().clone().requires_grad_(True)
    vr = v.clone().requires_grad_(True)
    G = _dense_G(data, "per_edge", _softplus(theta))
    ref = _reference_field(vr, u, _dense_W(data), G, (0.05 + _softplus(tau_raw))[data.cell_type],
                           dyn.bias.detach()[data.cell_type])
    weights = torch.linspace(-1, 1, ref.numel(), dtype=F64).reshape(ref.shape)
    ref_grads = torch.autograd.grad((ref * weights).sum(), (vr, theta, tau_raw))
    torch.testing.assert_close(out, ref.detach(), rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_the_fused_leaky_integrator_adds_the_gap_current(monkeypatch):
    if not kernels.fusing(torch.zeros(1), fuse=True):
        pytest.skip("needs Triton (its interpreter on a CPU)")
    data = _graph(seed=4)
    calls = []
    apply = kernels.LeakyIntegrator.apply
    monkeypatch.setattr(kernels.LeakyIntegrator, "apply", lambda *a: calls.append(1) or apply(*a))
    results = []
    for fuse in (True, False):
        for recurrent in (True, False):
            dyn = BoundDynamics(data, activation="relu", backend="csr", gap_junctions="shared", fuse=fuse,
                                recurrent=recurrent).double()
            _randomize(dyn)
            g = torch.Generator().manual_seed(7)
            v = torch.randn(data.num_nodes, 3, dtype=F64, generator=g).t()  # node-major, as a solve keeps it
            u = torch.randn(data.num_nodes, 3, dtype=F64, generator=g).t()
            results.append(_field_and_grads(dyn, v, u))
    assert len(calls) == 2  # the two fused evaluations took the kernel
    for (out_f, grads_f), (out, grads) in zip(results[:2], results[2:]):
        torch.testing.assert_close(out_f, out, rtol=1e-12, atol=1e-12)
        for a, b in zip(grads_f, grads):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# the adjoint's segments are set by the field's time scale, which differs between the batch
# and its graphs: fixed segments give both the same backward steps
@pytest.mark.parametrize("gradient", [Autodiff(), Checkpoint(segments=2), Adjoint(segments=2, max_segment=None)], ids=repr)
def test_a_batch_equals_its_graphs_solved_apart(gradient):
    graphs = [_graph(7, 12, 6, seed=8), _graph(5, 8, 3, seed=9)]
    batch = Batch.from_data_list(graphs)
    assert int(batch.gap_index.max()) >= graphs[0].num_nodes  # the second graph's junctions were offset
    check_gap_junctions(batch)
    dyn = ConnectomeDynamics(K, activation="tanh", weights="fixed", backend="csr", gap_junctions="per_type",
                             num_gap_types=T).double()
    _randomize(dyn)
    g = torch.Generator().manual_seed(10)
    y0 = torch.randn(2, batch.num_nodes, dtype=F64, generator=g)
    readout = torch.randn(2, 2, batch.num_nodes, dtype=F64, generator=g)

    def run(graph, sl):
        dyn.zero_grad()
        sol = solve(dyn, y0[:, sl], (0.0, 1.0), args=(graph, None), t_eval=[0.3, 1.0], gradient=gradient,
                    method=Heun(), controller=FixedStep(0.05))
        (sol.ys * readout[..., sl]).sum().backward()
        return sol.ys.detach(), {k: p.grad.clone() for k, p in dyn.named_parameters()}

    ys, grads = run(batch, slice(None))
    total = {k: torch.zeros_like(v) for k, v in grads.items()}
    for k, graph in enumerate(graphs):
        sl = slice(int(batch.ptr[k]), int(batch.ptr[k + 1]))
        ys_alone, grads_alone = run(graph, sl)
        torch.testing.assert_close(ys[..., sl], ys_alone, rtol=1e-12, atol=1e-12)
        for name in total:
            total[name] += grads_alone[name]
    assert grads["gap_junctions.theta"].abs().min() > 0
    for name in total:
        torch.testing.assert_close(grads[name], total[name], rtol=1e-10, atol=1e-12)


def test_per_edge_conductances_stay_symmetric_through_training():
    data = _graph(seed=11)
    dyn = BoundDynamics(data, activation="tanh", backend="csr", gap_junctions="per_edge").double()
    before = dyn.gap_conductances().detach().clone()
    opt = torch.optim.Adam(dyn.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(12)
    y0 = torch.randn(3, data.num_nodes, dtype=F64, generator=g)
    target = torch.randn(3, data.num_nodes, dtype=F64, generator=g)
    for _ in range(2):
        opt.zero_grad()
        sol = solve(dyn, y0, (0.0, 0.5), method=Heun(), controller=FixedStep(0.05))
        (sol.y_final - target).pow(2).sum().backward()
        opt.step()
    after = dyn.gap_conductances().detach()
    index = data.gap_index
    reverse = [index.t().tolist().index([j, i]) for i, j in index.t().tolist()]
    assert torch.equal(after, after[reverse])
    changed = (after - before).abs()
    assert changed.min() > 1e-3 and len(set(changed.tolist())) > 1  # each pair learned its own value


def test_a_clamp_sets_the_voltage_junctions_read_and_silence_leaves_them():
    g_val, c = 0.5, 2.0
    data = Data(
        edge_index=torch.tensor([[0], [1]]), sign=torch.tensor([1.0]), syn_weight=torch.tensor([1.0]), num_nodes=2,
        gap_index=torch.tensor([[0, 1], [1, 0]]), gap_weight=torch.tensor([1.0, 1.0]),
    )
    dyn = BoundDynamics(data, activation="relu", weights="fixed", backend="csr", tau=1.0, tau_mode="fixed",
                        bias=0.0, bias_mode="fixed", gap_junctions=GapJunctions("fixed", scale=g_val)).double()
    v = torch.tensor([[-1.0, 0.5]], dtype=F64)
    t = torch.zeros(1, dtype=F64)
    with perturb(dyn, Clamp(torch.tensor([True, False]), c)):
        dv = dyn(t, v)
    # neuron 1: −v1 + relu(c) + g (c − v1); the clamped neuron holds still
    torch.testing.assert_close(dv, torch.tensor([[0.0, -0.5 + c + g_val * (c - 0.5)]], dtype=F64))
    with perturb(dyn, Silence(torch.tensor([True, False]))):
        dv = dyn(t, v)
    # the chemical synapse 0 → 1 is silenced; the junction still conducts both ways
    torch.testing.assert_close(dv, torch.tensor([[1.0 + g_val * 1.5, -0.5 + g_val * (-1.5)]], dtype=F64))


def test_graphs_and_modules_that_do_not_match_are_refused():
    data = _graph()
    with pytest.raises(ValueError, match=r"gap_index, 12 entries.*no gap-junction term"):
        BoundDynamics(data, backend="csr")
    with pytest.raises(ValueError, match=r"no gap-junction term"):
        ConnectomeDynamics(K, weights="fixed", backend="csr")(torch.zeros(1), torch.zeros(1, 7), data)
    bare = Data(**{k: data[k] for k in ("edge_index", "sign", "syn_weight", "cell_type")}, num_nodes=7)
    with pytest.raises(ValueError, match=r"need graph.gap_index"):
        BoundDynamics(bare, backend="csr", gap_junctions="shared")
    empty = bare.clone()
    empty.gap_index, empty.gap_weight = torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=F64)
    BoundDynamics(empty, backend="csr")  # no junctions: nothing to leave out
    with pytest.raises(ValueError, match=r"per_edge.*BoundDynamics"):
        ConnectomeDynamics(K, weights="fixed", gap_junctions="per_edge")
    per_edge = GapJunctions.from_data(data, "per_edge")
    other = _graph(pairs=5, seed=1)
    with pytest.raises(ValueError, match=r"6 junction pairs, not 5"):
        ConnectomeDynamics(K, weights="fixed", backend="csr", gap_junctions=per_edge)(torch.zeros(1), torch.zeros(1, 7), other)
    with pytest.raises(ValueError, match=r"gap_type holds codes up to 2.*num_gap_types >= 3"):
        ConnectomeDynamics(K, weights="fixed", backend="csr", gap_junctions="per_type", num_gap_types=2)(
            torch.zeros(1), torch.zeros(1, 7), data)
    assert ConnectomeDynamics.from_data(data, weights="fixed", gap_junctions="per_type").gap_junctions.num_gap_types == T
    with pytest.raises(ValueError, match="unknown gap junction mode 'per_pair'"):
        GapJunctions("per_pair")
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        GapJunctions(scale=0.0)
    with pytest.raises(ValueError, match="normalize must be None or 'symmetric'"):
        GapJunctions(normalize="target")
    with pytest.raises(TypeError, match="gap_junctions must be"):
        ConnectomeDynamics(K, weights="fixed", gap_junctions=1.0)


def _layout(**changes) -> Data:
    """Four neurons, junctions 0–1 (weight 0.5) and 1–2 (weight 2.0), with ``changes``."""
    data = Data(
        num_nodes=4,
        gap_index=torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]),
        gap_weight=torch.tensor([0.5, 0.5, 2.0, 2.0]),
        gap_type=torch.tensor([0, 0, 1, 1]),
        gap_type_names=["a", "b"],
    )
    for key, value in changes.items():
        setattr(data, key, value)
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gap_weight": torch.tensor([0.5, 0.5, 2.0, 1.0])},
         r"gap_weight\[2\] = 2.0 for \(1, 2\) but gap_weight\[3\] = 1.0 for \(2, 1\).*must be equal"),
        ({"gap_index": torch.tensor([[0, 1, 1, 3], [1, 0, 2, 3]])}, r"gap_index\[:, 3\] = \(3, 3\) joins neuron 3 to itself"),
        ({"gap_index": torch.tensor([[0, 1, 1, 2], [1, 0, 2, 3]])}, r"gap_index\[:, 2\] = \(1, 2\) has no reverse \(2, 1\)"),
        ({"gap_index": torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0]])}, r"gap_index\[:, 2\] = \(0, 1\) repeats gap_index\[:, 0\]"),
        ({"gap_index": torch.tensor([[0, 1, 1, 4], [1, 0, 4, 1]])}, r"gap_index\[:, 2\] = \(1, 4\) holds a node id outside \[0, 4\)"),
        ({"gap_index": torch.tensor([[0, 1, 1, -1], [1, 0, -1, 1]])}, r"gap_index\[:, 2\] = \(1, -1\) holds a node id outside"),
        ({"gap_index": torch.tensor([[0, 1], [1, 0], [0, 0]])}, r"gap_index must be an int64 tensor \[2, G\], got torch.int64 \(3, 2\)"),
        ({"gap_index": torch.tensor([[0.0, 1.0], [1.0, 0.0]])}, r"gap_index must be an int64 tensor \[2, G\], got torch.float32"),
        ({"gap_weight": torch.tensor([0.5, 0.5, 2.0])}, r"gap_weight must be a floating tensor \[G\] = \[4\], got torch.float32 \(3,\)"),
        ({"gap_weight": torch.tensor([1, 1, 2, 2])}, r"gap_weight must be a floating tensor"),
        ({"gap_weight": torch.tensor([0.5, 0.5, 0.0, 0.0])}, r"gap_weight\[2\] = 0.0 \(pair \(1, 2\)\): .*finite and > 0"),
        ({"gap_weight": torch.tensor([-0.5, -0.5, 2.0, 2.0])}, r"gap_weight\[0\] = -0.5 \(pair \(0, 1\)\)"),
        ({"gap_weight": torch.tensor([0.5, 0.5, math.nan, math.nan])}, r"gap_weight\[2\] = nan"),
        ({"gap_weight": None}, r"has gap_index but no gap_weight"),
        ({"gap_type": torch.tensor([0, 1, 1, 1])}, r"gap_type\[0\] = 0 for \(0, 1\) but gap_type\[1\] = 1 for \(1, 0\)"),
        ({"gap_type": torch.tensor([0, 0, 2, 2])}, r"gap_type\[2\] = 2 \(pair \(1, 2\)\): allowed are \[0, 2\)"),
        ({"gap_type": torch.tensor([0.0, 0.0, 1.0, 1.0])}, r"gap_type must hold integer codes"),
        ({"gap_index": None}, r"graph.gap_weight is set but graph.gap_index is missing"),
    ],
)
def test_check_gap_junctions_names_the_attribute_entry_and_value(changes, message):
    check_gap_junctions(_layout())  # the layout itself is valid
    data = _layout(**changes)
    with pytest.raises(ValueError, match=message):
        check_gap_junctions(data)


def test_check_gap_junctions_accepts_unsorted_and_empty_layouts():
    data = _layout()
    order = torch.tensor([3, 0, 2, 1])
    check_gap_junctions(_layout(gap_index=data.gap_index[:, order], gap_weight=data.gap_weight[order],
                                gap_type=data.gap_type[order]))
    check_gap_junctions(Data(num_nodes=3))
    check_gap_junctions(Data(num_nodes=3, gap_index=torch.zeros(2, 0, dtype=torch.long), gap_weight=torch.zeros(0)))
    with pytest.raises(ValueError, match=r"^connectome.gap_weight\[0\]"):
        check_gap_junctions(_layout(gap_weight=torch.tensor([-1.0, -1.0, 2.0, 2.0])), where="connectome")
