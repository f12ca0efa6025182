"""Reading an edge list (and a node table) into one graph: :func:`load_connectome`.

Errors and reporting
--------------------
Bad input raises :class:`ConnectomeFormatError` (a ``ValueError``; a missing file
raises its subclass :class:`ConnectomeFileNotFoundError`, also a
``FileNotFoundError``) with the source's name and, where it applies, the row
(0-based data row, header not counted), column and value.  Reading ``.parquet``
without pyarrow raises ``ImportError``.  Nothing is dropped silently: every option
that drops rows (``neurons=``/``cell_types=``, ``self_loops=False``, ``threshold``)
logs the number dropped on the ``graphode.connectome`` logger (level INFO), and
``load_connectome(..., return_report=True)`` also returns a
:class:`ConnectomeReport` with those counts.  ``threshold`` and ``self_loops`` drop
connections, never neurons: neurons that lose all their connections stay as
isolated nodes, so node indices do not depend on the threshold.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch_geometric.data import Data

from ._columns import _nt_signs, _numeric
from ._common import _RESERVED_KEYS, ConnectomeFormatError, PathLike, _fail, _match_names, _show
from ._ids import ID_KINDS, _id_query, _lookup
from ._readers import (
    Source, _check_sign_value, _edges_from_table, _Edges, _Gaps, _gaps_from_table, _Nodes, _read_edges, _read_nodes,
    _split_rows,
)
from ._tables import _read_table
from .layout import validate_connectome

__all__ = ["load_connectome", "ConnectomeReport"]

logger = logging.getLogger("graphode.connectome")


@dataclass(frozen=True)
class ConnectomeReport:
    """What :func:`load_connectome` did to the rows of ``source``.

    ``rows`` = ``outside_subset`` + ``duplicates_merged`` + ``self_loops_dropped``
    + ``below_threshold`` + ``num_edges``.
    """

    source: str
    rows: int  # rows of the edge list as read
    outside_subset: int  # rows dropped by neurons= / cell_types=
    duplicates_merged: int  # rows folded into another row of the same (pre, post) by `duplicates`
    self_loops_dropped: int  # connections dropped by self_loops=False
    below_threshold: int  # connections dropped with syn_count < threshold
    default_signed: int  # rows whose sign came from default_sign
    num_nodes: int
    num_edges: int
    duplicates: str = "error"  # the policy applied to repeated (pre, post) rows
    duplicate_pairs: int = 0  # connections that had more than one row
    sign_conflicts: int = 0  # of those, connections whose rows disagreed in sign ("max"/"first" chose one)
    sign_source: str | None = None  # where the signs came from
    node_columns: tuple = ()  # node-table columns stored as node attributes
    gap_rows: int = 0  # gap-junction rows read
    gap_outside_subset: int = 0  # of those, rows dropped by neurons= / cell_types=
    gap_rows_merged: int = 0  # rows that listed a pair again (in either direction)
    gap_junctions: int = 0  # gap-junction pairs kept (2 entries each in gap_index)


def _names_to_codes(names: Iterable[str], vocab: Sequence[str], param: str,
                    src: str) -> list[int]:
    """Codes of cell-type names or glob patterns (``"T4*"``, ``"T4[ab]"``, ``"KC?"``)."""
    names = [names] if isinstance(names, str) else list(names)
    found, unknown = _match_names(vocab, names)
    if unknown:
        _fail(src, f"{param}: unknown cell type(s) (no name or pattern matches) {_show(unknown)}; available: "
              f"{_show(vocab, 20)}")
    index = {n: i for i, n in enumerate(vocab)}
    return [index[name] for name in found]


def _node_mask(
    spec: str | Iterable[str] | None, param: str, nodes: _Nodes | None,
    rows: np.ndarray | None, type_code: np.ndarray, vocab: Sequence[str], src: str,
) -> tuple[np.ndarray, str | None]:
    """BoolTensor-ready mask [N] and the node-table column it consumed, if any."""
    n = len(type_code)
    if spec is None:
        return np.zeros(n, dtype=bool), None
    if isinstance(spec, str) and nodes is not None and spec in nodes.extra:
        col = nodes.extra[spec]
        if col.dtype.kind == "b":
            return col[rows], spec
        num = _numeric(col, spec, nodes.name, param)
        if not np.isin(num, (0.0, 1.0)).all():
            _fail(nodes.name, f"{param}{spec!r}: column must be boolean (True/False "
                  "or 0/1)")
        return num[rows].astype(bool), spec
    if nodes is None or nodes.cell_type is None:
        _fail(src, f"{param}{spec!r} names cell types, which need a node table with "
              "a cell_type column (nodes=...)")
    return np.isin(type_code, _names_to_codes(spec, vocab, param, src)), None


def _attr_name(column: str) -> str:
    if column in _RESERVED_KEYS or hasattr(Data, column):
        return f"node_{column}"
    return column


DUPLICATE_POLICIES = ("error", "sum", "max", "first")


@dataclass
class _Options:
    threshold: float
    duplicates: str
    self_loops: bool
    neurons: Iterable[Any] | None
    cell_types: Iterable[str] | None
    normalize: str | None
    input_types: Any
    output_types: Any
    nt_signs: Mapping[str, float] | None = None
    default_sign: float | None = None


def _join_node_table(uniq: np.ndarray, table_codes: np.ndarray, nodes: _Nodes,
                     src: str) -> tuple[np.ndarray, np.ndarray]:
    """Node-table row [n0] and cell-type name [n0] of each of the ``uniq`` ids."""
    in_table = np.zeros(len(uniq), dtype=bool)
    in_table[table_codes] = True
    if not in_table.all():
        miss = uniq[~in_table]
        _fail(nodes.name, f"{len(miss)} neuron(s) of the edge list {src} are missing "
              f"from the node table: {_show(miss)}")
    table_row = np.empty(len(uniq), dtype=np.int64)
    table_row[table_codes] = np.arange(len(table_codes))
    type_name = np.full(len(uniq), "unknown", dtype=object)
    if nodes.cell_type is not None:
        ct = nodes.cell_type[table_row]
        type_name = np.where(pd.isna(ct), "unknown", ct).astype(object)
    return table_row, type_name


def _subset_mask(uniq: np.ndarray, type_name: np.ndarray, has_types: bool,
                 opt: _Options, src: str) -> np.ndarray:
    """Nodes [n0] kept by ``neurons=`` and ``cell_types=``."""
    keep = np.ones(len(uniq), dtype=bool)
    if opt.neurons is not None:
        wanted = _id_query(opt.neurons, uniq.dtype != object, "neurons=", src)
        pos, found = _lookup(uniq, wanted)
        if not found.all():
            _fail(src, f"neurons=: {int((~found).sum())} id(s) not in the connectome: "
                  f"{_show(wanted[~found])}")
        keep[:] = False
        keep[pos] = True
    if opt.cell_types is not None:
        if not has_types:
            _fail(src, "cell_types= needs a node table with a cell_type column (nodes=)")
        vocab = sorted(set(type_name))
        codes = _names_to_codes(opt.cell_types, vocab, "cell_types=", src)
        keep &= np.isin(type_name, [vocab[c] for c in codes])
    if not keep.any():
        _fail(src, "no neurons left after neurons= / cell_types=")
    return keep


def _assemble(edges: _Edges, nodes: _Nodes | None, opt: _Options, gaps: _Gaps | None = None
              ) -> tuple[Data, ConnectomeReport]:
    src = edges.name
    rows = len(edges.pre)
    parts = [edges.pre, edges.post]
    if gaps is not None:
        parts += [gaps.a, gaps.b]
    if edges.extra_ids is not None:
        parts.append(edges.extra_ids)
    if nodes is not None:
        parts.append(nodes.ids)
    uniq, inv = np.unique(np.concatenate(parts), return_inverse=True)
    pre0, post0 = inv[:rows], inv[rows:2 * rows]
    table_row, type_name = None, np.full(len(uniq), "unknown", dtype=object)
    if nodes is not None:
        table_row, type_name = _join_node_table(uniq, inv[-len(nodes.ids):], nodes, src)
    has_types = nodes is not None and nodes.cell_type is not None
    if edges.sign is None:
        _sign_rows(edges, nodes, table_row, pre0, opt)

    keep = _subset_mask(uniq, type_name, has_types, opt, src)
    new = np.cumsum(keep) - 1
    row_keep = keep[pre0] & keep[post0]
    outside = rows - int(row_keep.sum())
    ids = uniq[keep]
    n = len(ids)
    pre_e, post_e, count, sign, merged, pairs, conflicts = _merge(
        new[pre0[row_keep]], new[post0[row_keep]], edges.count[row_keep],
        edges.sign[row_keep], n, ids, opt.duplicates, src)
    loops_dropped = 0
    if not opt.self_loops:
        m = pre_e != post_e
        loops_dropped = int((~m).sum())
        pre_e, post_e, count, sign = pre_e[m], post_e[m], count[m], sign[m]
    m = count >= opt.threshold
    below = int((~m).sum())
    pre_e, post_e, count, sign = pre_e[m], post_e[m], count[m], sign[m]
    if len(pre_e) == 0:
        _fail(src, f"no connections left after filtering ({rows} rows: {outside} outside"
              f" the neuron subset, {loops_dropped} self-loops dropped, {below} below "
              f"threshold={opt.threshold:g})")

    data = Data(edge_index=torch.from_numpy(np.stack([pre_e, post_e])).long(),
                num_nodes=n)
    data.syn_count = torch.from_numpy(count).float()
    data.sign = torch.from_numpy(sign).float()
    data.syn_weight = torch.from_numpy(_normalize(count, post_e, n, opt.normalize)
                                       ).float()
    vocab, type_code = np.unique(type_name[keep].astype(str), return_inverse=True)
    vocab = [str(v) for v in vocab]
    data.cell_type = torch.from_numpy(type_code.astype(np.int64))
    data.cell_type_names = vocab
    if has_types:
        _set_edge_types(data, type_code, vocab, pre_e, post_e)
    if ids.dtype != object:
        data.node_id = torch.from_numpy(ids.astype(np.int64))
    else:
        data.node_names = [str(i) for i in ids]
    kept_rows = table_row[keep] if table_row is not None else None
    consumed = set()
    for attr, spec, param in (("input_mask", opt.input_types, "input_types="),
                              ("output_mask", opt.output_types, "output_types=")):
        mask, col = _node_mask(spec, param, nodes, kept_rows, type_code, vocab, src)
        data[attr] = torch.from_numpy(np.ascontiguousarray(mask))
        consumed.add(col)
    stored = _set_node_columns(data, nodes, kept_rows, consumed) if nodes is not None else ()
    gap_counts = (0, 0, 0, 0)
    if gaps is not None:
        g = len(gaps.a)
        a0, b0 = inv[2 * rows:2 * rows + g], inv[2 * rows + g:2 * rows + 2 * g]
        gap_counts = _set_gap_junctions(data, gaps, keep, new, a0, b0, type_code, vocab if has_types else None,
                                        opt.duplicates, ids)
    report = ConnectomeReport(src, rows, outside, merged, loops_dropped, below,
                              edges.default_signed, n, len(pre_e), opt.duplicates, pairs, conflicts,
                              edges.sign_source, stored, *gap_counts)
    _log_report(report, opt.threshold)
    return data, report


def _set_gap_junctions(data: Data, gaps: _Gaps, keep: np.ndarray, new: np.ndarray, a0: np.ndarray,
                       b0: np.ndarray, type_code: np.ndarray, vocab: list[str] | None, policy: str,
                       ids: np.ndarray) -> tuple[int, int, int, int]:
    """``gap_index`` (both directions, sorted by (target, source)), ``gap_weight`` and, with cell
    types, ``gap_type`` codes of the unordered type pair; returns the report's counts.

    Rows naming one pair again (in either direction) with the same weight list it twice (a
    symmetric listing); with different weights ``duplicates="max"``/``"first"`` choose, anything
    else is an error naming the pair."""
    n, src = len(ids), gaps.name
    inside = keep[a0] & keep[b0]
    a, b, w = new[a0[inside]], new[b0[inside]], gaps.weight[inside]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    key, first, ginv = np.unique(lo * n + hi, return_index=True, return_inverse=True)
    wmax = np.full(len(key), -np.inf)
    np.maximum.at(wmax, ginv, w)
    wmin = np.full(len(key), np.inf)
    np.minimum.at(wmin, ginv, w)
    differ = wmax != wmin
    if differ.any() and policy not in ("max", "first"):
        k = int(np.argmax(differ))
        rows = np.flatnonzero(inside)[ginv == k][:4]
        _fail(src, f"the gap junction {_show([ids[key[k] // n]])} <-> {_show([ids[key[k] % n]])} is listed in rows "
              f"{', '.join(map(str, rows))} with different weights ({', '.join(f'{gaps.weight[r]:g}' for r in rows)}); "
              "pass duplicates='max' or 'first' to keep one, or list each pair once")
    weight = wmax if policy == "max" else w[first]
    lo_u, hi_u = key // n, key % n
    src_i, dst_i = np.concatenate([lo_u, hi_u]), np.concatenate([hi_u, lo_u])
    order = np.lexsort((src_i, dst_i))
    data.gap_index = torch.from_numpy(np.stack([src_i[order], dst_i[order]])).long()
    data.gap_weight = torch.from_numpy(np.concatenate([weight, weight])[order]).float()
    if vocab is not None:
        t = len(vocab)
        ta, tb = type_code[src_i[order]], type_code[dst_i[order]]
        pair_u, gtype = np.unique(np.minimum(ta, tb) * t + np.maximum(ta, tb), return_inverse=True)
        data.gap_type = torch.from_numpy(gtype.astype(np.int64))
        data.gap_type_names = [f"{vocab[p // t]}<->{vocab[p % t]}" for p in pair_u]
    return len(gaps.a), int((~inside).sum()), int(inside.sum()) - len(key), len(key)


def _sign_rows(edges: _Edges, nodes: _Nodes | None, table_row: np.ndarray | None, pre0: np.ndarray,
               opt: _Options) -> None:
    """Signs for an edge list without a sign source of its own: the presynaptic neuron's
    transmitter in the node table, else ``default_sign``, else +1 with a warning."""
    n = len(edges.pre)
    if nodes is not None and nodes.nt_column is not None:
        nt = nodes.extra[nodes.nt_column][table_row[pre0]]
        edges.sign, edges.default_signed = _nt_signs(
            nt, nodes.nt_column, f"{nodes.name} (transmitters of the presynaptic neurons)", opt.nt_signs,
            opt.default_sign)
        edges.sign_source = f"node-table transmitter column {nodes.nt_column!r}"
    elif opt.default_sign is not None:
        edges.sign, edges.default_signed, edges.sign_source = np.full(n, opt.default_sign), n, "default_sign"
    else:
        warnings.warn(
            f"{edges.name}: no sign, neurotransmitter or signed weight column (in the edge list or the node "
            f"table); all {n} synapses were taken as excitatory (+1). Pass default_sign=1 to make this "
            "explicit, or provide a sign/nt column.", UserWarning, stacklevel=4)
        edges.sign, edges.sign_source = np.ones(n), "none (all +1)"


def _log_report(r: ConnectomeReport, threshold: float) -> None:
    for what, k in (("outside neurons=/cell_types=", r.outside_subset),
                    ("self-loop", r.self_loops_dropped),
                    (f"below threshold={threshold:g}", r.below_threshold)):
        if k:
            logger.info("%s: dropped %d %s connection(s)", r.source, k, what)
    if r.duplicates_merged:
        logger.info("%s: %d connection(s) had repeated rows; duplicates=%r folded %d row(s) into them",
                    r.source, r.duplicate_pairs, r.duplicates, r.duplicates_merged)


def _merge(pre: np.ndarray, post: np.ndarray, count: np.ndarray, sign: np.ndarray,
           n: int, ids: np.ndarray, policy: str, src: str
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int, int]:
    """Sort rows by (post, pre) and fold repeated pairs by ``policy``.

    Returns ``(pre, post, count, sign, rows folded, pairs with repeats, pairs whose rows
    disagree in sign)``.
    """
    key = post.astype(np.int64) * n + pre  # np.unique sorts: target-major order
    ukey, first, ginv, gsize = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
    merged = len(key) - len(ukey)
    pairs = int((gsize > 1).sum())
    positive = np.bincount(ginv, weights=(sign > 0), minlength=len(ukey))
    conflict = (positive > 0) & (positive < gsize)

    def example(g: int) -> str:
        rows = np.flatnonzero(ginv == g)[:4]
        return (f"pre={_show([ids[ukey[g] % n]])} post={_show([ids[ukey[g] // n]])} in rows "
                f"{', '.join(map(str, rows))} (counts {', '.join(f'{count[r]:g}' for r in rows)})")

    if merged and policy == "error":
        g = int(np.argmax(gsize > 1))
        _fail(src, f"{pairs} connection(s) appear in more than one row ({merged} extra rows), e.g. "
              f"{example(g)}. Choose what the rows mean: duplicates='sum' (parts of one connection, e.g. "
              "one row per neuropil), 'max' or 'first' (the same connection repeated, e.g. once per "
              "co-released transmitter)")
    if policy == "sum":
        if conflict.any():
            g = int(np.argmax(conflict))
            _fail(src, f"{int(conflict.sum())} connection(s) have rows with conflicting signs, e.g. "
                  f"{example(g)}; summing them would mix excitation and inhibition: use "
                  "duplicates='max' or 'first' to keep one row, or fix the signs")
        total = np.bincount(ginv, weights=count, minlength=len(ukey))
        return (ukey % n, ukey // n, total, np.where(positive > 0, 1.0, -1.0), merged, pairs, 0)
    if policy == "max":
        # the row with the largest count (the first of equal ones) of each pair
        order = np.lexsort((np.arange(len(key)), -count, ginv))
        chosen = order[np.r_[0, np.flatnonzero(np.diff(ginv[order])) + 1]]
    else:  # "first", or "error" without repeats
        chosen = first
    if conflict.any():
        g = int(np.argmax(conflict))
        warnings.warn(f"{src}: {int(conflict.sum())} connection(s) have rows with conflicting signs, e.g. "
                      f"{example(g)}; duplicates={policy!r} kept the sign of the row it chose",
                      UserWarning, stacklevel=4)
    return (ukey % n, ukey // n, count[chosen], sign[chosen], merged, pairs, int(conflict.sum()))


def _normalize(count: np.ndarray, post: np.ndarray, n: int, how: str | None
               ) -> np.ndarray:
    if how is None:
        return count
    if how == "in_syn":
        denom = np.bincount(post, weights=count, minlength=n)[post]
    else:  # "in_degree"
        denom = np.bincount(post, minlength=n)[post].astype(np.float64)
    # A target whose inputs all have zero synapses keeps weight 0 instead of NaN.
    return np.divide(count, denom, out=np.zeros_like(count), where=denom > 0)


def _set_edge_types(data: Data, type_code: np.ndarray, vocab: list[str],
                    pre: np.ndarray, post: np.ndarray) -> None:
    t = len(vocab)
    pair_u, etype = np.unique(type_code[pre] * t + type_code[post], return_inverse=True)
    data.edge_type = torch.from_numpy(etype.astype(np.int64))
    data.edge_type_names = [f"{vocab[p // t]}->{vocab[p % t]}" for p in pair_u]


def _set_node_columns(data: Data, nodes: _Nodes, rows: np.ndarray, consumed: set) -> tuple[str, ...]:
    """Store every other node-table column as node metadata: booleans as BoolTensor, integers as
    LongTensor (ids such as FlyWire's stay exact), other numbers as FloatTensor (missing values
    as NaN, with a warning), and text as codes (LongTensor) plus ``<column>_names`` (sorted
    names; a missing value is ``"unknown"``), like ``cell_type``."""
    stored = []
    for col, values in nodes.extra.items():
        if col in consumed:
            continue
        attr, kind = _attr_name(col), values.dtype.kind
        if kind == "b":
            data[attr] = torch.from_numpy(values[rows].copy())
        elif kind in "iu":
            if kind == "u" and values.size and values.max() > np.iinfo(np.int64).max:
                _fail(nodes.name, f"node column {col!r} holds integers above int64's range")
            data[attr] = torch.from_numpy(values[rows].astype(np.int64))
        elif kind == "f":
            missing = int(np.isnan(values[rows]).sum())
            if missing:
                warnings.warn(f"{nodes.name}: node column {col!r} has {missing} missing value(s); they are "
                              f"NaN in data.{attr}", UserWarning, stacklevel=4)
            data[attr] = torch.from_numpy(values[rows].astype(np.float32))
        else:
            raw = values[rows]
            missing = np.asarray(pd.isna(raw), dtype=bool)
            text = np.array(["unknown" if m else str(v) for v, m in zip(raw, missing)], dtype=object)
            names, codes = np.unique(text.astype(str), return_inverse=True)
            if f"{attr}_names" in data or f"{attr}_names" in nodes.extra:
                _fail(nodes.name, f"node column {col!r} would be stored as codes {attr!r} with names "
                      f"{attr + '_names'!r}, a name already taken; rename one of the columns")
            data[attr] = torch.from_numpy(codes.astype(np.int64))
            data[f"{attr}_names"] = [str(v) for v in names]
        stored.append(col)
    return tuple(stored)


def load_connectome(
    source: Source,
    *,
    nodes: PathLike | pd.DataFrame | Mapping[str, Any] | np.ndarray | None = None,
    pre: str | None = None,
    post: str | None = None,
    weight: str | None = None,
    sign: str | None = None,
    nt: str | None = None,
    node_id: str | None = None,
    cell_type: str | None = None,
    node_nt: str | None = None,
    ids: str = "auto",
    nt_signs: Mapping[str, float] | None = None,
    default_sign: float | None = None,
    duplicates: str | None = None,
    gap_junctions: Any = None,
    threshold: float = 0,
    self_loops: bool = True,
    neurons: Iterable[Any] | None = None,
    cell_types: Iterable[str] | None = None,
    normalize: str | None = None,
    input_types: str | Iterable[str] | None = None,
    output_types: str | Iterable[str] | None = None,
    sep: str | None = None,
    return_report: bool = False,
) -> Data | tuple[Data, ConnectomeReport]:
    """Load a connectome edge list into a :class:`~torch_geometric.data.Data`.

    The result follows the layout in this module's docstring (``edge_index`` [2, E]
    pre->post sorted by (post, pre); ``syn_count``, ``sign``, ``syn_weight`` [E];
    ``cell_type``, ``node_id``/``node_names``, ``input_mask``, ``output_mask`` [N]).

    Args:
        source: ``.csv``/``.tsv``/``.txt`` (optionally ``.gz``/``.bz2``/``.xz``/
            ``.zip``/``.zst``), ``.parquet``, ``.npz`` (1-D arrays named like the
            columns) or ``.pt`` path; or a DataFrame, dict of 1-D arrays/lists,
            NumPy structured array, or torch sparse (COO/CSR) tensor.  A ``.pt``
            file or sparse tensor is an adjacency [N, N] with ``A[post, pre] =
            weight`` (rows are targets, like ``W`` in ``y = W x``): sign =
            sign(value), syn_count = |value|, node ids 0..N-1 (all N kept).
        nodes: optional node table (same tabular forms) with an id column and
            optionally a cell-type and a transmitter column. Every other column is
            kept as node metadata [N]: booleans as BoolTensor, integers as LongTensor,
            other numbers as FloatTensor (missing values NaN, with a warning), text as
            codes plus ``<column>_names`` (like ``cell_type``). Every neuron of the edge
            list must be in it; neurons only in it are kept as isolated nodes.
        pre, post, weight, sign, nt: edge column names.  Left out they are detected
            (FlyWire ``pre_root_id``/``post_root_id``/``syn_count``/``nt_type``,
            neuPrint ``bodyId_pre``/``bodyId_post``/``weight``, ...); two candidate
            columns for one of them are an error naming both.  Without a weight column
            each row is one synapse.
        node_id, cell_type, node_nt: node-table column names, detected likewise
            (``id``/``root_id``/``bodyId``; ``cell_type``/``type``/``instance``/
            ``cell_class``, the first present, the others kept as metadata;
            ``nt_type``/``nt``/``neurotransmitter``/``top_nt``/``predictedNt``/
            ``consensusNt``).
        ids: ``"auto"`` (integers stay integers, text is names; a column mixing
            integers and other text is an error), ``"int"`` or ``"str"`` (every id a
            name).  Names with surrounding whitespace, control characters (a NUL
            byte) or nothing in them are errors naming the row.
        nt_signs: extra or overriding neurotransmitter -> sign (+1/-1) entries,
            case-insensitive, over :data:`DEFAULT_NT_SIGNS` (fly convention:
            ACh +1, GABA -1, glutamate -1; for vertebrates pass
            ``{"glutamate": 1, "glu": 1, "glut": 1}``).  Modulators (SER, DA, OCT)
            and unknown names have no sign unless mapped here.
        default_sign: +1/-1 for rows with no sign otherwise (unmapped or missing
            neurotransmitter, or no sign information at all).  Sign precedence:
            the edge list's ``sign`` column, then negative weights (sign =
            sign(weight)), then its neurotransmitter column, then the presynaptic
            neuron's transmitter in the node table (FlyWire's and neuPrint's layout),
            then ``default_sign``; with none of them all rows are +1 and a
            ``UserWarning`` is issued. A sign source that is present but not used (a
            transmitter column next to a sign column) is named in a warning.
        duplicates: what repeated (pre, post) rows mean: ``"error"`` (the default
            for tables: the message shows an example and the choices), ``"sum"`` (the
            default for sparse adjacencies, whose repeated entries add up) (parts of one
            connection, e.g. one row per neuropil; rows with conflicting signs are an
            error), ``"max"`` or ``"first"`` (the same connection listed again, e.g.
            once per co-released transmitter: the row with the largest count, or the
            first row, is kept, with a warning where the rows' signs disagree).  The
            report counts the pairs and rows affected.
        gap_junctions: electrical synapses, as a second edge set (``gap_index``,
            ``gap_weight``, ``gap_type``: see :mod:`graphode.connectome.layout`): a table
            of their own (the same tabular forms; two neuron columns named like an
            edge list's and an optional weight, count or ``conductance``; one row per
            pair, either direction, or both), or ``(column, value)`` naming the rows of
            the edge list that are gap junctions (``("type", "EJ")``), the other rows
            being chemical synapses. ``threshold`` and ``self_loops`` leave them alone;
            ``neurons=``/``cell_types=`` select them too.
        threshold: drop connections with (merged) syn_count < threshold.
        self_loops: ``False`` drops pre == post connections.
        neurons, cell_types: keep only the subgraph induced by these original ids /
            cell-type names (intersection when both are given).
        normalize: ``None``, ``"in_syn"`` (syn_weight = syn_count / total syn_count
            into the target, so each target's inputs sum to 1) or ``"in_degree"``
            (syn_count / number of inputs of the target).
        input_types, output_types: cell-type name(s) or glob patterns (``"R*"``,
            ``"T4[a-d]"``), or the name of a boolean node-table column, that set
            ``input_mask`` / ``output_mask``; ``cell_types=`` takes patterns too.
        sep: column separator for text files (inferred from the extension / first
            line when ``None``).
        return_report: also return a :class:`ConnectomeReport` with row counts.

    Returns:
        ``data`` or ``(data, report)``.

    Raises:
        ConnectomeFormatError: malformed input or an empty result (ValueError).
        ImportError: ``.parquet`` without pyarrow.
    """
    if normalize not in (None, "in_syn", "in_degree"):
        raise ConnectomeFormatError(
            f"normalize must be None, 'in_syn' or 'in_degree', got {normalize!r}")
    if not np.isfinite(threshold):
        raise ConnectomeFormatError(f"threshold must be finite, got {threshold!r}")
    if duplicates is not None and duplicates not in DUPLICATE_POLICIES:
        raise ConnectomeFormatError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
    if ids not in ID_KINDS:
        raise ConnectomeFormatError(f"ids must be one of {ID_KINDS}, got {ids!r}")
    default_sign = _check_sign_value(default_sign, "default_sign")
    for k, v in (nt_signs or {}).items():
        _check_sign_value(v, f"nt_signs[{k!r}]")
    columns = dict(pre=pre, post=post, weight=weight, sign=sign, nt=nt, nt_signs=nt_signs,
                   default_sign=default_sign, ids=ids)
    gap_table = None
    if isinstance(gap_junctions, tuple):
        if len(gap_junctions) != 2 or isinstance(source, Tensor):
            raise ConnectomeFormatError(
                "gap_junctions=(column, value) names rows of a tabular edge list, e.g. ('type', 'EJ'); "
                f"got {gap_junctions!r} for a {type(source).__name__} source")
        chemical, gap_table = _split_rows(_read_table(source, sep, "edge list"), *gap_junctions)
        edges = _edges_from_table(chemical, **columns)
    else:
        edges = _read_edges(source, sep, **columns)
        if gap_junctions is not None:
            gap_table = _read_table(gap_junctions, sep, "gap-junction table")
    gaps = None if gap_table is None else _gaps_from_table(gap_table, edges.pre.dtype != object, ids)
    node_tab = (None if nodes is None else
                _read_nodes(nodes, node_id, cell_type, node_nt, sep, edges.pre.dtype != object, ids))
    if edges.sign is not None and node_tab is not None and node_tab.nt_column is not None:
        edges.unused_sign_sources.append(f"node-table transmitter column {node_tab.nt_column!r} "
                                         f"(kept as node metadata)")
    if edges.unused_sign_sources:
        warnings.warn(f"{edges.name}: signs come from the {edges.sign_source}; not used for signs: "
                      f"{'; '.join(edges.unused_sign_sources)}", UserWarning, stacklevel=2)
    if duplicates is None:
        duplicates = "sum" if edges.extra_ids is not None else "error"  # sparse adjacency: entries add up
    opt = _Options(float(threshold), duplicates, self_loops, neurons, cell_types,
                   normalize, input_types, output_types, nt_signs, default_sign)
    data, report = _assemble(edges, node_tab, opt, gaps)
    if report.default_signed:
        logger.info("%s: %d row(s) took default_sign=%+g", report.source,
                    report.default_signed, default_sign)
    validate_connectome(data)
    return (data, report) if return_report else data

