"""solve(): accuracy against closed forms, gradients against finite differences, errors, stats,
and the memory behaviour of the adjoint."""

from __future__ import annotations

import math
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data

from graphode import SolverError, solve
from graphode.dynamics import BoundDynamics, Stimulus
from graphode.gradients import GRADIENTS

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("single_thread")]

F64 = torch.float64
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------
# a linear system with a closed-form solution
# ---------------------------------------------------------------------------------------
def _linear_problem(n=4, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = 0.6 * torch.randn(n, n, dtype=F64, generator=g) - 1.0 * torch.eye(n, dtype=F64)
    c = torch.randn(b, n, dtype=F64, generator=g)
    y0 = torch.randn(b, n, dtype=F64, generator=g)
    return A, c, y0


def _linear_field(t, y, A, c):
    return y @ A.t() + c


def _linear_exact(A, c, y0, ts):
    """``y(t)`` of ``dy/dt = A y + c`` through the exponential of ``[[A, c], [0, 0]]`` (differentiable)."""
    n = A.size(0)
    out = []
    for yb, cb in zip(y0, c):
        top = torch.cat([A, cb.unsqueeze(1)], dim=1)
        Z = torch.cat([top, torch.zeros(1, n + 1, dtype=F64)])
        z0 = torch.cat([yb, torch.ones(1, dtype=F64)])
        out.append(torch.stack([(torch.linalg.matrix_exp(Z * t) @ z0)[:n] for t in ts]))
    return torch.stack(out)


TS = [0.25, 0.7, 1.0]


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_adaptive_methods_match_closed_form(method):
    A, c, y0 = _linear_problem()
    sol = solve(_linear_field, y0, (0.0, 1.0), args=(A, c), t_eval=TS, method=method, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sol.ys, _linear_exact(A, c, y0, TS), rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(sol.ts, torch.tensor(TS, dtype=F64))
    assert sol.stats.n_f_evals > 0


@pytest.mark.parametrize(("method", "order", "dt0", "bound"), [("euler", 1, 2e-3, 2e-2), ("heun", 2, 1e-2, 2e-3)])
def test_fixed_step_methods_converge_at_their_order(method, order, dt0, bound):
    A, c, y0 = _linear_problem()
    exact = _linear_exact(A, c, y0, TS)
    errs = []
    for h in (dt0, dt0 / 2):
        sol = solve(_linear_field, y0, (0.0, 1.0), args=(A, c), t_eval=TS, method=method, dt0=h)
        errs.append(float((sol.ys - exact).abs().max()))
        assert sol.stats.n_steps == pytest.approx(1.0 / h, abs=1)
    assert errs[0] < bound
    ratio = errs[0] / errs[1]  # halving the step divides the error by 2**order
    assert 2**order * 0.85 < ratio < 2**order * 1.15, errs


def test_fixed_step_without_dt0_raises():
    A, c, y0 = _linear_problem()
    for method in ("euler", "heun"):
        with pytest.raises(ValueError, match="dt0"):
            solve(_linear_field, y0, args=(A, c), method=method)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_gradients_of_linear_system_match_matrix_exponential(gradient):
    """d/dA, d/dc, d/dy0 of a loss on several t_eval points against autograd through
    ``matrix_exp`` of the closed form."""
    A, c, y0 = _linear_problem(seed=1)
    ts = [0.0, 0.3, 0.55, 1.2]  # includes t0 and points off the checkpoint grid
    R = torch.randn(2, len(ts), 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    leaves = [x.clone().requires_grad_(True) for x in (A, c, y0)]
    ref = torch.autograd.grad((_linear_exact(*leaves, ts) * R).sum(), leaves)
    leaves = [x.clone().requires_grad_(True) for x in (A, c, y0)]
    sol = solve(_linear_field, leaves[2], (0.0, 1.2), args=(leaves[0], leaves[1]), t_eval=ts,
                rtol=1e-10, atol=1e-10, gradient=gradient, checkpoints=3)
    torch.testing.assert_close(sol.ys[:, 0], leaves[2].detach(), rtol=0, atol=0)  # t_eval[0] = t0
    got = torch.autograd.grad((sol.ys * R).sum(), leaves)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------
# gradients of a small connectome model against central finite differences
# ---------------------------------------------------------------------------------------
def _model(activation, seed=0):
    n, e = 6, 14
    g = torch.Generator().manual_seed(seed)
    keys = torch.randperm(n * n, generator=g)[:e].sort().values
    d = Data(
        edge_index=torch.stack([keys % n, keys // n]),
        sign=torch.where(torch.rand(e, generator=g) < 0.3, -1.0, 1.0),
        syn_weight=0.1 + torch.rand(e, generator=g),
        num_nodes=n,
    )
    dyn = BoundDynamics(d, activation=activation, backend="csr", gain=1.5,
                             tau_mode="per_neuron", bias_mode="per_neuron").double()
    with torch.no_grad():
        dyn.tau_raw.add_(0.3 * torch.randn(n, dtype=F64, generator=g))
        dyn.bias.add_(0.5 * torch.randn(n, dtype=F64, generator=g))
    y0 = torch.randn(2, n, dtype=F64, generator=g)
    u = torch.randn(2, n, dtype=F64, generator=g)
    R = torch.randn(2, 3, n, dtype=F64, generator=g)
    return dyn, y0, u, R


def _grads_and_fd(activation, solve_kw, eps):
    """Gradients of ``L = Σ_t Σ R·v(t)`` over t_eval = (0.5, 1, 2) by every method, and
    directional central differences ``(L(x + εd) - L(x - εd)) / 2ε`` along a random
    direction ``d`` for each of synapse θ, τ, bias, the drive ``u`` (in args) and ``y0``."""
    dyn, y0, u, R = _model(activation)
    tensors = [dyn.synapses.theta, dyn.tau_raw, dyn.bias, u, y0]

    def loss(gradient="autodiff"):
        sol = solve(dyn, y0, (0.0, 2.0), args=(u,), t_eval=[0.5, 1.0, 2.0], gradient=gradient, **solve_kw)
        return (sol.ys * R).sum()

    grads = {}
    for gradient in GRADIENTS:
        for x in tensors:
            x.grad = None
        y0.requires_grad_(True)
        u.requires_grad_(True)
        loss(gradient).backward()
        grads[gradient] = [x.grad.clone() for x in tensors]
    y0.requires_grad_(False)
    u.requires_grad_(False)
    gen = torch.Generator().manual_seed(3)
    dirs, fds = [], []
    with torch.no_grad():
        for x in tensors:
            ds, fs = [], []
            for _ in range(1):
                d = torch.randn(x.shape, dtype=F64, generator=gen)
                x.add_(eps * d)
                lp = loss()
                x.sub_(2 * eps * d)
                lm = loss()
                x.add_(eps * d)
                ds.append(d)
                fs.append(float(lp - lm) / (2 * eps))
            dirs.append(ds)
            fds.append(fs)
    return grads, dirs, fds


def _check_fd(grads, dirs, fds, rtol):
    for k, (g, ds, fs) in enumerate(zip(grads, dirs, fds)):
        for d, fd in zip(ds, fs):
            gd = float((g * d).sum())
            scale = max(abs(fd), 0.1 * float(g.norm() * d.norm()))  # guard near-orthogonal d
            assert abs(gd - fd) <= rtol * scale, f"tensor {k}: grad·d = {gd:.10g}, finite difference {fd:.10g}"


def _check_agree(a, b, rtol):
    for k, (x, y) in enumerate(zip(a, b)):
        err = float((x - y).norm() / y.norm())
        assert err <= rtol, f"tensor {k}: relative difference {err:.2e} > {rtol}"


def test_gradients_tanh_dopri5_match_finite_differences():
    # dopri5 at rtol = atol = 1e-9, ε = 1e-5. Tolerances: autodiff and checkpoint 1e-5
    # relative to finite differences, adjoint 5e-5 (its error is of the order of the
    # solver tolerance); methods agree with each other to 1e-6. (Measured: ~3e-7 and ~2e-8.)
    grads, dirs, fds = _grads_and_fd("tanh", dict(rtol=1e-9, atol=1e-9), eps=1e-5)
    _check_fd(grads["autodiff"], dirs, fds, 1e-5)
    _check_fd(grads["checkpoint"], dirs, fds, 1e-5)
    _check_fd(grads["adjoint"], dirs, fds, 5e-5)
    _check_agree(grads["checkpoint"], grads["autodiff"], 1e-6)
    _check_agree(grads["adjoint"], grads["autodiff"], 1e-6)


def test_gradients_relu_fixed_step_match_finite_differences():
    # ReLU makes adaptive solutions rough in the parameters (step acceptance changes at
    # the kinks), so the exact check uses fixed heun steps (dt0 = 0.01), whose discrete
    # solution autodiff and checkpoint differentiate exactly: 1e-6 relative to ε = 1e-6
    # finite differences, and checkpoint equals autodiff (same steps) to 1e-12. The
    # continuous adjoint integrated with heun steps is O(dt²) off: 1e-4.
    grads, dirs, fds = _grads_and_fd("relu", dict(method="heun", dt0=0.01), eps=1e-6)
    _check_fd(grads["autodiff"], dirs, fds, 1e-6)
    _check_fd(grads["checkpoint"], dirs, fds, 1e-6)
    _check_fd(grads["adjoint"], dirs, fds, 1e-4)
    _check_agree(grads["checkpoint"], grads["autodiff"], 1e-12)
    _check_agree(grads["adjoint"], grads["autodiff"], 1e-4)


def test_gradients_relu_dopri5_match_finite_differences():
    # Adaptive dopri5 at 1e-9 with ReLU: finite differences need a large ε (1e-3) to
    # average over the step-control noise; every method within 2e-3 of them and 1e-3 of
    # each other (measured: <3e-4).
    grads, dirs, fds = _grads_and_fd("relu", dict(rtol=1e-9, atol=1e-9), eps=1e-3)
    for gradient in GRADIENTS:
        _check_fd(grads[gradient], dirs, fds, 2e-3)
    _check_agree(grads["checkpoint"], grads["autodiff"], 1e-3)
    _check_agree(grads["adjoint"], grads["autodiff"], 1e-3)


def test_adjoint_gradient_to_sampled_stimulus_and_projection():
    dyn, y0, _, R = _model("tanh")
    torch.manual_seed(0)
    dyn.input_projection = torch.nn.Linear(3, 6, bias=False).double()
    times = torch.tensor([0.0, 0.8, 2.0], dtype=F64)
    vals = torch.randn(2, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(5))
    out = {}
    for gradient in GRADIENTS:
        dyn.zero_grad()
        v = vals.clone().requires_grad_(True)
        stim = Stimulus(values=v, times=times)
        sol = solve(dyn, y0, (0.0, 2.0), args=(stim,), t_eval=[0.5, 1.0, 2.0], rtol=1e-8, atol=1e-8, gradient=gradient)
        (sol.ys * R).sum().backward()
        out[gradient] = [v.grad, dyn.input_projection.weight.grad.clone(), dyn.synapses.theta.grad.clone()]
    assert out["autodiff"][0].abs().min() > 0
    # the interpolated drive has kinks at the sample times, which adaptive steps resolve
    # only to about the tolerance: methods agree to 1e-4 (measured: < 1e-5 over 8 seeds)
    _check_agree(out["checkpoint"], out["autodiff"], 1e-4)
    _check_agree(out["adjoint"], out["autodiff"], 1e-4)


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
def test_max_steps_exhausted_raises_solver_error():
    A, c, y0 = _linear_problem()
    sol = solve(_linear_field, y0, args=(A, c), rtol=1e-6, atol=1e-6)
    needed = sol.stats.n_steps
    assert needed > 2
    solve(_linear_field, y0, args=(A, c), rtol=1e-6, atol=1e-6, max_steps=needed)  # exactly enough
    with pytest.raises(SolverError, match="status 3") as info:
        solve(_linear_field, y0, args=(A, c), rtol=1e-6, atol=1e-6, max_steps=needed - 1)
    assert "max_steps" in str(info.value)
    assert 3 in info.value.status.tolist()


def test_diverging_system_raises_solver_error():
    # all-excitatory, gain 1000, identity activation: v grows like exp(1000·t)
    n = 5
    ei = torch.tensor([[i, (i + 1) % n] for i in range(n)] + [[i, i] for i in range(n)]).t()
    order = torch.argsort(ei[1] * n + ei[0])
    d = Data(edge_index=ei[:, order], sign=torch.ones(2 * n), syn_weight=torch.full((2 * n,), 0.5), num_nodes=n)
    dyn = BoundDynamics(d, activation="identity", gain=1000.0, backend="csr").double()
    y0 = torch.ones(2, n, dtype=F64)
    with pytest.raises(SolverError, match="status 4") as info:
        solve(dyn, y0, (0.0, 10.0))
    assert "diverged" in str(info.value)
    # a field returning inf, with an adaptive and with a fixed-step method
    bad = lambda t, y: y * float("inf")  # noqa: E731
    with pytest.raises(SolverError, match="status 4"):
        solve(bad, y0, (0.0, 1.0))
    with pytest.raises(SolverError, match="status 4"):
        solve(bad, y0, (0.0, 1.0), method="euler", dt0=0.1)
    # only one sample going bad is reported by index
    half = lambda t, y: torch.where(torch.arange(2).reshape(2, 1) == 1, y * float("nan"), -y)  # noqa: E731
    with pytest.raises(SolverError, match=r"1 of 2 samples \(first: \[1\]\)"):
        solve(half, y0, (0.0, 1.0), method="heun", dt0=0.1)


def test_bad_arguments_raise_value_error():
    A, c, y0 = _linear_problem()
    f, kw = _linear_field, dict(args=(A, c))
    nan_y0 = y0.clone()
    nan_y0[0, 1] = float("nan")
    cases = [
        (dict(y0=nan_y0), "NaN"),
        (dict(y0=torch.full_like(y0, float("inf"))), "NaN or inf"),
        (dict(y0=y0[0]), r"\[B, N\]"),
        (dict(t_span=(1.0, 1.0)), "t_span"),
        (dict(t_span=(1.0, 0.0)), "t_span"),
        (dict(t_eval=[0.5, 0.2]), "t_eval"),
        (dict(t_eval=[0.5, 0.5]), "t_eval"),
        (dict(t_eval=[-0.1, 0.5]), "t_eval"),
        (dict(t_eval=[0.5, 1.5]), "t_eval"),
        (dict(t_eval=[]), "t_eval"),
        (dict(method="rk4"), "unknown method"),
        (dict(gradient="backsolve"), "unknown gradient"),
        (dict(gradient="adjoint", checkpoints=0), "checkpoints"),
    ]
    for over, match in cases:
        call = dict(y0=y0, t_span=(0.0, 1.0)) | over
        with pytest.raises(ValueError, match=match):
            solve(f, call.pop("y0"), **call, **kw)


# ---------------------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gradient", GRADIENTS)
def test_stats_are_filled(gradient):
    dyn, y0, u, R = _model("tanh")
    sol = solve(dyn, y0, (0.0, 2.0), args=(u,), t_eval=[0.3, 2.0], gradient=gradient, checkpoints=4)
    st = sol.stats
    assert st.method == "dopri5" and st.gradient == gradient
    assert st.n_f_evals > 0 and st.n_steps >= st.n_accepted > 0 and st.n_rejected >= 0
    assert st.n_f_evals >= 6 * st.n_accepted  # dopri5: six new evaluations per step
    assert st.backward_f_evals == 0
    assert st.segments == (1 if gradient == "autodiff" else 5)  # 4 segments + the cut at 0.3
    (sol.ys * R[:, :2]).sum().backward()
    if gradient == "autodiff":
        assert st.backward_f_evals == 0
    else:
        assert st.backward_f_evals > 0
    if gradient == "checkpoint":  # the re-solve repeats the forward steps
        assert st.backward_f_evals <= st.n_f_evals


def test_solution_without_grad_and_float32():
    A, c, y0 = _linear_problem()
    with torch.no_grad():
        for gradient in GRADIENTS:
            sol = solve(_linear_field, y0.float(), (0.0, 1.0), args=(A.float(), c.float()), gradient=gradient,
                        rtol=1e-6, atol=1e-6)
            assert sol.ys.dtype == torch.float32 and sol.ys.shape == (2, 1, 4)
            torch.testing.assert_close(sol.y_final, _linear_exact(A, c, y0, [1.0])[:, 0].float(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------
# memory: the adjoint's peak does not grow with the number of steps
# ---------------------------------------------------------------------------------------
_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import torch
    warnings.filterwarnings("ignore")
    from graphode.dynamics import BoundDynamics
    from graphode import solve
    from graphode.connectome.synthetic import random_connectome

    torch.set_num_threads(1)

    def status(field):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024

    N, E, B = 5000, 50_000, 8
    dyn = BoundDynamics(random_connectome(N, E, seed=0), activation="relu", backend="csr", tau=1.0)
    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(B, N, generator=g)
    phase = 6.28 * torch.rand(N, generator=g)
    drive = lambda t: torch.sin(3.0 * t.reshape(-1, 1) + phase)  # keeps the steps short all along

    def train_step(gradient, T):
        sol = solve(dyn, y0, (0.0, T), args=(drive,), rtol=1e-3, atol=1e-3, gradient=gradient)
        sol.ys.square().mean().backward()
        dyn.zero_grad(set_to_none=True)
        return sol.stats

    out = {}
    for gradient in ("autodiff", "adjoint"):
        train_step(gradient, 0.2)  # warm up
        for T in (2.0, 20.0):
            with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
                fh.write("5")
            base = status("VmRSS:")
            st = train_step(gradient, T)
            out[f"{gradient}/{T:g}"] = {"peak": status("VmHWM:") - base, "steps": st.n_steps}
    print(json.dumps(out))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_adjoint_memory_is_flat_in_the_number_of_steps():
    """Peak RSS above the pre-step level (VmHWM reset through /proc/self/clear_refs) of one
    training step, in a fresh process with glibc's mmap threshold fixed at 64 KiB so that
    freed tensors go back to the OS and RSS follows live memory."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    ad1, ad10, aj1, aj10 = (res[k] for k in ("autodiff/2", "autodiff/20", "adjoint/2", "adjoint/20"))
    assert ad10["steps"] >= 4 * ad1["steps"], res  # the longer solve takes many more steps
    assert aj10["steps"] == ad10["steps"], res
    assert ad10["peak"] > 3 * ad1["peak"], res
    assert aj10["peak"] < 1.5 * aj1["peak"], res
    assert aj10["peak"] < ad10["peak"] / 3, res


def test_checkpoint_gradient_with_the_auto_backend_choosing_inside_the_checkpoint():
    """backend="auto" times the backends (forward and backward) on its first call, which
    here happens inside a checkpointed segment; the trial runs must not be recorded by the
    checkpoint, or its recomputation in backward saves fewer tensors and fails."""
    g = torch.Generator().manual_seed(0)
    n, e = 10, 30
    data = Data(edge_index=torch.randint(n, (2, e), generator=g), num_nodes=n,
                sign=torch.where(torch.rand(e, generator=g) < 0.7, 1.0, -1.0), syn_weight=torch.rand(e, generator=g) / 3)
    y0 = torch.randn(2, n, dtype=F64, generator=g)
    grads = {}
    for gradient in ("checkpoint", "autodiff"):
        dyn = BoundDynamics(data, activation="tanh", backend="auto", tau=0.5).double()
        assert not dyn.conv.backend.choices  # nothing measured yet
        solve(dyn, y0, (0.0, 1.0), gradient=gradient, checkpoints=2, method="heun", dt0=0.05).ys.sum().backward()
        grads[gradient] = dyn.synapses.theta.grad
    torch.testing.assert_close(grads["checkpoint"], grads["autodiff"], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------
# graphode's Runge–Kutta steps against torchode's, and the node-major state layout
# ---------------------------------------------------------------------------------------
def _solve_and_grads(method, torchode_steps, gradient="autodiff", **kw):
    import torchode

    from graphode.solvers import Method, resolve_method

    if torchode_steps:  # the reference: torchode's own steps, passed as a method object
        class TorchodeMethod(Method):
            name, adaptive = method, method != "heun"
            _step_class = getattr(torchode, {"dopri5": "Dopri5", "tsit5": "Tsit5", "heun": "Heun"}[method])

        chosen = TorchodeMethod()
    else:
        chosen = resolve_method(method)
    dyn, y0, u, R = _model("tanh", seed=3)
    u = u.clone().requires_grad_(True)
    y0 = y0.clone().requires_grad_(True)
    sol = solve(dyn, y0, (0.0, 2.0), args=(u,), t_eval=[0.5, 1.0, 2.0], method=chosen, gradient=gradient, **kw)
    loss = (R * sol.ys).sum()
    inputs = [y0, u, *dyn.parameters()]
    grads = torch.autograd.grad(loss, inputs)
    return sol, grads


@pytest.mark.parametrize(("method", "kw"), [
    ("dopri5", dict(rtol=1e-6, atol=1e-8)), ("tsit5", dict(rtol=1e-6, atol=1e-8)), ("heun", dict(dt0=0.05)),
])
@pytest.mark.parametrize("gradient", ["autodiff", "checkpoint"])
def test_separate_stage_steps_equal_torchodes(method, kw, gradient):
    ref, ref_grads = _solve_and_grads(method, True, gradient, **kw)
    got, got_grads = _solve_and_grads(method, False, gradient, **kw)
    # the same steps, taken and rejected alike, and the same results up to summation order
    assert (got.stats.n_f_evals, got.stats.n_steps, got.stats.n_accepted) == (ref.stats.n_f_evals, ref.stats.n_steps, ref.stats.n_accepted)
    assert got.stats.n_steps > 5
    if method != "heun" and gradient == "autodiff":
        assert got.stats.n_rejected > 0  # rejected steps are covered (the shorter segments reject none)
    torch.testing.assert_close(got.ys, ref.ys, rtol=1e-12, atol=1e-12)
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_combine_skips_zero_weights_and_matches_the_sum():
    from graphode.runge_kutta import combine

    g = torch.Generator().manual_seed(0)
    ks = [torch.randn(3, 5, dtype=F64, generator=g) for _ in range(4)]
    y0 = torch.randn(3, 5, dtype=F64, generator=g)
    dt = torch.rand(3, 1, dtype=F64, generator=g)
    w = (0.5, 0.0, -2.0, 1.25)
    expected = y0 + dt * sum(wj * k for wj, k in zip(w, ks))
    torch.testing.assert_close(combine(y0, dt, w, ks), expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(combine(None, dt, w, ks), expected - y0, rtol=1e-14, atol=1e-14)
    nan = torch.full_like(ks[1], float("nan"))  # a zero weight never touches its stage
    assert torch.isfinite(combine(y0, dt, w, [ks[0], nan, ks[2], ks[3]])).all()
    assert combine(y0, dt, (0.0, 0.0), ks[:2]) is y0
    assert torch.equal(combine(None, dt, (0.0,), ks[:1]), torch.zeros_like(ks[0]))


def test_the_field_sees_node_major_states_and_gradients():
    from graphode._layout import node_major, node_major_grad

    dyn, y0, u, R = _model("tanh", seed=1)
    seen = []  # the message passing reads v.t() [N, B]: contiguous when v is node-major
    dyn.conv.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    sol = solve(dyn, y0.contiguous(), (0.0, 1.0), args=(u,), t_eval=[0.5, 1.0])
    assert len(seen) == sol.stats.n_f_evals and all(seen)
    # the layout changes memory only, never values
    x = torch.randn(4, 7, dtype=F64)
    nm = node_major(x)
    assert nm.t().is_contiguous() and torch.equal(nm, x) and node_major(nm) is nm
    leaf = x.clone().requires_grad_(True)
    out = node_major_grad(leaf * 2)
    (grad,) = torch.autograd.grad(out, leaf, grad_outputs=torch.ones(4, 7, dtype=F64) * 3)
    torch.testing.assert_close(grad, torch.full((4, 7), 6.0, dtype=F64))
    captured = []
    h = leaf * 1.0
    h.register_hook(lambda g: captured.append(g.t().is_contiguous()))
    torch.autograd.grad(node_major_grad(h).sum() + 0 * leaf.sum(), leaf)
    assert captured == [True]


def test_backward_keeps_one_layout_through_the_steps():
    """Gradients leave torchode's [B, T, N] output row-major; unless converted where they
    enter the steps, every accumulation into a node-major gradient runs strided (measured
    on an H100: 300 slow in-place adds per training step)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    dyn, y0, u, R = _model("tanh", seed=2)
    b, n = y0.shape
    mixed = []

    class LayoutSpy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            states = [a for a in args if isinstance(a, torch.Tensor) and tuple(a.shape) == (b, n)]
            if len({s.stride() for s in states}) > 1:
                mixed.append(str(func))
            return func(*args, **(kwargs or {}))

    sol = solve(dyn, y0, (0.0, 2.0), args=(u,), t_eval=[1.0, 2.0])
    loss = (R[:, :2] * sol.ys).sum()
    with LayoutSpy():
        loss.backward()
    assert sol.stats.n_steps > 3
    assert mixed == []  # (104 such ops before the interpolant converted its gradients)


# ---------------------------------------------------------------------------------------
# long solves: the adjoint's segments follow the dynamics' time scale
# ---------------------------------------------------------------------------------------
def _long_solve_gradient(gradient, t_over_tau, tol, **solve_kw):
    from graphode.connectome.synthetic import random_connectome

    dyn = BoundDynamics(random_connectome(40, 240, num_cell_types=3, seed=4), activation="relu",
                        weights="per_edge_type", tau=0.2, bias=0.5, backend="csr").double()
    g = torch.Generator().manual_seed(8)
    u = torch.rand(3, 40, dtype=F64, generator=g)
    readout = torch.randn(3, 40, dtype=F64, generator=g)
    sol = solve(dyn, torch.zeros(3, 40, dtype=F64), (0.0, 0.2 * t_over_tau), args=(u,), rtol=tol, atol=tol,
                gradient=gradient, max_steps=100_000, **solve_kw)
    (sol.ys[:, -1] * readout).sum().backward()
    return dyn, torch.cat([p.grad.flatten() for p in dyn.parameters()]), sol.stats


@pytest.mark.parametrize("t_over_tau", [5, 100])
def test_adjoint_gradient_stays_right_over_long_solves(t_over_tau):
    from graphode.gradients import Adjoint

    _, reference, _ = _long_solve_gradient("checkpoint", t_over_tau, 1e-10)
    _, adjoint, stats = _long_solve_gradient(Adjoint(), t_over_tau, 1e-6)
    _, checkpoint, _ = _long_solve_gradient("checkpoint", t_over_tau, 1e-6)
    error = float((adjoint - reference).norm() / reference.norm())
    error_checkpoint = float((checkpoint - reference).norm() / reference.norm())
    assert error < max(10 * error_checkpoint, 1e-5), (error, error_checkpoint)
    assert stats.segments >= t_over_tau / 2  # at most 2 τ per segment
    if t_over_tau == 100:  # a fixed count of 8 segments (12.5 τ each) is far off: the test can fail
        _, fixed, _ = _long_solve_gradient(Adjoint(segments=8, max_segment=None), t_over_tau, 1e-6)
        assert float((fixed - reference).norm() / reference.norm()) > 100 * error


def test_adjoint_gradient_over_a_long_solve_matches_finite_differences():
    from graphode.gradients import Adjoint

    dyn, grad, _ = _long_solve_gradient(Adjoint(), 100, 1e-8)
    theta = dyn.synapses.theta
    i = int(torch.argmax(theta.grad.abs()))
    h = 1e-5

    def loss(delta):
        with torch.no_grad():
            theta[i] += delta
            g = torch.Generator().manual_seed(8)
            u = torch.rand(3, 40, dtype=F64, generator=g)
            readout = torch.randn(3, 40, dtype=F64, generator=g)
            ys = solve(dyn, torch.zeros(3, 40, dtype=F64), (0.0, 20.0), args=(u,), rtol=1e-10, atol=1e-10).ys
            theta[i] -= delta
        return float((ys[:, -1] * readout).sum())

    fd = (loss(h) - loss(-h)) / (2 * h)
    assert math.isclose(float(theta.grad[i]), fd, rel_tol=1e-4), (float(theta.grad[i]), fd)


def test_checkpoint_segments_continue_with_the_step_size_they_ended_with():
    """Each segment starts with the previous one's step size instead of selecting one
    afresh: about as many steps as one uninterrupted solve, and gradients still equal
    autodiff's (the recomputation takes the forward's steps)."""
    _, auto, auto_stats = _long_solve_gradient("autodiff", 25, 1e-6)
    _, ckpt, ckpt_stats = _long_solve_gradient("checkpoint", 25, 1e-6, checkpoints=8)
    assert ckpt_stats.n_f_evals < 1.4 * auto_stats.n_f_evals, (ckpt_stats, auto_stats)
    assert ckpt_stats.backward_f_evals <= ckpt_stats.n_f_evals


def test_bad_solver_options_name_the_option_instead_of_failing_later():
    """NaN times, an infinite span, non-positive tolerances or steps and empty states used to
    end in "the state diverged" or "raise max_steps"; each is now refused up front."""
    from graphode.solvers import Adaptive, FixedStep

    f = lambda t, y: -y  # noqa: E731
    y0 = torch.ones(2, 3, dtype=F64)
    cases = [
        (dict(t_eval=[0.5, float("nan")]), "t_eval must be finite"),
        (dict(t_span=(0.0, float("inf"))), "t_span must be two finite"),
        (dict(rtol=0.0, atol=0.0), "rtol must be a finite number > 0"),
        (dict(atol=-1e-3), "atol must be a finite number > 0"),
        (dict(dt0=0.0), "dt0 must be a finite number > 0"),
        (dict(method="heun", dt0=-0.1), "dt0 must be a finite number > 0"),
        (dict(controller=Adaptive(), rtol=1e-3), "inside controller="),
        (dict(method="euler", controller=Adaptive()), "no error estimate"),
        (dict(max_steps=0), "max_steps"),
    ]
    for over, match in cases:
        with pytest.raises(ValueError, match=match):
            solve(f, y0, **{"t_span": (0.0, 1.0), **over})
    with pytest.raises(ValueError, match="empty"):
        solve(f, torch.ones(0, 3), (0.0, 1.0))
    with pytest.raises(ValueError, match="dt must be"):
        FixedStep(float("nan"))
    with pytest.raises(TypeError, match="controller must be"):
        solve(f, y0, (0.0, 1.0), controller="adaptive")
