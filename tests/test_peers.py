"""graphode's autodiff gradient against other solvers' gradients on an independent field.

The reference field is written here densely in float64 (``W [N, N]`` from the same
parameters, no graphode layer, no graphode dynamics) and integrated by torchode's own
Dopri5 and by torchdiffeq; graphode integrates its ``BoundDynamics``. The benchmark's peer
rows (``benchmarks/peers.py``) compare the same solvers at GPU scale.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
import torchode as to

from graphode import solve
from graphode.dynamics import BoundDynamics
from graphode.flyvis import fly_visual_system

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("single_thread")]

B = 3
BETA = 20.0  # graphode's per-edge softplus sharpness (graphode.synapses)


@pytest.fixture(scope="module")
def problem():
    data = fly_visual_system(1)
    torch.manual_seed(0)
    # tanh keeps the field smooth, so that every method's gradient converges to the same one
    dyn = BoundDynamics(data, tau=0.2, bias=0.5, activation="tanh", backend="csr").double()
    with torch.no_grad():  # distinct values per type and synapse: a wrong index shows
        dyn.synapses.theta.mul_(1 + 0.5 * torch.rand_like(dyn.synapses.theta))
        dyn.tau_raw.add_(0.3 * torch.randn_like(dyn.tau_raw))
        dyn.bias.add_(0.3 * torch.randn_like(dyn.bias))
    n = int(data.num_nodes)
    drive = torch.rand(B, n, dtype=torch.float64)
    weight = torch.randn(B, n, dtype=torch.float64)  # loss = Σ weight · v(1)
    return data, dyn, drive, weight


def params(dyn):
    return [dyn.synapses.theta, dyn.tau_raw, dyn.bias]


def dense_field(data, dyn, drive, recurrent_sign: float = 1.0):
    """``f(t, v) = (−v + W tanh(v) + b + u) / τ`` with ``W``, ``τ``, ``b`` built densely from
    the module's parameters (``[B, N]`` → ``[B, N]``)."""
    n = int(data.num_nodes)
    src, dst = data.edge_index
    w = data.sign.double() * F.softplus(BETA * dyn.synapses.theta) / BETA
    matrix = torch.zeros(n, n, dtype=torch.float64).index_put((dst, src), w, accumulate=True)
    tau = (dyn.tau_min + F.softplus(dyn.tau_raw))[data.cell_type]
    bias = dyn.bias[data.cell_type]

    def f(t, v):
        return (-v + recurrent_sign * torch.tanh(v) @ matrix.T + bias + drive) / tau

    return f


def gradients(loss, dyn):
    return [g.detach() for g in torch.autograd.grad(loss, params(dyn))]


def graphode_gradient(dyn, drive, weight, tol):
    v0 = torch.zeros_like(drive)
    sol = solve(dyn, v0, (0.0, 1.0), args=(drive,), rtol=tol, atol=tol, gradient="autodiff", max_steps=100_000)
    return (weight * sol.ys[:, -1]).sum(), gradients((weight * sol.ys[:, -1]).sum(), dyn), sol.stats


def torchode_gradient(f, dyn, drive, weight, tol):
    term = to.ODETerm(f)
    solver = to.AutoDiffAdjoint(
        to.Dopri5(term=term), to.IntegralController(atol=tol, rtol=tol, term=term),
        backprop_through_step_size_control=False,  # as graphode: step sizes are constants of the gradient
    )
    t = torch.tensor([0.0, 1.0], dtype=torch.float64).expand(B, 2)
    sol = solver.solve(to.InitialValueProblem(y0=torch.zeros_like(drive), t_eval=t))
    assert bool((sol.status == 0).all())
    loss = (weight * sol.ys[:, -1]).sum()
    return loss, gradients(loss, dyn), sol.stats


def relative(g, r):
    return float((g - r).norm() / r.norm())


def test_autodiff_gradient_equals_torchode_on_a_dense_field(problem):
    data, dyn, drive, weight = problem
    tol = 1e-5  # the same discrete scheme: equal to rounding at any tolerance
    loss, grads, stats = graphode_gradient(dyn, drive, weight, tol)
    ref_loss, ref, ref_stats = torchode_gradient(dense_field(data, dyn, drive), dyn, drive, weight, tol)
    assert stats.n_f_evals == int(ref_stats["n_f_evals"].max())  # the same steps
    assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-10)
    for name, g, r in zip(("theta", "tau_raw", "bias"), grads, ref):
        assert float(r.norm()) > 0, name
        assert relative(g, r) < 1e-6, (name, relative(g, r))
    # The comparison can fail: the field with the recurrent input's sign flipped is far off.
    _, wrong, _ = torchode_gradient(dense_field(data, dyn, drive, recurrent_sign=-1.0), dyn, drive, weight, tol)
    assert min(relative(g, w) for g, w in zip(grads, wrong)) > 1e-2


@pytest.mark.skipif(importlib.util.find_spec("torchdiffeq") is None, reason="torchdiffeq is not installed")
def test_autodiff_gradient_equals_torchdiffeq_to_its_tolerance(problem):
    import torchdiffeq

    data, dyn, drive, weight = problem
    tol = 1e-7  # another step-size control: the gradients agree to about 10 tol (8.6e-7 measured)
    _, grads, _ = graphode_gradient(dyn, drive, weight, tol)
    f = dense_field(data, dyn, drive)
    ys = torchdiffeq.odeint(f, torch.zeros_like(drive), torch.tensor([0.0, 1.0], dtype=torch.float64),
                            method="dopri5", rtol=tol, atol=tol)
    ref = gradients((weight * ys[-1]).sum(), dyn)
    for name, g, r in zip(("theta", "tau_raw", "bias"), grads, ref):
        assert relative(g, r) < 100 * tol, (name, relative(g, r))
