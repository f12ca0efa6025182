"""graphode's Triton kernels against dense float64 references.

Without a GPU the kernels run in Triton's interpreter: ``conftest.py`` sets
``TRITON_INTERPRET=1`` before anything imports Triton, and the same kernel code runs on the
CPU. On a CUDA machine the kernels are compiled, and the last test also compares them with
the ``csr`` backend at a realistic size.
"""

from __future__ import annotations

import pytest
import torch

import graphode.kernels as kernels
from graphode.flyvis import fly_visual_system
from graphode.layer import ACTIVATIONS, ConnectomeConv, SparseGraph, available_backends
from graphode.synapses import SynapseWeights

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("single_thread")]
pytest.importorskip("triton")


ON_CPU = not torch.cuda.is_available()
if ON_CPU and not kernels.interpreting():
    pytest.skip("no GPU and TRITON_INTERPRET is not set (conftest.py sets it)", allow_module_level=True)
DEVICE = "cpu" if ON_CPU else "cuda"


def _graph(n, e, seed):
    g = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, n - 1, (2, e), generator=g)  # node n-1 has no inputs; duplicates and self-loops occur
    w = torch.randn(e, dtype=torch.float64, generator=g)
    return edge_index, w


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("b", [3, 300])  # 300 > one 256-column block: the block loops run twice
def test_kernels_match_dense_reference(activation, b, dense, ref_act):
    n = 9
    edge_index, w = _graph(n, 40, seed=b)
    x = 3 * torch.randn(n, b, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = torch.where(x.abs() < 0.05, x + 0.1, x)  # away from relu's kink
    f = ref_act[activation]
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = dense(edge_index, wr, n) @ f(xr)
    g_out = torch.randn(n, b, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref.backward(g_out)

    graph = SparseGraph.from_edge_index(edge_index.to(DEVICE), n)
    ws = graph.sorted_weights(w.to(DEVICE))
    x, g_out = x.to(DEVICE), g_out.to(DEVICE)
    y = kernels.spmm_forward(graph.rowptr, graph.src, ws, x, activation)
    torch.testing.assert_close(y.cpu(), ref.detach(), rtol=1e-12, atol=1e-12)
    gx, gw_sorted = kernels.spmm_backward(graph.colptr, graph.t_row, graph.t_perm, ws, x, g_out, activation)
    torch.testing.assert_close(gx.cpu(), xr.grad, rtol=1e-12, atol=1e-12)
    gw = torch.empty_like(gw_sorted)
    gw[graph.perm if graph.perm is not None else slice(None)] = gw_sorted  # back to the user's edge order
    torch.testing.assert_close(gw.cpu(), wr.grad, rtol=1e-12, atol=1e-12)
    # Only one of the two gradients.
    gx_only, none_w = kernels.spmm_backward(graph.colptr, graph.t_row, graph.t_perm, ws, x, g_out, activation, need_w=False)
    none_x, gw_only = kernels.spmm_backward(graph.colptr, graph.t_row, graph.t_perm, ws, x, g_out, activation, need_x=False)
    assert none_w is None and none_x is None
    torch.testing.assert_close(gx_only, gx, rtol=0, atol=0)
    torch.testing.assert_close(gw_only, gw_sorted, rtol=0, atol=0)


def test_triton_backend_gradcheck_and_float32():
    edge_index, w = _graph(7, 25, seed=3)
    x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    edge_index, w, x = edge_index.to(DEVICE), w.to(DEVICE), x.to(DEVICE)
    conv = ConnectomeConv("tanh", backend="triton")
    assert torch.autograd.gradcheck(lambda x_, w_: conv(x_, edge_index, w_), (x.requires_grad_(), w.requires_grad_()))
    ref = ConnectomeConv("tanh", backend="csr")(x.float(), edge_index, w.float())
    torch.testing.assert_close(conv(x.float(), edge_index, w.float()), ref, rtol=1e-5, atol=1e-5)


def test_triton_backend_on_the_fly_visual_system_equals_csr():
    data = fly_visual_system(1).to(DEVICE)
    w = SynapseWeights.from_data(data, mode="per_edge").of(data).detach()
    x = torch.randn(data.num_nodes, 5, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    outs, grads = [], []
    for backend in ("csr", "triton"):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = ConnectomeConv("relu", backend=backend)(xr, data.edge_index, wr)
        (y * torch.linspace(-1, 1, 5, device=DEVICE)).sum().backward()
        outs.append(y.detach())
        grads.append((xr.grad, wr.grad))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-4)


def test_triton_backend_edge_cases_and_errors():
    conv = ConnectomeConv("relu", backend="triton")
    x = torch.randn(4, 2, dtype=torch.float64, device=DEVICE)
    empty = torch.zeros(2, 0, dtype=torch.long, device=DEVICE)
    zeros = torch.zeros(4, 2, dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(conv(x, empty, torch.zeros(0, dtype=torch.float64, device=DEVICE)), zeros)
    with pytest.raises(ValueError, match="fuses the activation"):
        ConnectomeConv(lambda v: v * 2, backend="triton")

    def relu(v):  # a user's function that shares a name with a kernel activation
        return v.clamp(0, 6)

    with pytest.raises(ValueError, match="fuses the activation"):
        ConnectomeConv(relu, backend="triton")
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.spmm_forward(torch.zeros(5, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0), x.cpu().half(), "relu")
    if ON_CPU:
        assert "triton" in available_backends("cpu")  # under the interpreter


def test_triton_backend_needs_cuda_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "triton" not in available_backends("cpu")
    edge_index, w = _graph(5, 8, seed=0)
    with pytest.raises(RuntimeError, match="CUDA"):
        ConnectomeConv("relu", backend="triton")(torch.randn(5, 2, dtype=torch.float64), edge_index, w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled kernels need a CUDA GPU")
def test_compiled_kernels_on_cuda_equal_csr():
    data = fly_visual_system(4)
    w = SynapseWeights.from_data(data, mode="per_edge").of(data).detach().cuda()
    ei = data.edge_index.cuda()
    x = torch.randn(data.num_nodes, 300, device="cuda")
    for activation in sorted(ACTIVATIONS):
        res = []
        for backend in ("csr", "triton"):
            xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
            y = ConnectomeConv(activation, backend=backend)(xr, ei, wr)
            y.backward(torch.ones_like(y))
            res.append((y.detach(), xr.grad, wr.grad))
        for a, b in zip(*res):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------
# Runge–Kutta stage combinations
# ---------------------------------------------------------------------------------------
def _stages(b, n, terms, node_major, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = (lambda: torch.randn(n, b, generator=g).t()) if node_major else (lambda: torch.randn(b, n, generator=g))
    return make(), [make() for _ in range(terms)], torch.rand(b, 1, generator=g)


@pytest.mark.parametrize("node_major", [True, False])
@pytest.mark.parametrize("with_y0", [True, False])
@pytest.mark.parametrize(("terms", "b", "n"), [(1, 5, 37), (3, 5, 37), (7, 5, 37), (2, 20, 600)])  # [20, 600]: many tiles both ways
def test_fused_combination_matches_torch_forward_and_backward(node_major, with_y0, terms, b, n, monkeypatch):
    y0, ks, dt = _stages(b, n, terms, node_major, seed=terms)
    coefficients = [0.5 - 0.3 * j for j in range(terms)]
    y0 = y0.to(DEVICE).requires_grad_(True) if with_y0 else None
    ks = [k.to(DEVICE).requires_grad_(True) for k in ks]
    dt = dt.to(DEVICE)
    assert kernels.combination_supported(y0, dt, ks, fuse=True)
    out = kernels.FusedCombination.apply(dt, tuple(coefficients), y0, *ks)
    ref = dt * sum(c * k.double() for c, k in zip(coefficients, ks)) + (0 if y0 is None else y0.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    assert out.stride() == ks[0].stride()  # the stages' layout is kept
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    inputs = ks if y0 is None else [y0, *ks]
    got = torch.autograd.grad(out, inputs, upstream)
    expected = ([upstream] if y0 is not None else []) + [c * dt * upstream for c in coefficients]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)


def test_fused_combination_refuses_what_it_cannot_index(monkeypatch):
    y0, ks, dt = _stages(4, 9, 3, node_major=True)
    y0, ks, dt = y0.to(DEVICE), [k.to(DEVICE) for k in ks], dt.to(DEVICE)
    assert kernels.combination_supported(y0, dt, ks, fuse=True)
    assert not kernels.combination_supported(y0.contiguous(), dt, ks, fuse=True)  # mixed layouts
    assert not kernels.combination_supported(y0, dt, [k.double() for k in ks], fuse=True)  # float64 stays exact in torch
    assert not kernels.combination_supported(None, dt, ks * 3, fuse=True)  # more than MAX_TERMS
    assert not kernels.combination_supported(None, dt, [k[:, ::2] for k in ks], fuse=True)  # not dense
    assert not kernels.combination_supported(None, dt.t(), ks, fuse=True)
    assert not kernels.combination_supported(None, dt.clone().requires_grad_(True), ks, fuse=True)  # step sizes are constants


@pytest.mark.parametrize("gradient", ["autodiff", "checkpoint", "adjoint"])
def test_solve_with_fused_kernels_equals_the_torch_path(monkeypatch, gradient):
    from torch_geometric.data import Data

    from graphode.dynamics import BoundDynamics
    from graphode import solve
    from graphode.solvers import Dopri5

    g = torch.Generator().manual_seed(0)
    n = 12
    edge_index = torch.randint(0, n, (2, 40), generator=g)
    d = Data(edge_index=edge_index, sign=torch.ones(40), syn_weight=torch.rand(40, generator=g), num_nodes=n)
    dyn = BoundDynamics(d, activation="tanh", backend="csr", tau_mode="per_neuron", bias_mode="per_neuron").to(DEVICE)
    y0 = torch.randn(3, n, generator=g).to(DEVICE)
    u = torch.randn(3, n, generator=g).to(DEVICE)

    def run(fuse: bool):  # the fusion policy, passed to the solver's method and the dynamics
        dyn.fuse = fuse
        sol = solve(dyn, y0, (0.0, 1.0), args=(u,), t_eval=[0.5, 1.0], method=Dopri5(fuse=fuse), rtol=1e-5, atol=1e-6,
                    gradient=gradient, checkpoints=2)
        grads = torch.autograd.grad(sol.ys.square().sum(), list(dyn.parameters()))
        return sol, grads

    calls = {"combination": 0, "leaky": 0}

    def counted(name, fn):
        return lambda *a: (calls.__setitem__(name, calls[name] + 1), fn(*a))[1]

    monkeypatch.setattr(kernels.FusedCombination, "apply", counted("combination", kernels.FusedCombination.apply))
    monkeypatch.setattr(kernels.LeakyIntegrator, "apply", counted("leaky", kernels.LeakyIntegrator.apply))
    ref, ref_grads = run(False)  # the reference: torch only
    assert calls == {"combination": 0, "leaky": 0}
    got, got_grads = run(True)  # on a CPU: run them interpreted
    assert calls["combination"] > 0 and calls["leaky"] >= got.stats.n_f_evals
    # float32 summed in another order: a step may be accepted in one run and rejected in
    # the other (the step counts then differ), so values agree to the solver's tolerance
    assert abs(got.stats.n_f_evals - ref.stats.n_f_evals) <= 12
    torch.testing.assert_close(got.ys, ref.ys, rtol=1e-4, atol=1e-5)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------
# the leaky integrator (b - v + a + u) / τ
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("with_a", "with_u", "bias_per_node", "tau_per_node", "b"), [
    (True, True, True, True, 5), (False, True, False, False, 5), (True, False, True, False, 5),
    (False, False, False, True, 5), (True, True, True, True, 300),  # 300 columns: the backward loops over column blocks
])
def test_leaky_integrator_matches_torch_forward_and_backward(monkeypatch, dtype, with_a, with_u, bias_per_node, tau_per_node, b):
    g = torch.Generator().manual_seed(0)
    n = 300  # several row blocks, the last one partial
    state = lambda: torch.randn(n, b, generator=g, dtype=dtype).t().to(DEVICE).requires_grad_(True)  # noqa: E731
    v = state()
    a = state() if with_a else None
    u = state() if with_u else None
    bias = torch.randn(n if bias_per_node else 1, generator=g, dtype=dtype).to(DEVICE).requires_grad_(True)
    tau = (0.2 + torch.rand(n if tau_per_node else 1, generator=g, dtype=dtype)).to(DEVICE).requires_grad_(True)
    assert kernels.leaky_supported(v, a, u, bias, tau, fuse=True)
    out = kernels.LeakyIntegrator.apply(v, a, u, bias, tau)
    ref = (bias - v + (0 if a is None else a) + (0 if u is None else u)) / tau
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)  # float32: sums over up to 300 columns
    torch.testing.assert_close(out, ref, **tol)
    assert out.t().is_contiguous()
    upstream = torch.randn(b, n, generator=g, dtype=dtype).to(DEVICE)  # row-major: backward converts it
    inputs = [x for x in (v, a, u, bias, tau) if x is not None]
    got = torch.autograd.grad(out, inputs, upstream)
    expected = torch.autograd.grad(ref, inputs, upstream)
    for x, e in zip(got, expected):
        torch.testing.assert_close(x, e, **tol)


def test_leaky_integrator_refuses_other_layouts(monkeypatch):
    v = torch.randn(7, 3).t().to(DEVICE)
    vec = torch.ones(7, device=DEVICE)
    assert kernels.leaky_supported(v, v, None, vec, vec, fuse=True)
    assert not kernels.leaky_supported(v.contiguous(), None, None, vec, vec, fuse=True)  # row-major state
    assert not kernels.leaky_supported(v, v.contiguous(), None, vec, vec, fuse=True)  # mixed layouts
    assert not kernels.leaky_supported(v, None, None, torch.ones(2, device=DEVICE), vec, fuse=True)  # neither [N] nor [1]
    assert not kernels.leaky_supported(v, None, None, vec.double(), vec, fuse=True)
    assert kernels.leaky_supported(v, v, None, vec, vec) == (DEVICE == "cuda")  # default policy: CUDA only
    assert not kernels.leaky_supported(v, v, None, vec, vec, fuse=False)


def test_fused_combination_of_a_long_flat_state(monkeypatch):
    # the adjoint's augmented state is [1, X]: more column tiles than a grid's second axis holds
    g = torch.Generator().manual_seed(0)
    x = 256 * 70_000 + 3 if DEVICE == "cuda" else 256 * 9 + 3  # the interpreter is slow
    ks = [torch.randn(1, x, generator=g).to(DEVICE) for _ in range(2)]
    dt = torch.full((1, 1), 0.5, device=DEVICE)
    out = kernels.combination_forward(None, dt, [1.0, -2.0], ks)
    torch.testing.assert_close(out, 0.5 * (ks[0] - 2 * ks[1]))


def test_fused_kernels_can_be_differentiated_twice(monkeypatch):
    # under create_graph the backward runs as torch ops: second derivatives equal torch's
    g = torch.Generator().manual_seed(3)
    v = torch.randn(9, 4, generator=g).t().to(DEVICE).requires_grad_(True)
    a = torch.randn(9, 4, generator=g).t().to(DEVICE).requires_grad_(True)
    bias = torch.randn(9, generator=g).to(DEVICE).requires_grad_(True)
    tau = (0.5 + torch.rand(9, generator=g)).to(DEVICE).requires_grad_(True)
    dt = torch.rand(4, 1, generator=g).to(DEVICE)
    inputs = [v, a, bias, tau]

    def second_derivatives(fused: bool):
        if fused:
            rhs = kernels.LeakyIntegrator.apply(v, a, None, bias, tau)
            out = kernels.FusedCombination.apply(dt, (0.5, -1.5), v, rhs, a)
        else:
            rhs = (bias - v + a) / tau
            out = v + dt * (0.5 * rhs - 1.5 * a)
        first = torch.autograd.grad(out.square().sum(), inputs, create_graph=True)
        return torch.autograd.grad(sum(x.square().sum() for x in first), inputs)

    for got, expected in zip(second_derivatives(True), second_derivatives(False)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
