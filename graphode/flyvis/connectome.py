"""The Drosophila visual system connectome (fib25/fib19 cell-type connectome) as a PyG graph.

The description file ``data/fib25-fib19_v2.2.json`` (shipped with graphode, MIT license of
`flyvis`, see ``data/NOTICE.md``) lists 65 cell types, each tiling a hexagonal lattice of
columns with a stride, and 605 (source type, target type) edge types, each a list of column
offsets with a mean synapse count and a sign. The network is built as in the published
model (Lappalainen et al., Nature 2024):

* columns are the points ``(u, v)`` of a hexagonal lattice of radius ``extent`` in axial
  coordinates: ``u ∈ [-extent, extent]``, ``v ∈ [max(-extent, -extent-u), min(extent, extent-u)]``;
* a type with stride ``(su, sv)`` has one cell at every column with ``u % su == 0`` and
  ``v % sv == 0`` (Python's modulo);
* an edge type connects each source cell at ``(u, v)`` to the target-type cell at
  ``(u + du, v + dv)`` if that cell exists, with ``n_syn`` synapses and sign ``alpha``;
* edge types with three or more offsets also get every lattice point strictly inside the
  convex hull of their offsets (matplotlib's point-in-polygon test, as in the published
  model) that is not listed, with one synapse each.

This reproduces the published sizes: 45,669 cells and 1,513,231 connections at extent 15,
13,741 and 434,112 at extent 8.

Neurons are numbered column by column (spatially), then by cell type, so that connections
stay between nearby indices: sparse products run faster on such a numbering.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data

__all__ = ["fly_visual_system", "hex_columns", "hex_to_cartesian", "FLY_DESCRIPTION"]

FLY_DESCRIPTION = "fib25-fib19_v2.2.json"


@lru_cache(maxsize=1)
def _description() -> dict[str, Any]:
    text = resources.files("graphode").joinpath("data", FLY_DESCRIPTION).read_text()
    return json.loads(text)


def hex_columns(extent: int) -> np.ndarray:
    """Axial coordinates of the columns of a hexagonal lattice of radius ``extent``.

    Returns:
        int64 array ``[C, 2]`` of ``(u, v)``, ``C = 3·extent² + 3·extent + 1``, sorted by u then v.
    """
    if extent < 0:
        raise ValueError(f"extent must be >= 0, got {extent}")
    cols = [
        (u, v)
        for u in range(-extent, extent + 1)
        for v in range(max(-extent, -extent - u), min(extent, extent - u) + 1)
    ]
    return np.asarray(cols, dtype=np.int64).reshape(-1, 2)


def hex_to_cartesian(uv: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Cartesian centres of hexagonal columns of unit spacing (pointy-top layout).

    Args:
        uv: ``[..., 2]`` axial coordinates.
    Returns:
        float32 ``[..., 2]`` with ``x = u + v/2`` and ``y = (√3/2)·v``; neighbouring columns
        are at distance 1.
    """
    uv = torch.as_tensor(uv, dtype=torch.float32)
    x = uv[..., 0] + 0.5 * uv[..., 1]
    y = (3.0**0.5 / 2.0) * uv[..., 1]
    return torch.stack([x, y], dim=-1)


def _hull_offsets(offsets: dict[tuple[int, int], float]) -> dict[tuple[int, int], float]:
    """Add every lattice point inside the convex hull of ``offsets`` with one synapse."""
    from matplotlib.path import Path
    from scipy.spatial import ConvexHull, QhullError

    pts = np.asarray(list(offsets.keys()), dtype=np.float64)
    try:
        hull = ConvexHull(pts)
    except QhullError:  # collinear offsets span no area: nothing lies strictly inside
        return offsets
    lo, hi = pts.min(0).astype(int), pts.max(0).astype(int)
    grid = np.stack(
        np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij"), -1
    ).reshape(-1, 2)
    inside = Path(pts[hull.vertices]).contains_points(grid)
    filled = dict(offsets)
    for du, dv in grid[inside]:
        filled.setdefault((int(du), int(dv)), 1.0)
    return filled


def fly_visual_system(extent: int = 15, *, fill_hull: bool = True) -> Data:
    """Build the fly visual system connectome on a hexagonal lattice of radius ``extent``.

    Args:
        extent: lattice radius in columns. 15 is the published network (721 columns,
            45,669 neurons, 1,513,231 connections); 4–8 are CPU-friendly.
        fill_hull: add the convex-hull offsets of the published model (see module docs).

    Returns:
        A ``Data`` following graphode's connectome layout (see :mod:`graphode.connectome`):
        ``edge_index [2, E]`` (row 0 presynaptic, row 1 postsynaptic, sorted by target),
        ``syn_count [E]`` (mean synapse count of the edge's offset), ``sign [E]`` (±1),
        ``syn_weight [E]`` (syn_count / total syn_count into the target),
        ``edge_type [E]`` (index into ``edge_type_names``, "src->tar"),
        ``cell_type [N]`` (index into ``cell_type_names``, the 65 types),
        ``uv [N, 2]`` (axial column coordinates), ``pos [N, 2]`` (Cartesian, unit spacing),
        ``input_mask [N]`` (photoreceptors R1–R8), ``output_mask [N]`` (the 34 output types),
        and ``num_nodes``.
    """
    desc = _description()
    columns = hex_columns(extent)
    type_names = [n["name"] for n in desc["nodes"]]
    type_id = {name: i for i, name in enumerate(type_names)}

    # Which column hosts a cell of each type; then number cells column by column.
    has_cell = np.zeros((len(type_names), len(columns)), dtype=bool)
    for t, node in enumerate(desc["nodes"]):
        kind, arg = node["pattern"]
        if kind == "stride":
            su, sv = arg
        elif kind == "tile":
            su = sv = arg
        elif kind == "single":
            has_cell[t] = (columns[:, 0] == 0) & (columns[:, 1] == 0)
            continue
        else:
            raise ValueError(f"{FLY_DESCRIPTION}: unknown pattern {kind!r} of type {node['name']}")
        has_cell[t] = (columns[:, 0] % su == 0) & (columns[:, 1] % sv == 0)
    col_of_cell, type_of_cell = np.nonzero(has_cell.T)  # column-major: spatial numbering
    num_nodes = len(col_of_cell)
    # index[t, u + extent, v + extent] = neuron id, or -1 where type t has no cell there
    side = 2 * extent + 1
    index = np.full((len(type_names), side, side), -1, dtype=np.int64)
    uv = columns[col_of_cell]
    index[type_of_cell, uv[:, 0] + extent, uv[:, 1] + extent] = np.arange(num_nodes)

    src_all, dst_all, count_all, sign_all, etype_all = [], [], [], [], []
    edge_type_names = []
    for e_id, edge in enumerate(desc["edges"]):
        edge_type_names.append(f"{edge['src']}->{edge['tar']}")
        offsets = {(int(o[0][0]), int(o[0][1])): float(o[1]) for o in edge["offsets"]}
        if fill_hull and len(offsets) >= 3:
            offsets = _hull_offsets(offsets)
        s_t, d_t = type_id[edge["src"]], type_id[edge["tar"]]
        src_cells = np.nonzero(type_of_cell == s_t)[0]
        su, sv = uv[src_cells, 0], uv[src_cells, 1]
        for (du, dv), n_syn in offsets.items():
            tu, tv = su + du + extent, sv + dv + extent
            ok = (tu >= 0) & (tu < side) & (tv >= 0) & (tv < side)
            tgt = np.full(len(src_cells), -1, dtype=np.int64)
            tgt[ok] = index[d_t, tu[ok], tv[ok]]
            keep = tgt >= 0
            src_all.append(src_cells[keep])
            dst_all.append(tgt[keep])
            count_all.append(np.full(int(keep.sum()), n_syn, dtype=np.float32))
            sign_all.append(np.full(int(keep.sum()), float(edge["alpha"]), dtype=np.float32))
            etype_all.append(np.full(int(keep.sum()), e_id, dtype=np.int64))

    src = np.concatenate(src_all)
    dst = np.concatenate(dst_all)
    order = np.lexsort((src, dst))  # by target, then source
    src, dst = src[order], dst[order]
    syn_count = np.concatenate(count_all)[order]
    sign = np.concatenate(sign_all)[order]
    edge_type = np.concatenate(etype_all)[order]
    if len(src) > 1 and np.any((np.diff(dst) == 0) & (np.diff(src) == 0)):
        raise ValueError(f"{FLY_DESCRIPTION}: duplicate connections produced at extent {extent}")

    in_total = np.bincount(dst, weights=syn_count, minlength=num_nodes)
    syn_weight = (syn_count / in_total[dst]).astype(np.float32)

    input_types = {type_id[n] for n in desc["input_units"]}
    output_types = {type_id[n] for n in desc["output_units"]}
    cell_type = torch.from_numpy(type_of_cell.astype(np.int64))
    uv_t = torch.from_numpy(uv)
    return Data(
        edge_index=torch.from_numpy(np.stack([src, dst])),
        syn_count=torch.from_numpy(syn_count),
        sign=torch.from_numpy(sign),
        syn_weight=torch.from_numpy(syn_weight),
        edge_type=torch.from_numpy(edge_type),
        edge_type_names=edge_type_names,
        cell_type=cell_type,
        cell_type_names=type_names,
        uv=uv_t,
        pos=hex_to_cartesian(uv_t),
        input_mask=torch.tensor([int(t) in input_types for t in type_of_cell]),
        output_mask=torch.tensor([int(t) in output_types for t in type_of_cell]),
        num_nodes=num_nodes,
    )
