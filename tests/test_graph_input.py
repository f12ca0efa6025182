"""The graph as an input: one ConnectomeDynamics for every Data and Batch.

References: each graph solved alone (a Batch is block-diagonal, so every graph must get
the trajectory and the gradient contributions it gets alone), autodiff for the adjoint,
finite differences for the node drive.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch, Data

from graphode import (
    Adaptive, Adjoint, Autodiff, BoundDynamics, Checkpoint, ConnectomeDynamics, FixedStep, GraphODEClassifier, Heun,
    NodeDrive, PooledReadout, random_connectome, solve,
)

F64 = torch.float64
K = 3  # cell types; edge types are (source type, target type) pairs


def _graph(n: int, seed: int, with_x: bool = True) -> Data:
    data = random_connectome(n, 4 * n, num_cell_types=K, frac_inhibitory=0.3, seed=seed)
    del data.cell_type_names
    if with_x:
        g = torch.Generator().manual_seed(seed)
        data.x = torch.randn(n, 2, generator=g)
        data.stimulus = torch.randn(1, 3, generator=g)  # a graph-level attribute: [1, S]
    return data


def _graphs():
    return [_graph(9, 1), _graph(14, 2), _graph(6, 3)]


def _dynamics(seed=0, **kw) -> ConnectomeDynamics:
    opts = dict(activation="tanh", backend="csr", tau=0.5, bias=0.1, node_input=NodeDrive(2, 3, hidden=4))
    opts.update(kw)
    dyn = ConnectomeDynamics(K, K * K, **opts).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dyn.parameters():
            p.add_(0.3 * torch.randn(p.shape, dtype=F64, generator=g))
    return dyn


def _solve(dyn, graph, y0, u, gradient, method):
    kw = dict(method=Heun(), controller=FixedStep(0.05)) if method == "heun" else dict(controller=Adaptive(rtol=1e-10, atol=1e-10))
    return solve(dyn, y0, (0.0, 1.0), args=(graph, u), t_eval=[0.3, 1.0], gradient=gradient, **kw)


@pytest.mark.parametrize("method", ["heun", "dopri5"])
@pytest.mark.parametrize("gradient", [Autodiff(), Checkpoint(segments=2), Adjoint(segments=2)], ids=repr)
def test_a_batch_gives_every_graph_its_own_trajectory_and_gradients(gradient, method):
    graphs = _graphs()
    batch = Batch.from_data_list(graphs)
    dyn = _dynamics()
    g = torch.Generator().manual_seed(5)
    y0 = torch.randn(2, batch.num_nodes, dtype=F64, generator=g)
    u = torch.randn(2, batch.num_nodes, dtype=F64, generator=g)
    weights = torch.randn(2, 2, batch.num_nodes, dtype=F64, generator=g)  # the loss reads every state

    def loss_and_grads(graph, sl):
        dyn.zero_grad()
        sol = _solve(dyn, graph, y0[:, sl], u[:, sl], gradient, method)
        (sol.ys * weights[..., sl]).sum().backward()
        return sol.ys.detach(), {name: p.grad.clone() for name, p in dyn.named_parameters()}

    ys, grads = loss_and_grads(batch, slice(None))
    total = {name: torch.zeros_like(v) for name, v in grads.items()}
    tol = dict(rtol=1e-12, atol=1e-12) if method == "heun" else dict(rtol=1e-7, atol=1e-8)
    for k, graph in enumerate(graphs):
        sl = slice(int(batch.ptr[k]), int(batch.ptr[k + 1]))
        ys_alone, grads_alone = loss_and_grads(graph, sl)
        torch.testing.assert_close(ys[..., sl], ys_alone, **tol)
        for name in total:
            total[name] += grads_alone[name]
    # shared parameters collect each graph's contributions
    assert all(v.abs().sum() > 0 for v in total.values())
    for name in total:
        torch.testing.assert_close(grads[name], total[name], rtol=1e-6 if method == "dopri5" else 1e-10, atol=1e-9)


def test_the_adjoint_gradient_matches_autodiff_on_a_batch_with_learnable_arguments():
    """A stimulus computed from a parameter reaches the adjoint through ``args``; the
    adjoint differentiates a detached copy and autograd follows the history once."""
    batch = Batch.from_data_list(_graphs())
    dyn = _dynamics()
    encoder = nn.Linear(2, 1).double()
    grads = {}
    for gradient in ("autodiff", "adjoint"):
        dyn.zero_grad()
        encoder.zero_grad()
        u = encoder(batch.x.double()).t().expand(2, -1)  # [2, N] from node features, outside the field
        y0 = torch.zeros(2, batch.num_nodes, dtype=F64)
        sol = solve(dyn, y0, (0.0, 2.0), args=(batch, u), rtol=1e-9, atol=1e-9, gradient=gradient, checkpoints=4)
        sol.ys.square().sum().backward()
        grads[gradient] = [p.grad.clone() for p in [*dyn.parameters(), *encoder.parameters()]]
    for got, want in zip(grads["adjoint"], grads["autodiff"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_node_drive_reads_node_features_and_each_graphs_stimulus():
    graphs = _graphs()
    batch = Batch.from_data_list(graphs)
    drive = NodeDrive(2, 3).double()
    features = drive.features(batch)
    assert features.shape == (batch.num_nodes, 5)
    for k, graph in enumerate(graphs):
        sl = slice(int(batch.ptr[k]), int(batch.ptr[k + 1]))
        torch.testing.assert_close(features[sl], torch.cat([graph.x, graph.stimulus.expand(graph.num_nodes, -1)], 1))
    # the drive enters the field as a constant current per neuron: dv/dt(v = 0, no input)
    # of an unconnected network is (b + d) / τ with d = W [x, s] + c
    dyn = ConnectomeDynamics(K, K * K, weights="fixed", tau=0.5, tau_mode="fixed", bias=0.0, bias_mode="fixed",
                             recurrent=False, node_input=drive).double()
    out = dyn(torch.zeros(1, dtype=F64), torch.zeros(1, batch.num_nodes, dtype=F64), batch)
    expected = (features.double() @ drive.net.weight.t() + drive.net.bias).t() / 0.5
    torch.testing.assert_close(out, expected)


def test_node_drive_gradient_matches_finite_differences():
    graph = _graph(8, 4)
    dyn = _dynamics(node_input=NodeDrive(2, 3, hidden=3))
    y0 = torch.zeros(1, graph.num_nodes, dtype=F64)
    names = [n for n, _ in dyn.named_parameters() if n.startswith("node_input")]
    params = dict(dyn.named_parameters())

    def loss():
        sol = solve(dyn, y0, (0.0, 1.0), args=(graph,), method="heun", dt0=0.1)
        return sol.ys.square().sum()

    dyn.zero_grad()
    loss().backward()
    for name in names:
        p = params[name]
        with torch.no_grad():
            flat = p.view(-1)
            i = int(torch.argmax(p.grad.abs().view(-1)))
            h = 1e-6
            flat[i] += h
            up = float(loss())
            flat[i] -= 2 * h
            down = float(loss())
            flat[i] += h
        assert math.isclose(p.grad.view(-1)[i].item(), (up - down) / (2 * h), rel_tol=1e-5, abs_tol=1e-9), name


def test_the_classifier_pools_each_graph_of_a_batch():
    graphs = _graphs()
    for k, graph in enumerate(graphs):
        graph.output_mask = torch.arange(graph.num_nodes) % 2 == 0
    batch = Batch.from_data_list(graphs)
    torch.manual_seed(0)
    readout = PooledReadout(3, 4, K, hidden=8, num_frequencies=0, aggr="mean", keep_group_mean=True).double()
    model = GraphODEClassifier(_dynamics(), readout, t_end=1.0, num_records=3, method="heun", controller=FixedStep(0.05)).double()
    logits = model(batch)
    assert logits.shape == (3, 4)
    for k, graph in enumerate(graphs):
        torch.testing.assert_close(logits[k], model(Batch.from_data_list([graph]))[0], rtol=1e-10, atol=1e-12)
    F.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    assert model.dynamics.synapses.theta.grad.abs().sum() > 0


def test_bound_dynamics_equal_the_graph_per_call_form_on_their_graph():
    graph = _graph(10, 7, with_x=False)
    shared = dict(activation="tanh", backend="csr", weights="per_edge_type", tau=0.4, bias=0.2)
    bound = BoundDynamics(graph, **shared).double()
    free = ConnectomeDynamics.from_data(graph, **shared).double()
    free.load_state_dict({k: v for k, v in bound.state_dict().items() if k != "graph_fingerprint"})
    g = torch.Generator().manual_seed(0)
    y0, u = torch.randn(2, 10, dtype=F64, generator=g), torch.randn(2, 10, dtype=F64, generator=g)
    a = solve(bound, y0, (0.0, 1.0), args=(u,), rtol=1e-8, atol=1e-8).ys
    b = solve(free, y0, (0.0, 1.0), args=(graph, u), rtol=1e-8, atol=1e-8).ys
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_graphs_and_stimuli_get_errors_that_name_the_attribute():
    dyn = _dynamics()
    t, graph = torch.zeros(1, dtype=F64), _graph(6, 1)
    v = torch.zeros(1, 6, dtype=F64)
    big = _graph(6, 1)
    big.edge_type = big.edge_type + K * K
    with pytest.raises(ValueError, match=r"graph.edge_type holds codes in .*vocabulary \[0, 9\).*num_edge_types >= "):
        dyn(t, v, big)
    big = _graph(6, 1)
    big.cell_type = big.cell_type + 5
    with pytest.raises(ValueError, match=r"graph.cell_type .*vocabulary \[0, 3\)"):
        dyn(t, v, big)
    for key, match in (("edge_type", "no edge_type"), ("cell_type", "no cell_type"), ("sign", "no sign"),
                       ("x", r"graph.x"), ("stimulus", r"graph.stimulus")):
        broken = _graph(6, 1)
        delattr(broken, key)
        with pytest.raises(ValueError, match=match):
            dyn(t, v, broken)
    broken = _graph(6, 1)
    del broken.syn_weight, broken.syn_count
    with pytest.raises(ValueError, match="syn_weight nor syn_count"):
        dyn(t, v, broken)
    short = _graph(6, 1)
    short.edge_type = short.edge_type[:-1]
    with pytest.raises(ValueError, match=r"edge_type must be \[E\]"):
        dyn(t, v, short)
    # a Batch keeps only its first graph's attributes
    lacking = _graph(5, 2)
    del lacking.edge_type
    with pytest.raises(ValueError, match="every graph of the batch needs it"):
        dyn(t, torch.zeros(1, 11, dtype=F64), Batch.from_data_list([lacking, graph]))
    with pytest.raises(ValueError, match=r"state must be \[B, 6\]"):
        dyn(t, torch.zeros(1, 7, dtype=F64), graph)
    with pytest.raises(ValueError, match=r"stimulus gives a drive of shape \(3, 6\); the state is \(2, 6\)"):
        dyn(t, torch.zeros(2, 6, dtype=F64), graph, torch.zeros(3, 6, dtype=F64))
    with pytest.raises(TypeError, match="PyG Data or Batch"):
        dyn(t, v, torch.zeros(1, 6))


def test_options_that_need_one_graph_say_so():
    graph = _graph(6, 1)
    with pytest.raises(TypeError, match="BoundDynamics"):
        ConnectomeDynamics(graph)
    with pytest.raises(ValueError, match="BoundDynamics"):
        ConnectomeDynamics(K, K * K, weights="per_edge")
    with pytest.raises(ValueError, match="BoundDynamics"):
        ConnectomeDynamics(K, K * K, tau_mode="per_neuron")
    with pytest.raises(ValueError, match="num_cell_types"):
        ConnectomeDynamics(None, K * K)
    bound = BoundDynamics(graph)
    with pytest.raises(TypeError, match="holds its graph"):
        bound(torch.zeros(1), torch.zeros(1, 6), graph)
    with pytest.raises(TypeError, match="not a BoundDynamics"):
        GraphODEClassifier(bound, PooledReadout(2, 2, K, num_frequencies=0, aggr="max"))


def test_a_graph_in_another_precision_than_the_module():
    graph = _graph(8, 5, with_x=False)
    graph.syn_weight, graph.sign = graph.syn_weight.double(), graph.sign.double()
    dyn = ConnectomeDynamics(K, K * K, tau=0.5)  # float32 parameters
    sol = solve(dyn, torch.zeros(1, 8), (0.0, 1.0), args=(graph, torch.ones(1, 8)))
    assert sol.ys.dtype == torch.float32 and torch.isfinite(sol.ys).all()
