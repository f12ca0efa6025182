"""Content checksums of plain data (tensors, dicts, lists, strings, numbers), for files that
must be verified on load: training checkpoints and saved graphs.

A content hash, not one of the file's bytes: it survives re-serialisation and does not depend
on where tensors lived (CPU or GPU) when the file was written. It detects damage (a truncated
copy, flipped bits), not deliberate tampering.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from typing import Any

import torch

PLAIN_DATA = "tensors (strided), dict, list, tuple, str, int, float, bool and None"


def content_sha256(obj: Any, what: str = "state") -> str:
    """SHA-256 (hex) of ``obj``'s content; a TypeError names the first entry that is not plain data.

    Args:
        obj: tensors and plain data, nested in dicts, lists and tuples.
        what: how messages name ``obj`` (e.g. ``"checkpoint entry state"``).
    """
    h = hashlib.sha256()
    _feed(h, obj, what)
    return h.hexdigest()


def _feed(h: "hashlib._Hash", obj: Any, where: str) -> None:
    """Hash ``obj`` by content (type tag, length, value) and refuse anything but plain data."""
    kind = type(obj)
    if obj is None:
        h.update(b"N")
    elif kind is bool:
        h.update(b"B1" if obj else b"B0")
    elif kind is int:
        text = str(obj).encode()
        h.update(b"I%d:" % len(text) + text)
    elif kind is float:
        h.update(b"F" + struct.pack("<d", obj))
    elif kind is str:
        data = obj.encode("utf-8", "surrogatepass")
        h.update(b"S%d:" % len(data))
        h.update(data)
    elif kind in (torch.Tensor, torch.nn.Parameter):
        if obj.layout != torch.strided or obj.is_quantized:
            raise TypeError(f"{where} is a {obj.layout} tensor; store it dense (.to_dense())")
        t = obj.detach().to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1)
        header = f"{t.dtype}{tuple(obj.shape)}".encode()
        h.update(b"T%d:" % len(header) + header)
        h.update(t.view(torch.uint8).numpy())
    elif kind in (dict, OrderedDict):
        h.update(b"D%d:" % len(obj))
        for key, value in obj.items():
            _feed(h, key, f"{where} key {key!r}")
            _feed(h, value, f"{where}[{key!r}]")
    elif kind in (list, tuple):
        h.update((b"L" if kind is list else b"U") + b"%d:" % len(obj))
        for i, value in enumerate(obj):
            _feed(h, value, f"{where}[{i}]")
    else:
        raise TypeError(
            f"{where} is a {kind.__module__}.{kind.__qualname__}; only {PLAIN_DATA} can be stored "
            "(convert it, e.g. with .tolist(), float() or torch.as_tensor())"
        )
