"""Numeric, sign and neurotransmitter columns."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from ._common import _fail, _fmt


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

