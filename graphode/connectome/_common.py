"""Errors, message helpers and the names the connectome package shares."""

from __future__ import annotations

import fnmatch
import os
import re
from typing import Any, Iterable, NoReturn, Sequence, Union

import numpy as np

PathLike = Union[str, os.PathLike]


class ConnectomeFormatError(ValueError):
    """A connectome source (file, table or graph) does not have the expected form."""


class ConnectomeFileNotFoundError(ConnectomeFormatError, FileNotFoundError):
    """The connectome file does not exist (both a ValueError and a FileNotFoundError)."""



def _fail(src: str, msg: str) -> NoReturn:
    raise ConnectomeFormatError(f"{src}: {msg}")



def _fmt(value: Any) -> str:
    """repr without NumPy's ``np.int64(...)`` wrapper, for messages."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _show(ids: Iterable[Any], limit: int = 5) -> str:
    ids = list(ids)
    shown = ", ".join(_fmt(i) for i in ids[:limit])
    return shown + (", ..." if len(ids) > limit else "")


def _match_names(known: Sequence[str], wanted: Iterable[Any]) -> tuple[list[str], list[Any]]:
    """The names of ``known`` that equal a wanted name, match a glob pattern (``"T4*"``,
    ``"T4[a-d]"``) or fully match a compiled regular expression, in the order found and
    without repeats; and the wanted entries that match nothing."""
    found: dict[str, None] = {}
    missing = []
    for w in wanted:
        if isinstance(w, re.Pattern):
            hits = [k for k in known if w.fullmatch(k)]
        elif isinstance(w, str) and w in known:
            hits = [w]
        elif isinstance(w, str) and any(c in w for c in "*?["):
            hits = [k for k in known if fnmatch.fnmatchcase(k, w)]
        else:
            hits = []
        if not hits:
            missing.append(w)
        found.update(dict.fromkeys(hits))
    return list(found), missing



_PRE_ALIASES = ("pre", "pre_root_id", "bodyId_pre", "source", "pre_id")
_POST_ALIASES = ("post", "post_root_id", "bodyId_post", "target", "post_id")
_WEIGHT_ALIASES = ("syn_count", "weight", "count", "n_syn", "synapses")
_NT_ALIASES = ("nt_type", "nt", "neurotransmitter")
# Per-neuron transmitter columns of neuron tables (FlyWire: nt_type, top_nt; neuPrint: predictedNt,
# consensusNt).
_NODE_NT_ALIASES = ("top_nt", "predictedNt", "consensusNt")
_SIGN_ALIASES = ("sign",)
_NODE_ID_ALIASES = ("id", "root_id", "bodyId")
_CELL_TYPE_ALIASES = ("cell_type", "type", "instance", "cell_class")

_TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": None}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zip", ".zst")
_SAVE_FORMAT = "graphode.connectome"
_SAVE_VERSION = 2  # 2: with a content checksum
_MAX_EXACT_FLOAT_ID = 2**53  # floats above this cannot hold every integer id
_RESERVED_KEYS = frozenset(
    {
        "edge_index", "syn_count", "sign", "syn_weight", "edge_type", "edge_type_names",
        "num_nodes", "cell_type", "cell_type_names", "node_id", "node_names",
        "input_mask", "output_mask", "x", "y", "pos", "batch", "ptr", "edge_attr",
        "edge_weight", "face", "time", "original_index",
    }
)
