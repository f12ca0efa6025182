"""Response indices against hand-checked cases; the runs that feed them; the plots."""

from __future__ import annotations

import math

import pytest
import torch

from graphode.flyvis import fly_visual_system, hex_columns
from graphode.flyvis.analysis import (
    angular_distance, central_responses, direction_selectivity_index, flash_response_index, flash_responses,
    moving_edge_responses, peak_responses, preferred_direction, receptive_field, type_index,
)
from graphode.flyvis.model import central_cells, published_dynamics
from graphode.flyvis.plots import hex_frames, hex_map, polar_tuning, traces
from graphode.flyvis.stimuli import moving_edge

ANGLES = [0, 90, 180, 270]


def test_direction_selectivity_hand_checked():
    peaks = torch.tensor([
        [1.0, 0.0, 0.0, 0.0],  # one direction only: DSI 1, towards 0°
        [0.0, 1.0, 0.0, 0.0],  # 90°
        [1.0, 1.0, 1.0, 1.0],  # all alike: DSI 0
        [2.0, 1.0, 0.0, 1.0],  # |2 − 0| / 4 = 0.5 towards 0°
        [1.0, 1.0, 0.0, 0.0],  # |1 + i| / 2 = 0.7071 towards 45°
        [0.0, 0.0, 3.0, 1.0],  # |−3 − i| / 4, towards 180° + atan(1/3)
    ])
    dsi = direction_selectivity_index(peaks, ANGLES)
    expected = [1.0, 1.0, 0.0, 0.5, math.sqrt(2) / 2, math.sqrt(10) / 4]
    assert dsi.tolist() == pytest.approx(expected, abs=1e-12)
    pd = preferred_direction(peaks, ANGLES)
    for got, want in zip(pd[[0, 1, 3, 4, 5]].tolist(), [0.0, 90.0, 0.0, 45.0, 180 + math.degrees(math.atan(1 / 3))]):
        assert float(angular_distance(got, want)) < 1e-9
    # the published normalisation: the larger sum of the ON and OFF responses
    on, off = peaks[0], 2 * peaks[0]
    norm = torch.maximum(on.sum(-1), off.sum(-1))
    assert float(direction_selectivity_index(on, ANGLES, normalisation=norm)) == pytest.approx(0.5)
    assert float(angular_distance(350.0, 10.0)) == pytest.approx(20.0)
    assert float(angular_distance(0.0, 180.0)) == pytest.approx(180.0)
    # no response, or opposite directions alike: no preferred direction
    assert preferred_direction(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]]), ANGLES).isnan().all()
    with pytest.raises(ValueError, match=">= 0"):
        direction_selectivity_index(-peaks, ANGLES)
    with pytest.raises(ValueError, match="angles"):
        preferred_direction(peaks, [0, 90])


def test_flash_response_index_and_peaks_hand_checked():
    on = torch.tensor([[0.0, 1.0, 3.0], [-1.0, 0.0, 1.0]])
    off = torch.tensor([[0.0, 0.5, 1.0], [-2.0, -1.0, 0.0]])
    # row 0: joint minimum 0, peaks 3 and 1: (3 − 1)/(3 + 1); row 1: shifted by 2, peaks 3 and 2
    assert flash_response_index(on, off).tolist() == pytest.approx([0.5, 0.2])
    assert flash_response_index(on, off, nonnegative=False)[0].item() == pytest.approx(0.5)
    assert flash_response_index(off, on).tolist() == pytest.approx([-0.5, -0.2])
    r = torch.tensor([[-1.0, 2.0, 0.5], [-3.0, -2.0, -1.0]])
    assert peak_responses(r).tolist() == [2.0, 0.0]
    assert peak_responses(r, baseline=torch.tensor([1.0, -2.0])).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="same shape"):
        flash_response_index(on, off[:, :2])


def test_central_responses_pick_one_cell_of_each_type_at_the_centre():
    data = fly_visual_system(2)
    states = torch.arange(data.num_nodes, dtype=torch.float32).expand(3, 2, -1)
    out = central_responses(states, data)
    assert out.shape == (3, 2, 65)
    index = out[0, 0].long()
    assert bool((data.uv[index] == 0).all())
    assert data.cell_type[index].tolist() == list(range(65))
    assert type_index(data, ["T4a", "R1"]) == [data.cell_type_names.index("T4a"), 0]
    with pytest.raises(ValueError, match="unknown cell types"):
        type_index(data, ["T6"])


def test_runs_on_the_published_model():
    data = fly_visual_system(2)
    dyn = published_dynamics(data)
    names = data.cell_type_names
    on, off = flash_responses(dyn, data, t_pre=0.4, t_stim=0.2)
    assert on.shape == off.shape == (65, 11)  # one step before the onset, then 10 steps
    fri = flash_response_index(on, off)
    # light depolarises the photoreceptors; L1 and L2 receive only inhibitory R1–R6 synapses
    for t in ("R1", "R2", "R3", "R4", "R5", "R6"):
        assert float(fri[names.index(t)]) > 0.05, t
    for t in ("L1", "L2"):
        assert float(fri[names.index(t)]) < 0, t
    r = moving_edge_responses(dyn, data, ANGLES, speed=20.0, t_pre=0.2)
    sweep = moving_edge(2, 0.0, 20.0, 1.0, t_pre=0.0, t_post=0.0).size(0)
    assert r.shape == (2, 4, 65, sweep)
    # a photoreceptor of the centre sees the same step of light whichever way the edge comes
    peaks = peak_responses(r[0, :, names.index("R1")])
    assert float(direction_selectivity_index(peaks, ANGLES)) < 0.05
    # L1's receptive field: a dot hyperpolarises it most at its own column
    rf = receptive_field(dyn, data, "L1", batch_size=8)
    assert rf.shape == (len(hex_columns(2)),)
    centre = [tuple(c) for c in hex_columns(2).tolist()].index((0, 0))
    assert int(rf.argmin()) == centre and float(rf[centre]) < 0
    assert central_cells(data).numel() == 65


def test_plots_are_written(tmp_path):
    extent = 2
    values = torch.linspace(-1, 1, len(hex_columns(extent)))
    hex_map(values, extent, title="map", path=tmp_path / "map.png")
    frames = moving_edge(extent, 90.0, 10.0, 1.0, t_pre=0.0, t_post=0.0)
    hex_frames(frames, extent, [0, 5, 10], path=tmp_path / "frames.png")
    polar_tuning(ANGLES, {"T4a": torch.tensor([0.1, 0.2, 1.0, 0.2])}, marks={"T4a": 180.0},
                 path=tmp_path / "polar.png")
    traces({"R1": torch.rand(20), "L1": torch.rand(20)}, path=tmp_path / "traces.png")
    for name in ("map.png", "frames.png", "polar.png", "traces.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, name
    with pytest.raises(ValueError, match="one per column"):
        hex_map(values[:-1], extent)
