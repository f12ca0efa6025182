"""Plots of the fly visual system model: maps on the hexagonal lattice, polar tuning curves
and traces, each saved to a file when given ``path``.

Maps are drawn in the published eye's orientation (:mod:`graphode.flyvis.stimuli`): image
up is ``−(u + v/2)``, image right is ``v``, with the lattice drawn regular (neighbouring
columns one unit apart: ``(x, y) = ((√3/2)·v, −(u + v/2))``). The functions build
matplotlib ``Figure`` objects without pyplot, so they work in scripts and tests alike.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import RegularPolygon
from torch import Tensor

from .connectome import hex_columns

__all__ = ["hex_positions", "hex_map", "hex_frames", "polar_tuning", "traces"]


def hex_positions(extent: int) -> np.ndarray:
    """Drawing positions of the columns (published orientation, regular spacing).

    Shapes: → float64 ``[C, 2]``.
    """
    uv = hex_columns(extent).astype(np.float64)
    return np.stack([math.sqrt(3) / 2 * uv[:, 1], -(uv[:, 0] + 0.5 * uv[:, 1])], axis=1)


def _values(values, extent: int) -> np.ndarray:
    array = values.detach().cpu().double().numpy() if isinstance(values, Tensor) else np.asarray(values, float)
    c = len(hex_columns(extent))
    if array.shape != (c,):
        raise ValueError(f"values must be [C] = [{c}] (one per column of extent {extent}), got {array.shape}")
    return array


def _draw_hexes(ax, values: np.ndarray, extent: int, cmap: str, vmin, vmax, edgecolor="none"):
    xy = hex_positions(extent)
    patches = [RegularPolygon((x, y), numVertices=6, radius=1 / math.sqrt(3), orientation=math.pi / 6) for x, y in xy]
    collection = PatchCollection(patches, cmap=cmap, edgecolor=edgecolor, linewidth=0.3)
    collection.set_array(values)
    collection.set_clim(vmin, vmax)
    ax.add_collection(collection)
    pad = 1.0
    ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
    ax.set_ylim(xy[:, 1].min() - pad, xy[:, 1].max() + pad)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return collection


def _save(fig: Figure, path) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def hex_map(
    values,
    extent: int,
    *,
    title: str = "",
    cmap: str = "RdBu_r",
    symmetric: bool = True,
    label: str = "",
    path: str | Path | None = None,
) -> Figure:
    """One value per column on the lattice (a receptive field, a frame, a response map).

    Args:
        values: ``[C]``, columns in :func:`~graphode.flyvis.hex_columns` order.
        extent: the lattice radius.
        symmetric: a colour scale symmetric about 0 (for signed maps).
        path: where to save the figure (PNG by its suffix), or None.

    Shapes: ``values [C]`` → a matplotlib ``Figure``.
    """
    array = _values(values, extent)
    if symmetric:
        top = float(np.abs(array).max()) or 1.0
        vmin, vmax = -top, top
    else:
        vmin, vmax = float(array.min()), float(array.max())
        vmax = vmax if vmax > vmin else vmin + 1.0
    fig = Figure(figsize=(4.2, 3.6))
    ax = fig.add_subplot()
    collection = _draw_hexes(ax, array, extent, cmap, vmin, vmax)
    fig.colorbar(collection, ax=ax, label=label)
    ax.set_title(title)
    return _save(fig, path)


def hex_frames(frames: Tensor, extent: int, steps: Sequence[int], *, dt: float = 0.02, title: str = "",
               path: str | Path | None = None) -> Figure:
    """Frames of a stimulus at the given steps, side by side (grey scale, 0 to 1).

    Shapes: ``frames [T, C]`` → a matplotlib ``Figure``.
    """
    if frames.dim() != 2:
        raise ValueError(f"frames must be [T, C], got {tuple(frames.shape)}")
    fig = Figure(figsize=(2.2 * len(steps), 2.4))
    for i, k in enumerate(steps):
        ax = fig.add_subplot(1, len(steps), i + 1)
        _draw_hexes(ax, _values(frames[k], extent), extent, "gray", 0.0, 1.0)
        ax.set_title(f"t = {k * dt:.2f} s", fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def polar_tuning(
    angles: Sequence[float],
    curves: Mapping[str, Tensor],
    *,
    title: str = "",
    marks: Mapping[str, float] | None = None,
    path: str | Path | None = None,
) -> Figure:
    """Tuning curves ``r(θ)`` on polar axes, one panel per name; ``marks`` draws a known
    direction (degrees) per name as a line.

    Shapes: ``angles [A]``, each curve ``[A]`` → a matplotlib ``Figure``.
    """
    names = list(curves)
    if not names:
        raise ValueError("curves is empty")
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(2.6 * cols, 2.7 * rows))
    theta = np.deg2rad(np.asarray(list(angles), dtype=float))
    closed = np.append(theta, theta[:1])
    for i, name in enumerate(names):
        r = np.asarray(curves[name].detach().cpu().double() if isinstance(curves[name], Tensor) else curves[name])
        if r.shape != theta.shape:
            raise ValueError(f"curve {name!r} has {r.shape} values for {len(theta)} angles")
        ax = fig.add_subplot(rows, cols, i + 1, projection="polar")
        ax.plot(closed, np.append(r, r[:1]), color="C0")
        top = float(r.max()) if r.size and r.max() > 0 else 1.0
        if marks and name in marks:
            ax.plot([math.radians(marks[name])] * 2, [0, top], color="C3", lw=1.5)
        ax.set_title(name, fontsize=9)
        ax.set_yticklabels([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def traces(
    responses: Mapping[str, Tensor],
    *,
    dt: float = 0.02,
    t0: float = 0.0,
    title: str = "",
    ylabel: str = "voltage",
    path: str | Path | None = None,
) -> Figure:
    """Responses over time, one line per name (step ``dt`` from ``t0``).

    Shapes: each response ``[T]`` → a matplotlib ``Figure``.
    """
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    for name, r in responses.items():
        r = r.detach().cpu().double().numpy() if isinstance(r, Tensor) else np.asarray(r, float)
        ax.plot(t0 + dt * np.arange(1, len(r) + 1), r, label=name)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(responses) <= 12:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)
