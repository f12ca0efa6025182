r"""Visual stimuli on the hexagonal lattice of the fly visual system, and the published eye.

A stimulus here is a movie of **column frames** ``[T, C]``: one intensity per column and
step, the columns in :func:`~graphode.flyvis.hex_columns` order (u, then v), to be read by
the photoreceptors through :func:`~graphode.flyvis.model.photoreceptor_projection` (the
published model's input) and :func:`~graphode.flyvis.model.simulate` (frame ``k`` at step
``k``). Intensities are in ``[0, 1]`` with grey 0.5 as the background, as published.

**Geometry.** Stimuli live in the image plane of the published eye, which samples an
image at ``(row, col) ∝ (u + v/2, v)`` (:func:`box_eye`, and
:func:`~graphode.inputs.hex_retina` with ``orientation="published"``). A column's position
in that plane, with ``x`` to the image's right and ``y`` up, is

.. math::

    x = v, \qquad y = -(u + v/2)

in units of the column spacing (:func:`visual_coordinates`). A direction ``angle`` (degrees)
is measured counter-clockwise from the image's right: 0° moves rightwards (+v), 90°
upwards, 180° leftwards, 270° downwards, as the published moving stimuli's angles.
The known preferred directions of the motion detectors are, in these angles, T4a/T5a 180°
(front to back), T4b/T5b 0° (back to front), T4c/T5c 90° (upwards) and T4d/T5d 270°
(downwards) (:data:`KNOWN_PREFERRED_DIRECTIONS`).

Stimuli: :func:`flashes` (full-field or a disc), :func:`moving_edge` and :func:`moving_bar`
(any direction and speed), :func:`grating` (square or sine, drifting), :func:`dot` (an
impulse at one column). Positions are sampled at each column's centre, so every stimulus
has a closed form: a column is lit once the edge's front has passed its projection onto the
direction of motion. The published renderings draw the same stimuli on a monitor and
average pixels per column; positions there advance in steps of one LED (2.25°, 0.39 of a
column spacing, :data:`LED`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from .connectome import hex_columns

__all__ = [
    "visual_coordinates", "hex_distance", "flashes", "moving_edge", "moving_bar", "grating", "dot", "grey",
    "box_eye", "LED", "KNOWN_PREFERRED_DIRECTIONS", "BACKGROUND",
]

BACKGROUND = 0.5
LED = 2.25 / 5.8  # one LED of the published monitor (2.25°) in column spacings (5.8°)
KNOWN_PREFERRED_DIRECTIONS = {
    "T4a": 180.0, "T4b": 0.0, "T4c": 90.0, "T4d": 270.0,
    "T5a": 180.0, "T5b": 0.0, "T5c": 90.0, "T5d": 270.0,
}


def visual_coordinates(extent: int) -> Tensor:
    """Each column's position ``(x, y) = (v, −(u + v/2))`` in the published eye's image
    plane (x right, y up, unit: the column spacing).

    Shapes: → float64 ``[C, 2]``, columns in :func:`hex_columns` order.
    """
    uv = torch.from_numpy(hex_columns(extent)).double()
    return torch.stack([uv[:, 1], -(uv[:, 0] + 0.5 * uv[:, 1])], dim=1)


def hex_distance(extent: int, centre: tuple[int, int] = (0, 0)) -> Tensor:
    """The hexagonal distance of each column from ``centre``.

    Shapes: → int64 ``[C]``.
    """
    uv = torch.from_numpy(hex_columns(extent))
    du, dv = uv[:, 0] - centre[0], uv[:, 1] - centre[1]
    return torch.stack([du.abs(), dv.abs(), (du + dv).abs()]).max(0).values


def _steps(duration: float, dt: float, what: str, allow_zero: bool = True) -> int:
    if not (math.isfinite(duration) and duration >= 0):
        raise ValueError(f"{what} must be a finite duration >= 0, got {duration}")
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a finite number > 0, got {dt}")
    steps = int(round(duration / dt))
    if steps == 0 and not allow_zero:
        raise ValueError(f"{what} ({duration}) is shorter than one step of {dt}")
    return steps


def _intensity(value: float, what: str = "intensity") -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{what} must lie in [0, 1], got {value}")
    return float(value)


def grey(extent: int, steps: int, value: float = BACKGROUND) -> Tensor:
    """``steps`` uniform frames of ``value``.

    Shapes: → float32 ``[steps, C]``.
    """
    return torch.full((int(steps), len(hex_columns(extent))), _intensity(value, "value"))


def flashes(
    extent: int,
    intensity: float,
    *,
    radius: int = -1,
    dt: float = 0.02,
    t_pre: float = 1.0,
    t_stim: float = 1.0,
    t_post: float | None = None,
    baseline: float = BACKGROUND,
) -> Tensor:
    """A flash: ``t_pre`` of ``baseline``, ``t_stim`` of ``intensity`` on the columns within
    hexagonal distance ``radius`` of the centre (``-1``: the full field), ``t_post``
    (default ``t_pre``) of ``baseline`` (the published flashes: 0.5 → 1 or 0 → 0.5).

    Shapes: → float32 ``[T, C]``, ``T = round(t_pre/dt) + round(t_stim/dt) + round(t_post/dt)``.
    """
    intensity, baseline = _intensity(intensity), _intensity(baseline, "baseline")
    if radius < -1:
        raise ValueError(f"radius must be -1 (full field) or >= 0, got {radius}")
    pre = _steps(t_pre, dt, "t_pre")
    stim = _steps(t_stim, dt, "t_stim", allow_zero=False)
    post = _steps(t_pre if t_post is None else t_post, dt, "t_post")
    c = len(hex_columns(extent))
    lit = torch.ones(c, dtype=torch.bool) if radius == -1 else hex_distance(extent) <= radius
    frame = torch.where(lit, torch.tensor(intensity), torch.tensor(baseline))
    return torch.cat([grey(extent, pre, baseline), frame.expand(stim, c), grey(extent, post, baseline)])


def _projection(extent: int, angle: float) -> Tensor:
    if not math.isfinite(angle):
        raise ValueError(f"angle must be finite (degrees), got {angle}")
    xy = visual_coordinates(extent)
    theta = math.radians(angle)
    return xy[:, 0] * math.cos(theta) + xy[:, 1] * math.sin(theta)


def _front(speed: float, start: float, stop: float, dt: float) -> Tensor:
    """Front positions ``start + speed·k·dt`` of the steps it takes to move from start to stop."""
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be a finite number > 0 (columns per second), got {speed}")
    if not (math.isfinite(start) and math.isfinite(stop) and stop > start):
        raise ValueError(f"start and stop must be finite with stop > start, got {start}, {stop}")
    steps = _steps((stop - start) / speed, dt, "the sweep (stop − start)/speed", allow_zero=False)
    return start + speed * dt * torch.arange(steps, dtype=torch.float64)


def moving_edge(
    extent: int,
    angle: float,
    speed: float,
    intensity: float,
    *,
    dt: float = 0.02,
    start: float = -10 * LED,
    stop: float = 11 * LED,
    t_pre: float = 1.0,
    t_post: float = 1.0,
    background: float = BACKGROUND,
) -> Tensor:
    """An edge of ``intensity`` moving in direction ``angle`` at ``speed`` columns per second.

    The edge's front lies at ``s_k = start + speed·k·dt`` (a distance along the direction of
    motion from the centre, in column spacings) at stimulus step ``k``; a column whose
    position projects to ``p ≤ s_k`` has been passed and shows ``intensity``, the others
    ``background``. The sweep from ``start`` to ``stop`` (published: −10 to +11 LEDs) takes
    ``round((stop − start)/(speed·dt))`` steps, after ``t_pre`` of background; for ``t_post``
    the last frame stays (the edge has stopped).

    Shapes: → float32 ``[T, C]``.
    """
    intensity, background = _intensity(intensity), _intensity(background, "background")
    p = _projection(extent, angle)
    front = _front(speed, start, stop, dt)
    lit = p[None, :] <= front[:, None]
    sweep = torch.where(lit, intensity, background).float()
    pre, post = _steps(t_pre, dt, "t_pre"), _steps(t_post, dt, "t_post")
    return torch.cat([grey(extent, pre, background), sweep, sweep[-1:].expand(post, -1)])


def moving_bar(
    extent: int,
    angle: float,
    speed: float,
    intensity: float,
    *,
    width: float = 2 * LED,
    dt: float = 0.02,
    start: float = -10 * LED,
    stop: float = 11 * LED,
    t_pre: float = 1.0,
    t_post: float = 1.0,
    background: float = BACKGROUND,
) -> Tensor:
    """A bar of ``width`` (column spacings, across the direction of motion) moving in
    direction ``angle`` at ``speed`` columns per second: at stimulus step ``k`` the columns
    with ``s_k − width < p ≤ s_k`` show ``intensity`` (``s_k`` as in :func:`moving_edge`);
    background before and after.

    Shapes: → float32 ``[T, C]``.
    """
    intensity, background = _intensity(intensity), _intensity(background, "background")
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a finite number > 0 (column spacings), got {width}")
    p = _projection(extent, angle)
    front = _front(speed, start, stop, dt)
    lit = (p[None, :] <= front[:, None]) & (p[None, :] > front[:, None] - width)
    sweep = torch.where(lit, intensity, background).float()
    pre, post = _steps(t_pre, dt, "t_pre"), _steps(t_post, dt, "t_post")
    return torch.cat([grey(extent, pre, background), sweep, grey(extent, post, background)])


def grating(
    extent: int,
    angle: float,
    period: float,
    speed: float,
    *,
    contrast: float = 1.0,
    mean: float = BACKGROUND,
    shape: str = "square",
    duration: float = 1.0,
    dt: float = 0.02,
    t_pre: float = 0.0,
) -> Tensor:
    """A grating of spatial ``period`` (column spacings) drifting in direction ``angle`` at
    ``speed`` columns per second (temporal frequency ``speed/period``):
    ``mean + (contrast/2)·w(2π (p − speed·t)/period)`` with ``w = sin`` (``shape="sine"``) or
    its sign (``"square"``, ±1), ``t = k·dt`` for ``duration``, after ``t_pre`` of ``mean``.
    ``speed = 0`` gives a standing grating.

    Shapes: → float32 ``[T, C]``.
    """
    if shape not in ("square", "sine"):
        raise ValueError(f"shape must be 'square' or 'sine', got {shape!r}")
    if not (math.isfinite(period) and period > 0):
        raise ValueError(f"period must be a finite number > 0 (column spacings), got {period}")
    if not math.isfinite(speed):
        raise ValueError(f"speed must be finite, got {speed}")
    mean = _intensity(mean, "mean")
    if not (math.isfinite(contrast) and 0 <= contrast and mean - contrast / 2 >= 0 and mean + contrast / 2 <= 1):
        raise ValueError(f"mean ± contrast/2 must stay in [0, 1], got mean {mean}, contrast {contrast}")
    p = _projection(extent, angle)
    steps = _steps(duration, dt, "duration", allow_zero=False)
    t = dt * torch.arange(steps, dtype=torch.float64)
    phase = 2 * math.pi * (p[None, :] - speed * t[:, None]) / period
    wave = torch.sin(phase)
    if shape == "square":
        wave = torch.where(wave >= 0, 1.0, -1.0).double()
    frames = (mean + 0.5 * contrast * wave).float()
    return torch.cat([grey(extent, _steps(t_pre, dt, "t_pre"), mean), frames])


def dot(
    extent: int,
    column: tuple[int, int] = (0, 0),
    intensity: float = 1.0,
    *,
    duration: float = 0.02,
    dt: float = 0.02,
    t_pre: float = 1.0,
    t_post: float = 1.0,
    background: float = BACKGROUND,
) -> Tensor:
    """An impulse: one column at ``intensity`` for ``duration``, the rest ``background``
    (``t_pre`` before, ``t_post`` after): a probe of receptive fields.

    Shapes: → float32 ``[T, C]``.
    """
    intensity, background = _intensity(intensity), _intensity(background, "background")
    u, v = int(column[0]), int(column[1])
    if max(abs(u), abs(v), abs(u + v)) > extent:
        raise ValueError(f"column {column} lies outside the lattice of extent {extent}")
    uv = hex_columns(extent)
    index = int(np.nonzero((uv[:, 0] == u) & (uv[:, 1] == v))[0][0])
    stim = grey(extent, _steps(duration, dt, "duration", allow_zero=False), background)
    stim[:, index] = intensity
    pre, post = _steps(t_pre, dt, "t_pre"), _steps(t_post, dt, "t_post")
    return torch.cat([grey(extent, pre, background), stim, grey(extent, post, background)])


def box_eye(images: Tensor, extent: int = 15, kernel_size: int = 13) -> Tensor:
    """The published eye (flyvis' ``BoxEye``): box-filter images and sample them at the
    columns.

    Column ``(u, v)`` reads the mean of the ``kernel_size × kernel_size`` pixels around
    ``(row, col) = (H//2 + trunc(d·(u + v/2)), W//2 + d·v)``, ``d = kernel_size`` (the image
    zero-padded at its border): image rows follow ``u + v/2`` downwards, image columns
    follow ``v`` rightwards. The image must span the lattice:
    ``H, W ≥ 2·extent·kernel_size + 1`` (the published code resizes smaller images; here
    they are refused).

    Args:
        images: ``[..., H, W]`` intensities.
        extent: lattice radius.
        kernel_size: the box (and the column spacing) in pixels.

    Shapes: ``[..., H, W]`` → ``[..., C]``, columns in :func:`hex_columns` order.
    """
    if not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"kernel_size must be an integer >= 1, got {kernel_size!r}")
    if not isinstance(images, Tensor) or images.dim() < 2:
        raise ValueError(f"images must be a [..., H, W] tensor, got {getattr(images, 'shape', type(images).__name__)}")
    h, w = images.shape[-2:]
    d = kernel_size
    uv = hex_columns(extent)
    rows = torch.tensor([d * (u + v / 2) for u, v in uv.tolist()], dtype=torch.long)  # truncated towards 0
    cols = torch.tensor([d * v for v in uv[:, 1].tolist()], dtype=torch.long)
    need = (int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1)
    if h < need[0] or w < need[1]:
        raise ValueError(f"images of {h}×{w} pixels do not span the lattice of extent {extent} at {d} pixels per "
                         f"column: they need at least {need[0]}×{need[1]}")
    lead = images.shape[:-2]
    x = images.reshape(-1, 1, h, w).float()
    pad = (d - 1) / 2
    x = F.pad(x, (math.ceil(pad), math.floor(pad), math.ceil(pad), math.floor(pad)))
    mean = F.avg_pool2d(x, d, stride=1)[:, 0]  # [n, H, W]: the box mean around every pixel
    out = mean[:, rows + h // 2, cols + w // 2]
    return out.reshape(*lead, len(uv)).to(images.dtype if images.is_floating_point() else torch.float32)
