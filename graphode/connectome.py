"""Connectome edge lists <-> :class:`torch_geometric.data.Data`.

:func:`load_connectome` turns an edge list (CSV/TSV/TXT, Parquet, NPZ, a sparse
adjacency ``.pt``, a DataFrame, a dict of arrays, a structured array or a torch
sparse tensor) plus an optional node table into one graph with the layout below;
:func:`save_graph` / :func:`load_graph` store it losslessly, and :func:`to_scipy`,
:func:`from_scipy`, :func:`to_networkx`, :func:`from_networkx` convert it.

Data layout (the contract the rest of :mod:`graphode` relies on)
----------------------------------------------------------------
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
    input_mask      BoolTensor  [N]     from ``input_types=`` / ``output_types=``;
    output_mask     BoolTensor  [N]     all False otherwise.
    <column>        FloatTensor [N]     each numeric extra node-table column
                    (BoolTensor [N])    (boolean columns stay boolean).  A column
                                        whose name clashes with a reserved key or a
                                        ``Data`` attribute (``x``, ``pos``, ``size``,
                                        ...) is stored as ``node_<column>``.
                                        Non-numeric extra columns are not stored.

Nodes are relabelled ``0..N-1`` in sorted order of the original ids (numeric order
for integer ids, Python string order for string ids); :func:`node_index` maps
original ids to node indices.  Integer ids are kept exactly (64-bit, e.g. FlyWire
root ids); float ids are accepted only when integral and below 2**53.  If pre or
post ids are strings, all ids are treated as strings.

Batching: ``torch_geometric.data.Batch.from_data_list`` offsets ``edge_index`` and
concatenates the edge/node tensors; the per-graph name lists become lists of lists,
and ``cell_type`` / ``edge_type`` codes stay relative to their own graph's names.

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
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, NoReturn, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from ._atomic import atomic_write

__all__ = [
    "ConnectomeFormatError",
    "ConnectomeFileNotFoundError",
    "ConnectomeReport",
    "load_connectome",
    "save_graph",
    "load_graph",
    "validate_connectome",
    "node_index",
    "to_scipy",
    "from_scipy",
    "to_networkx",
    "from_networkx",
    "DEFAULT_NT_SIGNS",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
Source = Union[PathLike, pd.DataFrame, Mapping[str, Any], np.ndarray, Tensor]


class ConnectomeFormatError(ValueError):
    """A connectome source (file, table or graph) does not have the expected form."""


class ConnectomeFileNotFoundError(ConnectomeFormatError, FileNotFoundError):
    """The connectome file does not exist (both a ValueError and a FileNotFoundError)."""


@dataclass(frozen=True)
class ConnectomeReport:
    """What :func:`load_connectome` did to the rows of ``source``.

    ``rows`` = ``outside_subset`` + ``duplicates_merged`` + ``self_loops_dropped``
    + ``below_threshold`` + ``num_edges``.
    """

    source: str
    rows: int  # rows of the edge list as read
    outside_subset: int  # rows dropped by neurons= / cell_types=
    duplicates_merged: int  # rows summed into another row of the same (pre, post)
    self_loops_dropped: int  # connections dropped by self_loops=False
    below_threshold: int  # connections dropped with syn_count < threshold
    default_signed: int  # rows whose sign came from default_sign
    num_nodes: int
    num_edges: int


# Fly convention: glutamate acts mostly through GluClα, an inhibitory chloride
# channel.  In vertebrates glutamate is excitatory: pass nt_signs={"glutamate": 1,
# "glu": 1, "glut": 1}.  Keys are matched case-insensitively.
DEFAULT_NT_SIGNS: dict[str, float] = {
    "ach": 1.0,
    "acetylcholine": 1.0,
    "gaba": -1.0,
    "glu": -1.0,
    "glut": -1.0,
    "glutamate": -1.0,
}
# Recognised, but their sign depends on the receptor: the user has to decide.
_MODULATORY = frozenset(
    {"ser", "serotonin", "5-ht", "5ht", "da", "dopamine", "oct", "octopamine"}
)

_PRE_ALIASES = ("pre", "pre_root_id", "bodyId_pre", "source", "pre_id")
_POST_ALIASES = ("post", "post_root_id", "bodyId_post", "target", "post_id")
_WEIGHT_ALIASES = ("syn_count", "weight", "count", "n_syn", "synapses")
_NT_ALIASES = ("nt_type", "nt", "neurotransmitter")
_SIGN_ALIASES = ("sign",)
_NODE_ID_ALIASES = ("id", "root_id", "bodyId")
_CELL_TYPE_ALIASES = ("cell_type", "type", "instance", "cell_class")

_TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": None}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zip", ".zst")
_SAVE_FORMAT = "graphode.connectome"
_SAVE_VERSION = 1
_MAX_EXACT_FLOAT_ID = 2**53  # floats above this cannot hold every integer id
_RESERVED_KEYS = frozenset(
    {
        "edge_index", "syn_count", "sign", "syn_weight", "edge_type", "edge_type_names",
        "num_nodes", "cell_type", "cell_type_names", "node_id", "node_names",
        "input_mask", "output_mask", "x", "y", "pos", "batch", "ptr", "edge_attr",
        "edge_weight", "face", "time",
    }
)


def _fail(src: str, msg: str) -> NoReturn:
    raise ConnectomeFormatError(f"{src}: {msg}")


# --------------------------------------------------------------------------- tables
@dataclass
class _Table:
    """Equal-length 1-D columns of one tabular source."""

    columns: dict[str, np.ndarray]
    name: str

    @property
    def nrows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def _series_to_numpy(s: pd.Series) -> np.ndarray:
    # Nullable pandas dtypes (Int64, boolean, Arrow strings) give object arrays
    # holding pd.NA; turn them into plain NumPy dtypes so later checks are uniform.
    has_na = bool(s.isna().any())
    if pd.api.types.is_bool_dtype(s.dtype) and not has_na:
        return s.to_numpy(dtype=bool)
    if pd.api.types.is_integer_dtype(s.dtype) and not has_na:
        return s.to_numpy(dtype=np.uint64 if s.dtype.kind == "u" else np.int64)
    if pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        return s.to_numpy(dtype=np.float64, na_value=np.nan)
    return s.to_numpy(dtype=object, na_value=None)


def _as_column(value: Any, key: str, src: str) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim != 1:
        _fail(src, f"array {key!r} must be 1-D, got shape {tuple(arr.shape)}")
    if arr.dtype.kind == "S":
        return np.array([v.decode() for v in arr], dtype=object)
    if arr.dtype.kind == "U":
        return arr.astype(object)
    return arr


def _table_from_columns(cols: Mapping[Any, Any], src: str) -> _Table:
    columns = {str(k): _as_column(v, str(k), src) for k, v in cols.items()}
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        _fail(src, f"arrays have different lengths: {lengths}")
    return _Table(columns, src)


def _infer_sep(path: Path) -> str:
    # .txt edge lists come as comma-, tab- or whitespace-separated.
    with open(path, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    if "\t" in first:
        return "\t"
    if "," in first:
        return ","
    return r"\s+"


def _table_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _read_delimited(path: Path, sep: str | None, suffix: str) -> pd.DataFrame:
    if sep is None:
        sep = _TABLE_SUFFIXES[suffix] or _infer_sep(path)
    try:
        # low_memory=False: chunked type inference could give one column mixed types.
        return pd.read_csv(path, sep=sep, low_memory=False)
    except pd.errors.EmptyDataError:
        _fail(str(path), "file is empty (no header, no rows)")
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        _fail(str(path), f"cannot parse as a {sep!r}-separated table: {e}")


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImportError(
            f"{path}: reading .parquet files needs pyarrow; install it with "
            "`pip install pyarrow` (or convert the file to .csv)"
        ) from None
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises its own exception types
        _fail(str(path), f"cannot read parquet file: {e}")


def _read_npz(path: Path) -> _Table:
    try:
        with np.load(path, allow_pickle=False) as z:
            cols = {k: z[k] for k in z.files}
    except ValueError as e:  # object arrays need pickle, which we refuse
        _fail(str(path), f"cannot read .npz without pickle ({e}); save string ids as "
              "fixed-width unicode arrays, e.g. np.asarray(names, dtype=str)")
    except Exception as e:
        _fail(str(path), f"not a valid .npz archive: {e}")
    if not cols:
        _fail(str(path), "the .npz archive holds no arrays")
    return _table_from_columns(cols, str(path))


def _check_path(source: PathLike) -> Path:
    path = Path(source)
    if not path.exists():
        raise ConnectomeFileNotFoundError(f"{path}: file not found")
    if path.is_dir():
        _fail(str(path), "is a directory, expected a file")
    return path


def _read_table(source: Any, sep: str | None, what: str) -> _Table:
    """Read a tabular source (path, DataFrame, dict, structured array)."""
    if isinstance(source, pd.DataFrame):
        cols = {str(c): _series_to_numpy(source[c]) for c in source.columns}
        return _Table(cols, f"<DataFrame {what}>")
    if isinstance(source, Mapping):
        return _table_from_columns(source, f"<dict {what}>")
    if isinstance(source, np.ndarray):
        if source.dtype.names is None:
            _fail(f"<array {what}>", "a NumPy array source must be a structured array "
                  "with named fields (e.g. 'pre', 'post')")
        return _table_from_columns({n: source[n] for n in source.dtype.names},
                                   f"<structured array {what}>")
    if not isinstance(source, (str, os.PathLike)):
        raise ConnectomeFormatError(
            f"unsupported {what} source of type {type(source).__name__}; expected a "
            "path, DataFrame, dict of arrays, structured array or torch sparse tensor"
        )
    path = _check_path(source)
    suffix = _table_suffix(path)
    if suffix in _TABLE_SUFFIXES:
        df = _read_delimited(path, sep, suffix)
    elif suffix == ".parquet":
        df = _read_parquet(path)
    elif suffix == ".npz":
        return _read_npz(path)
    else:
        _fail(str(path), f"unsupported file extension {suffix!r} for {what}; use .csv, "
              ".tsv, .txt (optionally compressed), .parquet, .npz"
              + (" or .pt" if what == "edge list" else ""))
    cols = {str(c): _series_to_numpy(df[c]) for c in df.columns}
    return _Table(cols, str(path))


def _resolve_column(
    table: _Table, given: str | None, default: str | None, aliases: Sequence[str],
    param: str, required: bool,
) -> str | None:
    """Column to use for ``param``: the one given explicitly, else the first alias."""
    cols = list(table.columns)
    if given is not None and given != default:
        if given in table.columns:
            return given
        _fail(table.name, f"column {given!r} (from {param}=) not found; "
              f"available columns: {cols}")
    lower = {c.lower(): c for c in cols}
    for cand in aliases:
        if cand in table.columns:
            return cand
    for cand in aliases:
        if cand.lower() in lower:
            return lower[cand.lower()]
    if required:
        _fail(table.name, f"no {param} column found (looked for {list(aliases)}); "
              f"available columns: {cols}; name it with {param}=")
    return None


# ------------------------------------------------------------------------------ ids
def _parse_ids(values: np.ndarray, what: str, src: str) -> np.ndarray:
    """1-D ids -> int64 array, or object array of ``str``."""
    kind = values.dtype.kind
    if kind == "u":
        if values.size and values.max() > np.iinfo(np.int64).max:
            row = int(np.argmax(values > np.iinfo(np.int64).max))
            _fail(src, f"row {row}: {what} id {values[row]} does not fit in int64")
        return values.astype(np.int64)
    if kind == "i":
        return values.astype(np.int64, copy=False)
    if kind == "f":
        return _float_ids(values, what, src)
    if kind == "O":
        missing = np.asarray(pd.isna(values), dtype=bool)
        if missing.any():
            _fail(src, f"row {int(np.argmax(missing))}: missing {what} id")
        is_str = np.fromiter((isinstance(v, str) for v in values), bool, len(values))
        if is_str.all():
            return values
        is_num = np.fromiter(
            (isinstance(v, (int, float, np.integer, np.floating))
             and not isinstance(v, (bool, np.bool_)) for v in values), bool, len(values))
        if is_num.all():
            if all(isinstance(v, (int, np.integer)) for v in values):
                try:
                    return np.array(values.tolist(), dtype=np.int64)
                except OverflowError:
                    _fail(src, f"{what} ids do not fit in int64")
            return _float_ids(values.astype(np.float64), what, src)
        row = int(np.argmax(~(is_str if is_str.any() else is_num)))
        _fail(src, f"row {row}: {what} id {_fmt(values[row])} "
              f"({type(values[row]).__name__}) mixes id types in one column")
    _fail(src, f"{what} ids have unsupported dtype {values.dtype} "
          "(expected integers or strings)")


def _float_ids(values: np.ndarray, what: str, src: str) -> np.ndarray:
    bad = ~np.isfinite(values)
    if bad.any():
        _fail(src, f"row {int(np.argmax(bad))}: missing or non-finite {what} id")
    frac = values != np.floor(values)
    if frac.any():
        row = int(np.argmax(frac))
        _fail(src, f"row {row}: {what} id {_fmt(values[row])} is not an integer")
    big = np.abs(values) > _MAX_EXACT_FLOAT_ID
    if big.any():
        row = int(np.argmax(big))
        _fail(src, f"row {row}: {what} id {_fmt(values[row])} is stored as a float above "
              "2**53 and may have lost digits; store ids as integers")
    return values.astype(np.int64)


def _ids_to_str(ids: np.ndarray) -> np.ndarray:
    return ids if ids.dtype == object else ids.astype(str).astype(object)


def _coerce_ids(ids: np.ndarray, int_kind: bool, what: str, src: str) -> np.ndarray:
    """Bring ``ids`` to the id kind of the edge list (int64 or str)."""
    if not int_kind:
        return _ids_to_str(ids)
    if ids.dtype != object:
        return ids
    out = np.empty(len(ids), dtype=np.int64)
    for i, v in enumerate(ids):
        try:
            out[i] = int(v)
        except (ValueError, OverflowError):
            _fail(src, f"row {i}: {what} id {_fmt(v)} is not an integer, but the edge list "
                  "has integer ids")
    return out


def _id_query(ids: Iterable[Any], int_kind: bool, what: str, src: str) -> np.ndarray:
    """User-given ids (list, array, tensor) -> array of the graph's id kind."""
    arr = ids if isinstance(ids, (np.ndarray, Tensor)) else np.asarray(list(ids))
    arr = _as_column(arr, what, src)
    return _coerce_ids(_parse_ids(arr, what, src), int_kind, what, src)


def _fmt(value: Any) -> str:
    """repr without NumPy's ``np.int64(...)`` wrapper, for messages."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _show(ids: Iterable[Any], limit: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(_fmt(i) for i in ids[:limit])
    return shown + (", ..." if len(ids) > limit else "")


# --------------------------------------------------------------------- numeric columns
def _numeric(values: np.ndarray, col: str, src: str, what: str) -> np.ndarray:
    """Column -> float64, failing on non-numeric, NaN and infinite entries."""
    if values.dtype.kind in "iufb":
        out = values.astype(np.float64)
    else:
        out = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(np.float64)
        bad = np.isnan(out) & ~np.asarray(pd.isna(values), dtype=bool)
        if bad.any():
            row = int(np.argmax(bad))
            _fail(src, f"row {row}: {what} column {col!r} has non-numeric value "
                  f"{_fmt(values[row])}")
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.argmax(bad))
        _fail(src, f"row {row}: {what} column {col!r} has non-finite value "
              f"{_fmt(values[row])} (NaN, missing or infinite)")
    return out


def _nt_signs(
    nt: np.ndarray, col: str, src: str, nt_signs: Mapping[str, float] | None,
    default_sign: float | None,
) -> tuple[np.ndarray, int]:
    """Neurotransmitter names [E] -> signs [E] and the number of default-signed rows."""
    table = dict(DEFAULT_NT_SIGNS)
    for k, v in (nt_signs or {}).items():
        table[str(k).strip().lower()] = float(v)
    codes, uniques = pd.factorize(pd.Series(nt, dtype=object), use_na_sentinel=True)
    names = [str(u).strip() for u in uniques]
    signs_u = np.array([table.get(n.lower(), np.nan) for n in names] + [np.nan])
    signs = signs_u[codes]  # code -1 (missing name) picks the trailing NaN
    unmapped = np.isnan(signs)
    if not unmapped.any():
        return signs, 0
    if default_sign is not None:
        signs[unmapped] = default_sign
        return signs, int(unmapped.sum())
    counts = np.bincount(codes[unmapped] + 1, minlength=len(names) + 1)
    parts = []
    if counts[0]:
        parts.append(f"<missing> ({counts[0]} rows)")
    for i, n in enumerate(names):
        if counts[i + 1]:
            why = "modulatory, no default sign" if n.lower() in _MODULATORY else "unknown"
            parts.append(f"{n!r} ({counts[i + 1]} rows; {why})")
    example = next((n for i, n in enumerate(names) if counts[i + 1]), "SER")
    _fail(src, f"no sign for neurotransmitter(s) in column {col!r}: {', '.join(parts)}. "
          f"Map them with nt_signs={{{example!r}: 1}} (or -1), or pass default_sign=1 "
          "or -1 to sign every unmapped connection")


def _sign_column(values: np.ndarray, col: str, src: str) -> np.ndarray:
    s = _numeric(values, col, src, "sign")
    bad = (s != 1.0) & (s != -1.0)
    if bad.any():
        row = int(np.argmax(bad))
        _fail(src, f"row {row}: sign column {col!r} has value {_fmt(values[row])}; "
              "signs must be +1 or -1")
    return s


# ------------------------------------------------------------------------ edge lists
@dataclass
class _Edges:
    """Raw connections, one per input row, before relabelling."""

    pre: np.ndarray  # [R] ids, int64 or object(str)
    post: np.ndarray  # [R]
    count: np.ndarray  # [R] float64, >= 0
    sign: np.ndarray  # [R] float64, +-1
    name: str
    extra_ids: np.ndarray | None = None  # nodes without connections (sparse sources)
    default_signed: int = 0


def _check_sign_value(value: float | None, param: str) -> float | None:
    if value is None:
        return None
    if value not in (1, -1):
        raise ConnectomeFormatError(f"{param} must be +1 or -1, got {value!r}")
    return float(value)


def _edges_from_table(
    table: _Table, *, pre: str, post: str, weight: str | None, sign: str | None,
    nt: str | None, nt_signs: Mapping[str, float] | None, default_sign: float | None,
) -> _Edges:
    src = table.name
    pre_c = _resolve_column(table, pre, "pre", _PRE_ALIASES, "pre", True)
    post_c = _resolve_column(table, post, "post", _POST_ALIASES, "post", True)
    w_c = _resolve_column(table, weight, None, _WEIGHT_ALIASES, "weight", False)
    s_c = _resolve_column(table, sign, None, _SIGN_ALIASES, "sign", False)
    nt_c = _resolve_column(table, nt, None, _NT_ALIASES, "nt", False)
    logger.debug("%s: columns pre=%s post=%s weight=%s sign=%s nt=%s",
                 src, pre_c, post_c, w_c, s_c, nt_c)
    if table.nrows == 0:
        _fail(src, "empty edge list (no rows)")
    pre_ids = _parse_ids(table.columns[pre_c], "presynaptic", src)
    post_ids = _parse_ids(table.columns[post_c], "postsynaptic", src)
    if (pre_ids.dtype == object) != (post_ids.dtype == object):
        pre_ids, post_ids = _ids_to_str(pre_ids), _ids_to_str(post_ids)
    n = table.nrows
    w = (_numeric(table.columns[w_c], w_c, src, "weight") if w_c
         else np.ones(n, dtype=np.float64))  # no weight column: one synapse per row
    default_signed = 0
    if s_c is not None:
        s = _sign_column(table.columns[s_c], s_c, src)
        if (w < 0).any():
            row = int(np.argmax(w < 0))
            _fail(src, f"row {row}: negative synapse count {_fmt(w[row])} in column {w_c!r}; "
                  f"with a sign column ({s_c!r}) counts must be >= 0")
    elif (w < 0).any():
        if nt_c is not None:
            _fail(src, f"weight column {w_c!r} has negative values and there is a "
                  f"neurotransmitter column {nt_c!r}: the sign is ambiguous; use "
                  "non-negative counts or name a sign column with sign=")
        s = np.where(w < 0, -1.0, 1.0)
        w = np.abs(w)
    elif nt_c is not None:
        s, default_signed = _nt_signs(table.columns[nt_c], nt_c, src, nt_signs,
                                      default_sign)
    elif default_sign is not None:
        s, default_signed = np.full(n, default_sign), n
    else:
        warnings.warn(
            f"{src}: no sign, neurotransmitter or signed weight column; all {n} "
            "synapses were taken as excitatory (+1). Pass default_sign=1 to make this "
            "explicit, or provide a sign/nt column.", UserWarning, stacklevel=3)
        s = np.ones(n)
    return _Edges(pre_ids, post_ids, w, s, src, default_signed=default_signed)


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
                  extra_ids=np.arange(n, dtype=np.int64))


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


def _read_edges(source: Source, sep: str | None, **cols: Any) -> _Edges:
    if isinstance(source, Tensor):
        return _edges_from_sparse(source, "<sparse tensor>")
    if isinstance(source, (str, os.PathLike)):
        path = _check_path(source)
        if _table_suffix(path) == ".pt":
            return _edges_from_sparse(_load_pt(path), str(path))
    return _edges_from_table(_read_table(source, sep, "edge list"), **cols)


# ------------------------------------------------------------------------ node table
@dataclass
class _Nodes:
    ids: np.ndarray  # [M]
    cell_type: np.ndarray | None  # [M] object: str or None
    extra: dict[str, np.ndarray]  # [M] each
    name: str


def _read_nodes(source: Any, node_id: str, cell_type: str, sep: str | None,
                int_kind: bool) -> _Nodes:
    table = _read_table(source, sep, "node table")
    id_c = _resolve_column(table, node_id, "id", _NODE_ID_ALIASES, "node_id", True)
    ct_c = _resolve_column(table, cell_type, "cell_type", _CELL_TYPE_ALIASES,
                           "cell_type", False)
    ids = _coerce_ids(_parse_ids(table.columns[id_c], "node", table.name), int_kind,
                      "node", table.name)
    uniq, counts = np.unique(ids, return_counts=True)
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
    return _Nodes(ids, ct, extra, table.name)


# ------------------------------------------------------------------------- assembly
def _lookup(uniq: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` in sorted ``uniq`` and whether each was found."""
    pos = np.searchsorted(uniq, ids)
    pos_c = np.minimum(pos, len(uniq) - 1)
    return pos_c, uniq[pos_c] == ids


def _names_to_codes(names: Iterable[str], vocab: Sequence[str], param: str,
                    src: str) -> list[int]:
    names = [names] if isinstance(names, str) else list(names)
    index = {n: i for i, n in enumerate(vocab)}
    unknown = [n for n in names if n not in index]
    if unknown:
        _fail(src, f"{param}: unknown cell type(s) {_show(unknown)}; available: "
              f"{_show(vocab, 20)}")
    return [index[n] for n in names]


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
            _fail(nodes.name, f"{param}={spec!r}: column must be boolean (True/False "
                  "or 0/1)")
        return num[rows].astype(bool), spec
    if nodes is None or nodes.cell_type is None:
        _fail(src, f"{param}={spec!r} names cell types, which need a node table with "
              "a cell_type column (nodes=...)")
    return np.isin(type_code, _names_to_codes(spec, vocab, param, src)), None


def _attr_name(column: str) -> str:
    if column in _RESERVED_KEYS or hasattr(Data, column):
        return f"node_{column}"
    return column


@dataclass
class _Options:
    threshold: float
    merge_duplicates: bool
    self_loops: bool
    neurons: Iterable[Any] | None
    cell_types: Iterable[str] | None
    normalize: str | None
    input_types: Any
    output_types: Any


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


def _assemble(edges: _Edges, nodes: _Nodes | None, opt: _Options
              ) -> tuple[Data, ConnectomeReport]:
    src = edges.name
    rows = len(edges.pre)
    parts = [edges.pre, edges.post]
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

    keep = _subset_mask(uniq, type_name, has_types, opt, src)
    new = np.cumsum(keep) - 1
    row_keep = keep[pre0] & keep[post0]
    outside = rows - int(row_keep.sum())
    ids = uniq[keep]
    n = len(ids)
    pre_e, post_e, count, sign, merged = _merge(
        new[pre0[row_keep]], new[post0[row_keep]], edges.count[row_keep],
        edges.sign[row_keep], n, ids, opt.merge_duplicates, src)
    loops_dropped = 0
    if not opt.self_loops:
        m = pre_e != post_e
        loops_dropped = int((~m).sum())
        pre_e, post_e, count, sign = pre_e[m], post_e[m], count[m], sign[m]
    m = count >= opt.threshold
    below = int((~m).sum())
    pre_e, post_e, count, sign = pre_e[m], post_e[m], count[m], sign[m]
    report = ConnectomeReport(src, rows, outside, merged, loops_dropped, below,
                              edges.default_signed, n, len(pre_e))
    _log_report(report, opt.threshold)
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
    if nodes is not None:
        _set_node_columns(data, nodes, kept_rows, consumed)
    return data, report


def _log_report(r: ConnectomeReport, threshold: float) -> None:
    for what, k in (("outside neurons=/cell_types=", r.outside_subset),
                    ("self-loop", r.self_loops_dropped),
                    (f"below threshold={threshold:g}", r.below_threshold)):
        if k:
            logger.info("%s: dropped %d %s connection(s)", r.source, k, what)
    if r.duplicates_merged:
        logger.info("%s: summed %d duplicate row(s) into existing connections",
                    r.source, r.duplicates_merged)


def _merge(pre: np.ndarray, post: np.ndarray, count: np.ndarray, sign: np.ndarray,
           n: int, ids: np.ndarray, merge: bool, src: str
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Sort rows by (post, pre) and sum duplicate pairs; returns (..., rows merged)."""
    key = post.astype(np.int64) * n + pre  # np.unique sorts: target-major order
    ukey, ginv, gsize = np.unique(key, return_inverse=True, return_counts=True)
    merged = len(key) - len(ukey)
    if merged and not merge:
        g = int(np.argmax(gsize > 1))
        _fail(src, f"{merged} duplicate row(s), e.g. pre={_show([ids[ukey[g] % n]])} "
              f"post={_show([ids[ukey[g] // n]])} appears {gsize[g]} times; pass "
              "merge_duplicates=True to sum them")
    positive = np.bincount(ginv, weights=(sign > 0), minlength=len(ukey))
    conflict = (positive > 0) & (positive < gsize)
    if conflict.any():
        g = int(np.argmax(conflict))
        _fail(src, f"{int(conflict.sum())} connection(s) have duplicate rows with "
              f"conflicting signs, e.g. pre={_show([ids[ukey[g] % n]])} "
              f"post={_show([ids[ukey[g] // n]])}")
    total = np.bincount(ginv, weights=count, minlength=len(ukey))
    return (ukey % n, ukey // n, total, np.where(positive > 0, 1.0, -1.0), merged)


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


def _set_node_columns(data: Data, nodes: _Nodes, rows: np.ndarray,
                      consumed: set) -> None:
    ignored = []
    for col, values in nodes.extra.items():
        if col in consumed:
            continue
        kind = values.dtype.kind
        if kind == "b":
            data[_attr_name(col)] = torch.from_numpy(values[rows].copy())
        elif kind in "iuf":
            data[_attr_name(col)] = torch.from_numpy(values[rows].astype(np.float32))
        else:
            ignored.append(col)
    if ignored:
        logger.info("%s: non-numeric node columns not stored: %s", nodes.name, ignored)


def load_connectome(
    source: Source,
    *,
    nodes: PathLike | pd.DataFrame | Mapping[str, Any] | np.ndarray | None = None,
    pre: str = "pre",
    post: str = "post",
    weight: str | None = None,
    sign: str | None = None,
    nt: str | None = None,
    node_id: str = "id",
    cell_type: str = "cell_type",
    nt_signs: Mapping[str, float] | None = None,
    default_sign: float | None = None,
    threshold: float = 0,
    merge_duplicates: bool = True,
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
            optionally a cell-type column; other numeric/boolean columns become
            node attributes [N].  Every neuron of the edge list must be in it;
            neurons only in it are kept as isolated nodes.
        pre, post, weight, sign, nt: edge column names.  Left at their defaults they
            are auto-detected (FlyWire ``pre_root_id``/``post_root_id``/
            ``syn_count``/``nt_type``, neuPrint ``bodyId_pre``/``bodyId_post``/
            ``weight``, ...).  Without a weight column each row is one synapse.
        node_id, cell_type: node-table column names, auto-detected likewise
            (``id``/``root_id``/``bodyId``; ``cell_type``/``type``/``instance``/
            ``cell_class``).
        nt_signs: extra or overriding neurotransmitter -> sign (+1/-1) entries,
            case-insensitive, over :data:`DEFAULT_NT_SIGNS` (fly convention:
            ACh +1, GABA -1, glutamate -1; for vertebrates pass
            ``{"glutamate": 1, "glu": 1, "glut": 1}``).  Modulators (SER, DA, OCT)
            and unknown names have no sign unless mapped here.
        default_sign: +1/-1 for rows with no sign otherwise (unmapped or missing
            neurotransmitter, or no sign information at all).  Sign precedence:
            ``sign`` column, then negative weights (sign = sign(weight)), then
            neurotransmitter, then ``default_sign``; with none of them all rows are
            +1 and a ``UserWarning`` is issued.
        threshold: drop connections with (merged) syn_count < threshold.
        merge_duplicates: sum syn_count over repeated (pre, post) rows (conflicting
            signs raise); ``False`` makes repeated pairs an error.
        self_loops: ``False`` drops pre == post connections.
        neurons, cell_types: keep only the subgraph induced by these original ids /
            cell-type names (intersection when both are given).
        normalize: ``None``, ``"in_syn"`` (syn_weight = syn_count / total syn_count
            into the target, so each target's inputs sum to 1) or ``"in_degree"``
            (syn_count / number of inputs of the target).
        input_types, output_types: cell-type name(s), or the name of a boolean
            node-table column, that set ``input_mask`` / ``output_mask``.
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
    default_sign = _check_sign_value(default_sign, "default_sign")
    for k, v in (nt_signs or {}).items():
        _check_sign_value(v, f"nt_signs[{k!r}]")
    edges = _read_edges(source, sep, pre=pre, post=post, weight=weight, sign=sign,
                        nt=nt, nt_signs=nt_signs, default_sign=default_sign)
    node_tab = (None if nodes is None else
                _read_nodes(nodes, node_id, cell_type, sep, edges.pre.dtype != object))
    opt = _Options(float(threshold), merge_duplicates, self_loops, neurons, cell_types,
                   normalize, input_types, output_types)
    data, report = _assemble(edges, node_tab, opt)
    if report.default_signed:
        logger.info("%s: %d row(s) took default_sign=%+g", report.source,
                    report.default_signed, default_sign)
    validate_connectome(data)
    return (data, report) if return_report else data


# ------------------------------------------------------------------------ validation
def _check_edge_tensor(data: Data, key: str, dtype: torch.dtype, e: int,
                       required: bool) -> Tensor | None:
    if key not in data:
        if required:
            raise ConnectomeFormatError(f"graph has no {key!r} attribute "
                                        f"(expected {dtype} [E={e}])")
        return None
    t = data[key]
    if not isinstance(t, Tensor) or t.dtype != dtype or tuple(t.shape) != (e,):
        got = (f"{t.dtype} {list(t.shape)}" if isinstance(t, Tensor)
               else type(t).__name__)
        raise ConnectomeFormatError(f"{key!r} must be {dtype} of shape [E={e}], "
                                    f"got {got}")
    return t


def _check_node_tensor(data: Data, key: str, dtype: torch.dtype, n: int) -> Tensor | None:
    if key not in data:
        return None
    t = data[key]
    if not isinstance(t, Tensor) or t.dtype != dtype or tuple(t.shape) != (n,):
        got = (f"{t.dtype} {list(t.shape)}" if isinstance(t, Tensor)
               else type(t).__name__)
        raise ConnectomeFormatError(f"{key!r} must be {dtype} of shape [N={n}], "
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
        raise ConnectomeFormatError(f"{key!r} codes must lie in [0, {len(names)}) "
                                    f"({names_key} has {len(names)} names)")


def validate_connectome(data: Data) -> None:
    """Raise :class:`ConnectomeFormatError` (a ValueError) unless ``data`` follows the
    layout of this module's docstring.

    Checks: explicit ``num_nodes`` > 0; ``edge_index`` LongTensor [2, E] in range and
    sorted by (target, source) without duplicates; ``syn_count`` (finite, >= 0),
    ``sign`` (+-1) and ``syn_weight`` (finite) FloatTensors [E]; when present,
    ``edge_type`` LongTensor [E], ``cell_type`` / ``node_id`` LongTensor [N],
    ``input_mask`` / ``output_mask`` BoolTensor [N], ``node_names`` of length N,
    and codes within their name lists.  Works on a ``Batch`` of such graphs.
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
    if e:
        key = ei[1] * n + ei[0]
        if not bool((key[1:] > key[:-1]).all()):
            raise ConnectomeFormatError(
                "edge_index must be sorted by (target, source) without duplicate pairs; "
                "use torch_geometric.utils.coalesce(edge_index, edge_attr, "
                "sort_by_row=False) or load_connectome")
    syn_count = _check_edge_tensor(data, "syn_count", torch.float32, e, True)
    if not bool(torch.isfinite(syn_count).all()) or bool((syn_count < 0).any()):
        raise ConnectomeFormatError("syn_count must be finite and >= 0")
    sign = _check_edge_tensor(data, "sign", torch.float32, e, True)
    if not bool(((sign == 1) | (sign == -1)).all()):
        raise ConnectomeFormatError("sign values must be +1. or -1.")
    syn_weight = _check_edge_tensor(data, "syn_weight", torch.float32, e, False)
    if syn_weight is None:
        raise ConnectomeFormatError("graph has no 'syn_weight' attribute; set "
                                    "data.syn_weight = data.syn_count.clone()")
    if not bool(torch.isfinite(syn_weight).all()):
        raise ConnectomeFormatError("syn_weight must be finite")
    _check_edge_tensor(data, "edge_type", torch.long, e, False)
    _check_codes(data, "edge_type", "edge_type_names")
    _check_node_tensor(data, "cell_type", torch.long, n)
    _check_codes(data, "cell_type", "cell_type_names")
    _check_node_tensor(data, "node_id", torch.long, n)
    for key in ("input_mask", "output_mask"):
        _check_node_tensor(data, key, torch.bool, n)
    names = data["node_names"] if "node_names" in data else None
    if names is not None and not isinstance(data, Batch) and len(names) != n:
        raise ConnectomeFormatError(f"node_names has {len(names)} entries for "
                                    f"N={n} nodes")


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


# ----------------------------------------------------------------------- save / load
def _check_savable(key: str, value: Any) -> None:
    scalar = (int, float, str, bool, type(None))
    ok = isinstance(value, (Tensor, *scalar)) or (
        isinstance(value, (list, tuple)) and all(isinstance(v, scalar) for v in value))
    if not ok:
        raise ConnectomeFormatError(
            f"save_graph: attribute {key!r} of type {type(value).__name__} cannot be "
            "stored (tensors, numbers, strings and lists of them only)")


def save_graph(data: Data, path: PathLike) -> None:
    """Write ``data`` to one file, atomically (temp file + ``os.replace``).

    All attributes are stored (tensors, numbers, strings, lists of them); read the
    file back with :func:`load_graph`, which returns an identical graph.
    """
    validate_connectome(data)
    attrs = data.to_dict()
    for k, v in attrs.items():
        _check_savable(k, v)
    path = Path(path)
    payload = {"format": _SAVE_FORMAT, "version": _SAVE_VERSION, "attrs": attrs}
    # A crash before the final rename leaves any old file untouched.
    atomic_write(path, lambda f: torch.save(payload, f))


def load_graph(path: PathLike) -> Data:
    """Read a graph written by :func:`save_graph` (``torch.load(weights_only=True)``)."""
    path = _check_path(path)
    payload = _torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != _SAVE_FORMAT:
        _fail(str(path), "not a graph written by save_graph (for a sparse adjacency "
              "use load_connectome)")
    if payload.get("version") != _SAVE_VERSION:
        _fail(str(path), f"unsupported save_graph version {payload.get('version')!r}")
    data = Data(**payload["attrs"])
    try:
        validate_connectome(data)
    except ConnectomeFormatError as e:
        _fail(str(path), str(e))
    return data


# ------------------------------------------------------------------------ converters
_WEIGHTINGS = ("signed", "syn_weight", "syn_count", "binary")


def to_scipy(data: Data, weighted: str = "signed"):
    """Weight matrix W [N, N] as ``scipy.sparse.csr_matrix`` (float64), W[post, pre].

    ``weighted``: ``"signed"`` (sign * syn_weight, so ``y = W @ x`` sums signed
    inputs), ``"syn_weight"``, ``"syn_count"`` or ``"binary"`` (1 per connection).
    """
    from torch_geometric.utils import to_scipy_sparse_matrix

    validate_connectome(data)
    if weighted == "signed":
        values = data.sign.double() * data.syn_weight.double()
    elif weighted in ("syn_weight", "syn_count"):
        values = data[weighted].double()
    elif weighted == "binary":
        values = torch.ones(data.edge_index.size(1), dtype=torch.float64)
    else:
        raise ConnectomeFormatError(f"weighted must be one of {_WEIGHTINGS}, "
                                    f"got {weighted!r}")
    # flip: PyG puts sources in rows; W has targets in rows.
    coo = to_scipy_sparse_matrix(data.edge_index.flip(0), values, data.num_nodes)
    return coo.tocsr()


def from_scipy(matrix: Any, **kwargs: Any) -> Data | tuple[Data, ConnectomeReport]:
    """Inverse of :func:`to_scipy`: W [N, N] with W[post, pre] = signed weight.

    Goes through :func:`load_connectome`'s sparse-tensor path (sign = sign(value),
    syn_count = |value|, node ids 0..N-1); ``kwargs`` go to :func:`load_connectome`.
    Explicitly stored zeros become connections with syn_count 0.
    """
    import scipy.sparse as sp

    if not sp.issparse(matrix):
        raise ConnectomeFormatError(f"from_scipy expects a scipy sparse matrix, got "
                                    f"{type(matrix).__name__}")
    coo = sp.coo_matrix(matrix)
    if coo.shape[0] != coo.shape[1]:
        raise ConnectomeFormatError(f"<scipy matrix>: must be square [N, N], got "
                                    f"{coo.shape}")
    indices = torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64))
    values = torch.from_numpy(np.asarray(coo.data, dtype=np.float64))
    adj = torch.sparse_coo_tensor(indices, values, coo.shape, check_invariants=True)
    return load_connectome(adj, **kwargs)


def _extra_node_keys(data: Data) -> list[str]:
    """Node-table attributes: [N] float/bool tensors outside the layout keys."""
    n = data.num_nodes
    return [k for k in data.keys() if k not in _RESERVED_KEYS
            and isinstance(data[k], Tensor) and tuple(data[k].shape) == (n,)
            and data[k].dtype in (torch.float32, torch.bool)]


def to_networkx(data: Data):
    """``networkx.DiGraph`` with nodes 0..N-1 and connections pre -> post.

    Node attributes: ``node_id`` (original id), ``cell_type`` (name),
    ``input_mask``, ``output_mask`` and the node-table attributes (float/bool [N]);
    edge attributes: ``syn_count``, ``sign``,
    ``syn_weight`` and ``edge_type`` (name) when present.  Built with
    :func:`torch_geometric.utils.to_networkx`.
    """
    from torch_geometric.utils import to_networkx as pyg_to_networkx

    validate_connectome(data)
    n = data.num_nodes
    view = Data(edge_index=data.edge_index, num_nodes=n, syn_count=data.syn_count,
                sign=data.sign, syn_weight=data.syn_weight)
    node_attrs, edge_attrs = [], ["syn_count", "sign", "syn_weight"]
    if "node_id" in data:
        view.node_id = data.node_id
    else:
        view.node_id = list(data.node_names) if "node_names" in data else list(range(n))
    node_attrs.append("node_id")
    if "cell_type" in data:
        view.cell_type = [data.cell_type_names[c] for c in data.cell_type.tolist()]
        node_attrs.append("cell_type")
    for key in ("input_mask", "output_mask", *_extra_node_keys(data)):
        if key in data:
            view[key] = data[key]
            node_attrs.append(key)
    if "edge_type" in data:
        view.edge_type = [data.edge_type_names[t] for t in data.edge_type.tolist()]
        edge_attrs.append("edge_type")
    return pyg_to_networkx(view, node_attrs=node_attrs, edge_attrs=edge_attrs)


def from_networkx(graph: Any, **kwargs: Any) -> Data | tuple[Data, ConnectomeReport]:
    """Directed networkx graph -> connectome graph, through :func:`load_connectome`.

    Node ids: each node's ``node_id`` attribute when all nodes have one, else the
    node keys.  Edge attributes used: ``syn_count`` (else ``weight``, else 1 per
    edge) and ``sign``; node attributes: ``cell_type``, ``input_mask``,
    ``output_mask`` and any other attribute that is a number or bool on every node
    (stored as in a node table).  Multi-edges are summed.  ``kwargs`` go to
    :func:`load_connectome` (``syn_weight`` is recomputed from ``normalize``).
    """
    if not graph.is_directed():
        raise ConnectomeFormatError("<networkx graph>: graph is undirected; connectomes "
                                    "are directed (use graph.to_directed())")
    node_data = dict(graph.nodes(data=True))
    use_attr = bool(node_data) and all("node_id" in d for d in node_data.values())
    key_to_id = {k: (d["node_id"] if use_attr else k) for k, d in node_data.items()}
    edge_list = list(graph.edges(data=True))
    edges: dict[str, list] = {"pre": [key_to_id[u] for u, _, _ in edge_list],
                              "post": [key_to_id[v] for _, v, _ in edge_list]}
    for attr in ("syn_count", "weight", "sign"):
        if edge_list and all(attr in d for _, _, d in edge_list):
            edges[attr] = [d[attr] for _, _, d in edge_list]
    if "syn_count" in edges:
        edges.pop("weight", None)
    table: dict[str, list] = {"id": list(key_to_id.values())}
    for attr in ("cell_type", "input_mask", "output_mask"):
        if node_data and all(attr in d for d in node_data.values()):
            table[attr] = [d[attr] for d in node_data.values()]
    scalar = (bool, int, float, np.bool_, np.integer, np.floating)
    for attr in sorted({a for d in node_data.values() for a in d} - set(table)
                       - {"node_id"}):
        # Other numeric node attributes become node-table columns (-> [N] tensors).
        values = [d.get(attr) for d in node_data.values()]
        if all(isinstance(v, scalar) for v in values):
            table[attr] = values
    if all(t == "unknown" for t in table.get("cell_type", ())):
        # to_networkx writes "unknown" for graphs without cell types; keep it that way.
        table.pop("cell_type", None)
    if "input_mask" in table:
        kwargs.setdefault("input_types", "input_mask")
    if "output_mask" in table:
        kwargs.setdefault("output_types", "output_mask")
    return load_connectome(edges, nodes=table, **kwargs)
