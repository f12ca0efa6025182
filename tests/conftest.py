"""Shared helpers for the layer / dynamics / solve tests: tiny random graphs and their dense
float64 references (independent of graphode's sparse code)."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, graphode's Triton kernels run in Triton's interpreter (on the CPU). The
# variable must be set before the kernels are defined, so here, before any test imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _make_graph(n: int = 8, e: int = 20, *, seed: int = 0, shuffle: bool = False, dtype=torch.float64):
    """A random directed graph with ``e`` unique edges (self-loops allowed) on ``n`` nodes.

    The last node receives no input (an empty CSR row). Edges are sorted by (target,
    source) unless ``shuffle``. Returns ``edge_index [2, e]`` and weights ``w [e]`` with
    magnitudes in [0.2, 1.2) and random signs.
    """
    g = torch.Generator().manual_seed(seed)
    m = n - 1  # targets 0..n-2 only
    if e > m * n:
        raise ValueError("too many edges")
    keys = torch.randperm(m * n, generator=g)[:e]
    if not shuffle:
        keys = keys.sort().values
    dst, src = keys // n, keys % n
    edge_index = torch.stack([src, dst])
    sign = torch.where(torch.rand(e, generator=g) < 0.3, -1.0, 1.0)
    w = (sign * (0.2 + torch.rand(e, generator=g))).to(dtype)
    return edge_index, w


def _dense(edge_index: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
    """``W [n, n]`` with ``W[dst, src] = w`` (duplicates summed); differentiable in ``w``."""
    W = torch.zeros(n, n, dtype=w.dtype)
    return W.index_put((edge_index[1], edge_index[0]), w, accumulate=True)


# graphode's activations written out independently of graphode.
REF_ACT = {
    "relu": lambda v: v.clamp_min(0),
    "softplus": lambda v: torch.log1p(torch.exp(v)),
    "tanh": lambda v: (torch.exp(2 * v) - 1) / (torch.exp(2 * v) + 1),
    "sigmoid": lambda v: 1 / (1 + torch.exp(-v)),
    "identity": lambda v: v,
}


@pytest.fixture
def ref_act():
    return REF_ACT


@pytest.fixture
def make_graph():
    return _make_graph


@pytest.fixture
def dense():
    return _dense


@pytest.fixture
def single_thread():
    """Tiny graphs run faster on one thread, and far faster on a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
