"""The published eye's orientation and the lattice stimuli, against hand-checked cases and
closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from graphode.flyvis import fly_visual_system, hex_columns
from graphode.flyvis.stimuli import (
    LED, box_eye, dot, flashes, grating, hex_distance, moving_bar, moving_edge, visual_coordinates,
)
from graphode.inputs import hex_retina

DT = 0.02


def _column(extent, u, v):
    return [tuple(c) for c in hex_columns(extent).tolist()].index((u, v))


# -- the eye -------------------------------------------------------------------------------------
def test_published_retina_orientation_hand_checked():
    # extent 2 on a 9x9 image, no margin: the published eye puts column (u, v) at
    # (row, col) = (4 + 2u + v, 4 + 2v): rows follow u + v/2, columns follow v.
    data = fly_visual_system(2)
    retina = hex_retina(data, (9, 9), margin=0.0, orientation="published")
    uv = data.uv[data.input_mask]
    image = torch.zeros(1, 9, 9)
    image[0, :, 8] = 1.0  # the rightmost pixel column
    drive = retina(image)[0][data.input_mask]
    torch.testing.assert_close(drive, (uv[:, 1] == 2).float())  # exactly the columns with v = 2
    image = torch.zeros(1, 9, 9)
    image[0, 4, :] = 1.0  # the middle pixel row: 2u + v = 0
    drive = retina(image)[0][data.input_mask]
    expected = ((2 * uv[:, 0] + uv[:, 1]) == 0).float()
    torch.testing.assert_close(drive, expected)
    lit = {tuple(c) for c in uv[drive > 0].tolist()}
    assert lit == {(0, 0), (1, -2), (-1, 2)}
    # the default ("lattice") orientation reads the rightmost column elsewhere: it is rotated
    lattice = hex_retina(data, (9, 9), margin=0.0)(image.transpose(1, 2))[0][data.input_mask]
    assert not torch.equal(lattice > 0.5, (uv[:, 1] == 2))
    with pytest.raises(ValueError, match="orientation"):
        hex_retina(data, (9, 9), orientation="rotated")


def test_box_eye_hand_checked():
    extent, d = 15, 13
    size = 2 * extent * d + 1  # 391: the smallest image that spans the lattice
    uv = torch.from_numpy(hex_columns(extent))
    image = torch.zeros(size, size)
    image[:, size // 2 + 2 * d] = 1.0  # one bright pixel column, two column spacings right of the centre
    out = box_eye(image, extent, d)
    # every column with v = 2 averages 13 bright pixels out of 13 x 13; no other box reaches it
    torch.testing.assert_close(out, torch.where(uv[:, 1] == 2, 1.0 / d, 0.0))
    image = torch.zeros(2, 1, size, size)
    image[1, 0, size // 2, :] = 1.0  # one bright pixel row through the centre
    out = box_eye(image, extent, d)
    assert out.shape == (2, 1, len(uv)) and float(out[0].abs().max()) == 0.0
    # rows d·(u + v/2) truncated towards 0: u + v/2 in {-1/2, 0, 1/2} lands within 6 pixels
    half = uv[:, 0] + 0.5 * uv[:, 1]
    # at |v| = 15 the box reaches past the image border (zero padding): 7 of its 13 pixels remain
    inside = torch.where(uv[:, 1].abs() == extent, 7.0 / d, 1.0)
    torch.testing.assert_close(out[1, 0], torch.where(half.abs() <= 0.5, inside / d, 0.0))
    with pytest.raises(ValueError, match="at least 391"):
        box_eye(torch.zeros(390, 400), extent, d)


# -- stimuli -------------------------------------------------------------------------------------
def test_visual_coordinates_axes():
    xy = visual_coordinates(1)
    at = {tuple(c): tuple(p) for c, p in zip(hex_columns(1).tolist(), xy.tolist())}
    assert at[(0, 0)] == (0.0, 0.0)
    assert at[(0, 1)] == (1.0, -0.5)  # v points right (and half a row down)
    assert at[(1, 0)] == (0.0, -1.0)  # u points down
    assert at[(-1, 0)] == (0.0, 1.0)


@pytest.mark.parametrize("radius", [-1, 0, 2])
def test_flashes(radius):
    extent = 4
    f = flashes(extent, 1.0, radius=radius, t_pre=0.5, t_stim=0.3)
    c = len(hex_columns(extent))
    assert f.shape == (25 + 15 + 25, c)
    assert bool((f[:25] == 0.5).all()) and bool((f[40:] == 0.5).all())
    lit = (f[25:40] == 1.0).all(0)
    assert bool(((f[25:40] == 1.0) | (f[25:40] == 0.5)).all())
    n = c if radius == -1 else 3 * radius * (radius + 1) + 1  # columns of a hexagonal disc
    assert int(lit.sum()) == n
    if radius >= 0:
        assert bool((hex_distance(extent)[lit] <= radius).all())
    with pytest.raises(ValueError, match="intensity"):
        flashes(extent, 1.5)


def test_moving_edge_closed_form():
    extent, speed = 3, 10.0  # 0.2 columns per step
    f = moving_edge(extent, 0.0, speed, 1.0, start=-4.0, stop=4.0, t_pre=0.1, t_post=0.2)
    steps = round(8.0 / (speed * DT))  # 40 sweep steps
    assert f.shape == (5 + steps + 10, len(hex_columns(extent)))
    # at angle 0 the front moves right along +v: column (u, v) is lit from the first sweep step k
    # with -4 + 0.2 k >= v, i.e. k = ceil(5 (v + 4)); the last frame is held after the sweep
    for (u, v), series in zip(hex_columns(extent).tolist(), f.T):
        k = math.ceil(5 * (v + 4) - 1e-9)
        expected = torch.full((5 + steps + 10,), 0.5)
        expected[5 + k:] = 1.0
        torch.testing.assert_close(series, expected, msg=f"column {(u, v)}")
    # upwards (90°): lower columns (larger u + v/2) are passed first
    up = moving_edge(extent, 90.0, speed, 0.0, t_pre=0.0)
    first = lambda col: int(torch.nonzero(up[:, _column(extent, *col)] == 0.0)[0])  # noqa: E731
    assert first((1, 0)) < first((0, 0)) < first((-1, 0))
    assert first((0, 1)) == first((1, -1))  # equal heights, u + v/2 = 1/2
    # 180° is the mirror of 0°: the column (0, -2) is reached when (0, 2) is at 0°
    left = moving_edge(extent, 180.0, speed, 1.0, start=-4.0, stop=4.0, t_pre=0.1, t_post=0.2)
    torch.testing.assert_close(left[:, _column(extent, 0, -2)], f[:, _column(extent, 0, 2)])


def test_moving_bar_and_default_sweep():
    extent = 2
    f = moving_bar(extent, 90.0, 5.0, 1.0, width=0.5, t_pre=0.0, t_post=0.0, start=-3, stop=3)
    # 0.1 columns per step, 0.5 wide: each column is lit for exactly 5 steps
    counts = (f == 1.0).sum(0)
    assert bool((counts == 5).all()), counts
    assert f.shape[0] == 60
    # the published sweep: -10 to +11 LEDs (2.25° of 5.8°), 21 LEDs
    g = moving_edge(extent, 0.0, 13.0, 1.0, t_pre=0.0, t_post=0.0)
    assert g.shape[0] == round(21 * LED / (13.0 * DT))
    with pytest.raises(ValueError, match="speed"):
        moving_bar(extent, 0.0, 0.0, 1.0)


def test_grating_periods():
    extent = 3
    g = grating(extent, 30.0, period=4.0, speed=10.0, shape="sine", duration=1.0, contrast=0.8)
    # temporal frequency speed/period = 2.5 Hz: 20 steps of 20 ms per cycle
    torch.testing.assert_close(g[20:], g[:-20], rtol=0, atol=1e-6)
    centre = _column(extent, 0, 0)
    assert float(g[0, centre]) == pytest.approx(0.5)
    # a column's mean over a cycle is the mean, its extremes mean ± contrast/2 · |sin| <= 0.4
    torch.testing.assert_close(g[:20].mean(0), torch.full((g.size(1),), 0.5), rtol=0, atol=1e-6)
    assert float(g.max()) <= 0.9 + 1e-6 and float(g.min()) >= 0.1 - 1e-6
    sq = grating(extent, 0.0, period=2.0, speed=0.0, duration=0.1)
    xy = visual_coordinates(extent)
    expected = torch.where(torch.sin(math.pi * xy[:, 0]) >= 0, 1.0, 0.0)  # standing, along x = v
    torch.testing.assert_close(sq[0], expected)
    torch.testing.assert_close(sq[-1], sq[0])
    with pytest.raises(ValueError, match="contrast"):
        grating(extent, 0.0, 2.0, 1.0, mean=0.8, contrast=1.0)


def test_dot():
    f = dot(2, (1, -1), 0.0, duration=0.06, t_pre=0.1, t_post=0.04)
    assert f.shape == (5 + 3 + 2, 19)
    changed = f != 0.5
    assert int(changed.sum()) == 3 and bool(changed[5:8, _column(2, 1, -1)].all())
    with pytest.raises(ValueError, match="outside"):
        dot(2, (3, 0))
