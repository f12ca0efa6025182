"""Connectomes as PyG graphs: reading, the layout contract, storage, converters, built-in graphs.

A connectome is a :class:`torch_geometric.data.Data` with the layout of
:mod:`graphode.connectome.layout` (``edge_index`` pre → post sorted by target, ``syn_count``,
``sign``, ``syn_weight`` per connection; ``cell_type`` codes and names, ids, masks per neuron),
checked by :func:`validate_connectome`. The package, in the order data flows:

=================================  ==========================================================
:mod:`~graphode.connectome.load`     :func:`load_connectome`: an edge list (CSV/TSV/Parquet/NPZ,
                                     a DataFrame, a dict, a sparse tensor) and a node table → graph
:mod:`~graphode.connectome.layout`   the layout, :func:`validate_connectome`, :func:`node_index`
:mod:`~graphode.connectome.storage`  :func:`save_graph` / :func:`load_graph` (lossless, no pickle)
:mod:`~graphode.connectome.convert`  SciPy sparse matrices and networkx graphs, both ways
:mod:`~graphode.connectome.synthetic`  connectome-like random graphs at any scale
:mod:`~graphode.connectome.transforms`  PyG transforms that keep the layout
:mod:`~graphode.connectome.registry`  :func:`build_connectome`: connectomes by name or path
=================================  ==========================================================

The fly visual system itself is :func:`graphode.flyvis.fly_visual_system`.
"""

from ._columns import DEFAULT_NT_SIGNS
from ._common import ConnectomeFileNotFoundError, ConnectomeFormatError
from .convert import from_networkx, from_scipy, to_networkx, to_scipy
from .layout import node_index, validate_connectome
from .load import ConnectomeReport, load_connectome
from .registry import build_connectome, connectome_spec
from .storage import load_graph, save_graph
from .synthetic import random_connectome
from .transforms import (
    DegreePreservingShuffle, RemoveIsolatedNeurons, RemoveSelfConnections, ReorderNeurons, SortEdges, Subgraph,
    Threshold, reverse_cuthill_mckee,
)

__all__ = [
    "ConnectomeFormatError",
    "ConnectomeFileNotFoundError",
    "ConnectomeReport",
    "load_connectome",
    "save_graph",
    "load_graph",
    "validate_connectome",
    "node_index",
    "to_scipy",
    "from_scipy",
    "to_networkx",
    "from_networkx",
    "DEFAULT_NT_SIGNS",
    "random_connectome",
    "DegreePreservingShuffle",
    "Subgraph",
    "RemoveIsolatedNeurons",
    "RemoveSelfConnections",
    "Threshold",
    "SortEdges",
    "ReorderNeurons",
    "reverse_cuthill_mckee",
    "build_connectome",
    "connectome_spec",
]
