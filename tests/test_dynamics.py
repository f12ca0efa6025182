"""ConnectomeDynamics and Stimulus against hand-computed formulas and closed-form solutions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch_geometric.data import Data

from graphode import solve
from graphode.dynamics import BoundDynamics, Stimulus, as_stimulus
from graphode.field import VectorField
from graphode.layer import available_backends

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("single_thread")]

F64 = torch.float64


def _chain_data():
    """0 -> 1 (excitatory, syn_weight 0.5), 1 -> 2 (inhibitory, 0.25), 2 -> 2 (excitatory, 0.125)."""
    return Data(
        edge_index=torch.tensor([[0, 1, 2], [1, 2, 2]]),
        sign=torch.tensor([1.0, -1.0, 1.0]),
        syn_weight=torch.tensor([0.5, 0.25, 0.125]),
        num_nodes=3,
    )


def _closed_form(W, tau, b, u, y0, ts):
    """v(t) of ``τ dv/dt = -v + W v + b + u`` (a linear ODE): ``exp`` of the augmented
    matrix ``[[M, c], [0, 0]]`` with ``M = (W - I)/τ``, ``c = (b + u)/τ``."""
    n = W.size(0)
    M = (W - torch.eye(n, dtype=F64)) / tau.reshape(-1, 1)
    out = []
    for yb, ub in zip(y0, u):
        Z = torch.zeros(n + 1, n + 1, dtype=F64)
        Z[:n, :n] = M
        Z[:n, n] = (b + ub) / tau
        z0 = torch.cat([yb, torch.ones(1, dtype=F64)])
        out.append(torch.stack([(torch.linalg.matrix_exp(Z * float(t)) @ z0)[:n] for t in ts]))
    return torch.stack(out)  # [B, T, N]


@pytest.mark.parametrize("backend", available_backends())
def test_linear_chain_matches_closed_form(backend):
    dyn = BoundDynamics(
        _chain_data(), activation="identity", backend=backend, weights="fixed", gain=2.0,
        tau=0.5, tau_mode="fixed", bias=0.3, bias_mode="fixed",
    ).double()
    tau = dyn.tau().detach()
    assert abs(float(tau) - 0.5) < 1e-6
    # W[dst, src] written out by hand: 2·0.5, -2·0.25, 2·0.125
    W = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, -0.5, 0.25]], dtype=F64)
    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(2, 3, dtype=F64, generator=g)
    u = torch.randn(2, 3, dtype=F64, generator=g)
    ts = [0.1, 0.5, 1.0, 2.0]
    sol = solve(dyn, y0, (0.0, 2.0), args=(u,), t_eval=ts, rtol=1e-10, atol=1e-10)
    ref = _closed_form(W, tau.expand(3), torch.full((3,), 0.3, dtype=F64), u, y0, ts)
    assert sol.ys.shape == (2, 4, 3)
    torch.testing.assert_close(sol.ys, ref, rtol=1e-7, atol=1e-8)
    # long horizon: the fixed point v* = (I - W)^-1 (b + u)
    sol = solve(dyn, y0, (0.0, 40.0), args=(u,), rtol=1e-10, atol=1e-10)
    v_star = torch.linalg.solve(torch.eye(3, dtype=F64) - W, (0.3 + u).t()).t()
    torch.testing.assert_close(sol.y_final, v_star, rtol=1e-7, atol=1e-8)


def _random_data(n=6, e=14, seed=0, cell_types=True):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randperm(n * n, generator=g)[:e].sort().values
    ei = torch.stack([keys % n, keys // n])
    d = Data(
        edge_index=ei,
        sign=torch.where(torch.rand(e, generator=g) < 0.3, -1.0, 1.0),
        syn_weight=0.1 + torch.rand(e, generator=g),
        num_nodes=n,
    )
    if cell_types:
        d.cell_type = torch.tensor([0, 1, 0, 2, 1, 2][:n])
    return d


def _dense_W(d, gain=1.0):
    n = d.num_nodes
    W = torch.zeros(n, n, dtype=F64)
    W[d.edge_index[1], d.edge_index[0]] = (d.sign * d.syn_weight * gain).double()
    return W


def _randomize(dyn, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dyn.parameters():
            if p.numel() and p is not dyn.synapses.theta:
                p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype, generator=g))


def test_tau_per_type_shared_and_bounded():
    d = _random_data()
    dyn = BoundDynamics(d, tau=0.8, tau_min=0.05, tau_mode="per_type", backend="csr").double()
    assert dyn.tau_raw.shape == (3,) and isinstance(dyn.tau_raw, nn.Parameter)
    tau = dyn.tau()
    assert tau.shape == (6,)
    torch.testing.assert_close(tau, torch.full((6,), 0.8, dtype=F64), rtol=1e-6, atol=0)
    with torch.no_grad():
        dyn.tau_raw.copy_(torch.tensor([-30.0, 0.0, 30.0]))
    tau = dyn.tau()
    ref_per_type = 0.05 + torch.log1p(torch.exp(torch.tensor([-30.0, 0.0, 30.0], dtype=F64)))
    torch.testing.assert_close(tau, ref_per_type[d.cell_type], rtol=1e-12, atol=0)
    assert (tau > 0.05).all()
    assert tau[0] == tau[2] and tau[1] == tau[4] and tau[3] == tau[5]


@pytest.mark.parametrize("mode", ["per_type", "per_neuron"])
def test_tau_and_bias_gradients(mode):
    d = _random_data()
    dyn = BoundDynamics(d, activation="tanh", tau_mode=mode, bias_mode=mode, backend="csr").double()
    _randomize(dyn)
    n_groups = 3 if mode == "per_type" else 6
    assert dyn.tau_raw.shape == dyn.bias.shape == (n_groups,)
    g = torch.Generator().manual_seed(2)
    v = torch.randn(2, 6, dtype=F64, generator=g)
    u = torch.randn(2, 6, dtype=F64, generator=g)
    t = torch.zeros(2, dtype=F64)
    params = dict(dyn.named_parameters())

    def f(tau_raw, bias, theta):
        p = dict(params, tau_raw=tau_raw, bias=bias, **{"synapses.theta": theta})
        return functional_call(dyn, p, (t, v, u))

    inputs = tuple(params[k].detach().clone().requires_grad_(True) for k in ("tau_raw", "bias", "synapses.theta"))
    assert torch.autograd.gradcheck(f, inputs)
    dyn(t, v, u).pow(2).sum().backward()
    assert dyn.tau_raw.grad.abs().min() > 0 and dyn.bias.grad.abs().min() > 0


def test_fixed_modes_have_no_parameters():
    dyn = BoundDynamics(_random_data(), tau=2.0, tau_mode="fixed", bias=0.4, bias_mode="fixed", weights="fixed")
    assert list(dyn.parameters()) == []
    assert dyn.tau().shape == (1,) and abs(float(dyn.tau()) - 2.0) < 1e-6
    assert dyn.neuron_bias().tolist() == pytest.approx([0.4])


def test_per_type_without_cell_types_falls_back_to_per_neuron():
    dyn = BoundDynamics(_random_data(cell_types=False), backend="csr")
    assert dyn.tau_raw.shape == (6,) and dyn.bias.shape == (6,)
    assert dyn.tau_mode == dyn.bias_mode == "per_neuron"


@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus"])
def test_vector_field_formula(activation):
    d = _random_data()
    dyn = BoundDynamics(d, activation=activation, gain=1.5, backend="csr").double()
    _randomize(dyn)
    act = {"relu": lambda x: x.clamp_min(0), "tanh": torch.tanh, "softplus": lambda x: torch.log1p(torch.exp(x))}[activation]
    tau = (0.05 + F.softplus(dyn.tau_raw.detach()))[d.cell_type]
    b = dyn.bias.detach()[d.cell_type]
    W = _dense_W(d, 1.5)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(3, 6, dtype=F64, generator=g)
    u = torch.randn(3, 6, dtype=F64, generator=g)
    t = torch.zeros(3, dtype=F64)
    ref = (-v + act(v) @ W.t() + b + u) / tau
    torch.testing.assert_close(dyn(t, v, u), ref, rtol=1e-6, atol=1e-6)  # synapses init to float32 precision
    torch.testing.assert_close(dyn(t, v), (-v + act(v) @ W.t() + b) / tau, rtol=1e-6, atol=1e-6)

    # recurrent=False drops A(v) and the synapses get no gradient
    dyn_nr = BoundDynamics(d, activation=activation, gain=1.5, recurrent=False, backend="csr").double()
    dyn_nr.load_state_dict(dyn.state_dict())
    out = dyn_nr(t, v, u)
    torch.testing.assert_close(out, (-v + b + u) / tau, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    assert dyn_nr.synapses.theta.grad is None
    assert dyn_nr.tau_raw.grad is not None


def test_bias_per_type_resting():
    d = _random_data()
    dyn = BoundDynamics(d, bias=0.2, bias_mode="per_type", tau_mode="per_neuron", backend="csr").double()
    with torch.no_grad():
        dyn.bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
    assert dyn.neuron_bias().tolist() == [1.0, 2.0, 1.0, 3.0, 2.0, 3.0]


def test_state_shape_and_parameter_errors():
    d = _random_data()
    dyn = BoundDynamics(d, backend="csr")
    with pytest.raises(ValueError, match=r"\[B, 6\]"):
        dyn(torch.zeros(2), torch.zeros(2, 7))
    with pytest.raises(ValueError, match=r"\[B, 6\]"):
        dyn(torch.zeros(1), torch.zeros(6))
    with pytest.raises(ValueError, match="tau_min"):
        BoundDynamics(d, tau=0.05, tau_min=0.05)
    with pytest.raises(ValueError, match="unknown parameter mode"):
        BoundDynamics(d, tau_mode="per_edge")
    with pytest.raises(ValueError, match="unknown parameter mode"):
        BoundDynamics(d, bias_mode="global")
    with pytest.raises(TypeError):
        dyn(torch.zeros(1), torch.zeros(1, 6), "not a stimulus")


# ---------------------------------------------------------------------------------------
# Stimulus
# ---------------------------------------------------------------------------------------
def test_stimulus_constant():
    vals = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    s = Stimulus(values=vals)
    for t in (torch.tensor(-5.0), torch.tensor([0.0, 100.0])):
        assert torch.equal(s(t), vals)
    assert s.tensors() == (vals,)
    assert as_stimulus(vals).values is vals


def _sampled():
    times = torch.tensor([0.0, 1.0, 3.0], dtype=F64)
    # [B=2, S=3, F=2]: feature 1 is feature 0 negated
    base = torch.tensor([[0.0, 2.0, 6.0], [1.0, -1.0, 3.0]], dtype=F64)
    values = torch.stack([base, -base], dim=-1)  # [2, 3, 2]
    return values, times


@pytest.mark.parametrize(
    ("t", "expected_b0", "expected_b1"),
    [
        (-1.0, 0.0, 1.0),  # before the first sample: held
        (0.0, 0.0, 1.0),
        (0.25, 0.5, 0.5),
        (1.0, 2.0, -1.0),
        (2.0, 4.0, 1.0),  # halfway between t=1 and t=3
        (2.5, 5.0, 2.0),
        (3.0, 6.0, 3.0),
        (7.0, 6.0, 3.0),  # after the last sample: held
    ],
)
def test_stimulus_linear_interpolation(t, expected_b0, expected_b1):
    values, times = _sampled()
    s = Stimulus(values=values, times=times, interpolation="linear")
    out = s(torch.tensor(t, dtype=F64))
    expected = torch.tensor([[expected_b0, -expected_b0], [expected_b1, -expected_b1]], dtype=F64)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("t", "expected_b0", "expected_b1"),
    [(-1.0, 0.0, 1.0), (0.0, 0.0, 1.0), (0.999, 0.0, 1.0), (1.0, 2.0, -1.0), (2.9, 2.0, -1.0), (3.0, 6.0, 3.0), (9.0, 6.0, 3.0)],
)
def test_stimulus_constant_interpolation(t, expected_b0, expected_b1):
    values, times = _sampled()
    s = Stimulus(values=values, times=times, interpolation="constant")
    out = s(torch.tensor([t], dtype=F64))
    expected = torch.tensor([[expected_b0, -expected_b0], [expected_b1, -expected_b1]], dtype=F64)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_stimulus_per_sample_times_and_gradient():
    values, times = _sampled()
    values = values.clone().requires_grad_(True)
    s = Stimulus(values=values, times=times)
    out = s(torch.tensor([0.5, 2.0], dtype=F64))  # each sample at its own time
    torch.testing.assert_close(out[:, 0], torch.tensor([1.0, 1.0], dtype=F64))
    out[0, 0].backward()  # = 0.5·v[0,0,0] + 0.5·v[0,1,0]
    expected = torch.zeros_like(values)
    expected[0, 0, 0] = expected[0, 1, 0] = 0.5
    assert torch.equal(values.grad, expected)


def test_stimulus_single_sample_and_callable():
    s = Stimulus(values=torch.tensor([[[2.0]]]), times=torch.tensor([1.0]))
    assert s(torch.tensor(-3.0)).tolist() == [[2.0]] and s(torch.tensor(8.0)).tolist() == [[2.0]]
    s = Stimulus(fn=lambda t: torch.stack([torch.sin(t), t**2], dim=-1))
    t = torch.tensor([0.5, 1.5])
    torch.testing.assert_close(s(t), torch.tensor([[math.sin(0.5), 0.25], [math.sin(1.5), 2.25]]))
    assert s.tensors() == ()
    assert as_stimulus(lambda t: t).fn is not None
    assert as_stimulus(None) is None and as_stimulus(s) is s


def test_stimulus_bad_inputs():
    with pytest.raises(ValueError, match="exactly one"):
        Stimulus()
    with pytest.raises(ValueError, match="exactly one"):
        Stimulus(values=torch.zeros(1, 1), fn=lambda t: t)
    with pytest.raises(ValueError, match="interpolation"):
        Stimulus(values=torch.zeros(1, 1), interpolation="cubic")
    with pytest.raises(ValueError, match=r"\[B, F\]"):
        Stimulus(values=torch.zeros(3))
    with pytest.raises(ValueError, match=r"\[B, F\]"):
        Stimulus(values=torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="times"):
        Stimulus(values=torch.zeros(1, 3, 1))
    with pytest.raises(ValueError, match="times"):
        Stimulus(values=torch.zeros(1, 3, 1), times=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="increasing"):
        Stimulus(values=torch.zeros(1, 3, 1), times=torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="increasing"):
        Stimulus(values=torch.zeros(1, 2, 1), times=torch.tensor([1.0, 1.0]))
    with pytest.raises(TypeError):
        as_stimulus(3.0)


def _single_leaky_neuron(tau=0.5):
    d = Data(edge_index=torch.zeros(2, 0, dtype=torch.long), sign=torch.zeros(0), syn_weight=torch.zeros(0), num_nodes=1)
    return BoundDynamics(d, activation="identity", tau=tau, tau_mode="fixed", bias_mode="fixed", backend="csr").double()


def test_solve_with_sampled_ramp_and_step_stimuli():
    dyn = _single_leaky_neuron()
    tau = float(dyn.tau())
    ts = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=F64)
    # ramp u(t) = t from linear interpolation: v(t) = t - τ(1 - e^{-t/τ})
    ramp = Stimulus(values=torch.tensor([[[0.0], [10.0]]], dtype=F64), times=torch.tensor([0.0, 10.0], dtype=F64))
    sol = solve(dyn, torch.zeros(1, 1, dtype=F64), (0.0, 3.0), args=(ramp,), t_eval=ts, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sol.ys[0, :, 0], ts - tau * (1 - torch.exp(-ts / tau)), rtol=1e-7, atol=1e-8)
    # step: u = 0 before t = 1, 2 from t = 1 on: v = 2(1 - e^{-(t-1)/τ}) for t >= 1
    step = Stimulus(values=torch.tensor([[[0.0], [2.0]]], dtype=F64), times=torch.tensor([0.0, 1.0], dtype=F64), interpolation="constant")
    sol = solve(dyn, torch.zeros(1, 1, dtype=F64), (0.0, 3.0), args=(step,), t_eval=ts, rtol=1e-10, atol=1e-10)
    ref = torch.where(ts >= 1, 2 * (1 - torch.exp(-(ts - 1) / tau)), torch.zeros_like(ts))
    torch.testing.assert_close(sol.ys[0, :, 0], ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("gradient", ["autodiff", "checkpoint", "adjoint"])
def test_solve_wraps_a_tensor_stimulus_once(gradient, monkeypatch):
    dyn = _single_leaky_neuron()
    made = []
    init = Stimulus.__init__
    monkeypatch.setattr(Stimulus, "__init__", lambda self, *a, **k: (made.append(1), init(self, *a, **k))[1])
    u = torch.full((2, 1), 2.0, dtype=F64, requires_grad=True)
    sol = solve(dyn, torch.zeros(2, 1, dtype=F64), (0.0, 1.0), args=(u,), gradient=gradient, checkpoints=2)
    sol.ys.sum().backward()
    assert sol.stats.n_f_evals > 1 and len(made) == 1
    # v(1) = u(1 - e^{-1/τ}) with u constant
    expected = 1 - math.exp(-1 / float(dyn.tau()))
    torch.testing.assert_close(u.grad, torch.full_like(u, expected), rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------
# input projection
# ---------------------------------------------------------------------------------------
class _SparseMap(nn.Module):
    """Drive ``[B, N]`` from features ``[B, F]`` through a fixed sparse ``[N, F]`` map with a
    learnable gain per nonzero."""

    def __init__(self, rows, cols, n, f):
        super().__init__()
        self.register_buffer("idx", torch.stack([rows, cols]))
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, len(rows), dtype=F64))
        self.n, self.f = n, f

    def forward(self, u):
        S = torch.sparse_coo_tensor(self.idx, self.gain, (self.n, self.f))
        return torch.sparse.mm(S, u.t()).t()


@pytest.mark.parametrize("kind", ["linear", "sparse"])
def test_input_projection(kind):
    d = _random_data()
    if kind == "linear":
        proj = nn.Linear(2, 6, bias=False).double()
        P = lambda: proj.weight  # noqa: E731
        pname = "input_projection.weight"
    else:
        proj = _SparseMap(torch.tensor([0, 2, 5]), torch.tensor([1, 0, 1]), 6, 2)
        P = lambda: torch.zeros(6, 2, dtype=F64).index_put(tuple(proj.idx), proj.gain)  # noqa: E731
        pname = "input_projection.gain"
    dyn = BoundDynamics(d, activation="tanh", backend="csr", input_projection=proj).double()
    _randomize(dyn)
    g = torch.Generator().manual_seed(4)
    v = torch.randn(3, 6, dtype=F64, generator=g)
    u = torch.randn(3, 2, dtype=F64, generator=g)
    t = torch.zeros(3, dtype=F64)
    tau = (0.05 + F.softplus(dyn.tau_raw.detach()))[d.cell_type]
    b = dyn.bias.detach()[d.cell_type]
    ref = (-v + torch.tanh(v) @ _dense_W(d).t() + b + u @ P().detach().t()) / tau
    torch.testing.assert_close(dyn(t, v, u), ref, rtol=1e-6, atol=1e-6)
    assert pname in dict(dyn.named_parameters())
    params = dict(dyn.named_parameters())
    p0 = params[pname].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: functional_call(dyn, dict(params, **{pname: p}), (t, v, u)), (p0,))


# -- state_dict: learned values only, guarded by the graph's fingerprint ----------------------
def test_state_dict_leaves_the_graph_out_and_refuses_another_graph():
    data = _chain_data()
    dyn = BoundDynamics(data, weights="per_edge", tau=0.5)
    state = dyn.state_dict()
    assert not {"edge_index", "sign", "magnitude", "synapses.sign", "synapses.magnitude"} & set(state)
    assert {"graph_fingerprint", "synapses.theta", "tau_raw", "bias"} <= set(state)
    with torch.no_grad():
        dyn.synapses.theta.add_(0.3)
    same = BoundDynamics(_chain_data(), weights="per_edge", tau=0.5)
    same.load_state_dict(dyn.state_dict())
    torch.testing.assert_close(same.synaptic_weights(), dyn.synaptic_weights())

    rewired = _chain_data()
    rewired.edge_index = torch.tensor([[0, 1, 2], [1, 2, 1]])  # same sizes, one synapse moved
    with pytest.raises(RuntimeError, match="different connectome"):
        BoundDynamics(rewired, weights="per_edge", tau=0.5).load_state_dict(state)
    resigned = _chain_data()
    resigned.sign = torch.tensor([1.0, 1.0, 1.0])
    with pytest.raises(RuntimeError, match=r"the state was saved on a different connectome"):
        BoundDynamics(resigned, weights="per_edge", tau=0.5).load_state_dict(state)


# ---------------------------------------------------------------------------------------
# parameters computed once per solve
# ---------------------------------------------------------------------------------------
def _typed_random_dynamics(seed=0):
    """A random graph with 3 cell types and 4 edge types; per-edge-type synapses and
    per-type τ and b, perturbed away from their uniform initial values."""
    g = torch.Generator().manual_seed(seed)
    n, e = 12, 40
    edge_index = torch.randint(n, (2, e), generator=g)
    cell_type = torch.arange(n) % 3
    data = Data(
        edge_index=edge_index, num_nodes=n, cell_type=cell_type,
        edge_type=cell_type[edge_index[0]] % 2 + 2 * (cell_type[edge_index[1]] % 2),
        sign=torch.where(torch.rand(e, generator=g) < 0.7, 1.0, -1.0),
        syn_weight=torch.rand(e, generator=g) / 3,
    )
    dyn = BoundDynamics(data, activation="tanh", weights="per_edge_type", tau=0.5, bias=0.2).double()
    with torch.no_grad():
        for p in dyn.parameters():
            p.add_(0.3 * torch.randn(p.shape, dtype=F64, generator=g))
    return dyn, torch.randn(2, n, dtype=F64, generator=g), torch.randn(2, n, dtype=F64, generator=g)


class _Counting(VectorField):
    """``dyn``'s field, counting its parameter derivations; with ``per_evaluation`` every
    evaluation derives them afresh (the reference: nothing shared between evaluations)."""

    def __init__(self, dyn, per_evaluation=False):
        super().__init__()
        self.dyn, self.per_evaluation, self.derivations = dyn, per_evaluation, 0

    def prepare(self, *args):
        return self.dyn.prepare(*args)

    def derive(self, inputs):
        if self.per_evaluation:
            return None
        self.derivations += 1
        return self.dyn.derive(inputs)

    def evaluate(self, t, y, inputs, derived):
        if self.per_evaluation:
            self.derivations += 1
            derived = self.dyn.derive(inputs)
        return self.dyn.evaluate(t, y, inputs, derived)


@pytest.mark.parametrize("gradient", ["autodiff", "checkpoint", "adjoint"])
def test_parameters_derived_once_per_solve_give_the_same_solution_and_gradients(gradient):
    dyn, y0, u = _typed_random_dynamics()

    def run(field):
        dyn.zero_grad()
        sol = solve(field, y0, (0.0, 1.0), args=(u,), t_eval=[0.5, 1.0], gradient=gradient, checkpoints=2,
                    method="heun", dt0=0.05)
        (sol.ys * torch.linspace(-1, 1, y0.size(1), dtype=F64)).sum().backward()
        return sol, field.derivations, [p.grad.clone() for p in dyn.parameters()]

    sol, n_derived, grads = run(_Counting(dyn))
    sol_ref, n_derived_ref, grads_ref = run(_Counting(dyn, per_evaluation=True))
    torch.testing.assert_close(sol.ys, sol_ref.ys, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert n_derived_ref >= sol.stats.n_f_evals > 1
    segments = sol.stats.segments
    # autodiff: once for the whole solve, backward included; checkpoint: once per segment
    # and once per recomputed segment; adjoint: once forward, then per backward evaluation
    expected = {"autodiff": 1, "checkpoint": 2 * segments, "adjoint": 1 + sol.stats.backward_f_evals}[gradient]
    assert n_derived == expected
    # Without gradients every method derives them once (the adjoint's forward pass too).
    counting = _Counting(dyn)
    with torch.no_grad():
        solve(counting, y0, (0.0, 1.0), args=(u,), gradient=gradient, checkpoints=2, method="heun", dt0=0.05)
    assert counting.derivations == 1


def test_dynamics_refuse_non_finite_or_sign_flipping_options():
    from graphode.connectome.synthetic import random_connectome

    data = random_connectome(10, 30, seed=0)
    for kw, match in ((dict(tau=float("nan")), "tau"), (dict(bias=float("inf")), "bias"), (dict(gain=-1.0), "gain")):
        with pytest.raises(ValueError, match=match):
            BoundDynamics(data, **kw)
