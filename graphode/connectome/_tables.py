"""Tabular sources (files, DataFrames, dicts, structured arrays) as columns."""

from __future__ import annotations

import lzma
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from torch import Tensor

from ._common import (
    _COMPRESSION_SUFFIXES, _TABLE_SUFFIXES, ConnectomeFileNotFoundError, ConnectomeFormatError, PathLike, _fail,
)


@dataclass
class _Table:
    """Equal-length 1-D columns of one tabular source."""

    columns: dict[str, np.ndarray]
    name: str

    @property
    def nrows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def _series_to_numpy(s: pd.Series, src: str) -> np.ndarray:
    # Nullable pandas dtypes (Int64, boolean, Arrow strings) give object arrays
    # holding pd.NA; turn them into plain NumPy dtypes so later checks are uniform.
    if pd.api.types.is_complex_dtype(s.dtype):
        _fail(src, f"column {s.name!r} holds complex numbers ({s.dtype}); graphode reads real values only")
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
    if arr.dtype.kind == "c":
        _fail(src, f"column {key!r} holds complex numbers ({arr.dtype}); graphode reads real values only")
    if arr.dtype.kind == "S":
        return np.array([v.decode() for v in arr], dtype=object)
    if arr.dtype.kind == "U":
        return arr.astype(object)
    return arr


def _table_from_columns(cols: Mapping[Any, Any], src: str) -> _Table:
    _check_unique_columns([str(k) for k in cols], src)
    columns = {str(k): _as_column(v, str(k), src) for k, v in cols.items()}
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        _fail(src, f"arrays have different lengths: {lengths}")
    return _Table(columns, src)


def _infer_sep(path: Path) -> str:
    # .txt edge lists come as comma-, tab- or whitespace-separated (read through pandas, so
    # that compressed files are decompressed first).
    first = _read_csv(path, header=None, nrows=1, sep="\x01", engine="python", dtype=str, quoting=3)
    first = "" if first.empty else str(first.iloc[0, 0])
    if "\t" in first:
        return "\t"
    if "," in first:
        return ","
    return r"\s+"


def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv`` with decompression and parse errors as one-line errors naming the file."""
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        _fail(str(path), "file is empty (no header, no rows)")
    except EOFError:
        _fail(str(path), "the compressed file is truncated (it ends before its end-of-stream marker)")
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        _fail(str(path), f"cannot parse as a {kwargs.get('sep')!r}-separated table: {e}")
    except (OSError, ValueError, RuntimeError, zipfile.BadZipFile, lzma.LZMAError) as e:
        # gzip.BadGzipFile and bz2's "Invalid data stream" are OSErrors
        kind = path.suffix.lower() if path.suffix.lower() in _COMPRESSION_SUFFIXES else "text"
        _fail(str(path), f"cannot read as a {kind} file ({type(e).__name__}: {e})")


def _table_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _read_delimited(path: Path, sep: str | None, suffix: str) -> pd.DataFrame:
    if sep is None:
        sep = _TABLE_SUFFIXES[suffix] or _infer_sep(path)
    header = _read_csv(path, sep=sep, header=None, nrows=1, dtype=str)
    _check_unique_columns([str(c) for c in header.iloc[0].tolist()] if len(header) else [], str(path))
    # low_memory=False: chunked type inference could give one column mixed types.
    return _read_csv(path, sep=sep, low_memory=False)


def _check_unique_columns(names: Sequence[str], src: str) -> None:
    seen, dup = set(), []
    for name in names:
        if name in seen and name not in dup:
            dup.append(name)
        seen.add(name)
    if dup:
        _fail(src, f"column name(s) {dup} appear more than once in the header; rename them so that each "
              "column has its own name (graphode would not know which one to read)")


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
        _check_unique_columns([str(c) for c in source.columns], f"<DataFrame {what}>")
        name = f"<DataFrame {what}>"
        cols = {str(c): _series_to_numpy(source[c], name) for c in source.columns}
        return _Table(cols, name)
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
    _check_unique_columns([str(c) for c in df.columns], str(path))
    cols = {str(c): _series_to_numpy(df[c], str(path)) for c in df.columns}
    return _Table(cols, str(path))


def _resolve_column(
    table: _Table, given: str | None, aliases: Sequence[str], param: str, required: bool,
    ambiguous: str = "error",
) -> str | None:
    """Column to use for ``param``: the one given explicitly, else the one column named like one
    of ``aliases`` (exactly, else ignoring case).

    Two or more alias columns are an error naming them (``ambiguous="error"``: a wrong pick
    would build a different graph), or the first alias wins (``"first"``, for annotations
    such as cell types, where the other columns are kept as node metadata).
    """
    cols = list(table.columns)
    if given is not None:
        if given in table.columns:
            return given
        _fail(table.name, f"column {given!r} (from {param}=) not found; "
              f"available columns: {cols}")
    lower: dict[str, list[str]] = {}
    for c in cols:
        lower.setdefault(c.lower(), []).append(c)
    found: list[str] = []
    for cand in aliases:
        exact = [cand] if cand in table.columns else []
        for c in exact or lower.get(cand.lower(), []):
            if c not in found:
                found.append(c)
    if len(found) > 1 and ambiguous == "error":
        _fail(table.name, f"several columns could be the {param} column: {found}; name the one to use "
              f"with {param}=")
    if found:
        return found[0]
    if required:
        _fail(table.name, f"no {param} column found (looked for {list(aliases)}); "
              f"available columns: {cols}; name it with {param}=")
    return None

