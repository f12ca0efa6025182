"""Recurrent synaptic input as PyG message passing: ``a_i = Σ_{j→i} w_ij · f(v_j)``.

:class:`ConnectomeConv` is a :class:`torch_geometric.nn.MessagePassing` layer. Node states
are ``[N, B]``: ``B`` stimuli (columns) simulated on one connectome, the layout in which one
sparse product serves the whole batch. It takes ``edge_index [2, E]`` and per-edge weights
``edge_weight [E]``, so a PyG ``Batch`` of different connectomes (a block-diagonal graph) works
as one graph.

Backends are strategy objects, subclasses of :class:`Backend`: each one computes the sum in
its ``run(conv, graph, x [N, B], w_sorted [E]) -> [N, B]`` (all give the same result; tests
compare them to a dense float64 reference). ``ConnectomeConv(backend=...)`` takes an object
or one of these names, which :func:`resolve_backend` turns into an object once:

``"pyg"`` (:class:`PygBackend`)
    PyG's ``propagate``: gather ``w_ij·f(v_j)`` per edge and scatter-add to targets.
``"torch_scatter"`` (:class:`TorchScatterBackend`)
    gather, then ``torch_scatter.segment_csr`` over the target-sorted edges (needs torch-scatter).
``"sparse_tensor"`` (:class:`SparseTensorBackend`)
    ``torch_sparse.SparseTensor`` matmul through PyG's fused ``message_and_aggregate``
    (needs torch-sparse).
``"csr"`` (:class:`CSRBackend`)
    torch's CSR ``sparse.mm`` forward with a graphode backward: the state gradient as a
    transposed CSR product, the weight gradient as per-edge row dot products. (torch's own
    CSR backward to the values builds dense ``N×N`` work on CPU.)
``"triton"`` (:class:`TritonBackend`)
    graphode's fused Triton kernels (:mod:`graphode.kernels`, CUDA only): ``f`` applied
    inside the gather, and one backward pass over the edges for both the state and the
    synapse gradient. Needs a string activation.
``"auto"`` (:class:`AutoBackend`, the default)
    times forward+backward of every candidate backend and runs the fastest. It decides once
    per *size class*: device, dtype, and the batch width ``B``, node count ``N`` and edge
    count ``E``, each rounded up to the next power of two. A stream of graphs whose sizes
    fall into one class (a PyG DataLoader) is timed once.

The index structure (:class:`SparseGraph`: CSR by target and by source) is built once per
graph and reused by every call an ODE solve makes.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing

from ._activations import ACTIVATIONS

# graphode builds CSR tensors on every call; torch warns once that CSR support is "beta".
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

__all__ = [
    "ConnectomeConv",
    "SparseGraph",
    "ACTIVATIONS",
    "available_backends",
    "Backend",
    "PygBackend",
    "TorchScatterBackend",
    "SparseTensorBackend",
    "CSRBackend",
    "TritonBackend",
    "AutoBackend",
    "resolve_backend",
]

def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


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


# -- backends -----------------------------------------------------------------------------
class Backend:
    """How :class:`ConnectomeConv` computes ``out_i = Σ_{j→i} w_ij · f(x_j)``.

    A subclass sets ``name`` and implements :meth:`run`; it may override :meth:`available`
    and :meth:`check`. Pass an instance as ``ConnectomeConv(backend=...)`` or as a candidate
    of :class:`AutoBackend`.

    Shapes (of :meth:`run`, for every backend):
        - x: ``[N, B]`` node states.
        - w_sorted: ``[E]`` weights in the graph's target-sorted edge order.
        - output: ``[N, B]``.
    """

    name: str

    def available(self, device: torch.device | str) -> bool:
        """Whether this backend can run on ``device`` in this environment."""
        return True

    def check(self, conv: ConnectomeConv) -> None:
        """Raise if this backend cannot serve ``conv``; called when ``conv`` is built."""

    def run(self, conv: ConnectomeConv, graph: SparseGraph, x: Tensor, w_sorted: Tensor) -> Tensor:
        """``out [N, B]``: ``Σ_j w_ij · f(x_j)`` for ``x [N, B]`` and ``w_sorted [E]``
        (target-sorted), with ``f`` = ``conv.activation`` (or ``conv.fused_activation``)."""
        raise NotImplementedError


class PygBackend(Backend):
    """PyG's ``propagate``: gather ``w_ij·f(x_j)`` per edge ``[E, B]``, scatter-add to
    targets ``[N, B]``. Shapes as :class:`Backend`."""

    name = "pyg"

    def run(self, conv, graph, x, w_sorted):
        n = graph.num_nodes
        return conv.propagate(graph.edge_index, x=conv.activation(x), edge_weight=w_sorted, size=(n, n))


class _PackageBackend(Backend):
    """A backend that needs an optional compiled package (``module``)."""

    module: str

    def available(self, device):
        return _has(self.module)

    def check(self, conv):
        if not _has(self.module):
            raise ImportError(
                f"backend {self.name!r} needs the {self.module.replace('_', '-')}"
                " package: pip install --no-build-isolation torch-scatter torch-sparse"
            )


class TorchScatterBackend(_PackageBackend):
    """Gather ``w_ij·f(x_j)`` ``[E, B]``, then ``torch_scatter.segment_csr`` over the
    target-sorted edges into ``[N, B]`` (needs torch-scatter). Shapes as :class:`Backend`."""

    name = "torch_scatter"
    module = "torch_scatter"

    def run(self, conv, graph, x, w_sorted):
        from torch_scatter import segment_csr

        fx = conv.activation(x)
        return segment_csr(conv.message(fx.index_select(0, graph.src), w_sorted), graph.rowptr, reduce="sum")


class SparseTensorBackend(_PackageBackend):
    """``torch_sparse.SparseTensor`` ``[N, N]`` times ``f(x) [N, B]`` through PyG's fused
    ``message_and_aggregate`` (needs torch-sparse). Shapes as :class:`Backend`."""

    name = "sparse_tensor"
    module = "torch_sparse"

    def run(self, conv, graph, x, w_sorted):
        from torch_sparse import SparseTensor

        adj_t = SparseTensor(
            row=graph.dst, col=graph.src, value=w_sorted, rowptr=graph.rowptr,
            sparse_sizes=(graph.num_nodes, graph.num_nodes), is_sorted=True, trust_data=True,
        )
        return conv.propagate(adj_t, x=conv.activation(x), edge_weight=None)


class CSRBackend(Backend):
    """torch's CSR ``sparse.mm`` of ``A [N, N]`` and ``f(x) [N, B]``, with graphode's backward:
    the state gradient as a transposed CSR product, the weight gradient ``[E]`` as per-edge
    dot products, no dense ``N×N`` work. Shapes as :class:`Backend`."""

    name = "csr"

    def run(self, conv, graph, x, w_sorted):
        return _CSRMatmul.apply(w_sorted, conv.activation(x).contiguous(), graph)


class TritonBackend(Backend):
    """graphode's fused Triton kernels (:mod:`graphode.kernels`): ``f`` applied inside the
    gather, one backward pass for both gradients. Runs on CUDA (or with
    ``TRITON_INTERPRET=1``) and needs an activation given by name. Shapes as :class:`Backend`."""

    name = "triton"

    def available(self, device):
        from .kernels import triton_available

        return triton_available(device)

    def check(self, conv):
        if conv.fused_activation is None:
            raise ValueError(f"backend 'triton' fuses the activation: name one of {sorted(ACTIVATIONS)}, not a callable")

    def run(self, conv, graph, x, w_sorted):
        from .kernels import TritonSpMM

        if not self.available(x.device):
            raise RuntimeError(f"backend 'triton' runs on CUDA devices (or with TRITON_INTERPRET=1), not {x.device}")
        return TritonSpMM.apply(w_sorted, x, graph, conv.fused_activation)


_NAMED: dict[str, Backend] = {
    b.name: b for b in (PygBackend(), TorchScatterBackend(), SparseTensorBackend(), CSRBackend(), TritonBackend())
}
BACKENDS = tuple(_NAMED)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The names of the backends usable on ``device`` here (torch-scatter/torch-sparse are
    optional; ``triton`` needs CUDA, or ``TRITON_INTERPRET=1``)."""
    return [name for name, b in _NAMED.items() if b.available(device)]


def _pow2_ceil(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


class AutoBackend(Backend):
    """Times forward+backward of each candidate and runs the fastest, deciding once per size class.

    The size class of a call is ``(device, dtype, B, N, E)`` with the batch width ``B``, the
    node count ``N`` and the edge count ``E`` each rounded up to the next power of two
    (:meth:`size_class`); :attr:`choices` maps each class seen to the chosen backend's name.
    Shapes as :class:`Backend`.

    Args:
        candidates: backends (objects or names) to choose from; those not available on the
            call's device are skipped. Default: every available named backend, except Triton
            when it would run interpreted (off CUDA) or with a callable activation.
        repeats: timed runs per candidate, after one warm-up run; the best counts.

    The choices belong to the instance (``"auto"`` resolves to a new one for each layer);
    share one only among layers with the same activation.
    """

    name = "auto"

    def __init__(self, candidates: Sequence[Backend | str] | None = None, repeats: int = 2):
        self.candidates = None if candidates is None else [resolve_backend(c) for c in candidates]
        self.repeats = repeats
        self._winners: dict[tuple, Backend] = {}

    @property
    def choices(self) -> dict[tuple, str]:
        """``{size class: backend name}`` of the decisions made so far."""
        return {key: b.name for key, b in self._winners.items()}

    @staticmethod
    def size_class(graph: SparseGraph, x: Tensor) -> tuple:
        """``(device, dtype, B, N, E)`` of ``x [N, B]`` on ``graph``, sizes rounded up to powers of two."""
        return (x.device, x.dtype, _pow2_ceil(x.size(1)), _pow2_ceil(graph.num_nodes), _pow2_ceil(graph.num_edges))

    def run(self, conv, graph, x, w_sorted):
        key = self.size_class(graph, x)
        backend = self._winners.get(key)
        if backend is None:
            backend = self._winners[key] = self._ranking(conv, graph, x, w_sorted)[0][0]
        return backend.run(conv, graph, x, w_sorted)

    def benchmark(self, conv: ConnectomeConv, graph: SparseGraph, x: Tensor, w_sorted: Tensor) -> list[tuple[str, float]]:
        """Time forward+backward (grads to states and weights) of each candidate on ``x [N, B]``
        and ``w_sorted [E]`` (target-sorted order).

        Returns:
            ``[(backend name, seconds), ...]`` fastest first.
        """
        return [(b.name, t) for b, t in self._ranking(conv, graph, x, w_sorted)]

    def _candidates(self, conv: ConnectomeConv, device: torch.device) -> list[Backend]:
        if self.candidates is not None:
            return [b for b in self.candidates if b.available(device)]
        # Interpreted Triton (TRITON_INTERPRET=1 on a CPU) is for tests, never fastest.
        skip_triton = device.type != "cuda" or conv.fused_activation is None
        return [b for b in _NAMED.values() if b.available(device) and not (b.name == "triton" and skip_triton)]

    def _ranking(self, conv, graph, x, w_sorted) -> list[tuple[Backend, float]]:
        candidates = self._candidates(conv, x.device)
        if not candidates:
            raise RuntimeError(f"AutoBackend: none of its candidates is available on {x.device}")
        # The choice is also made for calls under no_grad, and inside checkpointed code:
        # identity hooks keep an enclosing torch.utils.checkpoint from recording the
        # trial runs' saved tensors (its recomputation would then save fewer and fail).
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            timed = [(b, self._time(b, conv, graph, x, w_sorted)) for b in candidates]
        return sorted(timed, key=lambda r: r[1])

    def _time(self, backend: Backend, conv, graph, x, w_sorted) -> float:
        xs = x.detach().requires_grad_(True)
        ws = w_sorted.detach().requires_grad_(True)
        best = float("inf")
        for _ in range(self.repeats + 1):  # the first run warms up caches and kernels
            _sync(x.device)
            t0 = time.perf_counter()
            backend.run(conv, graph, xs, ws).sum().backward()
            _sync(x.device)
            best = min(best, time.perf_counter() - t0)
        return best


def resolve_backend(spec: str | Backend) -> Backend:
    """The backend object for ``spec``: a :class:`Backend` is returned as is; ``"auto"`` gives a
    new :class:`AutoBackend` (its own cache of choices); ``"pyg"``, ``"torch_scatter"``,
    ``"sparse_tensor"``, ``"csr"`` and ``"triton"`` give the named backend.

    Raises:
        ValueError: an unknown name. TypeError: neither a string nor a :class:`Backend`.
    """
    if isinstance(spec, Backend):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"backend must be a name or a Backend object, got {type(spec).__name__}: {spec!r}")
    if spec == "auto":
        return AutoBackend()
    if spec not in _NAMED:
        raise ValueError(f"unknown backend {spec!r}; choose from 'auto', {', '.join(BACKENDS)}")
    return _NAMED[spec]


class ConnectomeConv(MessagePassing):
    r"""Recurrent synaptic input of every neuron, ``a_i = Σ_{j→i} w_ij · f(v_j)``.

    Args:
        activation: the neuron nonlinearity ``f``: ``"relu"`` (the fly visual system model),
            ``"softplus"``, ``"tanh"``, ``"sigmoid"``, ``"identity"``, or a callable.
        backend: a :class:`Backend` object or a name for :func:`resolve_backend`: ``"auto"``
            (fastest by measurement, per size class), ``"pyg"``, ``"torch_scatter"``,
            ``"sparse_tensor"``, ``"csr"`` or ``"triton"``; see the module docs. Stored,
            resolved, as ``self.backend``.

    Shapes:
        - x: ``[N, B]`` node states (``[N]`` is treated as ``B = 1``).
        - edge_index: ``[2, E]`` (row 0 presynaptic, row 1 postsynaptic), or a prebuilt
          :class:`SparseGraph`, or a ``torch_sparse.SparseTensor`` ``adj_t`` whose values
          are the weights (then ``edge_weight`` is omitted).
        - edge_weight: ``[E]`` signed synaptic weights, in ``edge_index``'s edge order.
        - output: ``[N, B]`` (``[N]`` for a 1-D ``x``).
    """

    def __init__(self, activation: str | Callable[[Tensor], Tensor] = "relu", backend: str | Backend = "auto"):
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
        self.backend = resolve_backend(backend)
        self.backend.check(self)
        self._graphs: dict[tuple, tuple[Tensor, SparseGraph]] = {}

    # -- structure cache -------------------------------------------------------------------
    def graph_for(self, edge_index: Tensor, num_nodes: int) -> SparseGraph:
        """The cached :class:`SparseGraph` of ``edge_index [2, E]`` (built on first use)."""
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
        out = self.backend.run(self, graph, x, graph.sorted_weights(edge_weight))
        return out.squeeze(1) if squeeze else out

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return edge_weight.unsqueeze(-1) * x_j

    def message_and_aggregate(self, adj_t, x: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        # The weights are adj_t's values; edge_weight is only part of the shared signature.
        from torch_sparse import matmul

        return matmul(adj_t, x, reduce="sum")

    def benchmark(self, graph: SparseGraph, x: Tensor, edge_weight: Tensor) -> list[tuple[str, float]]:
        """Time forward+backward (grads to states and weights) of each backend on ``x [N, B]``
        and ``edge_weight [E]`` (user order): the candidates of this layer's
        :class:`AutoBackend`, or every available backend when the backend is named.

        Returns:
            ``[(backend name, seconds), ...]`` fastest first.
        """
        auto = self.backend if isinstance(self.backend, AutoBackend) else AutoBackend()
        return auto.benchmark(self, graph, x, graph.sorted_weights(edge_weight))

    def extra_repr(self) -> str:
        return f"activation={self.activation_name}, backend={self.backend.name}"

    def __repr__(self) -> str:  # MessagePassing's own __repr__ would leave out extra_repr
        return f"{type(self).__name__}({self.extra_repr()})"


def _is_sparse_tensor(obj) -> bool:
    return type(obj).__name__ == "SparseTensor"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
