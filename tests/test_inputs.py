"""Stimulus → neuron mappings: the hexagonal retina and random pixels against hand-computed weights."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Data

from graphode.flyvis import fly_visual_system
from graphode.inputs import SparseProjection, hex_retina, random_pixels


def test_hex_retina_geometry_hand_computed():
    # 5 input neurons and 1 other; inputs centred at (0, 0), radius 1, 5x5 image, margin 1:
    # half-width = 5/2 - 0.5 - 1 = 1 pixel per unit, row = 2 - y, col = 2 + x.
    pos = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.5, 0.5], [-0.5, -0.5], [9.0, 9.0]])
    data = Data(pos=pos, input_mask=torch.tensor([True] * 5 + [False]), num_nodes=6)
    dense = hex_retina(data, (5, 5), margin=1.0).dense()
    expected = torch.zeros(6, 25)
    expected[0, 2 * 5 + 2] = 1.0  # centre pixel
    expected[1, 2 * 5 + 3] = 1.0
    expected[2, 2 * 5 + 1] = 1.0
    for r, c in ((1, 2), (1, 3), (2, 2), (2, 3)):  # (row 1.5, col 2.5): four equal weights
        expected[3, r * 5 + c] = 0.25
    for r, c in ((2, 1), (2, 2), (3, 1), (3, 2)):  # (row 2.5, col 1.5)
        expected[4, r * 5 + c] = 0.25
    torch.testing.assert_close(dense, expected)


def test_fly_retina_reads_a_linear_ramp_exactly():
    data = fly_visual_system(3)
    retina = hex_retina(data, (28, 28))
    rows = torch.arange(28.0).view(28, 1).expand(28, 28)
    image = (rows / 27.0).unsqueeze(0)  # intensity = row / 27: bilinear is exact on it
    drive = retina(image)[0]
    inputs = data.input_mask
    assert bool((drive[~inputs] == 0).all())
    # photoreceptors of one column read the same value; higher columns (larger y) are darker
    uv = data.uv[inputs]
    col_id = (uv[:, 0] + 10) * 100 + (uv[:, 1] + 10)
    values = drive[inputs]
    for c in col_id.unique():
        v = values[col_id == c]
        torch.testing.assert_close(v, v[:1].expand_as(v))
    y = data.pos[inputs, 1]
    order = torch.argsort(y)
    assert bool((values[order][1:] <= values[order][:-1] + 1e-6).all())
    assert 0.0 < float(values.min()) < float(values.max()) < 1.0


def test_random_pixels_and_projection_errors():
    data = Data(num_nodes=50)
    proj = random_pixels(data, 16, seed=3)
    dense = proj.dense()
    assert dense.shape == (50, 16)
    assert torch.equal(dense.sum(0), torch.ones(16))  # each pixel drives exactly one neuron
    assert torch.equal(random_pixels(data, 16, seed=3).index, proj.index)
    x = torch.rand(2, 4, 4)
    torch.testing.assert_close(proj(x), x.flatten(1) @ dense.t())
    with pytest.raises(ValueError, match="outside"):
        SparseProjection(torch.tensor([[60], [0]]), torch.ones(1), 50, 16)
    with pytest.raises(ValueError, match="NaN"):
        SparseProjection(torch.tensor([[1], [0]]), torch.tensor([float("nan")]), 50, 16)
    with pytest.raises(ValueError, match="features"):
        proj(torch.rand(2, 15))
