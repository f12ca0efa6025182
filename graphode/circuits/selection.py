"""Select neurons of a connectome by original id, index, cell type, mask or predicate.

:func:`select_neurons` returns a boolean mask ``[N]``; several criteria are intersected.
It works on a ``Data`` and on a PyG ``Batch`` (cell type names are then looked up per
graph through ``data.batch``). :func:`neuron_cell_types` and :func:`neuron_table` describe
every neuron (type, id, position) for tables and plots.
"""

from __future__ import annotations

import re

from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch_geometric.data import Data

from ..connectome import ConnectomeFormatError, node_index
from ..connectome._common import _match_names, _show

__all__ = ["select_neurons", "neuron_cell_types", "neuron_table"]


def _is_batch(data) -> bool:
    return getattr(data, "batch", None) is not None and getattr(data, "num_graphs", None) is not None


def neuron_cell_types(data) -> list[str]:
    """The cell type name of every neuron.

    For a ``Batch`` the codes in ``data.cell_type`` are relative to each graph's own
    ``cell_type_names``; they are resolved per graph through ``data.batch``. Without cell
    types every neuron is ``"unknown"``.

    Shapes:
        data: a graph of ``N`` neurons → ``list[str]`` of length ``N``.
    """
    codes = getattr(data, "cell_type", None)
    names = getattr(data, "cell_type_names", None)
    if codes is None:
        return ["unknown"] * int(data.num_nodes)
    codes = codes.tolist()
    if names is None:
        return [str(c) for c in codes]
    if len(names) and isinstance(names[0], (list, tuple)):  # Batch: one name list per graph
        graph = data.batch.tolist()
        return [str(names[g][c]) for g, c in zip(graph, codes)]
    return [str(names[c]) for c in codes]


def _neuron_ids(data) -> list | None:
    """The original id of every neuron (``data.node_id`` or ``data.node_names``), or None."""
    node_id = getattr(data, "node_id", None)
    if node_id is not None:
        return node_id.tolist()
    names = getattr(data, "node_names", None)
    if names is None:
        return None
    if len(names) and isinstance(names[0], (list, tuple)):  # Batch: one list per graph
        return [x for sub in names for x in sub]
    return list(names)


def neuron_table(data) -> pd.DataFrame:
    """One row per neuron: ``neuron`` (index), ``neuron_id``, ``cell_type``, ``graph``
    (for a Batch), and ``x``, ``y`` when ``data.pos`` exists.

    Shapes:
        data: a graph of ``N`` neurons → a DataFrame of ``N`` rows.
    """
    n = int(data.num_nodes)
    table = {"neuron": np.arange(n)}
    ids = _neuron_ids(data)
    table["neuron_id"] = ids if ids is not None else np.arange(n)
    table["cell_type"] = neuron_cell_types(data)
    if _is_batch(data):
        table["graph"] = data.batch.cpu().numpy()
    pos = getattr(data, "pos", None)
    if pos is not None:
        table["x"] = pos[:, 0].cpu().numpy()
        table["y"] = pos[:, 1].cpu().numpy()
    return pd.DataFrame(table)


def _as_list(x) -> list:
    if isinstance(x, (str, bytes, int, np.integer)):
        return [x]
    if isinstance(x, (Tensor, np.ndarray)):
        return x.flatten().tolist()
    return list(x)


def _index_to_mask(index, n: int, what: str = "index") -> Tensor:
    idx = torch.as_tensor(_as_list(index), dtype=torch.long)
    if idx.numel() and (idx.min() < -n or idx.max() >= n):
        bad = idx[(idx < -n) | (idx >= n)].tolist()
        raise ValueError(f"{what}: neuron indices out of range [0, {n}): {_show(bad)}")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[idx % n if idx.numel() else idx] = True
    return mask


def _check_mask(mask, n: int, what: str) -> Tensor:
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"{what} must be a boolean tensor [N]; got dtype {mask.dtype} (use index= for indices)")
    if mask.shape != (n,):
        raise ValueError(f"{what} must have shape [{n}], got {tuple(mask.shape)}")
    return mask.cpu()


def _id_index(data, ids) -> Tensor:
    """Node indices of the original ``ids`` (:func:`~graphode.connectome.node_index`); in
    a Batch, of the ids in every graph."""
    node_id, names = getattr(data, "node_id", None), getattr(data, "node_names", None)
    if node_id is None and names is None:
        raise ValueError("ids: the graph has neither node_id nor node_names; select by index= instead")
    ids = _as_list(ids)
    if not _is_batch(data):
        table = Data(node_id=node_id.cpu()) if node_id is not None else Data(node_names=list(names))
        try:
            return node_index(table, ids)
        except ConnectomeFormatError as exc:
            raise ValueError(f"ids: {exc}") from None
    ptr = data.ptr.tolist()
    found = []
    for g in range(data.num_graphs):
        lo, hi = ptr[g], ptr[g + 1]
        table = Data(node_id=node_id[lo:hi].cpu()) if node_id is not None else Data(node_names=list(names[g]))
        try:
            found.append(node_index(table, ids) + lo)
        except ConnectomeFormatError as exc:
            raise ValueError(f"ids: graph {g} of the batch: {exc} (every graph must hold the ids)") from None
    return torch.cat(found)


def select_neurons(
    data,
    *,
    ids=None,
    index=None,
    cell_types=None,
    mask=None,
    where: Callable[[Any], Any] | None = None,
    columns: dict[str, Any] | None = None,
) -> Tensor:
    """Select neurons of a connectome.

    Args:
        data: a connectome ``Data`` or a PyG ``Batch`` of them.
        ids: original neuron id(s), looked up in ``data.node_id`` (integers) or
            ``data.node_names`` (strings) by :func:`~graphode.connectome.node_index`. In a
            Batch the ids are looked up in every graph (each graph must hold them).
        index: node index(es) ``0..N-1`` (negative counts from the end).
        cell_types: cell type name(s) (``data.cell_type_names``; per graph in a Batch), glob
            patterns (``"T4*"``, ``"T4[a-d]"``), compiled regular expressions (matched
            whole), or integer type codes.
        columns: ``{column: names or patterns}`` over the text node columns a node table
            left (codes ``data.<column>`` with ``data.<column>_names``, e.g.
            ``{"super_class": "optic", "side": "right*"}``): a neuron is selected when its
            value matches one of them, for every column given.
        mask: a boolean tensor ``[N]``.
        where: a predicate over the graph, ``where(data) -> BoolTensor [N]`` (e.g.
            ``lambda d: d.pos[:, 0] > 0``) or an index tensor.

    Criteria given together are intersected (AND); with none, every neuron is selected.

    Shapes:
        data: a graph of ``N`` neurons → BoolTensor ``[N]`` (on the CPU).

    Raises:
        ValueError: unknown ids or cell types (naming them, and listing the known types),
            indices out of range, or a mask/predicate result of the wrong shape.
    """
    n = int(data.num_nodes)
    out = torch.ones(n, dtype=torch.bool)
    if ids is not None:
        out &= _index_to_mask(_id_index(data, ids), n, "ids")
    if index is not None:
        out &= _index_to_mask(index, n, "index")
    if cell_types is not None:
        wanted = [cell_types] if isinstance(cell_types, re.Pattern) else _as_list(cell_types)
        if getattr(data, "cell_type", None) is None:
            raise ValueError("cell_types: the graph has no cell_type attribute")
        codes = data.cell_type.cpu()
        by_name = [w for w in wanted if isinstance(w, str)]
        by_code = [int(w) for w in wanted if not isinstance(w, (str, re.Pattern))]
        sel = torch.zeros(n, dtype=torch.bool)
        by_name += [w for w in wanted if isinstance(w, re.Pattern)]
        if by_name:
            per_neuron = neuron_cell_types(data)
            q = _matching(list(dict.fromkeys(per_neuron)), by_name, "cell_types", "cell type")
            sel |= torch.tensor([t in q for t in per_neuron], dtype=torch.bool)
        if by_code:
            q = torch.as_tensor(by_code, dtype=torch.long)
            bad = q[~torch.isin(q, codes)].tolist()
            if bad:
                raise ValueError(f"cell_types: no neuron has type code(s) {_show(bad)}")
            sel |= torch.isin(codes, q)
        out &= sel
    for column, wanted in (columns or {}).items():
        codes, names = getattr(data, column, None), getattr(data, f"{column}_names", None)
        if not isinstance(codes, Tensor) or not isinstance(names, (list, tuple)) or codes.shape != (n,):
            raise ValueError(f"columns: {column!r} is not a text node column of this graph (codes data.{column} "
                             f"[N] with names data.{column}_names)")
        if names and isinstance(names[0], (list, tuple)):
            raise ValueError(f"columns: {column!r} holds one name list per graph (a Batch): select in each graph")
        wanted = [wanted] if isinstance(wanted, re.Pattern) else _as_list(wanted)
        q = _matching(list(names), wanted, f"columns[{column!r}]", "value")
        out &= torch.tensor([names[c] in q for c in codes.tolist()], dtype=torch.bool)
    if mask is not None:
        out &= _check_mask(mask, n, "mask")
    if where is not None:
        res = torch.as_tensor(where(data))
        if res.dtype == torch.bool:
            out &= _check_mask(res, n, "where(data)")
        else:
            out &= _index_to_mask(res, n, "where(data)")
    return out


def _matching(known: list[str], wanted: list, what: str, noun: str) -> set[str]:
    """The names of ``known`` that equal a wanted name, match a glob pattern or fully match a
    compiled regular expression; a wanted entry matching nothing is an error naming it."""
    for w in wanted:
        if not isinstance(w, (str, re.Pattern)):
            raise ValueError(f"{what}: {w!r} is not a name, a glob pattern or a compiled regular expression")
    found, missing = _match_names(known, wanted)
    if missing:
        missing = [w.pattern if isinstance(w, re.Pattern) else w for w in missing]
        raise ValueError(f"{what}: unknown {noun}(s) {_show(missing)}; known {noun.split()[-1]}s: {_show(known, 80)}")
    return set(found)


def _resolve_neurons(neurons, n: int, what: str) -> Tensor:
    """Mask ``[N]`` or index sequence → LongTensor of node indices (mask order ascending,
    index order as given; duplicates rejected)."""
    if neurons is None:
        raise ValueError(f"{what}: neurons must be given (a mask [N] or indices)")
    if isinstance(neurons, Tensor) and neurons.dtype == torch.bool:
        return torch.nonzero(_check_mask(neurons, n, what)).flatten()
    idx = torch.as_tensor(_as_list(neurons), dtype=torch.long)
    if idx.numel() and (idx.min() < -n or idx.max() >= n):
        raise ValueError(f"{what}: neuron indices out of range [0, {n})")
    idx = idx % n if idx.numel() else idx
    if idx.unique().numel() != idx.numel():
        raise ValueError(f"{what}: duplicate neuron indices")
    return idx


def _count(neurons) -> int | None:
    if neurons is None:
        return None
    if isinstance(neurons, Tensor) and neurons.dtype == torch.bool:
        return int(neurons.sum())
    return len(_as_list(neurons))
