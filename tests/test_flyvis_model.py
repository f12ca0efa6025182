"""The published fly visual system model against its equations, written out independently.

The reference below is a plain-torch Euler loop on a dense weight matrix, built from the
graph's connections with Python dictionaries and the equations of the published model
(Lappalainen et al. 2024; flyvis' ``PPNeuronIGRSynapses``):

    v[k+1] = v[k] + dt / max(τ, dt) · (−v[k] + b + W relu(v[k]) + x[k]),
    W[post, pre] = sign · n_syn · α(src type, tar type),

x[k] the frame k at every photoreceptor of its column. It shares no code with
``graphode.flyvis.model`` or the dynamics module.
"""

from __future__ import annotations

import math

import pytest
import torch

from graphode import solve
from graphode.dynamics import ConnectomeDynamics
from graphode.flyvis import fly_visual_system
from graphode.flyvis.model import (
    activity_penalty, central_cells, fade_in_state, frame_stimulus, grey_steady_state, photoreceptor_projection,
    published_dynamics, rest_state, resting_potentials, simulate,
)
from graphode.solvers import Euler, FixedStep

DT = 0.02


def _columns(extent):
    """(u, v) -> index, enumerated as the published lattice: u, then v."""
    cols, i = {}, 0
    for u in range(-extent, extent + 1):
        for v in range(-extent, extent + 1):
            if abs(u) <= extent and abs(v) <= extent and abs(u + v) <= extent:
                cols[(u, v)] = i
                i += 1
    return cols


def _initial_alpha(data):
    """0.01 / mean n_syn of each (source type, target type), from a dictionary of lists."""
    names = data.cell_type_names
    src, dst = data.edge_index.tolist()
    groups = {}
    for k, (s, d) in enumerate(zip(src, dst)):
        key = (names[data.cell_type[s]], names[data.cell_type[d]])
        groups.setdefault(key, []).append(float(data.syn_count[k]))
    return {key: 0.01 / (sum(c) / len(c)) for key, c in groups.items()}


class Reference:
    """The published equations on one graph, with parameters by name."""

    def __init__(self, data, alpha: dict, tau: dict, bias: dict, dtype=torch.float64):
        names = data.cell_type_names
        n = int(data.num_nodes)
        self.n, self.dtype = n, dtype
        types = [names[t] for t in data.cell_type.tolist()]
        src, dst = data.edge_index.tolist()
        values = [
            s * c * alpha[(types[i], types[j])]
            for i, j, s, c in zip(src, dst, data.sign.tolist(), data.syn_count.tolist())
        ]
        w = torch.zeros(n, n, dtype=dtype)
        w.index_put_((torch.tensor(dst), torch.tensor(src)), torch.tensor(values, dtype=dtype), accumulate=True)
        self.w = w
        self.tau = torch.tensor([tau[t] for t in types], dtype=dtype)
        self.bias = torch.tensor([bias[t] for t in types], dtype=dtype)
        extent = max(max(abs(u), abs(v), abs(u + v)) for u, v in data.uv.tolist())
        cols = _columns(extent)
        uv = data.uv.tolist()
        self.receptors = [i for i, r in enumerate(data.input_mask.tolist()) if r]
        self.receptor_columns = [cols[tuple(uv[i])] for i in self.receptors]

    def drive(self, frame):  # frame [B, C] -> [B, N]: each photoreceptor reads its column
        x = torch.zeros(frame.size(0), self.n, dtype=self.dtype)
        x[:, self.receptors] = frame[:, self.receptor_columns].to(self.dtype)
        return x

    def run(self, frames, v0, dt=DT):
        v = v0.to(self.dtype)
        out = []
        for k in range(frames.size(1)):
            rhs = -v + self.bias + torch.relu(v) @ self.w.T + self.drive(frames[:, k])
            v = v + dt * (1.0 / torch.clamp(self.tau, min=dt)) * rhs
            out.append(v)
        return torch.stack(out, 1)


def _named_parameters(dyn, data):
    names, edges = data.cell_type_names, data.edge_type_names
    alpha = {tuple(e.split("->")): float(a) for e, a in zip(edges, dyn.synapses.theta.detach().clamp_min(0))}
    tau = {t: float(x) for t, x in zip(names, dyn.tau_raw.detach())}
    bias = {t: float(x) for t, x in zip(names, dyn.bias.detach())}
    return alpha, tau, bias


def _randomise(dyn, seed=0):
    """Parameters away from their initial values: some strengths 0, some τ below dt."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        theta = dyn.synapses.theta
        theta.mul_(2 * torch.rand(theta.shape, generator=gen))
        theta[torch.rand(theta.shape, generator=gen) < 0.1] = 0.0
        dyn.tau_raw.copy_(0.01 + 0.2 * torch.rand(dyn.tau_raw.shape, generator=gen))  # ~5% below dt = 0.02
        dyn.bias.add_(0.2 * torch.randn(dyn.bias.shape, generator=gen))


def test_published_initial_parameters():
    data = fly_visual_system(3)
    dyn = published_dynamics(data)
    names = data.cell_type_names
    # per-type strengths: 0.01 / mean count of the type's connections (a type absent here: 0.01)
    expected = _initial_alpha(data)
    for e, a in zip(data.edge_type_names, dyn.synapses.theta.detach().tolist()):
        want = expected.get(tuple(e.split("->")), 0.01)
        assert a == pytest.approx(want, rel=1e-6), e
    # τ = 0.05 for every type, floored at dt; resting potentials N(0.5, 0.05), seed 0, by type
    assert dyn.tau_raw.tolist() == pytest.approx([0.05] * 65)
    gen = torch.Generator().manual_seed(0)
    draw = torch.normal(torch.full((65,), 0.5), torch.full((65,), 0.05), generator=gen)
    assert torch.equal(dyn.bias.detach(), draw)
    assert torch.equal(resting_potentials(65), draw)
    assert abs(float(draw.mean()) - 0.5) < 0.02 and 0.03 < float(draw.std()) < 0.07
    # 65 τ + 65 b + 605 strengths, all learnable
    assert sum(p.numel() for p in dyn.parameters() if p.requires_grad) == 65 + 65 + 605
    # the tau floor is the step: a τ below dt acts as dt
    with torch.no_grad():
        dyn.tau_raw[0] = 0.001
    assert float(dyn.tau().detach().min()) == pytest.approx(DT)
    # the weights are sign · n_syn · α on raw counts (not normalised per target)
    w = dyn.synaptic_weights().detach()
    alpha = dyn.synapses.theta.detach()[data.edge_type]
    torch.testing.assert_close(w, data.sign * data.syn_count * alpha, rtol=0, atol=0)
    assert names[int(data.cell_type[data.input_mask][0])] == "R1"


@pytest.mark.parametrize("extent", [2, 4])
def test_trajectories_equal_the_published_equations(extent):
    data = fly_visual_system(extent)
    dyn = published_dynamics(data)
    _randomise(dyn, seed=extent)
    ref = Reference(data, *_named_parameters(dyn, data))
    c = len(_columns(extent))
    gen = torch.Generator().manual_seed(1)
    frames = torch.rand(3, 40, c, generator=gen)
    v0 = rest_state(dyn, 3) + 0.1 * torch.randn(3, data.num_nodes, generator=gen)
    expected = ref.run(frames.double(), v0.detach().double())
    assert float(expected.abs().max()) > 1.0  # the network is active, not at a trivial fixed point
    with torch.no_grad():
        got32 = simulate(dyn, frames, v0)
    # float32 against the float64 reference: float32 rounding over 40 steps
    scale = float(expected.abs().max())
    assert float((got32.double() - expected).abs().max()) < 2e-6 * scale
    with torch.no_grad():
        got64 = simulate(dyn.double(), frames.double(), v0.double())
    assert float((got64 - expected).abs().max()) < 1e-11 * scale


def test_solve_with_euler_and_frames_equals_the_published_loop():
    data = fly_visual_system(3)
    dyn = published_dynamics(data).double()
    _randomise(dyn, seed=3)
    ref = Reference(data, *_named_parameters(dyn, data))
    frames = torch.rand(2, 30, len(_columns(3)), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    v0 = rest_state(dyn, 2).detach()
    steps = frames.size(1)
    t_eval = torch.arange(1, steps + 1, dtype=torch.float64) * DT
    with torch.no_grad():
        sol = solve(dyn, v0, (0.0, steps * DT), args=(frame_stimulus(frames, DT),), t_eval=t_eval,
                    method=Euler(), controller=FixedStep(DT))
    expected = ref.run(frames, v0)
    assert sol.stats.n_steps == steps
    torch.testing.assert_close(sol.ys, expected, rtol=1e-10, atol=1e-10)


def test_gradients_equal_those_of_the_published_equations():
    data = fly_visual_system(2)
    dyn = published_dynamics(data).double()
    _randomise(dyn, seed=5)
    frames = torch.rand(2, 12, len(_columns(2)), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = simulate(dyn, frames, rest_state(dyn, 2))
    (out ** 2).mean().backward()
    # the reference with its parameters as leaves (per type), differentiated by autograd
    alpha0, tau0, bias0 = _named_parameters(dyn, data)
    names, edges = data.cell_type_names, data.edge_type_names
    a = torch.tensor([alpha0[tuple(e.split("->"))] for e in edges], dtype=torch.float64, requires_grad=True)
    tau = torch.tensor([tau0[t] for t in names], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([bias0[t] for t in names], dtype=torch.float64, requires_grad=True)
    src, dst = data.edge_index
    n = int(data.num_nodes)
    w = torch.zeros(n, n, dtype=torch.float64).index_put((dst, src), data.sign.double() * data.syn_count.double()
                                                          * a[data.edge_type], accumulate=True)
    tau_n, b_n = torch.maximum(tau, torch.tensor(DT, dtype=torch.float64))[data.cell_type], b[data.cell_type]
    x = photoreceptor_projection(data).dense().double()  # [N, C]: checked against the reference drive below
    ref = Reference(data, alpha0, tau0, bias0)
    torch.testing.assert_close(frames[:, 0] @ x.T, ref.drive(frames[:, 0]), rtol=0, atol=0)
    v, states = b_n.expand(2, n), []
    for k in range(frames.size(1)):
        v = v + DT / tau_n * (-v + b_n + torch.relu(v) @ w.T + frames[:, k] @ x.T)
        states.append(v)
    (torch.stack(states, 1) ** 2).mean().backward()
    torch.testing.assert_close(dyn.synapses.theta.grad, a.grad, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(dyn.tau_raw.grad, tau.grad, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(dyn.bias.grad, b.grad, rtol=1e-9, atol=1e-14)
    assert float(a.grad.abs().max()) > 0 and float(tau.grad.abs().max()) > 0


def test_strengths_are_projected_onto_nonnegative_values_and_can_regrow():
    data = fly_visual_system(2)
    dyn = published_dynamics(data)
    et = int(data.edge_type[0])
    with torch.no_grad():
        dyn.synapses.theta[et] = -0.3  # an optimizer step overshot below zero
    w = dyn.synaptic_weights()
    assert float(dyn.synapses.theta.detach()[et]) == 0.0  # projected in place, as published
    assert bool((w[data.edge_type == et] == 0).all())
    frames = torch.rand(1, 5, len(_columns(2)))
    simulate(dyn, frames, rest_state(dyn, 1)).sum().backward()
    assert float(dyn.synapses.theta.grad[et]) != 0.0  # a strength at 0 still gets a gradient


def test_grey_steady_state_and_fade_in_follow_the_published_definitions():
    data = fly_visual_system(2)
    dyn = published_dynamics(data)
    ref = Reference(data, *_named_parameters(dyn, data))
    c = len(_columns(2))
    rest = ref.bias.expand(2, -1)
    torch.testing.assert_close(rest_state(dyn, 2).detach().double(), rest, rtol=0, atol=0)
    grey = ref.run(torch.full((2, 50, c), 0.5, dtype=torch.float64), rest)[:, -1]  # 1 s of 0.5 at 20 ms
    with torch.no_grad():
        got = grey_steady_state(dyn, 2)
    torch.testing.assert_close(got.double(), grey, rtol=1e-5, atol=1e-5)
    first = torch.rand(2, c, generator=torch.Generator().manual_seed(0))
    contrast = torch.linspace(0, 1, 50)
    fade = (contrast[None, :, None] * (first[:, None] - 0.5) + 0.5).double()
    with torch.no_grad():
        got = fade_in_state(dyn, first)
    torch.testing.assert_close(got.double(), ref.run(fade, rest)[:, -1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="duration"):
        grey_steady_state(dyn, 1, duration=0.001)


def test_activity_penalty_hand_computed():
    data = fly_visual_system(1)
    centre = central_cells(data)
    assert len(centre) == 65  # one cell of every type at the central column (single types included)
    assert sorted(data.cell_type[centre].tolist()) == data.cell_type[centre].tolist()
    activity = torch.zeros(1, 8, data.num_nodes)
    activity[0, :2, centre] = 100.0  # the first quarter is left out of the mean
    activity[0, 2:, centre[0]] = 7.0  # 2 above the baseline of 5: weight 0.1 -> (0.1·2)² = 0.04
    activity[0, 2:, centre[1]] = 3.0  # 2 below: weight 1 -> 4
    # the other 63 central cells sit at 0: 5 below -> 25 each
    expected = 0.1 * (0.04 + 4.0 + 63 * 25.0) / 65
    assert float(activity_penalty(activity, data)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="activity must be"):
        activity_penalty(activity[0], data)


def test_published_dynamics_options_and_errors():
    data = fly_visual_system(1)
    with pytest.raises(ValueError, match="sets weights"):
        published_dynamics(data, weights="per_edge")
    with pytest.raises(ValueError, match="exceed dt"):
        published_dynamics(data, tau=0.01)
    shared = published_dynamics(data, bound=False)
    assert isinstance(shared, ConnectomeDynamics)
    bound = published_dynamics(data)
    v = rest_state(bound, 1)
    frames = torch.rand(1, 4, len(_columns(1)))
    with torch.no_grad():
        torch.testing.assert_close(simulate(shared, frames, v, graph=data), simulate(bound, frames, v))
    with pytest.raises(ValueError, match="needs the graph"):
        simulate(shared, frames, v)
    # a SynapseWeights given as weights= carries its own gain and sign rule
    from graphode.dynamics import BoundDynamics
    from graphode.synapses import SynapseWeights
    with pytest.raises(ValueError, match="belong to the SynapseWeights"):
        BoundDynamics(data, weights=SynapseWeights.from_data(data, "count_per_type"), gain=2.0)
    # the per-type initial values are checked
    with pytest.raises(ValueError, match="initial values"):
        ConnectomeDynamics(num_cell_types=3, num_edge_types=2, bias=torch.zeros(4))
    with pytest.raises(ValueError, match="tau_bound"):
        ConnectomeDynamics(num_cell_types=3, num_edge_types=2, tau_bound="relu")
    assert math.isclose(float(ConnectomeDynamics(num_cell_types=2, num_edge_types=1, tau=torch.tensor([0.3, 0.4]),
                                                 tau_min=0.02, tau_bound="clamp").tau_raw[1]), 0.4, rel_tol=1e-6)


def test_count_per_type_strengths_are_shared_across_a_batch_of_graphs():
    from torch_geometric.data import Batch

    from graphode.synapses import SynapseWeights

    small, large = fly_visual_system(1), fly_visual_system(2)
    synapses = SynapseWeights.from_data(large, "count_per_type")
    batch = Batch.from_data_list([small, large])
    w = synapses.of(batch)
    alpha = synapses.theta.detach()
    for graph, part in zip((small, large), torch.split(w.detach(), [small.num_edges, large.num_edges])):
        torch.testing.assert_close(part, graph.sign * graph.syn_count * alpha[graph.edge_type], rtol=0, atol=0)
    # the raw counts, not the normalised syn_weight; a graph without syn_count is refused
    del small.syn_count
    with pytest.raises(ValueError, match="raw synapse counts"):
        synapses.of(small)
