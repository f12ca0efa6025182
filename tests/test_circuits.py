"""Circuit experiments (graphode.circuits) against closed-form solutions of tiny circuits.

The workhorse is a linear chain 0 → 1 → 2 → 3 (identity activation, fixed weights
w01, w12, w23, τ = 0.5, b = 0): its perturbed solutions are known in closed form.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch_geometric.data import Batch, Data

from graphode.circuits import (
    CellTypeResponses,
    Clamp,
    Drive,
    Recording,
    Silence,
    active_perturbations,
    lesion_scan,
    neuron_cell_types,
    neuron_table,
    perturb,
    plot_lesions,
    poisson_drive,
    record,
    select_neurons,
    silence,
    simulate,
)
from graphode.dynamics import BoundDynamics, ConnectomeDynamics, Stimulus
from graphode import solve

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("single_thread")]

F64 = torch.float64
W01, W12, W23 = 0.5, 0.75, 0.625  # exact in float32 (the graph's syn_weight dtype)
TAU0 = 0.5
TOL = dict(rtol=1e-10, atol=1e-12)
TS = torch.tensor([0.1, 0.3, 0.7, 1.2, 2.0], dtype=F64)


def _chain(bias: float = 0.0, **kw) -> tuple[Data, ConnectomeDynamics]:
    data = Data(
        edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]),
        sign=torch.ones(3),
        syn_weight=torch.tensor([W01, W12, W23]),
        num_nodes=4,
        cell_type=torch.tensor([0, 0, 1, 1]),
        cell_type_names=["A", "B"],
        node_id=torch.tensor([10, 20, 30, 40]),
        pos=torch.tensor([[-1.0, 0.0], [-0.5, 1.0], [0.5, 0.0], [1.0, -1.0]]),
    )
    opts = dict(activation="identity", weights="fixed", tau=TAU0, tau_mode="fixed", bias=bias, bias_mode="fixed",
                backend="pyg")
    opts.update(kw)
    return data, BoundDynamics(data, **opts).double()


def _linear_closed_form(W: torch.Tensor, c: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """v(t) of ``τ dv/dt = −v + W v + c`` from v(0) = 0, ``[T, N]`` (matrix exponential)."""
    n = W.size(0)
    Z = torch.zeros(n + 1, n + 1, dtype=F64)
    Z[:n, :n] = (W - torch.eye(n, dtype=F64)) / TAU
    Z[:n, n] = c / TAU
    z0 = torch.zeros(n + 1, dtype=F64)
    z0[n] = 1.0
    return torch.stack([(torch.linalg.matrix_exp(Z * float(t)) @ z0)[:n] for t in ts])


def _W(gains=(1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    """W[dst, src] of the chain with presynaptic output gains."""
    W = torch.zeros(4, 4, dtype=F64)
    W[1, 0], W[2, 1], W[3, 2] = W01 * gains[0], W12 * gains[1], W23 * gains[2]
    return W


# τ as the dynamics holds it (its float32 parameterisation rounds 0.5 by ~1e-8)
TAU = float(_chain()[1].tau())
U0 = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64)  # drive only into neuron 0


# ------------------------------------------------------------------------------ silencing
def test_silence_chain_closed_form_and_exact_restore():
    data, dyn = _chain()
    control = simulate(dyn, U0, t_eval=TS, **TOL).ys
    torch.testing.assert_close(control[0], _linear_closed_form(_W(), U0[0], TS), rtol=1e-8, atol=1e-10)

    with silence(dyn, select_neurons(data, ids=20)) as d:
        assert d is dyn and len(active_perturbations(dyn)) == 1
        lesioned = simulate(dyn, U0, t_eval=TS, **TOL).ys
    # downstream of the silenced neuron: exactly zero (b = 0); neuron 1 still integrates
    assert lesioned[0, :, 2:].abs().max() == 0.0
    torch.testing.assert_close(lesioned[0, :, :2], control[0, :, :2], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(lesioned[0], _linear_closed_form(_W((1, 0, 1, 1)), U0[0], TS), rtol=1e-8, atol=1e-10)

    # restored: bit-for-bit the original solution
    assert active_perturbations(dyn) == []
    assert torch.equal(simulate(dyn, U0, t_eval=TS, **TOL).ys, control)


def test_partial_silence_gain_and_plain_solve():
    """gain=0.5 halves the neuron's output; the hook acts in any solve of the dynamics."""
    data, dyn = _chain(bias=0.25)
    with perturb(dyn, Silence(torch.tensor([False, True, False, False]), gain=0.5)):
        sol = solve(dyn, torch.zeros(1, 4, dtype=F64), (0.0, 2.0), args=(U0,), t_eval=TS, **TOL)
    ref = _linear_closed_form(_W((1, 0.5, 1, 1)), U0[0] + 0.25, TS)
    torch.testing.assert_close(sol.ys[0], ref, rtol=1e-8, atol=1e-10)


def test_persistent_silence_handle_and_gradients():
    """Silencing composes with training: zero gradient to the silenced neuron's outgoing
    synapse, the same gradients elsewhere as a graph rebuilt without that synapse."""
    data, dyn = _chain(bias=0.25, weights="per_edge", bias_mode="per_neuron")
    handle = Silence([1]).apply(dyn)
    assert handle.active and isinstance(active_perturbations(dyn)[0], Silence)
    loss = simulate(dyn, U0, t_eval=TS, **TOL).ys.pow(2).sum()
    loss.backward()
    g = dyn.synapses.theta.grad.clone()
    handle.remove()
    handle.remove()  # harmless twice
    assert not handle.active and active_perturbations(dyn) == []
    assert g[1] == 0.0  # 1 -> 2: silenced
    assert g[0].abs() > 1e-6 and g[2].abs() > 1e-6  # 0 -> 1 and 2 -> 3 still learn
    assert dyn.bias.grad.abs().min() > 0

    # reference: the same circuit built without the synapse 1 -> 2
    ref_data = Data(edge_index=torch.tensor([[0, 2], [1, 3]]), sign=torch.ones(2),
                    syn_weight=torch.tensor([W01, W23]), num_nodes=4)
    ref = BoundDynamics(ref_data, activation="identity", weights="per_edge", tau=TAU0, tau_mode="fixed",
                             bias=0.25, bias_mode="per_neuron", backend="pyg").double()
    solve(ref, torch.zeros(1, 4, dtype=F64), (0.0, 2.0), args=(U0,), t_eval=TS, **TOL).ys.pow(2).sum().backward()
    torch.testing.assert_close(g[[0, 2]], ref.synapses.theta.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(dyn.bias.grad, ref.bias.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("gradient", ["checkpoint", "adjoint"])
def test_simulate_binds_perturbations_for_late_backward(gradient):
    """checkpoint/adjoint evaluate the field again during backward(), after simulate has
    returned: the perturbations bound into the solved field must still act there."""
    grads = {}
    for method in ("autodiff", gradient):
        data, dyn = _chain(bias=0.25, weights="per_edge")
        ys = simulate(dyn, U0, t_eval=TS, perturbations=[Silence([1]), Drive([3], 0.1)], gradient=method,
                      checkpoints=3, **TOL).ys
        assert active_perturbations(dyn) == []  # removed already
        ys.pow(2).sum().backward()
        grads[method] = dyn.synapses.theta.grad
    assert grads[gradient][1] == 0.0
    torch.testing.assert_close(grads[gradient], grads["autodiff"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("gradient", ["checkpoint", "adjoint"])
def test_a_solve_keeps_the_perturbations_it_started_with_through_backward(gradient):
    """The solve reads perturbations as data when it starts: leaving the ``perturb`` block
    before ``backward()`` changes nothing, and applying another one then does not leak in."""
    grads = {}
    for late in (False, True):
        data, dyn = _chain(bias=0.25, weights="per_edge")
        with perturb(dyn, Silence([1]), Clamp([2], 0.3)):
            sol = solve(dyn, torch.zeros(1, 4, dtype=F64), (0.0, 2.0), args=(U0,), gradient=gradient, checkpoints=3, **TOL)
            if not late:
                sol.ys.pow(2).sum().backward()
        if late:
            with perturb(dyn, Drive([3], 5.0)):  # not the solve's: must not act in its backward
                sol.ys.pow(2).sum().backward()
        grads[late] = dyn.synapses.theta.grad
    assert grads[True][1] == 0.0  # silenced neuron 1's outgoing synapse
    torch.testing.assert_close(grads[True], grads[False], rtol=0, atol=0)


def test_graph_per_call_dynamics_record_and_perturb_like_bound_ones():
    data, bound = _chain(bias=0.25)
    free = ConnectomeDynamics.from_data(data, activation="identity", weights="fixed", tau=TAU0, tau_mode="fixed",
                                        bias=0.25, bias_mode="fixed", backend="pyg").double()
    for perturbations in ([], [Silence([1]), Drive([3], 0.1)]):
        want = record(bound, data, U0, t_eval=TS, perturbations=perturbations, **TOL).values
        got = record(free, data, U0, t_eval=TS, perturbations=perturbations, **TOL).values
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="graph=data"):
        simulate(free, U0, t_eval=TS)


def test_silence_restores_after_exception():
    data, dyn = _chain()
    with pytest.raises(RuntimeError, match="boom"):
        with silence(dyn, [1, 2]):
            raise RuntimeError("boom")
    assert active_perturbations(dyn) == []
    assert len(dyn.conv._forward_pre_hooks) == 0


# ------------------------------------------------------------------------ clamping, drive
def test_clamp_constant_closed_form():
    data, dyn = _chain()
    c = 0.7
    sol = simulate(dyn, U0, t_eval=TS, perturbations=[Clamp([1], c)], **TOL)
    t = TS
    e = torch.exp(-t / TAU)
    torch.testing.assert_close(sol.ys[0, :, 0], 1 - e, rtol=1e-8, atol=1e-10)  # upstream untouched
    assert torch.all(sol.ys[0, :, 1] == c)
    torch.testing.assert_close(sol.ys[0, :, 2], W12 * c * (1 - e), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(sol.ys[0, :, 3], W23 * W12 * c * (1 - e - t / TAU * e), rtol=1e-8, atol=1e-10)
    assert active_perturbations(dyn) == []


def test_clamp_time_course_closed_form():
    """Clamp neuron 1 to sin(t): τ v2' = −v2 + w sin t has a closed form."""
    data, dyn = _chain()
    sol = simulate(dyn, None, t_eval=TS, perturbations=[Clamp([1], torch.sin)], **TOL)
    t = TS
    y = TAU / (1 + TAU**2) * (torch.sin(t) - TAU * torch.cos(t) + TAU * torch.exp(-t / TAU))
    torch.testing.assert_close(sol.ys[0, :, 1], torch.sin(t), rtol=0, atol=1e-15)
    torch.testing.assert_close(sol.ys[0, :, 2], W12 / TAU * y, rtol=1e-8, atol=1e-10)
    assert sol.ys[0, :, 0].abs().max() == 0.0


def test_clamp_relaxation_state_follows_command():
    data, dyn = _chain()
    with perturb(dyn, Clamp([1], 0.4, tau=0.01)):
        raw = solve(dyn, torch.zeros(1, 4, dtype=F64), (0.0, 1.0), args=(None,), t_eval=[1.0], **TOL).ys
    assert abs(float(raw[0, -1, 1]) - 0.4) < 1e-10
    # neuron 2 saw the exact command from t = 0 on
    torch.testing.assert_close(raw[0, -1, 2], torch.tensor(W12 * 0.4 * (1 - math.exp(-1 / TAU)), dtype=F64))


def test_drive_constant_callable_and_combined():
    data, dyn = _chain()
    # constant current into neuron 2 (no stimulus): v2 = I(1 - e), v3 = w23 I (1 - e - t/τ e)
    sol = simulate(dyn, None, t_eval=TS, perturbations=[Drive([2], 0.3)], **TOL)
    ref = _linear_closed_form(_W(), torch.tensor([0, 0, 0.3, 0], dtype=F64), TS)
    torch.testing.assert_close(sol.ys[0], ref, rtol=1e-8, atol=1e-10)
    # a callable returning [B] per sample gives the same
    sol2 = simulate(dyn, None, t_eval=TS, perturbations=[Drive([2], lambda t: torch.full_like(t, 0.3))], **TOL)
    torch.testing.assert_close(sol2.ys, sol.ys, rtol=1e-12, atol=1e-14)
    # several at once: silence 0, drive 2 and 3 with per-neuron currents, batch of 2 samples
    u = torch.tensor([[1.0, 0, 0, 0], [2.0, 0, 0, 0]], dtype=F64)
    cur = torch.tensor([0.3, -0.1], dtype=F64)
    both = simulate(dyn, u, t_eval=TS, perturbations=[Silence([0]), Drive([2, 3], cur)], **TOL)
    for b in range(2):
        c = u[b].clone()
        c[2:] += cur
        torch.testing.assert_close(both.ys[b], _linear_closed_form(_W((0, 1, 1, 1)), c, TS), rtol=1e-8, atol=1e-10)
    # clamp and drive on the same neuron: the clamp wins
    cl = simulate(dyn, U0, t_eval=TS, perturbations=[Drive([1], 5.0), Clamp([1], 0.2)], **TOL)
    assert torch.all(cl.ys[0, :, 1] == 0.2)
    assert active_perturbations(dyn) == []


def test_poisson_drive_reproducible():
    mask = torch.tensor([True, False, True, False])
    a = poisson_drive(mask, rate=20.0, t_span=(0.0, 2.0), dt=0.05, seed=3)
    b = poisson_drive(mask, rate=20.0, t_span=(0.0, 2.0), dt=0.05, seed=3)
    c = poisson_drive(mask, rate=20.0, t_span=(0.0, 2.0), dt=0.05, seed=4)
    # 40 bins between a zero sample before and after them
    assert isinstance(a.current, Stimulus) and a.current.values.shape == (1, 42, 2)
    assert a.current.values[:, [0, -1]].abs().sum() == 0
    assert torch.equal(a.current.values, b.current.values)
    assert not torch.equal(a.current.values, c.current.values)
    assert float(a.current.values[:, 1:-1].mean()) == pytest.approx(1.0, abs=0.5)  # rate·dt = 1 per bin
    # piecewise constant on the grid, zero outside the span
    pt = a.current
    torch.testing.assert_close(pt(torch.tensor([0.07], dtype=F64)), pt.values[:, 2])
    torch.testing.assert_close(pt(torch.tensor([0.05], dtype=F64)), pt.values[:, 2])  # a bin starts at its time
    assert pt(torch.tensor([2.5])).abs().sum() == 0 and pt(torch.tensor([-0.1])).abs().sum() == 0
    data, dyn = _chain()
    # (pulses are discontinuities: a loose tolerance keeps the adaptive solver quick)
    loose = dict(rtol=1e-5, atol=1e-7)
    ys = [simulate(dyn, None, t_eval=TS[:3], perturbations=[p], **loose).ys for p in (a, b, c)]
    assert torch.equal(ys[0], ys[1]) and not torch.allclose(ys[0], ys[2])
    # one pulse train [1, S, K] is shared by every sample of a batch
    shared = simulate(dyn, None, t_eval=TS[:3], batch_size=2, perturbations=[a], **loose).ys
    torch.testing.assert_close(shared, ys[0].expand(2, -1, -1), rtol=1e-9, atol=1e-12)
    # per-sample independent pulses
    d = poisson_drive([0], rate=10.0, t_span=(0, 1), dt=0.1, seed=0, batch_size=3)
    assert d.current.values.shape == (3, 12, 1)
    assert simulate(dyn, None, t_eval=TS[:2], batch_size=3, perturbations=[d], **loose).ys.shape == (3, 2, 4)


# ------------------------------------------------------------------------------- selection
def test_select_neurons_on_data():
    data, _ = _chain()
    sel = lambda **kw: select_neurons(data, **kw).tolist()  # noqa: E731
    assert sel(ids=[20, 40]) == [False, True, False, True]
    assert sel(index=[0, -1]) == [True, False, False, True]
    assert sel(cell_types="B") == [False, False, True, True]
    assert sel(cell_types=[0]) == [True, True, False, False]
    assert sel(mask=torch.tensor([True, False, True, False])) == [True, False, True, False]
    assert sel(where=lambda d: d.pos[:, 0] > 0) == [False, False, True, True]
    assert sel(cell_types="A", where=lambda d: d.pos[:, 1] > 0.5) == [False, True, False, False]  # AND
    assert sel() == [True] * 4
    with pytest.raises(ValueError, match="not in the graph: 99"):
        select_neurons(data, ids=[10, 99])
    with pytest.raises(ValueError, match=r"unknown cell type\(s\) 'C'.*known types: 'A', 'B'"):
        select_neurons(data, cell_types=["A", "C"])
    with pytest.raises(ValueError, match="out of range"):
        select_neurons(data, index=[4])
    with pytest.raises(ValueError, match="shape"):
        select_neurons(data, mask=torch.ones(3, dtype=torch.bool))
    # string ids
    named = Data(num_nodes=3, node_names=["a", "b", "c"])
    assert select_neurons(named, ids=["c"]).tolist() == [False, False, True]
    with pytest.raises(ValueError, match="'z'"):
        select_neurons(named, ids=["z"])
    assert neuron_table(data).columns.tolist() == ["neuron", "neuron_id", "cell_type", "x", "y"]


def test_select_neurons_on_batch():
    d1, _ = _chain()
    d2 = Data(  # the same types, listed in the other order, so codes differ between graphs
        edge_index=torch.tensor([[0], [1]]), sign=torch.ones(1), syn_weight=torch.ones(1), num_nodes=3,
        cell_type=torch.tensor([1, 0, 0]), cell_type_names=["B", "A"], node_id=torch.tensor([20, 50, 60]),
        pos=torch.tensor([[2.0, 0.0], [-2.0, 0.0], [3.0, 0.0]]),
    )
    batch = Batch.from_data_list([d1, d2])
    assert neuron_cell_types(batch) == ["A", "A", "B", "B", "A", "B", "B"]
    assert select_neurons(batch, cell_types="A").tolist() == [True, True, False, False, True, False, False]
    assert select_neurons(batch, ids=[20]).tolist() == [False, True, False, False, True, False, False]
    assert select_neurons(batch, where=lambda d: (d.batch == 1) & (d.pos[:, 0] > 0)).tolist() == [
        False, False, False, False, True, False, True]
    with pytest.raises(ValueError, match="unknown cell type"):
        select_neurons(batch, cell_types="Z")
    # a dynamics on the batch: silencing graph 0's neuron 1 leaves graph 1 alone
    dyn = BoundDynamics(batch, activation="identity", weights="fixed", tau=TAU0, tau_mode="fixed",
                             bias=0.0, bias_mode="fixed", backend="pyg").double()
    u = torch.zeros(1, 7, dtype=F64)
    u[0, 0] = u[0, 4] = 1.0
    rec = record(dyn, batch, u, t_eval=TS, perturbations=[Silence(select_neurons(batch, index=1))], **TOL)
    assert rec.graph.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert rec.values[0, :, 2:4].abs().max() == 0 and rec.values[0, :, 5].abs().min() > 0
    assert "graph" in rec.to_dataframe().columns


# ------------------------------------------------------------------------------- recording
def test_recording_dataframe_and_cell_type_means():
    data, dyn = _chain()
    u = torch.tensor([[1.0, 0, 0, 0], [0.5, 0, 0, 0]], dtype=F64)
    rec = record(dyn, data, u, cell_types=["A", "B"], neurons=[0, 2, 3], t_eval=TS, **TOL)
    assert isinstance(rec, Recording) and len(rec) == 3
    assert rec.neuron_index.tolist() == [0, 2, 3] and rec.ids == [10, 30, 40] and rec.cell_types == ["A", "B", "B"]
    assert rec.values.shape == (2, 5, 3)
    df = rec.to_dataframe()
    assert df.columns.tolist() == ["sample", "time", "neuron", "neuron_id", "cell_type", "value"]
    assert len(df) == 2 * 5 * 3
    row = df[(df["sample"] == 1) & (df["neuron_id"] == 30)].iloc[2]
    assert row["time"] == pytest.approx(0.7) and row["cell_type"] == "B" and row["neuron"] == 2
    assert row["value"] == float(rec.values[1, 2, 1])
    by = rec.by_cell_type()
    assert isinstance(by, CellTypeResponses) and by.cell_types == ["A", "B"] and by.counts == [1, 2]
    torch.testing.assert_close(by["B"], (rec.values[..., 1] + rec.values[..., 2]) / 2)
    torch.testing.assert_close(by["A"], rec.values[..., 0])
    # hand-check against the closed form: mean of v2 and v3 for sample 0
    ref = _linear_closed_form(_W(), u[0], TS)
    torch.testing.assert_close(by["B"][0], (ref[:, 2] + ref[:, 3]) / 2, rtol=1e-8, atol=1e-10)
    tdf = by.to_dataframe()
    assert tdf.columns.tolist() == ["sample", "time", "cell_type", "n_neurons", "value"] and len(tdf) == 2 * 5 * 2
    grouped = df.groupby(["sample", "time", "cell_type"])["value"].mean().reset_index()
    pd.testing.assert_series_equal(
        grouped.sort_values(["sample", "time", "cell_type"])["value"].reset_index(drop=True),
        tdf.sort_values(["sample", "time", "cell_type"])["value"].reset_index(drop=True),
    )
    assert rec.by_cell_type("max")["B"].shape == (2, 5)
    with pytest.raises(KeyError):
        by["Z"]


# --------------------------------------------------------------------------------- lesions
def _tiny_model():
    from graphode.models import ConnectomeClassifier
    from graphode.connectome.synthetic import random_connectome

    data = random_connectome(24, 90, num_cell_types=4, seed=1)
    torch.manual_seed(0)
    model = ConnectomeClassifier(data, num_classes=3, image_size=(3, 3), input="random", hidden=8,
                                 num_records=2, t_end=0.5, backend="pyg", input_gain=3.0)
    return data, model


def test_lesion_scan_tiny_model(tmp_path):
    data, model = _tiny_model()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 3, generator=g)
    with torch.no_grad():
        before = model(images)
    labels = before.argmax(1)  # the intact model is 100 % "accurate" on these labels

    def accuracy(m):
        return float((m(images).argmax(1) == labels).float().mean())

    names = data.cell_type_names
    df = lesion_scan(model, names, accuracy, data=data)
    assert len(df) == len(names) and df["group"].tolist() == names
    assert df.columns.tolist() == ["group", "n_neurons", "metric", "value", "baseline", "delta", "relative_delta"]
    assert (df["baseline"] == 1.0).all()
    assert df["n_neurons"].tolist() == [int((data.cell_type == i).sum()) for i in range(4)]
    torch.testing.assert_close(df["delta"].to_numpy(), (df["value"] - 1.0).to_numpy())
    with torch.no_grad():
        assert torch.equal(model(images), before)  # restored
    assert active_perturbations(model) == []

    # dict groups and dict metrics (a recorded response as the metric)
    def metrics(m):
        rec = record(m, data, images, cell_types=names[-1])
        return {"accuracy": accuracy(m), "response": float(rec.values.mean())}

    groups = {"first half": torch.arange(24) < 12, "neuron 3": [3]}
    df2 = lesion_scan(model, groups, metrics)
    assert len(df2) == 4 and set(df2["metric"]) == {"accuracy", "response"}
    assert df2["n_neurons"].tolist() == [12, 12, 1, 1]

    # silencing a whole model changes its response; the all-neuron lesion kills recurrence
    with silence(model, torch.ones(24, dtype=torch.bool)), torch.no_grad():
        assert not torch.equal(model(images), before)

    path = plot_lesions(df, tmp_path / "lesions.png")
    assert path.exists() and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="metric="):
        plot_lesions(df2, tmp_path / "x.png")
    assert plot_lesions(df2, tmp_path / "resp.png", metric="response").exists()


def test_lesion_scan_restores_after_error():
    data, dyn = _chain()
    calls = []

    def bad(d):
        calls.append(len(active_perturbations(d)))
        if len(calls) == 2:
            raise RuntimeError("metric failed")
        return 1.0

    with pytest.raises(RuntimeError, match="metric failed"):
        lesion_scan(dyn, ["A", "B"], bad, data=data)
    assert calls == [0, 1] and active_perturbations(dyn) == []
    with pytest.raises(ValueError, match="data="):
        lesion_scan(dyn, ["A"], bad)


def test_the_adjoint_takes_a_piecewise_constant_stimulus_and_refuses_learnable_perturbation_values():
    data, dyn = _chain(bias=0.25, weights="per_edge")
    values = torch.full((1, 3, 4), 0.5, dtype=F64, requires_grad=True)
    pulses = Stimulus(values=values, times=torch.tensor([0.0, 0.5, 1.0], dtype=F64), interpolation="constant")
    grads = {}
    for gradient in ("autodiff", "adjoint"):
        values.grad = None
        sol = solve(dyn, torch.zeros(1, 4, dtype=F64), (0.0, 1.5), args=(pulses,), t_eval=[0.5, 1.0, 1.5],
                    gradient=gradient, **TOL)
        sol.ys.pow(2).sum().backward()
        grads[gradient] = values.grad.clone()
    # (0.14% apart: a backward segment's first evaluation, at a pulse edge, reads the pulse
    # after it; a piecewise-constant input is discontinuous there)
    torch.testing.assert_close(grads["adjoint"], grads["autodiff"], rtol=1e-2, atol=1e-6)
    current = torch.tensor([0.3], dtype=F64, requires_grad=True)
    with perturb(dyn, Drive([3], current)):
        with pytest.raises(ValueError, match="require grad.*autodiff"):
            solve(dyn, torch.zeros(1, 4, dtype=F64), (0.0, 1.0), args=(U0,), gradient="adjoint")
        sol = solve(dyn, torch.zeros(1, 4, dtype=F64), (0.0, 1.0), args=(U0,), gradient="checkpoint", **TOL)
        sol.ys[:, -1, 3].sum().backward()
    assert current.grad is not None and float(current.grad) > 0


def test_select_neurons_by_patterns_and_node_columns():
    import re

    import pandas as pd

    from graphode.connectome import load_connectome

    nodes = pd.DataFrame({"id": [1, 2, 3, 4, 5], "cell_type": ["T4a", "T4b", "T5a", "KCab", "KCg"],
                          "super_class": ["optic", "optic", "optic", "central", "central"],
                          "side": ["left", "right", "right", "left", "right"]})
    g = load_connectome({"pre": [1, 2, 3, 4], "post": [2, 3, 4, 5]}, nodes=nodes, default_sign=1)
    pick = lambda **kw: sorted(g.node_id[select_neurons(g, **kw)].tolist())  # noqa: E731
    assert pick(cell_types="T4*") == [1, 2]
    assert pick(cell_types=["T[45]a"]) == [1, 3]
    assert pick(cell_types=re.compile(r"KC(ab|g)")) == [4, 5]
    assert pick(columns={"super_class": "optic", "side": "r*"}) == [2, 3]
    assert pick(cell_types="KC*", columns={"side": ["left"]}) == [4]
    with pytest.raises(ValueError, match=r"unknown cell type\(s\) 'MBON\*'"):
        select_neurons(g, cell_types="MBON*")
    with pytest.raises(ValueError, match=r"columns\['side'\]: unknown value\(s\) 'up'; known values: 'left', 'right'"):
        select_neurons(g, columns={"side": "up"})
    with pytest.raises(ValueError, match="'sign' is not a text node column"):
        select_neurons(g, columns={"sign": "x"})
