"""The neuron nonlinearities ``f`` by name, for the message-passing layer and its kernels.

:data:`ACTIVATIONS` maps each name :class:`~graphode.layer.ConnectomeConv` accepts to its
function. A name's position in the table is its code in the Triton kernels
(:mod:`graphode.kernels` branch on ``ACT``: 0 identity, 1 relu, 2 tanh, 3 sigmoid,
4 softplus), so the layer and the kernels read one table.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _identity(v: Tensor) -> Tensor:
    return v


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": _identity,
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": F.softplus,
}


def activation_code(name: str) -> int:
    """The kernels' code of the activation ``name`` (its position in :data:`ACTIVATIONS`)."""
    try:
        return list(ACTIVATIONS).index(name)
    except ValueError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None
