"""Edge lists (tables or sparse adjacencies) and node tables as raw rows."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ._columns import _nt_signs, _numeric, _sign_column
from ._common import (
    _CELL_TYPE_ALIASES, _NODE_ID_ALIASES, _NODE_NT_ALIASES, _NT_ALIASES, _POST_ALIASES, _PRE_ALIASES, _SAVE_FORMAT, _SIGN_ALIASES,
    _WEIGHT_ALIASES, ConnectomeFormatError, PathLike, _fail, _fmt, _show,
)
from ._ids import _coerce_ids, _ids_to_str, _parse_ids
from ._tables import _check_path, _read_table, _resolve_column, _Table, _table_suffix

logger = logging.getLogger("graphode.connectome")

Source = Union[PathLike, pd.DataFrame, Mapping[str, Any], np.ndarray, Tensor]


@dataclass
class _Edges:
    """Raw connections, one per input row, before relabelling."""

    pre: np.ndarray  # [R] ids, int64 or object(str)
    post: np.ndarray  # [R]
    count: np.ndarray  # [R] float64, >= 0
    sign: np.ndarray | None  # [R] float64, +-1; None until a sign source is found
    name: str
    extra_ids: np.ndarray | None = None  # nodes without connections (sparse sources)
    default_signed: int = 0
    sign_source: str | None = None  # what gave the signs, for the report
    unused_sign_sources: list = field(default_factory=list)  # columns present but not used


def _check_sign_value(value: float | None, param: str) -> float | None:
    if value is None:
        return None
    if value not in (1, -1):
        raise ConnectomeFormatError(f"{param} must be +1 or -1, got {value!r}")
    return float(value)


def _edges_from_table(
    table: _Table, *, pre: str | None, post: str | None, weight: str | None, sign: str | None,
    nt: str | None, nt_signs: Mapping[str, float] | None, default_sign: float | None, ids: str,
) -> _Edges:
    """Rows of an edge table; ``sign`` stays None when the table has no sign source (the node
    table's transmitters or ``default_sign`` decide later)."""
    src = table.name
    pre_c = _resolve_column(table, pre, _PRE_ALIASES, "pre", True)
    post_c = _resolve_column(table, post, _POST_ALIASES, "post", True)
    w_c = _resolve_column(table, weight, _WEIGHT_ALIASES, "weight", False)
    s_c = _resolve_column(table, sign, _SIGN_ALIASES, "sign", False)
    nt_c = _resolve_column(table, nt, _NT_ALIASES, "nt", False)
    logger.debug("%s: columns pre=%s post=%s weight=%s sign=%s nt=%s",
                 src, pre_c, post_c, w_c, s_c, nt_c)
    if table.nrows == 0:
        _fail(src, "empty edge list (no rows)")
    pre_ids = _parse_ids(table.columns[pre_c], "presynaptic", src, ids)
    post_ids = _parse_ids(table.columns[post_c], "postsynaptic", src, ids)
    if (pre_ids.dtype == object) != (post_ids.dtype == object):
        pre_ids, post_ids = _ids_to_str(pre_ids), _ids_to_str(post_ids)
    n = table.nrows
    w = (_numeric(table.columns[w_c], w_c, src, "weight") if w_c
         else np.ones(n, dtype=np.float64))  # no weight column: one synapse per row
    edges = _Edges(pre_ids, post_ids, w, None, src)
    if s_c is not None:
        edges.sign, edges.sign_source = _sign_column(table.columns[s_c], s_c, src), f"sign column {s_c!r}"
        if (w < 0).any():
            row = int(np.argmax(w < 0))
            _fail(src, f"row {row}: negative synapse count {_fmt(w[row])} in column {w_c!r}; "
                  f"with a sign column ({s_c!r}) counts must be >= 0")
        if nt_c is not None:
            edges.unused_sign_sources.append(f"transmitter column {nt_c!r}")
    elif (w < 0).any():
        if nt_c is not None:
            _fail(src, f"weight column {w_c!r} has negative values and there is a "
                  f"neurotransmitter column {nt_c!r}: the sign is ambiguous; use "
                  "non-negative counts or name a sign column with sign=")
        edges.sign, edges.sign_source = np.where(w < 0, -1.0, 1.0), f"signed weights in column {w_c!r}"
        edges.count = np.abs(w)
    elif nt_c is not None:
        edges.sign, edges.default_signed = _nt_signs(table.columns[nt_c], nt_c, src, nt_signs, default_sign)
        edges.sign_source = f"transmitter column {nt_c!r}"
    return edges


def _edges_from_sparse(adj: Tensor, src: str) -> _Edges:
    """Sparse adjacency [N, N] with A[post, pre] = signed weight -> raw connections."""
    if adj.layout == torch.strided:
        _fail(src, f"expected a sparse adjacency tensor, got a dense tensor of shape "
              f"{tuple(adj.shape)}; convert it with .to_sparse()")
    if adj.dim() != 2:
        _fail(src, f"sparse adjacency must be 2-D [N, N], got shape {tuple(adj.shape)}")
    n, m = adj.shape
    if n != m:
        _fail(src, f"sparse adjacency must be square [N, N], got shape {(n, m)}")
    if n == 0:
        _fail(src, "empty adjacency (0 x 0)")
    adj = adj.detach().cpu()
    if adj.layout == torch.sparse_csc:
        adj = adj.to_sparse_coo()
    if adj.layout == torch.sparse_coo:
        # Raw (possibly uncoalesced) entries: coalesce() would sum opposite signs.
        post, pre = adj._indices()
        vals = adj._values()
    elif adj.layout == torch.sparse_csr:
        post = torch.repeat_interleave(torch.arange(n), adj.crow_indices().diff())
        pre, vals = adj.col_indices(), adj.values()
    else:
        _fail(src, f"unsupported sparse layout {adj.layout}; use COO or CSR")
    if vals.dim() != 1 or vals.is_complex():
        _fail(src, f"adjacency values must be real scalars, got {vals.dtype} "
              f"with shape {tuple(vals.shape)}")
    post, pre = post.numpy().astype(np.int64), pre.numpy().astype(np.int64)
    out_of_range = (post < 0) | (post >= n) | (pre < 0) | (pre >= n)
    if out_of_range.any():
        k = int(np.argmax(out_of_range))
        _fail(src, f"entry {k} has index (post={post[k]}, pre={pre[k]}) outside [0, {n})")
    v = vals.to(torch.float64).numpy()
    bad = ~np.isfinite(v)
    if bad.any():
        k = int(np.argmax(bad))
        _fail(src, f"entry {k} (post={post[k]}, pre={pre[k]}) has non-finite value "
              f"{_fmt(v[k])}")
    if v.size == 0:
        _fail(src, "empty edge list (the adjacency has no stored entries)")
    return _Edges(pre, post, np.abs(v), np.where(v < 0, -1.0, 1.0), src,
                  extra_ids=np.arange(n, dtype=np.int64), sign_source="signed adjacency values")


def _torch_load(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # weights_only loading always validates sparse invariants (what we want)
            # and says so with a warning; CSR tensors add a "beta" warning.
            warnings.filterwarnings("ignore", message="Validating sparse tensor")
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        _fail(str(path), f"cannot load with torch.load(weights_only=True): {e}")


def _load_pt(path: Path) -> Tensor:
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == _SAVE_FORMAT:
        _fail(str(path), "this file was written by save_graph; read it with load_graph")
    if not isinstance(obj, Tensor):
        _fail(str(path), f"expected a sparse adjacency tensor, found "
              f"{type(obj).__name__}")
    return obj


def _read_edges(source: Source, sep: str | None, ids: str = "auto", **cols: Any) -> _Edges:
    if isinstance(source, Tensor):
        return _edges_from_sparse(source, "<sparse tensor>")
    if isinstance(source, (str, os.PathLike)):
        path = _check_path(source)
        if _table_suffix(path) == ".pt":
            return _edges_from_sparse(_load_pt(path), str(path))
    return _edges_from_table(_read_table(source, sep, "edge list"), ids=ids, **cols)


# ------------------------------------------------------------------------ node table
@dataclass
class _Nodes:
    ids: np.ndarray  # [M]
    cell_type: np.ndarray | None  # [M] object: str or None
    extra: dict[str, np.ndarray]  # [M] each: every other column
    name: str
    cell_type_column: str | None = None
    nt_column: str | None = None  # a transmitter column (also kept in extra)


def _read_nodes(source: Any, node_id: str | None, cell_type: str | None, nt: str | None, sep: str | None,
                int_kind: bool, ids: str) -> _Nodes:
    table = _read_table(source, sep, "node table")
    if table.nrows == 0:
        _fail(table.name, "the node table has no rows; every neuron of the edge list must be in it "
              "(or leave nodes= out)")
    id_c = _resolve_column(table, node_id, _NODE_ID_ALIASES, "node_id", True)
    ct_c = _resolve_column(table, cell_type, _CELL_TYPE_ALIASES, "cell_type", False, ambiguous="first")
    nt_c = _resolve_column(table, nt, _NT_ALIASES + _NODE_NT_ALIASES, "nt", False)
    node_ids = _coerce_ids(_parse_ids(table.columns[id_c], "node", table.name, ids), int_kind,
                           "node", table.name)
    uniq, counts = np.unique(node_ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        _fail(table.name, f"{len(dup)} node id(s) appear more than once in column "
              f"{id_c!r}: {_show(dup)}")
    ct = None
    if ct_c is not None:
        raw = table.columns[ct_c]
        missing = np.asarray(pd.isna(raw), dtype=bool)
        ct = np.array([None if m else str(v) for v, m in zip(raw, missing)], dtype=object)
    extra = {k: v for k, v in table.columns.items() if k not in (id_c, ct_c)}
    return _Nodes(node_ids, ct, extra, table.name, ct_c, nt_c)


# ------------------------------------------------------------------ electrical synapses
@dataclass
class _Gaps:
    """Gap-junction rows (undirected pairs), before relabelling."""

    a: np.ndarray  # [R] ids
    b: np.ndarray  # [R]
    weight: np.ndarray  # [R] float64, > 0
    name: str


_GAP_WEIGHT_ALIASES = _WEIGHT_ALIASES + ("conductance",)


def _gaps_from_table(table: _Table, int_kind: bool, ids: str) -> _Gaps:
    """Gap-junction rows: two neuron columns named like an edge list's (``pre``/``post``,
    ``source``/``target``, ...; the direction carries no meaning) and an optional weight
    (count or conductance; one junction per row without one)."""
    src = table.name
    if table.nrows == 0:
        _fail(src, "the gap-junction table has no rows (leave gap_junctions= out for none)")
    a_c = _resolve_column(table, None, _PRE_ALIASES, "pre", True)
    b_c = _resolve_column(table, None, _POST_ALIASES, "post", True)
    w_c = _resolve_column(table, None, _GAP_WEIGHT_ALIASES, "weight", False)
    a = _coerce_ids(_parse_ids(table.columns[a_c], "gap-junction", src, ids), int_kind, "gap-junction", src)
    b = _coerce_ids(_parse_ids(table.columns[b_c], "gap-junction", src, ids), int_kind, "gap-junction", src)
    w = (_numeric(table.columns[w_c], w_c, src, "gap-junction weight") if w_c
         else np.ones(table.nrows, dtype=np.float64))
    bad = w <= 0
    if bad.any():
        row = int(np.argmax(bad))
        _fail(src, f"row {row}: gap-junction weight {_fmt(w[row])} in column {w_c!r}; weights must be > 0 "
              "(leave a pair out instead of giving it 0)")
    loop = a == b
    if loop.any():
        row = int(np.argmax(loop))
        _fail(src, f"row {row}: gap junction from neuron {_fmt(a[row])} to itself; a gap junction joins two "
              "different neurons")
    return _Gaps(a, b, w, src)


def _split_rows(table: _Table, column: str, value: Any) -> tuple[_Table, _Table]:
    """The rows of ``table`` whose ``column`` is not / is ``value`` (compared as text)."""
    if column not in table.columns:
        _fail(table.name, f"gap_junctions=({column!r}, {value!r}): no column {column!r}; available columns: "
              f"{list(table.columns)}")
    mask = np.array([str(v) == str(value) for v in table.columns[column]], dtype=bool)
    if not mask.any():
        found = sorted({str(v) for v in table.columns[column]})[:10]
        _fail(table.name, f"gap_junctions=({column!r}, {value!r}): no row has {column} == {value!r} "
              f"(values: {found})")
    chemical, electrical = ({k: v[m] for k, v in table.columns.items()} for m in (~mask, mask))
    return _Table(chemical, table.name), _Table(electrical, table.name)
