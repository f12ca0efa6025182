"""Connectome tensors kept out of ``state_dict``, with a fingerprint that is kept in.

A model's graph (``edge_index``, synapse signs and counts, edge types) is input data: it
is rebuilt from the connectome whenever the model is constructed, and at the full fly
visual system it is 50 MB against 25 thousand learned numbers. Modules register such
tensors as non-persistent buffers and store a SHA-256 fingerprint of them instead;
``load_state_dict`` refuses a state saved on a different graph rather than silently
applying learned values to the wrong synapses.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn

FINGERPRINT = "graph_fingerprint"


def fingerprint(tensors: dict[str, Tensor]) -> Tensor:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` → ``[4]`` int64."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return torch.frombuffer(bytearray(digest.digest()), dtype=torch.int64).clone()


class GraphTensors(nn.Module):
    """Mixin: :meth:`register_graph` keeps tensors as non-persistent buffers plus a
    persistent fingerprint; loading a state saved on another graph raises."""

    def register_graph(self, **tensors: Tensor) -> None:
        names = tuple(getattr(self, "_graph_names", ())) + tuple(tensors)
        self._graph_names = names
        for name, value in tensors.items():
            self.register_buffer(name, value, persistent=False)
        self.register_buffer(FINGERPRINT, fingerprint({n: getattr(self, n) for n in names}))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        names = getattr(self, "_graph_names", ())
        where = prefix[:-1] or type(self).__name__
        saved_print = state_dict.get(prefix + FINGERPRINT)
        if saved_print is not None and not torch.equal(saved_print.cpu(), getattr(self, FINGERPRINT).cpu()):
            error_msgs.append(
                f"{where}: the state was saved on a different connectome (the fingerprint of "
                f"{', '.join(names)} differs); build the model on the graph and settings it was trained on"
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
