"""Frames indexed by step: frame k at step k, with no off-by-one from the rounding of time.

A fixed-step solver accumulates time step by step (torchode: ``t = t + dt``), so the time of
step k is k·dt only up to rounding. A sampled, piecewise-constant stimulus whose sample
times sit exactly on the step times then reads the previous sample whenever the rounded
time falls just short of k·dt. Frames (``Stimulus(values, dt=...)``) read the nearest step.
"""

from __future__ import annotations

import pytest
import torch

from graphode import Stimulus, solve
from graphode.solvers import Euler, FixedStep

DT = 0.02


def _frames_read(stimulus, steps, dtype):
    """Solve dy/dt = 0 with Euler at DT; record the frame value the field reads at each step."""
    read = []

    def field(t, y):
        read.append(stimulus(t)[0, 0].item())
        return torch.zeros_like(y)

    solve(field, torch.zeros(1, 1, dtype=dtype), (0.0, steps * DT), method=Euler(), controller=FixedStep(DT),
          max_steps=steps + 1)
    return read


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_frames_are_read_at_their_own_step_over_many_steps(dtype):
    steps = 3000
    values = torch.arange(steps, dtype=dtype).view(1, steps, 1)  # frame k holds the value k
    frames = Stimulus(values=values, dt=DT)
    assert _frames_read(frames, steps, dtype) == list(range(steps))


def test_a_sampled_constant_stimulus_reads_the_previous_sample_at_some_steps():
    # the failure frames fix: samples exactly at the step times, float32 time
    steps = 3000
    values = torch.arange(steps, dtype=torch.float32).view(1, steps, 1)
    sampled = Stimulus(values=values, times=torch.arange(steps) * DT, interpolation="constant")
    read = _frames_read(sampled, steps, torch.float32)
    wrong = sum(r != k for k, r in enumerate(read))
    assert wrong > 0 and all(k - r in (0, 1) for k, r in enumerate(read))


def test_frame_index_hand_checked():
    values = torch.arange(5.0).view(1, 5, 1).expand(2, 5, 1)
    s = Stimulus(values=values, dt=0.1, t0=1.0)
    t = torch.tensor([0.0, 1.0, 1.0999999, 1.14, 1.16, 1.3000001, 1.4, 9.0])
    expected = [0, 0, 1, 1, 2, 3, 4, 4]  # nearest step of t0 + k·0.1, clamped to [0, 4]
    got = [int(s.frame_index(x.reshape(1))[0]) for x in t]
    assert got == expected
    torch.testing.assert_close(s(torch.tensor([1.2, 1.3])), torch.tensor([[2.0], [3.0]]))
    assert s.frame_index(torch.tensor(1.2)).tolist() == [2, 2]  # a scalar time serves the whole batch
    again = s.with_tensors((values * 2,))
    assert again.dt == 0.1 and again.t0 == 1.0
    torch.testing.assert_close(again(torch.tensor([1.2, 1.2])), torch.tensor([[4.0], [4.0]]))


def test_frame_errors():
    v = torch.zeros(1, 3, 2)
    with pytest.raises(ValueError, match="neither times= nor interpolation="):
        Stimulus(values=v, dt=0.02, times=torch.arange(3.0))
    with pytest.raises(ValueError, match="neither times= nor interpolation="):
        Stimulus(values=v, dt=0.02, interpolation="constant")
    with pytest.raises(ValueError, match="dt must be"):
        Stimulus(values=v, dt=0.0)
    with pytest.raises(ValueError, match=r"\[B, T, F\]"):
        Stimulus(values=torch.zeros(1, 2), dt=0.02)
    with pytest.raises(ValueError, match="frame_index needs frames"):
        Stimulus(values=torch.zeros(1, 2)).frame_index(torch.zeros(1))
    with pytest.raises(ValueError, match="dt= for frames"):
        Stimulus(values=v)
