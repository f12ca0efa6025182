"""Recurrent synaptic input as PyG message passing: ``a_i = Σ_{j→i} w_ij · f(v_j)``.

:class:`ConnectomeConv` is a :class:`torch_geometric.nn.MessagePassing` layer. Node states
are ``[N, B]``: ``B`` stimuli (columns) simulated on one connectome, the layout in which one
sparse product serves the whole batch. It takes ``edge_index [2, E]`` and per-edge weights
``edge_weight [E]``, so a PyG ``Batch`` of different connectomes (a block-diagonal graph) works
as one graph.

Backends (all compute the same sum; tests compare them to a dense float64 reference):

``"pyg"``
    PyG's ``propagate``: gather ``w_ij·f(v_j)`` per edge and scatter-add to targets.
``"torch_scatter"``
    gather, then ``torch_scatter.segment_csr`` over the target-sorted edges (needs torch-scatter).
``"sparse_tensor"``
    ``torch_sparse.SparseTensor`` matmul through PyG's fused ``message_and_aggregate``
    (needs torch-sparse).
``"csr"``
    torch's CSR ``sparse.mm`` forward with a graphode backward: the state gradient as a
    transposed CSR product, the weight gradient as per-edge row dot products. (torch's own
    CSR backward to the values builds dense ``N×N`` work on CPU.)
``"triton"``
    graphode's fused Triton kernels (:mod:`graphode.kernels`, CUDA only): ``f`` applied
    inside the gather, and one backward pass over the edges for both the state and the
    synapse gradient. Needs a string activation.
``"auto"``
    times forward+backward of every available backend on the first call for each graph
    size (nodes, edges), batch size, device and dtype, and uses the fastest from then on.

The index structure (:class:`SparseGraph`: CSR by target and by source) is built once per
graph and reused by every call an ODE solve makes.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import MessagePassing

# graphode builds CSR tensors on every call; torch warns once that CSR support is "beta".
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

__all__ = [
    "ConnectomeConv",
    "SparseGraph",
    "ACTIVATIONS",
    "available_backends",
    "BACKENDS",
]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "softplus": F.softplus,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda v: v,
}

BACKENDS = ("pyg", "torch_scatter", "sparse_tensor", "csr", "triton")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends usable on ``device`` here (torch-scatter/torch-sparse are optional;
    ``triton`` needs CUDA, or ``TRITON_INTERPRET=1``)."""
    from .kernels import triton_available

    out = ["pyg", "csr"]
    if _has("torch_scatter"):
        out.append("torch_scatter")
    if _has("torch_sparse"):
        out.append("sparse_tensor")
    if triton_available(device):
        out.append("triton")
    return out


@dataclass
class SparseGraph:
    """Index structure of one (possibly batched) graph, built once and reused.

    Attributes:
        num_nodes: N.
        edge_index: ``[2, E]`` the edges sorted by (target, source); ``src``/``dst`` are its rows.
        rowptr: ``[N + 1]`` CSR row pointer over targets (rows = postsynaptic neurons).
        perm: ``[E]`` or None; ``edge_weight[perm]`` reorders user weights to the sorted
            order (None when the input was already sorted, the usual case).
        colptr: ``[N + 1]`` CSR pointer of the transposed matrix (rows = presynaptic neurons).
        t_row: ``[E]`` target of each edge in source-sorted order.
        t_perm: ``[E]`` maps target-sorted edges to source-sorted order.
    """

    num_nodes: int
    edge_index: Tensor
    rowptr: Tensor
    perm: Tensor | None
    colptr: Tensor
    t_row: Tensor
    t_perm: Tensor

    @classmethod
    def from_edge_index(cls, edge_index: Tensor, num_nodes: int) -> "SparseGraph":
        """Build from ``edge_index [2, E]`` (row 0 source, row 1 target)."""
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must be [2, E], got {tuple(edge_index.shape)}")
        if edge_index.dtype != torch.long:
            raise ValueError(f"edge_index must be int64, got {edge_index.dtype}")
        if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
            raise ValueError(
                f"edge_index holds node ids outside [0, {num_nodes}): "
                f"min {int(edge_index.min())}, max {int(edge_index.max())}"
            )
        src, dst = edge_index[0], edge_index[1]
        key = dst * num_nodes + src
        perm = None
        if key.numel() > 1 and bool((key[1:] < key[:-1]).any()):
            perm = torch.argsort(key, stable=True)
            src, dst = src[perm], dst[perm]
        rowptr = _ptr(dst, num_nodes)
        t_perm = torch.argsort(src * num_nodes + dst, stable=True)
        return cls(
            num_nodes=num_nodes,
            edge_index=torch.stack([src, dst]),
            rowptr=rowptr,
            perm=perm,
            colptr=_ptr(src[t_perm], num_nodes),
            t_row=dst[t_perm].contiguous(),
            t_perm=t_perm,
        )

    @property
    def src(self) -> Tensor:
        return self.edge_index[0]

    @property
    def dst(self) -> Tensor:
        return self.edge_index[1]

    @property
    def num_edges(self) -> int:
        return self.src.numel()

    def sorted_weights(self, edge_weight: Tensor) -> Tensor:
        """``[E]`` user-order weights → target-sorted order."""
        return edge_weight if self.perm is None else edge_weight[self.perm]

    def csr(self, w_sorted: Tensor) -> Tensor:
        """torch sparse CSR matrix ``[N, N]`` with ``A[dst, src] = w``."""
        n = self.num_nodes
        return torch.sparse_csr_tensor(self.rowptr, self.src, w_sorted, (n, n), check_invariants=False)

    def csr_transposed(self, w_sorted: Tensor) -> Tensor:
        """torch sparse CSR of ``Aᵀ`` ``[N, N]``."""
        n = self.num_nodes
        return torch.sparse_csr_tensor(self.colptr, self.t_row, w_sorted[self.t_perm], (n, n), check_invariants=False)


def _ptr(sorted_index: Tensor, n: int) -> Tensor:
    counts = torch.bincount(sorted_index, minlength=n)
    ptr = torch.zeros(n + 1, dtype=torch.long, device=sorted_index.device)
    torch.cumsum(counts, 0, out=ptr[1:])
    return ptr


def edge_dot(g: Tensor, x: Tensor, graph: SparseGraph) -> Tensor:
    """``out[e] = Σ_b g[dst[e], b] · x[src[e], b]`` for ``g, x: [N, B]``; returns ``[E]``
    in target-sorted order.

    This is the gradient of ``A x`` to the synaptic weights. ``sampled_addmm`` computes the
    dot products in place instead of gathering two ``[E, B]`` tensors (3–26× faster on CPU,
    measured on the fly visual system).
    """
    mask = graph.csr(torch.zeros(graph.num_edges, dtype=g.dtype, device=g.device))
    return torch.sparse.sampled_addmm(mask, g, x.t(), beta=0.0).values()


class _CSRMatmul(torch.autograd.Function):
    """``y = A x`` with ``A[dst, src] = w``; exact backward without dense intermediates."""

    @staticmethod
    def forward(ctx, w_sorted: Tensor, x: Tensor, graph: SparseGraph) -> Tensor:
        ctx.graph = graph
        ctx.save_for_backward(w_sorted, x)
        return torch.sparse.mm(graph.csr(w_sorted.detach()), x)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        w_sorted, x = ctx.saved_tensors
        graph: SparseGraph = ctx.graph
        grad_out = grad_out.contiguous()
        grad_w = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_w = edge_dot(grad_out, x, graph)
        if ctx.needs_input_grad[1]:
            grad_x = torch.sparse.mm(graph.csr_transposed(w_sorted.detach()), grad_out)
        return grad_w, grad_x, None


class ConnectomeConv(MessagePassing):
    r"""Recurrent synaptic input of every neuron, ``a_i = Σ_{j→i} w_ij · f(v_j)``.

    Args:
        activation: the neuron nonlinearity ``f``: ``"relu"`` (the fly visual system model),
            ``"softplus"``, ``"tanh"``, ``"sigmoid"``, ``"identity"``, or a callable.
        backend: ``"auto"`` (fastest by measurement), ``"pyg"``, ``"torch_scatter"``,
            ``"sparse_tensor"`` or ``"csr"``; see the module docs.

    Shapes:
        - x: ``[N, B]`` node states (``[N]`` is treated as ``B = 1``).
        - edge_index: ``[2, E]`` (row 0 presynaptic, row 1 postsynaptic), or a prebuilt
          :class:`SparseGraph`, or a ``torch_sparse.SparseTensor`` ``adj_t`` whose values
          are the weights (then ``edge_weight`` is omitted).
        - edge_weight: ``[E]`` signed synaptic weights, in ``edge_index``'s edge order.
        - output: ``[N, B]`` (``[N]`` for a 1-D ``x``).
    """

    def __init__(self, activation: str | Callable[[Tensor], Tensor] = "relu", backend: str = "auto"):
        super().__init__(aggr="add", flow="source_to_target", node_dim=0)
        # The name the Triton kernels apply: only for activations given by name, since a
        # callable's __name__ (a user's "relu") need not be graphode's function.
        self.fused_activation: str | None = None
        if isinstance(activation, str):
            if activation not in ACTIVATIONS:
                raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
            self.activation_name = self.fused_activation = activation
            self.activation = ACTIVATIONS[activation]
        else:
            self.activation_name = getattr(activation, "__name__", "custom")
            self.activation = activation
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from 'auto', {', '.join(BACKENDS)}")
        if backend == "triton" and self.fused_activation is None:
            raise ValueError(f"backend 'triton' fuses the activation: name one of {sorted(ACTIVATIONS)}, not a callable")
        if backend in ("torch_scatter", "sparse_tensor") and backend not in available_backends():
            raise ImportError(
                f"backend {backend!r} needs the {'torch-scatter' if backend == 'torch_scatter' else 'torch-sparse'}"
                " package: pip install --no-build-isolation torch-scatter torch-sparse"
            )
        self.backend = backend
        self._graphs: dict[tuple, tuple[Tensor, SparseGraph]] = {}
        self._chosen: dict[tuple, str] = {}

    # -- structure cache -------------------------------------------------------------------
    def graph_for(self, edge_index: Tensor, num_nodes: int) -> SparseGraph:
        """The cached :class:`SparseGraph` of ``edge_index`` (built on first use)."""
        key = (
            edge_index.data_ptr(), edge_index.shape, edge_index.stride(), edge_index.device,
            edge_index._version, num_nodes,
        )
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) > 8:  # a model sees few graphs; drop stale ones
                self._graphs.clear()
            # The entry keeps edge_index alive: otherwise a new tensor allocated at the
            # freed address (same shape, version 0) would hit this stale entry.
            entry = (edge_index, SparseGraph.from_edge_index(edge_index, num_nodes))
            self._graphs[key] = entry
        return entry[1]

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: Tensor, edge_index, edge_weight: Tensor | None = None) -> Tensor:
        squeeze = x.dim() == 1
        if squeeze:
            x = x.unsqueeze(1)
        if x.dim() != 2:
            raise ValueError(f"x must be [N, B] or [N], got {tuple(x.shape)}")
        if _is_sparse_tensor(edge_index):
            out = self.propagate(edge_index, x=self.activation(x), edge_weight=None)
            return out.squeeze(1) if squeeze else out
        graph = edge_index if isinstance(edge_index, SparseGraph) else self.graph_for(edge_index, x.size(0))
        if graph.num_nodes != x.size(0):
            raise ValueError(f"x has {x.size(0)} nodes but the graph has {graph.num_nodes}")
        if edge_weight is None or edge_weight.shape != (graph.num_edges,):
            got = None if edge_weight is None else tuple(edge_weight.shape)
            raise ValueError(f"edge_weight must be [{graph.num_edges}], got {got}")
        backend = self.backend if self.backend != "auto" else self._choose(graph, x, edge_weight)
        out = self._run(backend, graph, x, edge_weight)
        return out.squeeze(1) if squeeze else out

    def _run(self, backend: str, graph: SparseGraph, x: Tensor, edge_weight: Tensor) -> Tensor:
        w = graph.sorted_weights(edge_weight)
        if backend == "triton":
            from .kernels import TritonSpMM, triton_available

            if not triton_available(x.device):
                raise RuntimeError(f"backend 'triton' runs on CUDA devices (or with TRITON_INTERPRET=1), not {x.device}")
            return TritonSpMM.apply(w, x, graph, self.fused_activation)
        fx = self.activation(x)
        if backend == "csr":
            return _CSRMatmul.apply(w, fx.contiguous(), graph)
        if backend == "pyg":
            return self.propagate(graph.edge_index, x=fx, edge_weight=w, size=(graph.num_nodes, graph.num_nodes))
        if backend == "torch_scatter":
            from torch_scatter import segment_csr

            return segment_csr(self.message(fx.index_select(0, graph.src), w), graph.rowptr, reduce="sum")
        if backend == "sparse_tensor":
            from torch_sparse import SparseTensor

            adj_t = SparseTensor(
                row=graph.dst, col=graph.src, value=w, rowptr=graph.rowptr,
                sparse_sizes=(graph.num_nodes, graph.num_nodes), is_sorted=True, trust_data=True,
            )
            return self.propagate(adj_t, x=fx, edge_weight=None)
        raise ValueError(f"unknown backend {backend!r}")

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return edge_weight.unsqueeze(-1) * x_j

    def message_and_aggregate(self, adj_t, x: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        # The weights are adj_t's values; edge_weight is only part of the shared signature.
        from torch_sparse import matmul

        return matmul(adj_t, x, reduce="sum")

    # -- measurement-based backend choice --------------------------------------------------
    def _choose(self, graph: SparseGraph, x: Tensor, edge_weight: Tensor) -> str:
        # Keyed on sizes, not the graph object: a stream of equally sized graphs (a PyG
        # DataLoader) is measured once.
        key = (graph.num_nodes, graph.num_edges, x.size(1), x.device, x.dtype)
        if key not in self._chosen:
            self._chosen[key] = self.benchmark(graph, x.detach(), edge_weight.detach())[0][0]
        return self._chosen[key]

    def benchmark(self, graph: SparseGraph, x: Tensor, edge_weight: Tensor, repeats: int = 2):
        """Time forward+backward (grads to states and weights) of each available backend.

        Returns:
            ``[(backend, seconds), ...]`` fastest first.
        """
        results = []
        # The choice is also made for calls under no_grad, and inside checkpointed code:
        # identity hooks keep an enclosing torch.utils.checkpoint from recording the
        # trial runs' saved tensors (its recomputation would then save fewer and fail).
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            for backend in available_backends(x.device):
                # Interpreted Triton (TRITON_INTERPRET=1 on a CPU) is for tests, never fastest.
                if backend == "triton" and (x.device.type != "cuda" or self.fused_activation is None):
                    continue
                results.append((backend, self._time_backend(backend, graph, x, edge_weight, repeats)))
        return sorted(results, key=lambda r: r[1])

    def _time_backend(self, backend: str, graph: SparseGraph, x: Tensor, edge_weight: Tensor, repeats: int) -> float:
        xs = x.detach().requires_grad_(True)
        ws = edge_weight.detach().requires_grad_(True)
        best = float("inf")
        for _ in range(repeats + 1):  # the first run warms up caches and kernels
            _sync(x.device)
            t0 = time.perf_counter()
            self._run(backend, graph, xs, ws).sum().backward()
            _sync(x.device)
            best = min(best, time.perf_counter() - t0)
        return best

    def extra_repr(self) -> str:
        return f"activation={self.activation_name}, backend={self.backend}"


def _is_sparse_tensor(obj) -> bool:
    return type(obj).__name__ == "SparseTensor"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
