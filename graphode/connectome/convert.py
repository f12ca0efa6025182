"""Converters to and from SciPy sparse matrices and networkx graphs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from ._common import _RESERVED_KEYS, ConnectomeFormatError
from .layout import validate_connectome
from .load import ConnectomeReport, load_connectome

__all__ = ["to_scipy", "from_scipy", "to_networkx", "from_networkx"]


_WEIGHTINGS = ("signed", "syn_weight", "syn_count", "binary")


def to_scipy(data: Data, weighted: str = "signed"):
    """Weight matrix W [N, N] as ``scipy.sparse.csr_matrix`` (float64), W[post, pre].

    ``weighted``: ``"signed"`` (sign * syn_weight, so ``y = W @ x`` sums signed
    inputs), ``"syn_weight"``, ``"syn_count"`` or ``"binary"`` (1 per connection).
    """
    from torch_geometric.utils import to_scipy_sparse_matrix

    validate_connectome(data)
    if weighted == "signed":
        values = data.sign.double() * data.syn_weight.double()
    elif weighted in ("syn_weight", "syn_count"):
        values = data[weighted].double()
    elif weighted == "binary":
        values = torch.ones(data.edge_index.size(1), dtype=torch.float64)
    else:
        raise ConnectomeFormatError(f"weighted must be one of {_WEIGHTINGS}, "
                                    f"got {weighted!r}")
    # flip: PyG puts sources in rows; W has targets in rows.
    coo = to_scipy_sparse_matrix(data.edge_index.flip(0), values, data.num_nodes)
    return coo.tocsr()


def from_scipy(matrix: Any, **kwargs: Any) -> Data | tuple[Data, ConnectomeReport]:
    """Inverse of :func:`to_scipy`: W [N, N] with W[post, pre] = signed weight.

    Goes through :func:`load_connectome`'s sparse-tensor path (sign = sign(value),
    syn_count = |value|, node ids 0..N-1); ``kwargs`` go to :func:`load_connectome`.
    Explicitly stored zeros become connections with syn_count 0; repeated entries are
    summed, as in SciPy (``duplicates="sum"``).
    """
    import scipy.sparse as sp

    if not sp.issparse(matrix):
        raise ConnectomeFormatError(f"from_scipy expects a scipy sparse matrix, got "
                                    f"{type(matrix).__name__}")
    coo = sp.coo_matrix(matrix)
    if coo.shape[0] != coo.shape[1]:
        raise ConnectomeFormatError(f"<scipy matrix>: must be square [N, N], got "
                                    f"{coo.shape}")
    indices = torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64))
    values = torch.from_numpy(np.asarray(coo.data, dtype=np.float64))
    adj = torch.sparse_coo_tensor(indices, values, coo.shape, check_invariants=True)
    kwargs.setdefault("duplicates", "sum")  # scipy's meaning of repeated entries
    return load_connectome(adj, **kwargs)


def _extra_node_keys(data: Data) -> list[str]:
    """Node-table attributes: [N] float/bool/int tensors outside the layout keys (text columns
    are int codes with a ``<key>_names`` list)."""
    n = data.num_nodes
    return [k for k in data.keys() if k not in _RESERVED_KEYS
            and isinstance(data[k], Tensor) and tuple(data[k].shape) == (n,)
            and data[k].dtype in (torch.float32, torch.bool, torch.int64)]


def _node_values(data: Data, key: str) -> Tensor | list[str]:
    """A node attribute as networkx stores it: names for coded text columns, else the tensor."""
    names = data[f"{key}_names"] if f"{key}_names" in data else None
    return [names[c] for c in data[key].tolist()] if isinstance(names, list) else data[key]


def to_networkx(data: Data):
    """``networkx.DiGraph`` with nodes 0..N-1 and connections pre -> post.

    Node attributes: ``node_id`` (original id), ``cell_type`` (name),
    ``input_mask``, ``output_mask`` and the node-table attributes (float/bool [N]);
    edge attributes: ``syn_count``, ``sign``,
    ``syn_weight`` and ``edge_type`` (name) when present.  Built with
    :func:`torch_geometric.utils.to_networkx`.
    """
    from torch_geometric.utils import to_networkx as pyg_to_networkx

    validate_connectome(data)
    n = data.num_nodes
    view = Data(edge_index=data.edge_index, num_nodes=n, syn_count=data.syn_count,
                sign=data.sign, syn_weight=data.syn_weight)
    node_attrs, edge_attrs = [], ["syn_count", "sign", "syn_weight"]
    if "node_id" in data:
        view.node_id = data.node_id
    else:
        view.node_id = list(data.node_names) if "node_names" in data else list(range(n))
    node_attrs.append("node_id")
    if "cell_type" in data:
        view.cell_type = [data.cell_type_names[c] for c in data.cell_type.tolist()]
        node_attrs.append("cell_type")
    for key in ("input_mask", "output_mask", *_extra_node_keys(data)):
        if key in data:
            view[key] = _node_values(data, key)
            node_attrs.append(key)
    if "edge_type" in data:
        view.edge_type = [data.edge_type_names[t] for t in data.edge_type.tolist()]
        edge_attrs.append("edge_type")
    return pyg_to_networkx(view, node_attrs=node_attrs, edge_attrs=edge_attrs)


def from_networkx(graph: Any, **kwargs: Any) -> Data | tuple[Data, ConnectomeReport]:
    """Directed networkx graph -> connectome graph, through :func:`load_connectome`.

    Node ids: each node's ``node_id`` attribute when all nodes have one, else the
    node keys.  Edge attributes used: ``syn_count`` (else ``weight``, else 1 per
    edge) and ``sign``; node attributes: ``cell_type``, ``input_mask``,
    ``output_mask`` and any other attribute that is a number or bool on every node
    (stored as in a node table).  Multi-edges are summed.  ``kwargs`` go to
    :func:`load_connectome` (``syn_weight`` is recomputed from ``normalize``).
    """
    if not graph.is_directed():
        raise ConnectomeFormatError("<networkx graph>: graph is undirected; connectomes "
                                    "are directed (use graph.to_directed())")
    node_data = dict(graph.nodes(data=True))
    use_attr = bool(node_data) and all("node_id" in d for d in node_data.values())
    key_to_id = {k: (d["node_id"] if use_attr else k) for k, d in node_data.items()}
    edge_list = list(graph.edges(data=True))
    edges: dict[str, list] = {"pre": [key_to_id[u] for u, _, _ in edge_list],
                              "post": [key_to_id[v] for _, v, _ in edge_list]}
    for attr in ("syn_count", "weight", "sign"):
        if edge_list and all(attr in d for _, _, d in edge_list):
            edges[attr] = [d[attr] for _, _, d in edge_list]
    if "syn_count" in edges:
        edges.pop("weight", None)
    table: dict[str, list] = {"id": list(key_to_id.values())}
    for attr in ("cell_type", "input_mask", "output_mask"):
        if node_data and all(attr in d for d in node_data.values()):
            table[attr] = [d[attr] for d in node_data.values()]
    scalar = (bool, int, float, str, np.bool_, np.integer, np.floating)
    for attr in sorted({a for d in node_data.values() for a in d} - set(table)
                       - {"node_id"}):
        # Other numeric and text node attributes become node-table columns (-> [N] tensors).
        values = [d.get(attr) for d in node_data.values()]
        if all(isinstance(v, scalar) for v in values):
            table[attr] = values
    if all(t == "unknown" for t in table.get("cell_type", ())):
        # to_networkx writes "unknown" for graphs without cell types; keep it that way.
        table.pop("cell_type", None)
    if "input_mask" in table:
        kwargs.setdefault("input_types", "input_mask")
    if "output_mask" in table:
        kwargs.setdefault("output_types", "output_mask")
    kwargs.setdefault("duplicates", "sum")  # the edges of a multigraph between two nodes add up
    return load_connectome(edges, nodes=table, **kwargs)
