"""PyG transforms on connectome graphs that keep the layout of :mod:`graphode.connectome.layout`.

PyG's own transforms know ``edge_attr`` / ``edge_weight`` and guess the rest by size, so on
a connectome several of them leave ``sign`` or ``syn_count`` the wrong length, sum signs, or
crash on string neuron ids (the docs page "The connectome as a PyG graph" has the table).
The transforms here move every attribute with its neuron or connection:

================================  ===========================================================
:class:`Subgraph`                 keep neurons by mask or index (the induced subgraph)
:class:`RemoveIsolatedNeurons`    drop neurons without any connection
:class:`RemoveSelfConnections`    drop pre == post connections, keep every neuron
:class:`Threshold`                drop connections with ``syn_count < min_count``, keep every neuron
:class:`SortEdges`                restore the (target, source) order of ``edge_index``
:class:`DegreePreservingShuffle`  rewire at random keeping every in- and out-degree
:class:`ReorderNeurons`           renumber the neurons (reverse Cuthill–McKee, by cell type, or
                                  a given permutation) so that connected neurons sit close
================================  ===========================================================

Which attribute belongs to what: the layout's per-connection keys (``syn_count``, ``sign``,
``syn_weight``, ``edge_type``, ``edge_weight``, ``edge_attr``) and per-neuron keys
(``cell_type``, ``node_id``, ``node_names``, ``input_mask``, ``output_mask``, ``x``,
``pos``) are known; ``<key>_names`` next to a code tensor ``<key>`` is that tensor's
vocabulary (``cell_type_names``, ``edge_type_names``, text node-table columns); any other
tensor or list is per neuron when its first dimension is N, per connection when it is E, and
graph-level otherwise. One of length N = E is ambiguous and an error unless named in
``node_keys`` / ``edge_keys``. Vocabularies are kept as they are (codes stay comparable with
the full graph) or, with ``recode=True``, cut to the names still used and the codes
renumbered, which gives exactly what :func:`~graphode.connectome.load_connectome` gives for
the same neurons and connections.

``syn_weight`` keeps its values: a graph normalised with ``normalize="in_syn"`` is no longer
normalised once connections are dropped.
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Iterable

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import BaseTransform

from ._common import ConnectomeFormatError, _show
from .layout import _EDGE_KEYS, _KEYS as _GAP_KEYS, _NODE_KEYS, _check_lengths, validate_connectome

__all__ = ["Subgraph", "RemoveIsolatedNeurons", "RemoveSelfConnections", "Threshold",
           "SortEdges", "DegreePreservingShuffle", "ReorderNeurons", "reverse_cuthill_mckee"]


def _single_graph(data: Data, name: str) -> None:
    if isinstance(data, Batch):
        raise ConnectomeFormatError(f"{name}: got a Batch; apply it to each graph before batching "
                                    "(codes and name lists are per graph)")
    if not isinstance(data, Data):
        raise ConnectomeFormatError(f"{name}: expected a torch_geometric Data, got {type(data).__name__}")


def _kinds(data: Data, node_keys: Iterable[str] = (), edge_keys: Iterable[str] = ()
           ) -> dict[str, str]:
    """``"node"``, ``"edge"`` or ``"names"`` (a vocabulary) for each attribute that has one."""
    n, e = data.num_nodes, data.edge_index.size(1)
    node_keys, edge_keys = set(node_keys), set(edge_keys)
    for key in node_keys | edge_keys:
        if key not in data:
            raise ConnectomeFormatError(f"node_keys / edge_keys name {key!r}, which the graph does not have")
    both = node_keys & edge_keys
    if both:
        raise ConnectomeFormatError(f"{_show(sorted(both))} named in both node_keys and edge_keys")
    kinds, ambiguous = {}, []
    for key in data.keys():
        value = data[key]
        if key in ("edge_index", "num_nodes") or key in _GAP_KEYS:
            continue  # gap junctions follow their neurons in _rebuild
        if key.endswith("_names") and _is_codes(data.get(key[:-len("_names")])) \
                and key not in node_keys | edge_keys:
            kinds[key] = "names"
        elif key in node_keys or (key in _NODE_KEYS and key not in edge_keys):
            kinds[key] = "node"
        elif key in edge_keys or key in _EDGE_KEYS:
            kinds[key] = "edge"
        elif isinstance(value, (Tensor, list, tuple)) and not (isinstance(value, Tensor) and value.dim() == 0):
            size = len(value)
            if size == n == e:
                ambiguous.append(key)
            elif size == n:
                kinds[key] = "node"
            elif size == e:
                kinds[key] = "edge"
    if ambiguous:
        keys = tuple(sorted(ambiguous))
        raise ConnectomeFormatError(
            f"attributes {_show(keys, 20)} have N = E = {n} entries: per neuron or per connection? "
            f"Name them, e.g. node_keys={keys!r} or edge_keys={keys!r}")
    return kinds


def _is_codes(value) -> bool:
    return isinstance(value, Tensor) and value.dtype == torch.long and value.dim() == 1


def _as_tensor(values: Tensor | Iterable[int]) -> Tensor:
    """``values`` as a tensor: a sequence of ints as torch makes it, an empty one as int64
    (raises TypeError when ``values`` is not iterable)."""
    if isinstance(values, Tensor):
        return values
    values = list(values)
    return torch.as_tensor(values) if values else torch.zeros(0, dtype=torch.long)


def _take(value, index: Tensor):
    if isinstance(value, Tensor):
        return value[index.to(value.device)]
    return type(value)(value[i] for i in index.tolist())


def _rebuild(data: Data, edges: Tensor, nodes: Tensor | None, recode: bool,
             node_keys: Iterable[str] = (), edge_keys: Iterable[str] = ()) -> Data:
    """The graph with the connections ``edges`` (positions, in the order wanted) and, when
    given, only the neurons ``nodes`` (indices, ascending), every attribute carried along."""
    kinds = _kinds(data, node_keys, edge_keys)
    out = copy.copy(data)
    edge_index = data.edge_index[:, edges]
    if nodes is not None:
        new = torch.full((data.num_nodes,), -1, dtype=torch.long, device=edge_index.device)
        new[nodes] = torch.arange(nodes.numel(), device=edge_index.device)
        edge_index = new[edge_index]
        out.num_nodes = int(nodes.numel())
    out.edge_index = edge_index
    if nodes is not None and "gap_index" in data:
        # electrical synapses: the pairs whose two neurons stay, relabelled like edge_index
        gap = new[data.gap_index]
        kept = torch.nonzero((gap >= 0).all(0)).flatten()
        out.gap_index = gap[:, kept]
        for key in ("gap_weight", "gap_type"):
            if key in data:
                out[key] = data[key][kept]
    for key, kind in kinds.items():
        if kind == "edge":
            out[key] = _take(data[key], edges)
        elif kind == "node" and nodes is not None:
            out[key] = _take(data[key], nodes)
    if recode:
        for key in [k for k, kind in kinds.items() if kind == "names"]:
            codes = out[key[:-len("_names")]]
            used, new_codes = torch.unique(codes, return_inverse=True)  # ascending: name order kept
            out[key[:-len("_names")]] = new_codes.reshape(codes.shape)
            out[key] = type(data[key])(data[key][i] for i in used.tolist())
    validate_connectome(out)
    return out


class _LayoutTransform(BaseTransform):
    """Shared options: ``recode`` and the ``node_keys`` / ``edge_keys`` of ambiguous attributes."""

    def __init__(self, recode: bool = False, node_keys: Iterable[str] = (),
                 edge_keys: Iterable[str] = ()):
        if not isinstance(recode, bool):
            raise TypeError(f"recode must be True or False, got {recode!r}")
        for name, keys in (("node_keys", node_keys), ("edge_keys", edge_keys)):
            if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
                raise TypeError(f"{name} must be a tuple of attribute names, got {keys!r}")
        self.recode, self.node_keys, self.edge_keys = recode, tuple(node_keys), tuple(edge_keys)

    def _checked(self, data: Data) -> Data:
        _single_graph(data, type(self).__name__)
        validate_connectome(data)
        return data

    def _apply(self, data: Data, edges: Tensor, nodes: Tensor | None = None) -> Data:
        return _rebuild(data, edges, nodes, self.recode, self.node_keys, self.edge_keys)


class Subgraph(_LayoutTransform):
    """The subgraph induced by some neurons, every per-neuron and per-connection attribute kept.

    Neurons keep their relative order (so their ids stay sorted) and are relabelled
    ``0..K-1``; connections between kept neurons keep their order (so ``edge_index`` stays
    sorted by (target, source)). For original ids use
    ``Subgraph(node_index(data, ids))``.

    Args:
        nodes: BoolTensor [N] mask, or LongTensor [K] / sequence of node indices (any order,
            no repeats).
        recode: cut ``cell_type_names``, ``edge_type_names`` and other vocabularies to the
            names still used and renumber their codes (``False``: keep them).
        node_keys, edge_keys: names of extra attributes of length N = E (per neuron / per
            connection), which cannot be told apart by size.

    Shapes:
        data: ``N`` neurons, ``E`` connections -> ``K`` neurons, the ``E'`` connections
        between them.
    """

    def __init__(self, nodes: Tensor | Iterable[int], recode: bool = False,
                 node_keys: Iterable[str] = (), edge_keys: Iterable[str] = ()):
        super().__init__(recode, node_keys, edge_keys)
        nodes = _as_tensor(nodes)
        if nodes.dim() != 1 or nodes.dtype not in (torch.bool, torch.long, torch.int32):
            raise ConnectomeFormatError(f"Subgraph: nodes must be a BoolTensor [N] or a LongTensor [K] "
                                        f"of node indices, got {nodes.dtype} {list(nodes.shape)}")
        self.nodes = nodes

    def forward(self, data: Data) -> Data:
        data = self._checked(data)
        n = data.num_nodes
        nodes = self.nodes.to(data.edge_index.device)
        if nodes.dtype == torch.bool:
            if nodes.numel() != n:
                raise ConnectomeFormatError(f"Subgraph: the mask has {nodes.numel()} entries for "
                                            f"N = {n} neurons")
            nodes = torch.nonzero(nodes).flatten()
        nodes = nodes.long()
        bad = (nodes < 0) | (nodes >= n)
        if bool(bad.any()):
            raise ConnectomeFormatError(f"Subgraph: node indices {_show(nodes[bad].tolist())} out of "
                                        f"range [0, {n})")
        nodes, counts = torch.unique(nodes, return_counts=True)
        if bool((counts > 1).any()):
            raise ConnectomeFormatError(f"Subgraph: node indices repeated: "
                                        f"{_show(nodes[counts > 1].tolist())}")
        if nodes.numel() == 0:
            raise ConnectomeFormatError("Subgraph: keeps no neuron")
        keep = torch.zeros(n, dtype=torch.bool, device=nodes.device)
        keep[nodes] = True
        edges = torch.nonzero(keep[data.edge_index[0]] & keep[data.edge_index[1]]).flatten()
        return self._apply(data, edges, nodes)


class RemoveIsolatedNeurons(_LayoutTransform):
    """Drop the neurons without any connection (in or out; a self-connection counts).

    Works with integer and string ids alike; the kept neurons are relabelled in order and
    every attribute follows, as with :class:`Subgraph`.

    Args:
        recode, node_keys, edge_keys: as for :class:`Subgraph`.

    Shapes:
        data: ``N`` neurons, ``E`` connections -> the ``K`` connected neurons, ``E``
        connections.
    """

    def forward(self, data: Data) -> Data:
        data = self._checked(data)
        connected = torch.zeros(data.num_nodes, dtype=torch.bool, device=data.edge_index.device)
        connected[data.edge_index.flatten()] = True
        if not bool(connected.any()):
            raise ConnectomeFormatError("RemoveIsolatedNeurons: the graph has no connections, so "
                                        "every neuron is isolated")
        edges = torch.arange(data.edge_index.size(1), device=connected.device)
        return self._apply(data, edges, torch.nonzero(connected).flatten())


class RemoveSelfConnections(_LayoutTransform):
    """Drop the connections of a neuron onto itself (pre == post); every neuron stays.

    Args:
        recode, node_keys, edge_keys: as for :class:`Subgraph`.

    Shapes:
        data: ``N`` neurons, ``E`` connections -> ``N`` neurons, ``E'`` <= ``E``
        connections.
    """

    def forward(self, data: Data) -> Data:
        data = self._checked(data)
        return self._apply(data, torch.nonzero(data.edge_index[0] != data.edge_index[1]).flatten())


class Threshold(_LayoutTransform):
    """Drop the weak connections, those with ``syn_count < min_count``; every neuron stays.

    As ``load_connectome(..., threshold=min_count)``: neurons that lose all their
    connections stay as isolated nodes (drop them with :class:`RemoveIsolatedNeurons`), so
    node indices do not depend on the threshold.

    Args:
        min_count: the smallest synapse count kept (a finite number).
        recode, node_keys, edge_keys: as for :class:`Subgraph`.

    Shapes:
        data: ``N`` neurons, ``E`` connections -> ``N`` neurons, ``E'`` <= ``E``
        connections.
    """

    def __init__(self, min_count: float, recode: bool = False, node_keys: Iterable[str] = (),
                 edge_keys: Iterable[str] = ()):
        super().__init__(recode, node_keys, edge_keys)
        if isinstance(min_count, bool) or not isinstance(min_count, numbers.Real) \
                or not math.isfinite(min_count):
            raise ConnectomeFormatError(f"Threshold: min_count must be a finite number, got {min_count!r}")
        self.min_count = float(min_count)

    def forward(self, data: Data) -> Data:
        data = self._checked(data)
        return self._apply(data, torch.nonzero(data.syn_count >= self.min_count).flatten())


class SortEdges(_LayoutTransform):
    """Restore the layout order of ``edge_index`` (by target, then source), moving every
    per-connection attribute with its connection.

    Use it after a step that reordered connections *together with* all their attributes.
    A PyG transform that reordered ``edge_index`` alone (``RemoveDuplicatedEdges``) left
    ``syn_count``, ``sign``, ... behind; sorting cannot repair that.

    Args:
        node_keys, edge_keys: as for :class:`Subgraph`.

    Raises:
        ConnectomeFormatError: an attribute of the wrong length, or a connection listed
            twice (sorting does not merge connections).

    Shapes:
        data: ``N`` neurons, ``E`` connections in any order -> the same, sorted.
    """

    def __init__(self, node_keys: Iterable[str] = (), edge_keys: Iterable[str] = ()):
        super().__init__(False, node_keys, edge_keys)

    def forward(self, data: Data) -> Data:
        _single_graph(data, "SortEdges")
        ei = data.edge_index
        if not isinstance(ei, Tensor) or ei.dtype != torch.long or ei.dim() != 2 or ei.size(0) != 2:
            raise ConnectomeFormatError("SortEdges: edge_index must be a LongTensor [2, E]")
        n = data.num_nodes
        _check_lengths(data, n, ei.size(1))
        key = ei[1] * n + ei[0]
        order = torch.argsort(key, stable=True)
        dup = key[order][1:] == key[order][:-1]
        if bool(dup.any()):
            i = int(order[1:][dup][0])
            raise ConnectomeFormatError(
                f"SortEdges: the connection {int(ei[0, i])} -> {int(ei[1, i])} is listed more than "
                "once; sorting does not merge connections (load them with load_connectome(..., "
                "duplicates=...))")
        return self._apply(data, order)


class DegreePreservingShuffle(BaseTransform):
    """Rewire a connectome at random keeping every neuron's in- and out-degree.

    Sources are permuted across all connections while targets stay (the configuration
    model): each neuron keeps its number of incoming and outgoing connections, each
    connection keeps its synapse count, weight and sign, but who connects to whom is
    random. Rewiring that would create a self-loop or a duplicate connection is repaired
    by re-permuting those sources with random others until none is left (or, after
    ``max_rounds``, an error is raised: nothing is silently dropped).

    Attributes stay with the connection's slot at its target (``syn_count``, ``sign``,
    ``syn_weight``, ``edge_type``), so every neuron keeps its incoming weight distribution
    (normalised weights stay normalised) and weight-sharing groups keep their sizes; so
    do ``edge_weight``, ``edge_attr`` and any other per-connection attribute.

    Shapes:
        data: ``N`` neurons, ``E`` connections -> the same neurons and number of
        connections, rewired.
    """

    def __init__(self, seed: int = 0, max_rounds: int = 100):
        self.seed, self.max_rounds = seed, max_rounds

    def forward(self, data: Data) -> Data:
        gen = torch.Generator().manual_seed(self.seed)
        n = int(data.num_nodes)
        src, dst = data.edge_index[0].clone(), data.edge_index[1]
        src = src[torch.randperm(src.numel(), generator=gen)]
        for _ in range(self.max_rounds):
            bad = _bad_edges(src, dst, n)
            if not bool(bad.any()):
                break
            # Re-permute the sources of the bad connections together with as many random
            # others; a permutation of unique positions keeps every out-degree exactly.
            others = torch.randint(src.numel(), (int(bad.sum()),), generator=gen)
            idx = torch.cat([torch.nonzero(bad).flatten(), others]).unique()
            src[idx] = src[idx[torch.randperm(idx.numel(), generator=gen)]]
        else:
            raise RuntimeError(
                f"DegreePreservingShuffle: {int(_bad_edges(src, dst, n).sum())} duplicate or self-loop "
                f"connections remain after {self.max_rounds} rounds (graph too dense to rewire)"
            )
        out = data.clone()
        order = torch.argsort(dst * n + src, stable=True)
        out.edge_index = torch.stack([src[order], dst[order]])
        for key, kind in _kinds(data).items():
            if kind == "edge":
                out[key] = _take(data[key], order)
        return out


def _bad_edges(src: torch.Tensor, dst: torch.Tensor, n: int) -> torch.Tensor:
    """Mask of self-loops and of all but the first copy of duplicate connections."""
    key = dst * n + src
    order = torch.argsort(key, stable=True)
    dup_sorted = torch.zeros_like(key, dtype=torch.bool)
    dup_sorted[1:] = key[order][1:] == key[order][:-1]
    dup = torch.zeros_like(dup_sorted)
    dup[order] = dup_sorted
    return dup | (src == dst)


ORDERS = ("rcm", "cell_type")


def reverse_cuthill_mckee(edge_index: Tensor, num_nodes: int) -> Tensor:
    """The reverse Cuthill–McKee order of a graph, taken as undirected.

    Cuthill–McKee numbers the neurons in breadth-first order. Each connected component
    starts at a pseudo-peripheral neuron (George and Liu: from its neuron of least degree,
    lowest index, move to the least-degree neuron of the search's last level while that
    makes the search deeper, at most four times); every level of the search lists the
    newly reached neurons grouped by the neuron that reached them first (in that neuron's
    order) and, within a group, by increasing degree, then index. Reversing it gives
    reverse Cuthill–McKee (RCM), which keeps the connections of a sparse graph close to
    the diagonal: for a lattice the largest ``|pre − post|`` falls from ``~N`` (at random
    numbering) to about its width. Direction, self-connections and repeated pairs do not
    count (the graph is symmetrised first); neurons without any connection come last, in
    their old order. The search runs on the CPU (whatever ``edge_index``'s device), level
    by level with array operations, one Python step per level of each component: seconds
    for a whole-brain graph (139k neurons, 15M connections).

    Args:
        edge_index: LongTensor ``[2, E]`` (any order, direction ignored).
        num_nodes: ``N`` (> 0).

    Returns:
        LongTensor ``[N]`` on ``edge_index``'s device: ``order[k]`` is the old index of the
        neuron numbered ``k`` (a permutation of ``0..N-1``).

    Shapes:
        edge_index ``[2, E]`` -> ``[N]``.
    """
    if not isinstance(edge_index, Tensor) or edge_index.dtype != torch.long or edge_index.dim() != 2 \
            or edge_index.size(0) != 2:
        got = f"{edge_index.dtype} {list(edge_index.shape)}" if isinstance(edge_index, Tensor) else type(edge_index).__name__
        raise ConnectomeFormatError(f"reverse_cuthill_mckee: edge_index must be a LongTensor [2, E], got {got}")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, numbers.Integral) or num_nodes <= 0:
        raise ConnectomeFormatError(f"reverse_cuthill_mckee: num_nodes must be an int > 0, got {num_nodes!r}")
    n, device = int(num_nodes), edge_index.device
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise ConnectomeFormatError(f"reverse_cuthill_mckee: edge_index holds node ids outside [0, {n})")
    # The symmetrised adjacency without self-connections or repeats, as CSR (rows ascending).
    # Stable sorts (timsort) merge already sorted runs in linear time: the layout's edge_index
    # is sorted by (target, source), which is the reverse direction's (row, column) order.
    a, b = edge_index.cpu().numpy()
    off = a != b
    a, b = a[off], b[off]
    key = np.concatenate([np.sort(b * n + a, kind="stable"), np.sort(a * n + b, kind="stable")])
    key.sort(kind="stable")
    key = key[np.concatenate([[True], key[1:] != key[:-1]])] if key.size else key
    row, col = np.divmod(key, n)
    deg = np.bincount(row, minlength=n)
    rowptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(deg, out=rowptr[1:])
    visited = deg == 0  # isolated neurons are placed at the end, in their old order
    parts = []
    for root in np.argsort(deg, kind="stable"):  # each component from its least degree neuron
        if visited[root]:
            continue
        levels = _cuthill_mckee_levels(root, rowptr, col, deg, visited)
        for _ in range(4):
            # George and Liu's pseudo-peripheral root: restart from the least-degree neuron of
            # the last level while that makes the search deeper (same component, same neurons)
            last = levels[-1]
            visited[np.concatenate(levels)] = False
            deeper = _cuthill_mckee_levels(last[np.argmin(deg[last])], rowptr, col, deg, visited)
            if len(deeper) <= len(levels):
                break
            levels = deeper
        parts += levels
    cm = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    order = np.concatenate([cm[::-1], np.flatnonzero(deg == 0)])
    return torch.from_numpy(order.astype(np.int64)).to(device)


def _cuthill_mckee_levels(root: int, rowptr: np.ndarray, col: np.ndarray, deg: np.ndarray,
                          visited: np.ndarray) -> list:
    """The levels of the Cuthill–McKee search from ``root`` over the CSR ``(rowptr, col)``,
    each an int64 array in Cuthill–McKee order; marks the reached neurons in ``visited``."""
    levels, frontier = [], np.array([root])
    visited[root] = True
    while frontier.size:
        levels.append(frontier)
        counts = deg[frontier]
        group = np.repeat(np.arange(frontier.size), counts)
        start = np.cumsum(counts) - counts
        nbr = col[np.arange(group.size) - start[group] + rowptr[frontier][group]]
        new = ~visited[nbr]
        nbr, group = nbr[new], group[new]  # group ascending: the first reacher comes first
        # each neuron once, with its first reacher (unique's index is the first occurrence)
        nbr, first = np.unique(nbr, return_index=True)
        group = group[first]
        frontier = nbr[np.lexsort((nbr, deg[nbr], group))]  # by reacher, degree, index
        visited[frontier] = True
    return levels


class ReorderNeurons(_LayoutTransform):
    """Renumber the neurons, for example so that connected neurons get nearby indices.

    The recurrent input gathers one state row per connection (a CSR product over
    ``edge_index``). On a GPU it runs faster when connections join nearby indices, because
    the gathered rows are then reused from cache. Exports such as FlyWire or neuPrint
    number neurons by their 64-bit ids (:func:`~graphode.connectome.load_connectome` sorts
    them), which scatters every neuron's partners over the whole index range; the fly
    visual system is numbered column by column already.

    ``order``:

    - ``"rcm"``: reverse Cuthill–McKee on the graph taken as undirected
      (:func:`reverse_cuthill_mckee`), which keeps ``|pre − post|`` small;
    - ``"cell_type"``: by ``cell_type`` code, then by the old index (stable);
    - a LongTensor ``[N]`` / sequence: ``order[k]`` is the old index of new neuron ``k``
      (a permutation of ``0..N-1``), e.g. ``torch.randperm(N)``.

    Every per-neuron attribute is permuted with its neuron (``node_id`` / ``node_names``
    too, which are then no longer sorted: :func:`~graphode.connectome.node_index` still
    maps ids to the new indices), every per-connection attribute moves with its
    connection, ``edge_index`` is relabelled and put back in the layout's (target,
    source) order, gap junctions are relabelled (their order kept), and vocabularies stay.
    The result holds ``original_index``, LongTensor ``[N]``: the old index of each new
    neuron, so ``x_old[original_index]`` is a per-neuron tensor in the new order and
    ``y_new[argsort(original_index)]`` one back in the old. When the input already has
    ``original_index`` (it was reordered before), the two are composed: it keeps naming
    indices of the first numbering.

    Args:
        order: ``"rcm"``, ``"cell_type"``, or a permutation (see above).
        node_keys, edge_keys: as for :class:`Subgraph`.

    Raises:
        ConnectomeFormatError: an unknown order, a permutation of the wrong length or
            with repeats, or ``"cell_type"`` on a graph without ``cell_type``.

    Shapes:
        data: ``N`` neurons, ``E`` connections -> the same, renumbered, plus
        ``original_index [N]``.
    """

    def __init__(self, order: str | Tensor | Iterable[int] = "rcm", node_keys: Iterable[str] = (),
                 edge_keys: Iterable[str] = ()):
        super().__init__(False, node_keys, edge_keys)
        if isinstance(order, str):
            if order not in ORDERS:
                raise ConnectomeFormatError(f"ReorderNeurons: unknown order {order!r}; choose from "
                                            f"{', '.join(map(repr, ORDERS))} or a permutation LongTensor [N]")
        else:
            try:
                order = _as_tensor(order)
            except TypeError:
                raise ConnectomeFormatError(f"ReorderNeurons: order must be 'rcm', 'cell_type' or a permutation "
                                            f"(LongTensor [N] or a sequence of ints), got {order!r}") from None
            if order.dim() != 1 or order.dtype not in (torch.long, torch.int32):
                raise ConnectomeFormatError(f"ReorderNeurons: order must be 'rcm', 'cell_type' or a LongTensor "
                                            f"[N] permutation, got {order.dtype} {list(order.shape)}")
            order = order.long()
        self.order = order

    def permutation(self, data: Data) -> Tensor:
        """The new order of ``data``'s neurons, LongTensor ``[N]`` (old index of each new
        neuron), checked to be a permutation."""
        n, device = data.num_nodes, data.edge_index.device
        if isinstance(self.order, Tensor):
            perm = self.order.to(device)
            if perm.numel() != n:
                raise ConnectomeFormatError(f"ReorderNeurons: order has {perm.numel()} entries for N = {n} neurons")
            bad = (perm < 0) | (perm >= n)
            if bool(bad.any()):
                raise ConnectomeFormatError(f"ReorderNeurons: order holds indices {_show(perm[bad].tolist())} "
                                            f"out of range [0, {n})")
            counts = torch.bincount(perm, minlength=n)
            if bool((counts != 1).any()):
                raise ConnectomeFormatError(f"ReorderNeurons: order is not a permutation: indices "
                                            f"{_show(torch.nonzero(counts > 1).flatten().tolist())} repeated")
            return perm
        if self.order == "rcm":
            return reverse_cuthill_mckee(data.edge_index, n)
        if "cell_type" not in data:
            raise ConnectomeFormatError("ReorderNeurons('cell_type'): the graph has no cell_type")
        return torch.argsort(data.cell_type, stable=True)

    def forward(self, data: Data) -> Data:
        data = self._checked(data)
        perm = self.permutation(data)
        n = data.num_nodes
        new = torch.empty_like(perm)
        new[perm] = torch.arange(n, device=perm.device)
        ei = new[data.edge_index]
        edges = torch.argsort(ei[1] * n + ei[0])
        out = self._apply(data, edges, perm)  # gap junctions relabelled there, their order kept
        out.original_index = data.original_index[perm] if "original_index" in data else perm
        return out
