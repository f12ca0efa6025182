r"""Response analyses of the fly visual system model: the published indices and the runs
that feed them.

Responses are recorded, as in the published analyses, from the central column: one cell of
every type at ``(u, v) = (0, 0)`` (:func:`central_responses`).

**Flash response index** (:func:`flash_response_index`): for responses to an ON flash
(grey → bright) and an OFF flash (grey → dark) over the stimulus window, both shifted up by
the magnitude of their joint minimum (so that they are non-negative),

.. math::

    \mathrm{FRI} = \frac{\max_t r_\text{on} - \max_t r_\text{off}}{\max_t r_\text{on} + \max_t r_\text{off}}

(+1: an ON cell, −1: an OFF cell).

**Direction selectivity index and preferred direction** (:func:`direction_selectivity_index`,
:func:`preferred_direction`): from the peak rectified response ``r(θ)`` to motion in
directions ``θ``,

.. math::

    \mathrm{DSI} = \frac{\lvert \sum_\theta r(\theta)\, e^{i\theta} \rvert}{\sum_\theta r(\theta)},\qquad
    \theta_\text{pref} = \arg \sum_\theta r(\theta)\, e^{i\theta}

(the published analysis divides by the larger of the ON and OFF edges' sums, see
:func:`direction_selectivity_index`'s ``normalisation``). Angles are those of
:mod:`graphode.flyvis.stimuli`.

:func:`flash_responses` and :func:`moving_edge_responses` run a model on the stimuli and
return the central responses these indices read.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from . import stimuli
from .connectome import hex_columns
from .model import PUBLISHED_DT, central_cells, grey_steady_state, lattice_extent, simulate

__all__ = [
    "central_responses", "flash_response_index", "peak_responses", "direction_selectivity_index",
    "preferred_direction", "angular_distance", "flash_responses", "moving_edge_responses", "receptive_field",
    "type_index",
]


def type_index(data, names: Sequence[str]) -> list[int]:
    """The cell-type codes of ``names`` (raises naming an unknown type).

    Shapes: ``names`` of length K → a list of K ints.
    """
    known = list(data.cell_type_names)
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"unknown cell types {missing}; the graph has {len(known)} types, e.g. {known[:5]}")
    return [known.index(n) for n in names]


def central_responses(states: Tensor, data) -> Tensor:
    """The central column's cell of every type present there, in cell-type order.

    Shapes: ``states [..., N]`` → ``[..., K]`` (``K = 65`` for the fly visual system: every
    type has a cell at ``(0, 0)``); ``data.cell_type_names[data.cell_type[central_cells(data)]]``
    names the entries.
    """
    n = int(data.num_nodes)
    if states.size(-1) != n:
        raise ValueError(f"states must end in N = {n} neurons, got {tuple(states.shape)}")
    return states[..., central_cells(data).to(states.device)]


def flash_response_index(on: Tensor, off: Tensor, *, nonnegative: bool = True) -> Tensor:
    """The flash response index from ON and OFF responses over the stimulus window.

    Args:
        on, off: ``[..., T]`` responses (e.g. voltages of central cells) to the ON and the OFF
            flash, from one step before its onset to its end (published window).
        nonnegative: shift both by the magnitude of their joint minimum over time first (as
            published), so that the index compares non-negative peaks.

    Shapes: → ``[...]``, in ``[-1, 1]``.
    """
    if on.shape != off.shape or on.dim() < 1:
        raise ValueError(f"on and off must have the same shape [..., T], got {tuple(on.shape)} and {tuple(off.shape)}")
    if nonnegative:
        shift = torch.minimum(on.min(-1).values, off.min(-1).values).abs().unsqueeze(-1)
        on, off = on + shift, off + shift
    on_peak, off_peak = on.max(-1).values, off.max(-1).values
    return (on_peak - off_peak) / (on_peak + off_peak + 1e-16)


def peak_responses(responses: Tensor, *, baseline: Tensor | float | None = None) -> Tensor:
    """The peak of the rectified response over time, ``max_t relu(r − baseline)``
    (published: no baseline, i.e. the rectified voltage).

    Shapes: ``[..., T]`` → ``[...]``; a tensor ``baseline`` is ``[...]``.
    """
    if baseline is not None:
        baseline = torch.as_tensor(baseline, dtype=responses.dtype, device=responses.device)
        responses = responses - (baseline.unsqueeze(-1) if baseline.dim() else baseline)
    return torch.relu(responses).max(-1).values


def _angles(angles, peaks: Tensor) -> Tensor:
    angles = torch.as_tensor(angles, dtype=torch.float64).flatten()
    if angles.numel() != peaks.size(-1) or angles.numel() < 2:
        raise ValueError(f"angles [{angles.numel()}] must match the last axis of peaks {tuple(peaks.shape)} (>= 2)")
    if bool((peaks < 0).any()):
        raise ValueError("peaks must be >= 0 (rectified peak responses, see peak_responses)")
    return torch.deg2rad(angles)


def _vector_sum(peaks: Tensor, angles) -> Tensor:
    theta = _angles(angles, peaks).to(peaks.device)
    p = peaks.double()
    return torch.complex(p @ torch.cos(theta), p @ torch.sin(theta))


def direction_selectivity_index(peaks: Tensor, angles, *, normalisation: Tensor | None = None) -> Tensor:
    """``|Σ_θ r(θ) e^{iθ}| / Σ_θ r(θ)``: 0 for equal responses in all directions, 1 for a
    response to one direction only.

    Args:
        peaks: ``[..., A]`` peak responses (>= 0) to the directions ``angles``.
        angles: ``[A]`` directions in degrees.
        normalisation: ``[...]`` denominator instead of ``Σ_θ r(θ)``; the published DSI of ON
            and OFF edges divides both by the larger of their sums,
            ``torch.maximum(on.sum(-1), off.sum(-1))``.

    Shapes: → float64 ``[...]``.
    """
    vector = _vector_sum(peaks, angles)
    total = peaks.double().sum(-1) if normalisation is None else torch.as_tensor(normalisation).double()
    return vector.abs() / (total + 1e-15)


def preferred_direction(peaks: Tensor, angles) -> Tensor:
    """The direction of ``Σ_θ r(θ) e^{iθ}`` in degrees, in ``[0, 360)``; NaN where the sum is
    0 (no response, or equal responses in opposite directions: no preferred direction).

    Shapes: ``peaks [..., A]``, ``angles [A]`` → float64 ``[...]``.
    """
    vector = _vector_sum(peaks, angles)
    angle = torch.rad2deg(torch.angle(vector)) % 360.0
    return torch.where(vector.abs() > 1e-12 * peaks.double().abs().sum(-1).clamp_min(1e-300), angle, torch.nan)


def angular_distance(a: Tensor | float, b: Tensor | float) -> Tensor:
    """The smallest angle between directions ``a`` and ``b`` (degrees), in ``[0, 180]``.

    Shapes: ``a``, ``b`` broadcastable → float64 of their broadcast shape.
    """
    d = (torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)) % 360.0
    return torch.minimum(d, 360.0 - d)


def _initial(dynamics, batch: int, dt: float, graph, t_pre: float) -> Tensor:
    with torch.no_grad():
        return grey_steady_state(dynamics, batch, dt=dt, duration=t_pre, graph=graph)


def flash_responses(
    dynamics,
    data,
    *,
    radius: int = -1,
    dt: float = PUBLISHED_DT,
    t_pre: float = 1.0,
    t_stim: float = 1.0,
    graph=None,
) -> tuple[Tensor, Tensor]:
    """Central responses to an ON (0.5 → 1) and an OFF (0.5 → 0) flash, over the published
    FRI window: from one step before the onset to the end of the flash.

    The model starts from its grey steady state (``t_pre`` of grey), sees ``t_pre`` more of
    grey, then the flash of ``t_stim``.

    Returns:
        ``(on, off)``, each ``[K, T_window]`` (K central cells, in cell-type order).

    Shapes: → two ``[K, round(t_stim/dt) + 1]``.
    """
    extent = _extent(data)
    frames = torch.stack([
        stimuli.flashes(extent, level, radius=radius, dt=dt, t_pre=t_pre, t_stim=t_stim, t_post=0.0)
        for level in (1.0, 0.0)
    ])
    v0 = _initial(dynamics, 2, dt, graph, t_pre)
    with torch.no_grad():
        states = simulate(dynamics, frames.to(v0), v0, dt, graph=graph)
    responses = central_responses(states, data).transpose(1, 2)  # [2, K, T]
    onset = int(round(t_pre / dt))
    window = slice(onset - 1, onset + int(round(t_stim / dt)))  # states after steps onset-1 … end
    return responses[0, :, window], responses[1, :, window]


def moving_edge_responses(
    dynamics,
    data,
    angles: Sequence[float] = tuple(range(0, 360, 30)),
    *,
    speed: float = 13.0,
    intensities: Sequence[float] = (1.0, 0.0),
    dt: float = PUBLISHED_DT,
    t_pre: float = 0.5,
    relative: bool = False,
    graph=None,
    **edge_options,
) -> Tensor:
    """Central responses to ON and OFF edges moving in each direction, during the sweep.

    Runs :func:`~graphode.flyvis.stimuli.moving_edge` for every (intensity, angle) from the
    grey steady state (``t_pre`` of grey) and keeps the sweep's frames: the voltages
    (published), or with ``relative=True`` their change from the state at the sweep's onset
    (so that a cell below 0 at rest, whose rectified voltage is 0 whatever the stimulus,
    still shows its tuning).

    Returns:
        ``[I, A, K, T_sweep]`` (intensities, angles, central cells, steps).

    Shapes: ``angles [A]``, ``intensities [I]`` → ``[I, A, K, T_sweep]``.
    """
    extent = _extent(data)
    movies = [
        stimuli.moving_edge(extent, a, speed, i, dt=dt, t_pre=t_pre, t_post=0.0, **edge_options)
        for i in intensities for a in angles
    ]
    frames = torch.stack(movies)
    v0 = _initial(dynamics, frames.size(0), dt, graph, t_pre)
    with torch.no_grad():
        states = simulate(dynamics, frames.to(v0), v0, dt, graph=graph)
    pre = int(round(t_pre / dt))
    if relative:  # the change from the state at the sweep's onset
        states = states - (states[:, pre - 1:pre] if pre > 0 else v0[:, None])
    responses = central_responses(states[:, pre:], data).transpose(1, 2)  # [I·A, K, T]
    return responses.reshape(len(intensities), len(angles), *responses.shape[1:])


def receptive_field(
    dynamics,
    data,
    cell_type: str,
    *,
    intensity: float = 1.0,
    duration: float = 0.06,
    window: float = 0.3,
    dt: float = PUBLISHED_DT,
    batch_size: int = 64,
    graph=None,
) -> Tensor:
    """The central ``cell_type`` cell's response to a dot at each column: its peak change of
    voltage from rest (signed: the largest deviation) within ``window`` after the dot's onset.

    Returns:
        ``[C]`` one value per column (columns in :func:`~graphode.flyvis.hex_columns` order).

    Shapes: → ``[C]``.
    """
    extent = _extent(data)
    code = type_index(data, [cell_type])[0]
    centre = central_cells(data)
    cell = int(centre[data.cell_type[centre] == code][0])
    columns = hex_columns(extent)
    post = max(window - duration, 0.0)
    out = []
    for start in range(0, len(columns), batch_size):
        chunk = columns[start:start + batch_size]
        frames = torch.stack([
            stimuli.dot(extent, (int(u), int(v)), intensity, duration=duration, dt=dt, t_pre=0.0, t_post=post)
            for u, v in chunk
        ])
        v0 = _initial(dynamics, frames.size(0), dt, graph, 1.0)
        with torch.no_grad():
            trace = simulate(dynamics, frames.to(v0), v0, dt, graph=graph)[..., cell] - v0[:, cell:cell + 1]
        peak = trace.gather(1, trace.abs().argmax(1, keepdim=True)).squeeze(1)
        out.append(peak)
    return torch.cat(out)


def _extent(data) -> int:
    return lattice_extent(data)
