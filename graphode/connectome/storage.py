"""Saving and loading graphs losslessly: :func:`save_graph`, :func:`load_graph`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data

from .._atomic import atomic_write
from .._integrity import content_sha256
from ._common import _SAVE_FORMAT, _SAVE_VERSION, ConnectomeFormatError, PathLike, _fail
from ._readers import _torch_load
from ._tables import _check_path
from .layout import validate_connectome

__all__ = ["save_graph", "load_graph"]


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

    All attributes are stored (tensors, numbers, strings, lists of them) with a SHA-256
    checksum of their content; read the file back with :func:`load_graph`, which verifies
    the checksum and returns an identical graph.
    """
    validate_connectome(data)
    attrs = data.to_dict()
    for k, v in attrs.items():
        _check_savable(k, v)
    path = Path(path)
    payload = {"format": _SAVE_FORMAT, "version": _SAVE_VERSION, "attrs": attrs,
               "sha256": content_sha256(attrs, "graph attribute")}
    # A crash before the final rename leaves any old file untouched.
    atomic_write(path, lambda f: torch.save(payload, f))


def load_graph(path: PathLike) -> Data:
    """Read a graph written by :func:`save_graph`.

    Loaded with ``torch.load(weights_only=True)`` (tensors and plain data only: a file that
    would run code is refused), then its content checksum is verified and the graph
    validated.

    Raises:
        ConnectomeFormatError: not a save_graph file, a damaged file (checksum mismatch), or
            a graph that breaks the layout, each naming the file.
    """
    path = _check_path(path)
    payload = _torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != _SAVE_FORMAT:
        _fail(str(path), "not a graph written by save_graph (for a sparse adjacency "
              "use load_connectome)")
    if payload.get("version") != _SAVE_VERSION:
        _fail(str(path), f"unsupported save_graph version {payload.get('version')!r} (this graphode "
              f"reads version {_SAVE_VERSION}); rebuild the graph and save it again")
    attrs = payload.get("attrs")
    if not isinstance(attrs, dict):
        _fail(str(path), "the file holds no graph attributes: it is damaged")
    try:
        digest = content_sha256(attrs, "graph attribute")
    except TypeError as e:
        _fail(str(path), f"damaged: {e}")
    if digest != payload.get("sha256"):
        _fail(str(path), "damaged: the content checksum does not match (the file was changed or "
              "truncated after save_graph wrote it); rebuild the graph and save it again")
    data = Data(**attrs)
    try:
        validate_connectome(data)
    except ConnectomeFormatError as e:
        _fail(str(path), str(e))
    return data

