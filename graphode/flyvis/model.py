r"""The published fly visual system model (Lappalainen et al., Nature 2024), in graphode.

The published model is a voltage model on the connectome of :func:`fly_visual_system`:

.. math::

    \tau_{t(i)} \frac{dv_i}{dt} = -v_i + b_{t(i)} + \sum_{j \to i} s_{ij}\, n_{ij}\, \alpha_{t(j)t(i)}\,
    \operatorname{ReLU}(v_j) + e_i(t)

with ``t(i)`` the cell type of neuron ``i``, ``s`` the sign and ``n`` the (mean) synapse count of
each connection, and three kinds of parameters (734 at extent 15):

* a time constant ``τ`` per cell type, starting at 0.05 s and used as ``max(τ, dt)``;
* a resting potential ``b`` per cell type, drawn from N(0.5, 0.05) with seed 0;
* a strength ``α ≥ 0`` per (source type, target type), starting at ``0.01 / ⟨n⟩``, the mean
  synapse count of that type's connections at the chosen extent, and projected onto
  ``α ≥ 0`` before every use (it may reach 0).

The stimulus ``e(t)`` drives the photoreceptors R1–R8: each reads the intensity of its
column's frame. The state starts at rest (``v = b``), or at the state reached after 1 s of
grey (0.5) input from rest; the published model integrates it by explicit Euler at
``dt = 20 ms`` with frame ``k`` read at step ``k`` and backpropagates through the loop.
In training, an activity penalty keeps the mean activity of the central column near a
baseline (:func:`activity_penalty`).

:func:`published_dynamics` builds these dynamics as a :class:`~graphode.dynamics.BoundDynamics`
(``weights="count_per_type"``, ``tau_bound="clamp"`` with ``tau_min = dt``, per-type initial
values); :func:`simulate` is that Euler loop; :func:`rest_state`,
:func:`grey_steady_state` and :func:`fade_in_state` are its initial states. Any graphode
solver also runs these dynamics (``solve(dyn, v0, args=(frame_stimulus(frames, dt),))``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..dynamics import BoundDynamics, ConnectomeDynamics, Stimulus
from ..inputs import SparseProjection
from ..synapses import SynapseWeights
from .connectome import hex_columns

__all__ = [
    "published_dynamics", "resting_potentials", "photoreceptor_projection", "column_index", "lattice_extent",
    "frame_stimulus", "simulate", "rest_state", "grey_steady_state", "fade_in_state", "activity_penalty",
    "central_cells", "PUBLISHED_DT",
]

PUBLISHED_DT = 0.02  # seconds: the published integration step


def resting_potentials(num_types: int = 65, *, mean: float = 0.5, std: float = 0.05, seed: int = 0) -> Tensor:
    """The published initial resting potentials: one per cell type, ``N(mean, std)``.

    Drawn as the published code draws them (``torch.normal`` with a CPU generator seeded with
    ``seed``), in the order of the cell types of the description file, which is the order of
    ``data.cell_type_names``.

    Shapes: → float32 ``[num_types]``.
    """
    if num_types < 1:
        raise ValueError(f"num_types must be >= 1, got {num_types}")
    if not (math.isfinite(mean) and math.isfinite(std) and std >= 0):
        raise ValueError(f"mean must be finite and std finite and >= 0, got {mean}, {std}")
    generator = torch.Generator().manual_seed(int(seed))
    means = torch.tensor(np.repeat(mean, num_types)).float()
    stds = torch.tensor(np.repeat(std, num_types)).float()
    return torch.normal(means, stds, generator=generator)


def lattice_extent(data) -> int:
    """The lattice radius of a fly visual system graph: the largest hexagonal distance
    ``max(|u|, |v|, |u + v|)`` of its photoreceptors' columns.

    Shapes: ``data.uv [N, 2]`` → an int.
    """
    uv = _input_columns(data)
    return int(torch.stack([uv[:, 0].abs(), uv[:, 1].abs(), (uv[:, 0] + uv[:, 1]).abs()]).max())


def column_index(uv: Tensor, extent: int) -> Tensor:
    """The index of each column ``(u, v)`` in :func:`hex_columns` order (u, then v).

    Shapes: ``uv [K, 2]`` → int64 ``[K]``; raises for a column outside the lattice.
    """
    uv = torch.as_tensor(uv, dtype=torch.long).reshape(-1, 2)
    u, v = uv[:, 0], uv[:, 1]
    inside = (u.abs() <= extent) & (v.abs() <= extent) & ((u + v).abs() <= extent)
    if not bool(inside.all()):
        bad = uv[~inside][0].tolist()
        raise ValueError(f"column {bad} lies outside the lattice of extent {extent}")
    # rows u = -extent .. u - 1 hold 2·extent + 1 − |u'| columns each; v starts at max(−extent, −extent − u)
    length = (2 * extent + 1) - torch.arange(-extent, extent + 1).abs()
    start = torch.cat([torch.zeros(1, dtype=torch.long), length.cumsum(0)[:-1]])
    return start[u + extent] + v - torch.clamp(-extent - u, min=-extent)


def _input_columns(data) -> Tensor:
    mask = getattr(data, "input_mask", None)
    uv = getattr(data, "uv", None)
    if mask is None or uv is None:
        raise ValueError("the graph needs input_mask and uv (a fly_visual_system graph)")
    if not bool(mask.any()):
        raise ValueError("data.input_mask selects no neurons")
    return uv.cpu()[mask.cpu()]


def photoreceptor_projection(data) -> SparseProjection:
    """The published eye's wiring: every photoreceptor (``data.input_mask``, R1–R8) reads its
    column's intensity, with weight 1.

    The ``C`` features are the lattice's columns in :func:`hex_columns` order, so a frame
    ``[B, C]`` (or a movie ``[B, T, C]`` through :func:`frame_stimulus`) drives the network.

    Shapes: forward(frames ``[B, C]``) → ``[B, N]``.
    """
    extent = lattice_extent(data)
    neurons = torch.nonzero(data.input_mask.cpu()).flatten()
    columns = column_index(data.uv.cpu()[neurons], extent)
    return SparseProjection(torch.stack([neurons, columns]), torch.ones(neurons.numel()), int(data.num_nodes),
                            len(hex_columns(extent)))


def frame_stimulus(frames: Tensor, dt: float = PUBLISHED_DT, t0: float = 0.0) -> Stimulus:
    """Column frames ``[B, T, C]`` as a stimulus indexed by step: frame ``k`` at step ``k``
    of a fixed-step solve at ``dt`` from ``t0`` (:class:`~graphode.dynamics.Stimulus` with
    ``dt=``).

    Shapes: ``frames [B, T, C]`` → a stimulus giving ``[B, C]`` at each time.
    """
    if not isinstance(frames, Tensor) or frames.dim() != 3:
        raise ValueError(f"frames must be a [B, T, C] tensor, got {getattr(frames, 'shape', type(frames).__name__)}")
    return Stimulus(values=frames, dt=dt, t0=t0)


def published_dynamics(
    data,
    *,
    dt: float = PUBLISHED_DT,
    tau: float = 0.05,
    resting_mean: float = 0.5,
    resting_std: float = 0.05,
    seed: int = 0,
    strength_scale: float = 0.01,
    bound: bool = True,
    **options,
) -> BoundDynamics | ConnectomeDynamics:
    """The published model's dynamics on a :func:`fly_visual_system` graph.

    Args:
        data: the connectome (``fly_visual_system(extent)``).
        dt: the integration step; τ is used as ``max(τ, dt)``.
        tau: initial time constant of every cell type (seconds).
        resting_mean, resting_std, seed: the resting potentials' distribution
            (:func:`resting_potentials`).
        strength_scale: α starts at ``strength_scale / ⟨n⟩_type``.
        bound: return a :class:`~graphode.dynamics.BoundDynamics` holding ``data`` (True) or a
            :class:`~graphode.dynamics.ConnectomeDynamics` for graphs like it (False).
        **options: further options of the dynamics (``backend=``, ``fuse=``, ...); the
            published choices above cannot be overridden here.

    Returns:
        Dynamics whose stimulus is column frames: ``[B, C]`` constant, or
        :func:`frame_stimulus` of ``[B, T, C]`` (``C`` columns in :func:`hex_columns`
        order, read by every photoreceptor of the column).

    Shapes:
        forward(t ``[B]``, v ``[B, N]``, stimulus) → ``[B, N]`` (``BoundDynamics``).
    """
    fixed = {"weights", "tau_mode", "bias_mode", "tau_min", "tau_bound", "activation", "input_projection", "gain", "dale"}
    clash = sorted(fixed & set(options))
    if clash:
        raise ValueError(f"published_dynamics sets {', '.join(clash)} itself; build BoundDynamics directly to change them")
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
    if not tau > dt:
        raise ValueError(f"tau ({tau}) must exceed dt ({dt}), the floor of the time constants")
    names = getattr(data, "cell_type_names", None)
    if names is None:
        raise ValueError("the graph needs cell_type_names (a fly_visual_system graph)")
    bias = resting_potentials(len(names), mean=resting_mean, std=resting_std, seed=seed)
    published = dict(
        weights="count_per_type", activation="relu", tau=tau, tau_mode="per_type", tau_min=float(dt),
        tau_bound="clamp", bias=bias, bias_mode="per_type", input_projection=photoreceptor_projection(data),
    )
    published["weights"] = SynapseWeights.from_data(data, "count_per_type", scale=strength_scale)
    if bound:
        return BoundDynamics(data, **published, **options)
    return ConnectomeDynamics.from_data(data, **published, **options)


def _prepared(dynamics, stimulus, graph):
    if isinstance(dynamics, BoundDynamics):
        if graph is not None:
            raise ValueError("BoundDynamics holds its graph: call without graph=")
        return dynamics.prepare(stimulus)
    if graph is None:
        raise ValueError("ConnectomeDynamics needs the graph: simulate(dynamics, frames, graph=data)")
    return dynamics.prepare(graph, stimulus)


def simulate(
    dynamics: BoundDynamics | ConnectomeDynamics,
    frames: Tensor,
    v0: Tensor,
    dt: float = PUBLISHED_DT,
    *,
    graph=None,
    t0: float = 0.0,
) -> Tensor:
    """Explicit Euler at ``dt`` with frame ``k`` read at step ``k``: the published scheme.

    ``v[k+1] = v[k] + dt · f(t0 + k·dt, v[k], frame k)`` for ``k = 0 … T−1``. Step times are
    computed as ``t0 + k·dt`` (never accumulated) and frames indexed by step, so no rounding
    of time can make a step read its neighbour's frame. Gradients flow through the loop
    (backpropagation through time, as published).

    Args:
        dynamics: the vector field (e.g. :func:`published_dynamics`).
        frames: ``[B, T, F]`` stimulus frames (column frames for the published dynamics).
        v0: ``[B, N]`` initial state (:func:`rest_state`, :func:`grey_steady_state`).
        dt: the step.
        graph: the graph, for a :class:`~graphode.dynamics.ConnectomeDynamics`.
        t0: time of the first step.

    Returns:
        ``[B, T, N]``: entry ``k`` is the state after step ``k`` (at ``t0 + (k+1)·dt``), as
        the published code returns it.

    Shapes: ``frames [B, T, F]``, ``v0 [B, N]`` (or ``[1, N]``) → ``[B, T, N]``.
    """
    if not isinstance(frames, Tensor) or frames.dim() != 3 or frames.size(1) == 0:
        raise ValueError(f"frames must be [B, T, F] with T >= 1, got {getattr(frames, 'shape', None)}")
    if not isinstance(v0, Tensor) or v0.dim() != 2:
        raise ValueError(f"v0 must be a [B, N] tensor, got {getattr(v0, 'shape', type(v0).__name__)}")
    if v0.size(0) not in (1, frames.size(0)):
        raise ValueError(f"v0 has batch {v0.size(0)}, the frames {frames.size(0)}")
    stimulus = Stimulus(values=frames, dt=dt, t0=t0)
    inputs = _prepared(dynamics, stimulus, graph)
    derived = dynamics.derive(inputs)
    b = frames.size(0)
    v = v0.expand(b, -1)
    states = []
    for k in range(frames.size(1)):
        t = torch.full((b,), t0 + k * dt, dtype=frames.dtype, device=frames.device)
        v = v + dt * dynamics.evaluate(t, v, inputs, derived)
        states.append(v)
    return torch.stack(states, dim=1)


def rest_state(dynamics: BoundDynamics | ConnectomeDynamics, batch_size: int = 1, *, graph=None) -> Tensor:
    """The published initial state: every neuron at its resting potential ``b``.

    Shapes: → ``[batch_size, N]``.
    """
    inputs = _prepared(dynamics, None, graph)
    bias = dynamics.derive(inputs).bias
    n = inputs.graph.num_nodes
    return bias.expand(n).unsqueeze(0).expand(int(batch_size), n).clone()


def _steps(duration: float, dt: float, what: str) -> int:
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"{what} must be a finite duration > 0, got {duration}")
    steps = int(round(duration / dt))
    if steps < 1:
        raise ValueError(f"{what} ({duration}) is shorter than one step of {dt}")
    return steps


def grey_steady_state(
    dynamics: BoundDynamics | ConnectomeDynamics,
    batch_size: int = 1,
    *,
    dt: float = PUBLISHED_DT,
    duration: float = 1.0,
    value: float = 0.5,
    graph=None,
    v0: Tensor | None = None,
) -> Tensor:
    """The state after ``duration`` of uniform grey ``value`` from rest (published: 1 s of 0.5
    at 20 ms steps, 50 Euler steps).

    Shapes: → ``[batch_size, N]``.
    """
    inputs = _prepared(dynamics, None, graph)
    features = _stimulus_features(dynamics, inputs.graph.num_nodes)
    steps = _steps(duration, dt, "duration")
    v = rest_state(dynamics, batch_size, graph=graph) if v0 is None else v0
    frames = torch.full((1, steps, features), float(value), dtype=v.dtype, device=v.device)
    return simulate(dynamics, frames.expand(v.size(0), -1, -1), v, dt, graph=graph)[:, -1]


def fade_in_state(
    dynamics: BoundDynamics | ConnectomeDynamics,
    first_frame: Tensor,
    *,
    dt: float = PUBLISHED_DT,
    duration: float = 1.0,
    graph=None,
) -> Tensor:
    """The state after fading in ``first_frame`` from grey (published ``fade_in_state``):
    ``duration/dt`` frames ``0.5 + c_k (first_frame − 0.5)`` with contrast ``c_k`` rising
    linearly from 0 to 1, from rest.

    Shapes: ``first_frame [B, F]`` → ``[B, N]``.
    """
    if not isinstance(first_frame, Tensor) or first_frame.dim() != 2:
        raise ValueError(f"first_frame must be [B, F], got {getattr(first_frame, 'shape', None)}")
    steps = _steps(duration, dt, "duration")
    contrast = torch.linspace(0, 1, steps, dtype=first_frame.dtype, device=first_frame.device)
    frames = contrast[None, :, None] * (first_frame[:, None] - 0.5) + 0.5
    v = rest_state(dynamics, first_frame.size(0), graph=graph).to(first_frame.dtype)
    return simulate(dynamics, frames, v, dt, graph=graph)[:, -1]


def _stimulus_features(dynamics, num_nodes: int) -> int:
    projection = dynamics.input_projection
    if projection is None:
        return num_nodes
    features = getattr(projection, "num_features", None)
    if features is None:
        raise ValueError("the dynamics' input_projection does not say its number of features (num_features)")
    return int(features)


def central_cells(data) -> Tensor:
    """The neurons of the central column ``(0, 0)``, one per cell type present there, in cell
    type order (the published analyses and activity penalty read these).

    Shapes: → int64 ``[K]``.
    """
    uv = data.uv
    index = torch.nonzero((uv[:, 0] == 0) & (uv[:, 1] == 0)).flatten()
    return index[torch.argsort(data.cell_type[index], stable=True)]


def activity_penalty(
    activity: Tensor,
    data,
    *,
    baseline: float = 5.0,
    weight: float = 0.1,
    below: float = 1.0,
    above: float = 0.1,
) -> Tensor:
    r"""The published activity penalty on the central column.

    ``weight · mean_{b, i} g(baseline − m_{b,i})²`` with ``m`` each central cell's mean
    activity over the last three quarters of the frames and ``g(x) = below·relu(x) −
    above·relu(−x)``: activity below the baseline is penalised ten times more than above it
    (published: baseline 5, weight 0.1; it trains the resting potentials only, with its own
    optimizer).

    Shapes: ``activity [B, T, N]`` → scalar.
    """
    if activity.dim() != 3 or activity.size(2) != int(data.num_nodes):
        raise ValueError(f"activity must be [B, T, N={int(data.num_nodes)}], got {tuple(activity.shape)}")
    centre = central_cells(data).to(activity.device)
    mean = activity[:, activity.size(1) // 4:, centre].mean(dim=1)
    gap = baseline - mean
    return weight * ((below * torch.relu(gap) - above * torch.relu(-gap)) ** 2).mean()
