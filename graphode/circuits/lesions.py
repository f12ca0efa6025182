"""Lesion scans: silence each group of neurons in turn, measure, restore; plot the table.

:func:`lesion_scan` silences each group in turn, evaluates a user metric, restores the
network and returns a tidy table; :func:`plot_lesions` draws it as a bar chart (PNG).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .._atomic import atomic_write
from .perturbation import Silence, _dynamics_of, perturb
from .selection import _as_list, _count, neuron_cell_types, select_neurons

__all__ = ["lesion_scan", "plot_lesions"]

_COLUMNS = ["group", "n_neurons", "metric", "value", "baseline", "delta", "relative_delta"]


def _metrics(value) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    return {"metric": float(value)}


def lesion_scan(
    target,
    groups: Mapping[str, Any] | Sequence[str] | None,
    evaluate: Callable[[Any], Any],
    *,
    data=None,
    gain: float = 0.0,
    no_grad: bool = True,
) -> pd.DataFrame:
    """Silence each group of neurons in turn and measure a metric.

    Args:
        target: a ConnectomeDynamics or a model with ``.dynamics``.
        groups: ``{name: mask or indices}``, or a list of cell type names (needs ``data``),
            or None for every cell type of ``data``.
        evaluate: ``evaluate(target) -> float | {name: float}`` — e.g. a trained
            classifier's accuracy on a held-out batch, or chosen neurons' mean response.
            Called once on the intact network (the baseline) and once per lesion.
        data: the connectome, for cell type groups.
        gain: output gain of the lesioned neurons (0: silenced).
        no_grad: evaluate under ``torch.no_grad()``.

    Returns:
        a DataFrame with one row per group (per metric, for dict metrics): ``group,
        n_neurons, metric, value, baseline, delta`` (value − baseline) and
        ``relative_delta`` (delta / |baseline|, NaN for a zero baseline). The network is
        restored after every group, also after an error.

    Shapes:
        groups: masks ``[N]`` or index lists → one row per group and metric.
    """
    dyn = _dynamics_of(target)
    if groups is None or not isinstance(groups, Mapping):
        if data is None:
            raise ValueError("lesion_scan: cell type groups need data=")
        names = list(dict.fromkeys(neuron_cell_types(data))) if groups is None else _as_list(groups)
        groups = {str(name): select_neurons(data, cell_types=name) for name in names}
    rows = []
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        base = _metrics(evaluate(target))
        for name, neurons in groups.items():
            with perturb(dyn, Silence(neurons, gain)):
                got = _metrics(evaluate(target))
            for metric, b in base.items():
                v = got[metric]
                rows.append(
                    {
                        "group": name,
                        "n_neurons": _count(neurons),
                        "metric": metric,
                        "value": v,
                        "baseline": b,
                        "delta": v - b,
                        "relative_delta": (v - b) / abs(b) if b != 0 else float("nan"),
                    }
                )
    return pd.DataFrame(rows, columns=_COLUMNS)


def plot_lesions(
    df: pd.DataFrame,
    path: str | Path,
    *,
    metric: str | None = None,
    column: str = "delta",
    title: str | None = None,
    sort: bool = True,
) -> Path:
    """Bar chart of a :func:`lesion_scan` table (``column`` per group; one metric), PNG.

    Draws on a :class:`matplotlib.figure.Figure` (no pyplot, no backend chosen, no display
    needed) and writes the file atomically. Returns the path.

    Shapes:
        df: one row per group (and metric) → one bar per group.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics = list(dict.fromkeys(df["metric"]))
    if metric is None:
        if len(metrics) > 1:
            raise ValueError(f"the table holds several metrics {metrics}; pass metric=")
        metric = metrics[0]
    sub = df[df["metric"] == metric]
    if sort:
        sub = sub.sort_values(column)
    vals = sub[column].to_numpy(dtype=float)
    labels = [f"{g} ({n})" for g, n in zip(sub["group"], sub["n_neurons"])]
    fig = Figure(figsize=(7.5, 1.6 + 0.32 * max(len(sub), 1)), dpi=120, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    colors = ["#c0392b" if v < 0 else "#2e86c1" for v in vals]
    ax.barh(np.arange(len(vals)), vals, color=colors)
    ax.set_yticks(np.arange(len(vals)), labels)
    ax.axvline(0.0, color="black", lw=0.8)
    what = {"delta": f"Δ {metric} (lesioned − control)", "relative_delta": f"relative Δ {metric}",
            "value": f"{metric} with lesion"}.get(column, column)
    ax.set_xlabel(what)
    ax.set_ylabel("silenced group (neurons)")
    if title is None:
        base = sub["baseline"].iloc[0] if len(sub) else float("nan")
        title = f"Lesion scan: {metric} (control {base:.4g})"
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)
    path = Path(path)
    atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    return path
