"""The built-in fly visual system against numbers derived independently from its description.

The published sizes (Lappalainen et al. 2024) are 45,669 cells / 1,513,231 connections at
extent 15 and 13,741 / 434,112 at extent 8 (1,357,269 connections at extent 15 without the
convex-hull padding). The brute-force counts below re-derive cells and un-padded
connections from the JSON with plain Python loops and dictionaries, sharing no code with
``graphode.flyvis``.
"""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from graphode.flyvis import fly_visual_system, hex_columns, hex_to_cartesian


def _description():
    return json.loads(resources.files("graphode").joinpath("data", "fib25-fib19_v2.2.json").read_text())


def _brute_force(extent: int) -> tuple[int, int, dict[str, int]]:
    desc = _description()
    columns = [
        (u, v)
        for u in range(-extent, extent + 1)
        for v in range(-extent, extent + 1)
        if abs(u) <= extent and abs(v) <= extent and abs(u + v) <= extent  # hexagon in axial coords
    ]
    cells = {}
    for node in desc["nodes"]:
        su, sv = node["pattern"][1]
        cells[node["name"]] = {(u, v) for (u, v) in columns if u % su == 0 and v % sv == 0}
    n_edges = 0
    for edge in desc["edges"]:
        targets = cells[edge["tar"]]
        for (u, v) in cells[edge["src"]]:
            for (du, dv), _ in edge["offsets"]:
                n_edges += (u + du, v + dv) in targets
    return sum(len(c) for c in cells.values()), n_edges, {k: len(c) for k, c in cells.items()}


@pytest.mark.parametrize("extent", [1, 3])
def test_cells_and_unpadded_connections_match_brute_force(extent):
    n_cells, n_edges, per_type = _brute_force(extent)
    data = fly_visual_system(extent, fill_hull=False)
    assert data.num_nodes == n_cells
    assert data.num_edges == n_edges
    counts = torch.bincount(data.cell_type, minlength=len(data.cell_type_names))
    assert {name: int(c) for name, c in zip(data.cell_type_names, counts)} == per_type


def test_published_sizes():
    d8 = fly_visual_system(8)
    assert (d8.num_nodes, d8.num_edges) == (13_741, 434_112)
    d15 = fly_visual_system(15)
    assert (d15.num_nodes, d15.num_edges) == (45_669, 1_513_231)
    assert fly_visual_system(15, fill_hull=False).num_edges == 1_357_269
    assert len(hex_columns(15)) == 721
    d15.validate()


def test_layout_masks_signs_and_positions():
    data = fly_visual_system(2)
    desc = _description()
    names = data.cell_type_names
    assert len(names) == 65 and len(data.edge_type_names) == 605
    in_types = {names[t] for t in data.cell_type[data.input_mask].tolist()}
    out_types = {names[t] for t in data.cell_type[data.output_mask].tolist()}
    assert in_types == set(desc["input_units"])
    assert out_types == set(desc["output_units"])
    # every connection's sign and cell types are those of its edge type in the description
    alpha = {f"{e['src']}->{e['tar']}": e["alpha"] for e in desc["edges"]}
    src, dst = data.edge_index
    for k in torch.randint(data.num_edges, (200,), generator=torch.Generator().manual_seed(0)).tolist():
        et = data.edge_type_names[int(data.edge_type[k])]
        assert data.sign[k] == alpha[et]
        assert et == f"{names[data.cell_type[src[k]]]}->{names[data.cell_type[dst[k]]]}"
    # sorted by target, normalised weights sum to one per target
    key = dst * data.num_nodes + src
    assert bool((key[1:] > key[:-1]).all())
    sums = torch.zeros(data.num_nodes).index_add_(0, dst, data.syn_weight)
    has_input = torch.bincount(dst, minlength=data.num_nodes) > 0
    torch.testing.assert_close(sums[has_input], torch.ones(int(has_input.sum())))
    # neighbouring columns are one unit apart in Cartesian coordinates
    pos = hex_to_cartesian(torch.tensor([[0, 0], [1, 0], [0, 1], [1, -1]]))
    torch.testing.assert_close((pos[1:] - pos[0]).norm(dim=1), torch.ones(3))


def test_negative_extent_is_an_error():
    with pytest.raises(ValueError, match="extent"):
        fly_visual_system(-1)
