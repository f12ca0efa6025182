"""Connectomes by name: the fly visual system, random graphs, or a file (:func:`build_connectome`).

A model's config names its connectome by a spec instead of holding the graph, so that a
saved model rebuilds it: ``{"name": "fly_visual_system", "extent": 4}``, ``{"name":
"random", "num_nodes": ..., "num_edges": ...}`` or ``{"path": "edges.csv", **load_connectome
options}``, each optionally with ``"shuffle": seed`` (a degree-preserving shuffle, the
ablation control) and ``"reorder": "rcm"`` or ``"cell_type"`` (the neurons renumbered by
:class:`~graphode.connectome.transforms.ReorderNeurons`, after any shuffle).
"""

from __future__ import annotations

from typing import Any

from torch_geometric.data import Data

from .load import load_connectome
from .synthetic import random_connectome
from .transforms import DegreePreservingShuffle, ReorderNeurons

__all__ = ["build_connectome", "connectome_spec", "CONNECTOME_NAMES"]

# Names accepted for each built-in connectome (the first is the canonical one).
CONNECTOME_NAMES: dict[str, tuple[str, ...]] = {
    "fly_visual_system": ("fly_visual_system", "flyvis", "fly"),
    "random": ("random",),
}


def _canonical(name: str) -> str | None:
    return next((key for key, aliases in CONNECTOME_NAMES.items() if name in aliases), None)


def connectome_spec(name_or_path: str, **options: Any) -> dict[str, Any]:
    """The spec of a built-in connectome's name (or alias) with ``options``, or of a file path.

    ``connectome_spec("fly", extent=4)`` → ``{"name": "fly_visual_system", "extent": 4}``;
    ``connectome_spec("edges.csv", nodes="nodes.csv")`` → ``{"path": "edges.csv", "nodes": ...}``.
    """
    name = _canonical(name_or_path)
    return {"name": name, **options} if name else {"path": name_or_path, **options}


def build_connectome(spec: dict[str, Any]) -> Data:
    """Build the connectome named by ``spec`` (see the module docs).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    spec = dict(spec)
    shuffle = spec.pop("shuffle", None)
    reorder = spec.pop("reorder", None)
    if reorder is not None and not isinstance(reorder, str):
        raise ValueError(f"reorder must be 'rcm' or 'cell_type' in a connectome spec, got {reorder!r}")
    if "path" in spec:
        data = load_connectome(spec.pop("path"), **spec)
    else:
        given = spec.pop("name", None)
        name = _canonical(given) if isinstance(given, str) else None
        if name == "fly_visual_system":
            from ..flyvis import fly_visual_system

            data = fly_visual_system(**spec)
        elif name == "random":
            data = random_connectome(**spec)
        else:
            known = ", ".join(repr(a) for aliases in CONNECTOME_NAMES.values() for a in aliases)
            raise ValueError(f"unknown connectome {given!r}: use one of {known}, or a path")
    if shuffle is not None:
        data = DegreePreservingShuffle(seed=int(shuffle))(data)
    if reorder is not None:
        data = ReorderNeurons(reorder)(data)
    return data
