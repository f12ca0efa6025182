"""Neuron ids: integers kept exactly (int64) or strings, never a mix."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd
from torch import Tensor

from ._common import _MAX_EXACT_FLOAT_ID, _fail, _fmt
from ._tables import _as_column


ID_KINDS = ("auto", "int", "str")


def _parse_ids(values: np.ndarray, what: str, src: str, ids: str = "auto") -> np.ndarray:
    """1-D ids -> int64 array, or object array of ``str``.

    ``ids="auto"`` takes integers as integers and text as names, refusing text in which some
    ids are integers and others not (one stray value would turn every id into a name);
    ``"int"`` requires integers (also written as text); ``"str"`` takes every id as a name.
    """
    if ids == "str":
        if values.dtype.kind == "f":
            values = _float_ids(values, what, src)  # 3.0 -> "3", not "3.0"
        missing = np.asarray(pd.isna(values), dtype=bool) if values.dtype == object else None
        if missing is not None and missing.any():
            _fail(src, f"row {int(np.argmax(missing))}: missing {what} id")
        names = np.array([str(v) for v in values.tolist()], dtype=object)
        return _checked_names(names, what, src, integers_allowed=True)
    parsed = _parse_auto(values, what, src)
    if ids == "int" and parsed.dtype == object:
        return _coerce_ids(parsed, True, what, src)
    return parsed


def _checked_names(names: np.ndarray, what: str, src: str, integers_allowed: bool) -> np.ndarray:
    """Refuse names that are empty, hold control characters (a NUL byte) or surrounding
    whitespace (``'AVAR '`` next to ``'AVAR'``), and, unless allowed, a mix of integers and
    names; the error names the first such row."""
    uniq = pd.Series(pd.unique(pd.Series(names, dtype=object)), dtype=object)
    checks = [
        (uniq.str.strip() == "", "is empty"),
        (uniq.str.contains(r"[\x00-\x1f\x7f]", regex=True), "holds a control character (a NUL byte or "
         "a line break?): the file may be damaged"),
        (uniq.str.strip() != uniq, "has leading or trailing whitespace; strip the column (e.g. "
         "df[col].str.strip()) so that it names the same neuron as the id without it"),
    ]
    if not integers_allowed:
        is_int = uniq.str.fullmatch(r"[+-]?\d+")
        if is_int.any() and not is_int.all():
            example = uniq[is_int].iloc[0]
            checks.append((~is_int, f"is not an integer while other ids (e.g. {example!r}) are: one stray "
                           "value would turn every id into a name; fix that row, or pass ids='str' if the "
                           "ids are names"))
    for bad, why in checks:
        if bad.any():
            value = uniq[bad].iloc[0]
            row = next(i for i, v in enumerate(names) if v == value)  # numpy drops trailing NULs
            _fail(src, f"row {row}: {what} id {value!r} {why}")
    return names


def _parse_auto(values: np.ndarray, what: str, src: str) -> np.ndarray:
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
            return _checked_names(values, what, src, integers_allowed=False)
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
            _fail(src, f"row {i}: {what} id {_fmt(v)} is not an integer, but the ids are integers "
                  "(those of the edge list, or ids='int')")
    return out


def _id_query(ids: Iterable[Any], int_kind: bool, what: str, src: str) -> np.ndarray:
    """User-given ids (list, array, tensor) -> array of the graph's id kind."""
    arr = ids if isinstance(ids, (np.ndarray, Tensor)) else np.asarray(list(ids))
    arr = _as_column(arr, what, src)
    return _coerce_ids(_parse_ids(arr, what, src), int_kind, what, src)



def _lookup(uniq: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` in sorted ``uniq`` and whether each was found."""
    pos = np.searchsorted(uniq, ids)
    pos_c = np.minimum(pos, len(uniq) - 1)
    return pos_c, uniq[pos_c] == ids
