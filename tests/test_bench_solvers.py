"""The pieces of benchmarks/bench_solvers.py that its numbers rest on: the PI controller
hook, the count of the backward's evaluations and the error measures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from graphode import solve
from graphode.solvers import Adaptive, Dopri5, Euler, FixedStep, Heun, Tsit5

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_solvers.py"
sys.path.insert(0, str(_PATH.parent))  # its sibling module timing.py, as when run as a script
_spec = importlib.util.spec_from_file_location("bench_solvers", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_solvers", bench)  # dataclasses look their module up there
_spec.loader.exec_module(bench)


def _linear_system(n: int = 6, seed: int = 0):
    """``dy/dt = A y`` with a stable, non-normal ``A`` (float64) and two initial states."""
    g = torch.Generator().manual_seed(seed)
    a = -torch.eye(n, dtype=torch.float64) * 2.0 + 0.8 * torch.randn(n, n, generator=g, dtype=torch.float64)
    y0 = torch.randn(2, n, generator=g, dtype=torch.float64)
    return a, y0


@pytest.mark.parametrize("method", [Dopri5, Tsit5])
def test_pid_hook_with_integral_coefficients_is_the_integral_controller(method):
    a, y0 = _linear_system()
    f = lambda t, y: y @ a.T  # noqa: E731
    t_eval = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    integral = solve(f, y0, (0.0, 2.0), t_eval=t_eval, method=method(), controller=Adaptive(rtol=1e-6, atol=1e-6))
    pid = solve(f, y0, (0.0, 2.0), t_eval=t_eval, method=method(),
                controller=bench._PIDAdaptive(rtol=1e-6, atol=1e-6, pcoeff=0.0, icoeff=1.0, dcoeff=0.0))
    assert pid.stats.n_f_evals == integral.stats.n_f_evals
    assert pid.stats.n_steps == integral.stats.n_steps
    torch.testing.assert_close(pid.ys, integral.ys, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tol", [1e-4, 1e-7])
def test_pi_controller_solves_a_linear_system_to_its_tolerance(tol):
    a, y0 = _linear_system(seed=1)
    t_eval = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(a * t).T for t in t_eval], dim=1)  # [B, T, N]
    sol = solve(lambda t, y: y @ a.T, y0, (0.0, 2.0), t_eval=t_eval, method=Dopri5(),
                controller=bench._PIDAdaptive(rtol=tol, atol=tol, **bench.PI))
    err = (sol.ys - exact).abs().max() / exact.abs().max()
    assert err < 20 * tol
    # a PI controller reacts to the last two error ratios, not the last alone: other steps
    integral = solve(lambda t, y: y @ a.T, y0, (0.0, 2.0), t_eval=t_eval, method=Dopri5(),
                     controller=Adaptive(rtol=tol, atol=tol))
    assert sol.stats.n_steps != integral.stats.n_steps


def test_gradient_through_a_pi_controlled_solve_is_the_exact_gradient():
    a, y0 = _linear_system(seed=2)
    a.requires_grad_(True)
    sol = solve(lambda t, y: y @ a.T, y0, (0.0, 1.0), method=Dopri5(),
                controller=bench._PIDAdaptive(rtol=1e-7, atol=1e-7, **bench.PI))
    (grad,) = torch.autograd.grad(sol.ys.sum(), a)
    (reference,) = torch.autograd.grad((y0 @ torch.linalg.matrix_exp(a).T).sum(), a)
    assert ((grad - reference).norm() / reference.norm()) < 1e-5


@pytest.mark.parametrize(("method", "steps", "per_step"), [(Euler, 8, 1), (Heun, 4, 2)])
def test_counting_vjps_counts_one_per_evaluation_the_loss_depends_on(method, steps, per_step):
    a, y0 = _linear_system(seed=3)
    a.requires_grad_(True)
    f = lambda t, y: y @ a.T  # noqa: E731
    with bench.counting_vjps() as count:
        sol = solve(f, y0, (0.0, 1.0), method=method(), controller=FixedStep(1.0 / steps))
        assert count[0] == 0  # nothing runs before backward
        sol.ys.sum().backward()
    assert sol.stats.n_f_evals == steps * per_step
    assert count[0] == steps * per_step
    # the patch is undone: a later solve's backward adds nothing
    sol = solve(f, y0, (0.0, 1.0), method=method(), controller=FixedStep(1.0 / steps))
    sol.ys.sum().backward()
    assert count[0] == steps * per_step


def test_counting_vjps_counts_the_evaluations_backward_runs_with_zero_gradients_too():
    a, y0 = _linear_system(seed=4)
    a.requires_grad_(True)
    with bench.counting_vjps() as count:
        sol = solve(lambda t, y: y @ a.T, y0, (0.0, 1.0), method=Euler(), controller=FixedStep(0.25),
                    t_eval=torch.tensor([0.5, 1.0], dtype=torch.float64))
        # the state at t = 0.5 depends on the first two steps only, but torchode records all
        # states into one buffer: backward runs the last two steps' products as well (on zeros)
        sol.ys[:, 0].sum().backward()
    assert sol.stats.n_f_evals == 4
    assert count[0] == 4


def test_error_measures_against_hand_computed_values():
    ref = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[3.0, 4.5], [1.0, 0.2]], dtype=torch.float32)
    # per sample: 0.5 / 5 = 0.1 and 0.2 / 1 = 0.2; the largest
    assert bench.max_relative_error(x, ref) == pytest.approx(0.2, rel=1e-6)
    # over all entries: sqrt(0.25 + 0.04) / sqrt(26)
    assert bench.relative_error(x.flatten(), ref.flatten()) == pytest.approx((0.29 ** 0.5) / 26 ** 0.5, rel=1e-6)


def test_fewest_picks_the_cheapest_case_that_meets_the_bound():
    rows = [
        dict(label="a", setting="1", total_evals=100, f_evals=50, grad_err=1e-4, agree=1.0),
        dict(label="b", setting="2", total_evals=60, f_evals=30, grad_err=5e-3, agree=1.0),
        dict(label="c", setting="3", total_evals=20, f_evals=10, grad_err=5e-2, agree=0.9),
        dict(label="d", setting="4", error="failed"),
    ]
    assert bench.fewest(rows, lambda r: r["grad_err"] <= 1e-3)["label"] == "a"
    assert bench.fewest(rows, lambda r: r["grad_err"] <= 1e-2)["label"] == "b"
    assert bench.fewest(rows, lambda r: r["grad_err"] <= 1e-6) is None
