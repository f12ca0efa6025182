"""The connectome layout (the contract the rest of :mod:`graphode` relies on) and its check.

``N`` neurons (nodes), ``E`` connections (edges)::

    edge_index      LongTensor  [2, E]  row 0 = presynaptic (source), row 1 =
                                        postsynaptic (target): PyG's source->target
                                        convention.  Sorted by (target, source)
                                        lexicographically, no duplicate pairs.
    syn_count       FloatTensor [E]     synapse count (or |weight|), finite, >= 0.
    sign            FloatTensor [E]     -1. (inhibitory) or +1. (excitatory).
    syn_weight      FloatTensor [E]     syn_count after ``normalize`` (equal to
                                        syn_count when ``normalize=None``); always set.
    edge_type       LongTensor  [E]     only when the node table gives cell types:
                                        code of the (source type, target type) pair
    edge_type_names list[str]           ... names like ``"L1->Mi1"``, sorted by pair.
    num_nodes       int                 set explicitly.
    cell_type       LongTensor  [N]     codes into ``cell_type_names`` (sorted
    cell_type_names list[str]           unique names; no type -> ``"unknown"``; all
                                        ``"unknown"`` without a node table).
    node_id         LongTensor  [N]     original integer ids (int64), or, when ids
    node_names      list[str]           are strings, their names instead.
    gap_index       LongTensor  [2, G]  electrical synapses (gap junctions), optional:
    gap_weight      FloatTensor [G]     both directions of every pair, weights > 0 equal
    gap_type        LongTensor  [G]     for both; codes of the (unordered) cell-type pair
    gap_type_names  list[str]           ("AIY<->AWC"), with a node table's cell types.
    input_mask      BoolTensor  [N]     from ``input_types=`` / ``output_types=``;
    output_mask     BoolTensor  [N]     all False otherwise.
    original_index  LongTensor  [N]     optional: after ``ReorderNeurons``, the index
                                        each neuron had before the renumbering (>= 0,
                                        unique; in a PyG ``Batch`` offset per graph,
                                        as PyG offsets every key holding "index").
    <column>        Float/Long/Bool     every other node-table column [N]: floats as
                    Tensor [N]          FloatTensor (missing values NaN), integers as
                                        LongTensor (exact), booleans as BoolTensor,
    <column>_names  list[str]           text as codes (LongTensor) plus their sorted
                                        names (a missing value is ``"unknown"``).  A
                                        column whose name clashes with a reserved key or
                                        a ``Data`` attribute (``x``, ``pos``, ``size``,
                                        ...) is stored as ``node_<column>``.

Nodes are relabelled ``0..N-1`` in sorted order of the original ids (numeric order
for integer ids, Python string order for string ids); :func:`node_index` maps
original ids to node indices.  Integer ids are kept exactly (64-bit, e.g. FlyWire
root ids); float ids are accepted only when integral and below 2**53.  If pre or
post ids are strings, all ids are treated as strings.

Batching: ``torch_geometric.data.Batch.from_data_list`` offsets ``edge_index`` and
concatenates the edge/node tensors; the per-graph name lists become lists of lists,
and ``cell_type`` / ``edge_type`` codes stay relative to their own graph's names.

Bad input raises :class:`ConnectomeFormatError` (see :func:`~graphode.connectome.load_connectome`).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from ._common import ConnectomeFormatError, _show
from ._ids import _id_query, _lookup

__all__ = ["validate_connectome", "node_index", "check_gap_junctions"]


# Per-connection and per-neuron attributes whose length the layout fixes (optional ones too).
_EDGE_KEYS = ("syn_count", "sign", "syn_weight", "edge_type", "edge_weight", "edge_attr")
_NODE_KEYS = ("cell_type", "node_id", "node_names", "input_mask", "output_mask", "x", "pos",
              "original_index")

_EDGES_REMOVED = ("connections were removed from edge_index without it (RemoveSelfLoops, "
                  "torch_geometric.utils.subgraph, ...); use graphode.connectome.transforms."
                  "RemoveSelfConnections, Threshold or Subgraph, which drop every per-connection "
                  "attribute with its connection")
_EDGES_ADDED = ("connections were added to edge_index without it (AddSelfLoops, ...); the layout "
                "holds measured connections only (the leak -v of the dynamics already acts on "
                "each neuron itself): load added connections with their values through "
                "load_connectome instead")
_NODES_CHANGED = ("the neurons were changed without it (Data.subgraph, RemoveIsolatedNodes, ... "
                  "missed this attribute); use graphode.connectome.transforms.Subgraph or "
                  "RemoveIsolatedNeurons, which carry every per-neuron attribute")


def _check_lengths(data: Data, n: int, e: int) -> None:
    """Raise naming the first layout attribute whose length is not E (per connection) or N
    (per neuron): the trace a transform leaves when it changes the graph without it."""
    for keys, size, what, why in ((_EDGE_KEYS, e, "E", "connections"), (_NODE_KEYS, n, "N", "neurons")):
        for key in keys:
            value = data[key] if key in data else None
            if isinstance(value, Tensor) and value.dim() >= 1:
                length = value.size(0)
            elif isinstance(value, (list, tuple)) and not isinstance(data, Batch):
                length = len(value)  # a Batch holds one list per graph
            else:
                continue
            if length != size:
                hint = (_NODES_CHANGED if what == "N" else
                        _EDGES_REMOVED if length > size else _EDGES_ADDED)
                raise ConnectomeFormatError(
                    f"{key!r} has {length} entries for {what} = {size} {why} (shape [{what}={size}] "
                    f"expected): {hint}")


def _check_tensor(data: Data, key: str, dtype: torch.dtype, size: int, what: str,
                  required: bool = False) -> Tensor | None:
    if key not in data:
        if required:
            raise ConnectomeFormatError(f"graph has no {key!r} attribute "
                                        f"(expected {dtype} [{what}={size}])")
        return None
    t = data[key]
    if not isinstance(t, Tensor) or t.dtype != dtype or tuple(t.shape) != (size,):
        got = (f"{t.dtype} {list(t.shape)}" if isinstance(t, Tensor)
               else type(t).__name__)
        raise ConnectomeFormatError(f"{key!r} must be {dtype} of shape [{what}={size}], "
                                    f"got {got}")
    return t


def _check_codes(data: Data, key: str, names_key: str) -> None:
    codes = data[key] if key in data else None
    if codes is None or isinstance(data, Batch):
        return  # a Batch holds one name list per graph; codes are per graph
    names = data[names_key] if names_key in data else None
    if not isinstance(names, (list, tuple)) or not all(isinstance(s, str) for s in names):
        raise ConnectomeFormatError(f"{key!r} needs {names_key!r}: a list of str")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= len(names)):
        bad = (codes < 0) | (codes >= len(names))
        raise ConnectomeFormatError(
            f"{key!r} codes must lie in [0, {len(names)}) ({names_key} has {len(names)} names), got "
            f"{_show(codes[bad].unique().tolist())}: a transform that adds per-connection values "
            f"(ToUndirected, coalesce) adds codes too, and Data.subgraph cuts a name list whose "
            f"length happens to equal N or E; use graphode.connectome.transforms.Subgraph, which "
            f"keeps or re-codes {names_key}")


def _check_sign(sign: Tensor) -> None:
    if bool(((sign == 1) | (sign == -1)).all()):
        return
    bad = (sign != 1) & (sign != -1)
    values = sign[bad].unique()
    shown = f"{_show(values.tolist())} ({int(bad.sum())} connections)"
    if bool((values == values.round()).all()):
        raise ConnectomeFormatError(
            f"sign values must be +1. or -1., got summed signs {shown}: ToUndirected (or "
            "coalesce / RemoveDuplicatedEdges with reduce='add') merges reverse or repeated "
            "connections and adds their signs and counts. Connectomes are directed: keep the two "
            "directions as separate connections")
    raise ConnectomeFormatError(f"sign values must be +1. or -1., got {shown}")


def _check_order(ei: Tensor, n: int) -> None:
    key = ei[1] * n + ei[0]
    if bool((key[1:] > key[:-1]).all()):
        return
    step = key[1:] <= key[:-1]
    i = int(torch.nonzero(step)[0])
    before, after = f"{int(ei[0, i])} -> {int(ei[1, i])}", f"{int(ei[0, i + 1])} -> {int(ei[1, i + 1])}"
    if before == after:
        raise ConnectomeFormatError(
            f"edge_index holds the connection {before} twice (positions {i} and {i + 1}): "
            "the layout has each (source, target) pair once, without duplicate pairs; merge "
            "repeated rows when loading (load_connectome(..., duplicates='sum'))")
    raise ConnectomeFormatError(
        f"edge_index must be sorted by (target, source): connection {after} at position {i + 1} "
        f"comes after {before}. A transform reordered it: RemoveDuplicatedEdges, ToUndirected "
        "and coalesce sort by source and move only the attributes they are given (edge_attr, "
        "edge_weight), which leaves syn_count, sign, ... in the old order. If every "
        "per-connection attribute moved with edge_index, graphode.connectome.transforms."
        "SortEdges restores the layout order")


def validate_connectome(data: Data) -> None:
    """Raise :class:`ConnectomeFormatError` (a ValueError) unless ``data`` follows the
    layout of this module's docstring.

    Checks, in this order (so that the first error names the damage a transform did, not
    its consequences): explicit ``num_nodes`` > 0; ``edge_index`` LongTensor [2, E] in
    range; the length of every per-connection attribute (``syn_count``, ``sign``,
    ``syn_weight``, ``edge_type``, ``edge_weight``, ``edge_attr``: E) and per-neuron
    attribute (``cell_type``, ``node_id``, ``node_names``, ``input_mask``,
    ``output_mask``, ``x``, ``pos``, ``original_index``: N) present; ``syn_count`` (finite, >= 0), ``sign``
    (+-1) and ``syn_weight`` (finite) FloatTensors [E]; when present, ``edge_type``
    LongTensor [E], ``cell_type`` / ``node_id`` LongTensor [N], ``input_mask`` /
    ``output_mask`` BoolTensor [N], ``original_index`` LongTensor [N] of distinct indices
    >= 0, codes within their name lists, gap junctions
    (:func:`check_gap_junctions`); last, ``edge_index`` sorted by (target, source) without
    duplicates.  Messages name the PyG transform that
    likely did the damage and the graphode transform to use instead
    (:mod:`graphode.connectome.transforms`).  Works on a ``Batch`` of such graphs.

    Shapes:
        data: a graph with ``N`` neurons and ``E`` connections (or a ``Batch`` of them).
    """
    if not isinstance(data, Data):
        raise ConnectomeFormatError(f"expected a torch_geometric Data, got "
                                    f"{type(data).__name__}")
    n = data._store.get("num_nodes")  # the inferred num_nodes would hide a missing one
    if n is None and isinstance(data, Batch):
        n = data.num_nodes
    if not isinstance(n, int) or n <= 0:
        raise ConnectomeFormatError(f"num_nodes must be set explicitly to an int > 0, "
                                    f"got {n!r}")
    ei = data.edge_index if "edge_index" in data else None
    if not isinstance(ei, Tensor) or ei.dtype != torch.long or ei.dim() != 2 \
            or ei.size(0) != 2:
        got = f"{ei.dtype} {list(ei.shape)}" if isinstance(ei, Tensor) else repr(ei)
        raise ConnectomeFormatError(f"edge_index must be a LongTensor [2, E], got {got}")
    try:
        data.validate(raise_on_error=True)
    except ValueError as err:
        raise ConnectomeFormatError(str(err)) from err
    e = ei.size(1)
    _check_lengths(data, n, e)
    syn_count = _check_tensor(data, "syn_count", torch.float32, e, "E", True)
    if not bool(torch.isfinite(syn_count).all()) or bool((syn_count < 0).any()):
        raise ConnectomeFormatError("syn_count must be finite and >= 0")
    _check_sign(_check_tensor(data, "sign", torch.float32, e, "E", True))
    syn_weight = _check_tensor(data, "syn_weight", torch.float32, e, "E")
    if syn_weight is None:
        raise ConnectomeFormatError("graph has no 'syn_weight' attribute; set "
                                    "data.syn_weight = data.syn_count.clone()")
    if not bool(torch.isfinite(syn_weight).all()):
        raise ConnectomeFormatError("syn_weight must be finite")
    _check_tensor(data, "edge_type", torch.long, e, "E")
    _check_codes(data, "edge_type", "edge_type_names")
    _check_tensor(data, "cell_type", torch.long, n, "N")
    _check_codes(data, "cell_type", "cell_type_names")
    _check_tensor(data, "node_id", torch.long, n, "N")
    original = _check_tensor(data, "original_index", torch.long, n, "N")
    if original is not None and original.numel() and (
            bool((original < 0).any()) or torch.unique(original).numel() != original.numel()):
        raise ConnectomeFormatError("original_index must hold distinct indices >= 0 (the old index of each "
                                    "neuron, as ReorderNeurons writes it)")
    for key in ("input_mask", "output_mask"):
        _check_tensor(data, key, torch.bool, n, "N")
    try:
        check_gap_junctions(data)
    except ValueError as err:
        raise ConnectomeFormatError(str(err)) from err
    if e:
        _check_order(ei, n)


def node_index(data: Data, ids: Iterable[Any]) -> Tensor:
    """Original neuron ids -> node indices, LongTensor [len(ids)].

    Uses ``data.node_id`` (integer ids) or ``data.node_names`` (string ids); raises
    :class:`ConnectomeFormatError` naming ids that are not in the graph.
    """
    if "node_id" in data:
        known = data.node_id.numpy()
        wanted = _id_query(ids, True, "query", "node_index")
    elif "node_names" in data:
        known = np.array(data.node_names, dtype=object)
        wanted = _id_query(ids, False, "query", "node_index")
    else:
        raise ConnectomeFormatError("graph has neither node_id nor node_names")
    order = np.argsort(known, kind="stable")
    pos, found = _lookup(known[order], wanted)
    if not found.all():
        raise ConnectomeFormatError(f"node_index: {int((~found).sum())} id(s) not in "
                                    f"the graph: {_show(wanted[~found])}")
    return torch.from_numpy(order[pos].astype(np.int64))


# -- electrical synapses (graphode.gap_junctions reads them) -----------------------------
_KEYS = ("gap_index", "gap_weight", "gap_type")


def _reverse(index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor, Tensor]:
    """For ``index [2, G]``: the sorted keys ``src·N + dst`` ``[G]``, the order that sorts
    them ``[G]``, and for each entry the position of its reverse ``(dst, src)`` ``[G]``
    (-1 where there is none)."""
    key = index[0] * num_nodes + index[1]
    order = torch.argsort(key)
    sorted_key = key[order]
    rev_key = index[1] * num_nodes + index[0]
    pos = torch.searchsorted(sorted_key, rev_key).clamp_max(max(key.numel() - 1, 0))
    found = sorted_key[pos] == rev_key if key.numel() else torch.zeros(0, dtype=torch.bool, device=key.device)
    rev = torch.where(found, order[pos], torch.full_like(pos, -1))
    return sorted_key, order, rev


def _pair_text(index: Tensor, k: int) -> str:
    return f"({int(index[0, k])}, {int(index[1, k])})"


def check_gap_junctions(graph, where: str = "graph") -> None:
    """Raise ``ValueError`` unless ``graph``'s gap-junction attributes follow the layout
    of the module docs; a graph without any of them passes.

    Checks: ``gap_index`` an int64 ``[2, G]`` of node ids in ``[0, N)``, without self
    pairs or repeated pairs, holding the reverse of every pair; ``gap_weight`` a floating
    ``[G]``, finite and > 0, equal for both directions; ``gap_type`` (optional) integer
    codes ``[G]``, ``>= 0`` (and below ``len(gap_type_names)`` for a single graph's names),
    equal for both directions. The errors name the attribute, the entry and its value.

    Args:
        graph: a PyG ``Data`` or ``Batch``.
        where: how the errors name the graph.

    Shapes:
        graph.gap_index ``[2, G]``, graph.gap_weight ``[G]``, graph.gap_type ``[G]``.
    """
    index, weight, types = (getattr(graph, k, None) for k in _KEYS)
    if index is None:
        for key, value in (("gap_weight", weight), ("gap_type", types)):
            if value is not None:
                raise ValueError(f"{where}.{key} is set but {where}.gap_index is missing: gap junctions need gap_index [2, G]")
        return
    n = int(graph.num_nodes)
    if not isinstance(index, Tensor) or index.dtype != torch.int64 or index.dim() != 2 or index.size(0) != 2:
        got = f"{index.dtype} {tuple(index.shape)}" if isinstance(index, Tensor) else type(index).__name__
        raise ValueError(f"{where}.gap_index must be an int64 tensor [2, G], got {got}")
    g = index.size(1)
    bad = ((index < 0) | (index >= n)).any(0).nonzero()
    if bad.numel():
        k = int(bad[0])
        raise ValueError(f"{where}.gap_index[:, {k}] = {_pair_text(index, k)} holds a node id outside [0, {n})")
    bad = (index[0] == index[1]).nonzero()
    if bad.numel():
        k = int(bad[0])
        raise ValueError(
            f"{where}.gap_index[:, {k}] = {_pair_text(index, k)} joins neuron {int(index[0, k])} to itself: "
            "a gap junction joins two different neurons"
        )
    sorted_key, order, rev = _reverse(index, n)
    repeated = (sorted_key[1:] == sorted_key[:-1]).nonzero()
    if repeated.numel():
        first, second = sorted(int(order[int(repeated[0]) + s]) for s in (0, 1))
        raise ValueError(
            f"{where}.gap_index[:, {second}] = {_pair_text(index, second)} repeats gap_index[:, {first}]: "
            "store each direction of a pair once (with the total weight of its junctions)"
        )
    missing = (rev < 0).nonzero()
    if missing.numel():
        k = int(missing[0])
        i, j = int(index[0, k]), int(index[1, k])
        raise ValueError(
            f"{where}.gap_index[:, {k}] = ({i}, {j}) has no reverse ({j}, {i}): store both directions of every "
            f"gap junction, e.g. gap_index = torch.cat([pairs, pairs.flip(0)], 1)"
        )
    if not isinstance(weight, Tensor):
        raise ValueError(f"{where} has gap_index but no gap_weight: gap junctions need a weight [G] per entry")
    if not weight.is_floating_point() or weight.shape != (g,):
        raise ValueError(f"{where}.gap_weight must be a floating tensor [G] = [{g}], got {weight.dtype} {tuple(weight.shape)}")
    bad = (~(torch.isfinite(weight) & (weight > 0))).nonzero()
    if bad.numel():
        k = int(bad[0])
        raise ValueError(
            f"{where}.gap_weight[{k}] = {float(weight[k])} (pair {_pair_text(index, k)}): "
            "gap junction weights must be finite and > 0"
        )
    _check_symmetric(where, "gap_weight", weight, index, rev)
    if types is not None:
        if not isinstance(types, Tensor) or types.dtype not in (torch.int64, torch.int32) or types.shape != (g,):
            got = f"{types.dtype} {tuple(types.shape)}" if isinstance(types, Tensor) else type(types).__name__
            raise ValueError(f"{where}.gap_type must hold integer codes [G] = [{g}], got {got}")
        names = getattr(graph, "gap_type_names", None)
        single = isinstance(names, (list, tuple)) and names and not isinstance(names[0], (list, tuple))
        hi = len(names) if single else None
        out = types < 0 if hi is None else (types < 0) | (types >= hi)
        bad = out.nonzero()
        if bad.numel():
            k = int(bad[0])
            allowed = f"[0, {hi}) (the gap_type_names)" if hi is not None else "non-negative codes"
            raise ValueError(f"{where}.gap_type[{k}] = {int(types[k])} (pair {_pair_text(index, k)}): allowed are {allowed}")
        _check_symmetric(where, "gap_type", types, index, rev)


def _check_symmetric(where: str, key: str, values: Tensor, index: Tensor, rev: Tensor) -> None:
    bad = (values != values[rev]).nonzero()
    if bad.numel():
        k = int(bad[0])
        r = int(rev[k])
        raise ValueError(
            f"{where}.{key}[{k}] = {values[k].item()} for {_pair_text(index, k)} but {key}[{r}] = {values[r].item()} "
            f"for {_pair_text(index, r)}: both directions of a gap junction must be equal"
        )
