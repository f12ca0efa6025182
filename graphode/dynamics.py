r"""Neuron dynamics on a connectome: the vector field of the ODE.

.. math::

    \tau \odot \frac{dv}{dt} = -v + A(v) + b + u(t),\qquad
    A(v)_i = \sum_{j \to i} w_{ij}\, f(v_j)

``A`` is :class:`~graphode.layer.ConnectomeConv` with weights from
:class:`~graphode.synapses.SynapseWeights`; ``tau > 0`` and ``b`` are learnable per neuron
or per cell type; ``u(t)`` is the stimulus, injected per neuron (``[B, N]``), optionally
through an input projection from ``F`` stimulus features.

The state is ``[B, N]`` (torchode's layout: every sample has its own time and step size).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._graph_state import GraphTensors
from . import kernels
from ._layout import node_major
from .layer import ConnectomeConv
from .synapses import SynapseWeights, inverse_softplus

__all__ = ["ConnectomeDynamics", "Stimulus", "as_stimulus"]


class Stimulus:
    """A stimulus ``u(t)``: constant, sampled in time, or any function of time.

    Args:
        values: ``[B, F]`` constant, or ``[B, S, F]`` sampled at ``times``.
        times: ``[S]`` increasing sample times (needed for sampled values).
        interpolation: ``"linear"`` or ``"constant"`` (previous sample; piecewise constant)
            between samples; values are held outside ``[times[0], times[-1]]``.
        fn: alternatively a callable ``fn(t: [B]) -> [B, F]``.

    ``tensors()`` lists the tensors the stimulus depends on, so that adjoint methods can
    return gradients for them.
    """

    def __init__(
        self,
        values: Tensor | None = None,
        times: Tensor | None = None,
        interpolation: str = "linear",
        fn: Callable[[Tensor], Tensor] | None = None,
    ):
        if (values is None) == (fn is None):
            raise ValueError("give exactly one of values= or fn=")
        if interpolation not in ("linear", "constant"):
            raise ValueError(f"interpolation must be 'linear' or 'constant', got {interpolation!r}")
        if values is not None:
            if values.dim() == 3:
                if times is None or times.dim() != 1 or times.numel() != values.size(1):
                    raise ValueError(f"sampled values [B, S, F] need times [S]; got values {tuple(values.shape)}")
                if times.numel() > 1 and not bool((times[1:] > times[:-1]).all()):
                    raise ValueError("stimulus times must be strictly increasing")
            elif values.dim() != 2:
                raise ValueError(f"stimulus values must be [B, F] or [B, S, F], got {tuple(values.shape)}")
        self.values, self.times, self.interpolation, self.fn = values, times, interpolation, fn

    def tensors(self) -> tuple[Tensor, ...]:
        return () if self.values is None else (self.values,)

    def __call__(self, t: Tensor) -> Tensor:
        """``t``: ``[B]`` (or scalar) → ``[B, F]``."""
        if self.fn is not None:
            return self.fn(t)
        if self.values.dim() == 2:
            return self.values
        times = self.times.to(self.values.dtype)
        b = self.values.size(0)
        t = t.to(times.dtype).reshape(-1).expand(b)
        idx = torch.searchsorted(times, t.contiguous(), right=True) - 1  # last sample <= t
        lo = idx.clamp(0, times.numel() - 1)
        rows = torch.arange(b, device=self.values.device)
        v_lo = self.values[rows, lo]
        if self.interpolation == "constant" or times.numel() == 1:
            return v_lo
        hi = (idx + 1).clamp(0, times.numel() - 1)
        span = (times[hi] - times[lo]).clamp_min(torch.finfo(times.dtype).tiny)
        frac = ((t - times[lo]) / span).clamp(0, 1).where(hi != lo, torch.zeros_like(t))
        return v_lo + frac.unsqueeze(1) * (self.values[rows, hi] - v_lo)


def as_stimulus(u) -> Stimulus | None:
    """Accept ``None``, a ``[B, F]`` tensor, a callable of time, or a :class:`Stimulus`."""
    if u is None or isinstance(u, Stimulus):
        return u
    if isinstance(u, Tensor):
        return Stimulus(values=u)
    if callable(u):
        return Stimulus(fn=u)
    raise TypeError(f"cannot use {type(u).__name__} as a stimulus")


class ConnectomeDynamics(GraphTensors):
    r"""The vector field ``dv/dt = (−v + A(v) + b + u(t)) / τ`` on one connectome.

    Args:
        data: connectome ``Data`` (graphode layout: ``edge_index``, ``sign``,
            ``syn_weight``/``syn_count``, optional ``cell_type``, ``edge_type``).
        activation: neuron nonlinearity ``f`` (see :class:`~graphode.layer.ConnectomeConv`).
        backend: message-passing backend.
        weights: synapse parameterisation (``per_edge``, ``per_edge_type``, ``fixed``).
            The default ``per_edge`` differs from :class:`~graphode.models.ConnectomeClassifier`'s
            ``per_edge_type`` on purpose: ``per_edge_type`` needs ``data.edge_type``, which a
            graph without cell types lacks (``load_connectome`` of an edge list without a
            node table), while ``per_edge`` works on every graph.
        gain: scale of the initial synaptic magnitudes (see :mod:`graphode.synapses`).
        dale: keep synapse signs fixed.
        tau: initial time constant (> 0), in the time units of the solve.
        tau_mode, bias_mode: ``per_type`` (default; needs ``cell_type``), ``per_neuron``
            or ``fixed``.
        tau_min: lower bound of τ (keeps the system from becoming arbitrarily stiff).
        bias: initial resting drive ``b``.
        input_projection: optional module mapping stimulus features ``[B, F]`` to neuron
            drive ``[B, N]``; without it the stimulus is per neuron already.
        recurrent: set False to drop ``A(v)`` (the "no recurrent connections" ablation).

    Shapes:
        forward(t ``[B]``, v ``[B, N]``, stimulus) → ``[B, N]``.

    The stimulus may be anything :func:`as_stimulus` accepts. :func:`~graphode.solve.solve`
    wraps it once per solve (:meth:`prepare_args`), not at every evaluation, and computes
    the parameters once per solve where the gradient method allows (:meth:`precomputed`).
    """

    def __init__(
        self,
        data,
        *,
        activation: str = "relu",
        backend: str = "auto",
        weights: str = "per_edge",
        gain: float = 1.0,
        dale: bool = True,
        tau: float = 1.0,
        tau_mode: str = "per_type",
        tau_min: float = 0.05,
        bias: float = 0.0,
        bias_mode: str = "per_type",
        input_projection: nn.Module | None = None,
        recurrent: bool = True,
    ):
        super().__init__()
        if tau <= tau_min:
            raise ValueError(f"tau ({tau}) must exceed tau_min ({tau_min})")
        self.num_nodes = int(data.num_nodes)
        cell_type = getattr(data, "cell_type", None)
        if cell_type is None and "per_type" in (tau_mode, bias_mode):
            tau_mode = "per_neuron" if tau_mode == "per_type" else tau_mode
            bias_mode = "per_neuron" if bias_mode == "per_type" else bias_mode
        self.register_graph(edge_index=data.edge_index.clone())
        self.conv = ConnectomeConv(activation=activation, backend=backend)
        self.synapses = SynapseWeights.from_data(data, mode=weights, gain=gain, dale=dale)
        self.recurrent = recurrent
        self.tau_min = float(tau_min)
        raw_tau = float(inverse_softplus(torch.tensor(tau - tau_min)))
        self._group_tensor("tau_raw", raw_tau, tau_mode, cell_type)
        self._group_tensor("bias", bias, bias_mode, cell_type)
        self.input_projection = input_projection
        self._precomputed: dict[int, tuple[Tensor, Tensor, Tensor]] = {}  # thread id → (w, τ, b)

    def _group_tensor(self, name: str, value: float, mode: str, cell_type: Tensor | None) -> None:
        """Register ``name`` (one value per neuron, per cell type, or one fixed value) and
        ``name_index`` (the neuron → group map, or None)."""
        index = None
        if mode == "per_neuron":
            setattr(self, name, nn.Parameter(torch.full((self.num_nodes,), value)))
        elif mode == "per_type":
            if cell_type is None:
                raise ValueError(f"{name}: per_type needs data.cell_type")
            index = cell_type.long()
            setattr(self, name, nn.Parameter(torch.full((int(index.max()) + 1,), value)))
        elif mode == "fixed":
            self.register_buffer(name, torch.full((1,), value))
        else:
            raise ValueError(f"unknown parameter mode {mode!r}; choose per_neuron, per_type or fixed")
        self.register_buffer(f"{name}_index", index)

    def tau(self) -> Tensor:
        """Time constants per neuron ``[N]`` (or ``[1]`` when shared)."""
        cached = self._cached()
        if cached is not None:
            return cached[1]
        tau = self.tau_min + F.softplus(self.tau_raw)
        return tau if self.tau_raw_index is None else tau[self.tau_raw_index]

    def resting(self) -> Tensor:
        """Bias per neuron ``[N]`` (or ``[1]``)."""
        cached = self._cached()
        if cached is not None:
            return cached[2]
        return self.bias if self.bias_index is None else self.bias[self.bias_index]

    def weights(self) -> Tensor:
        """Signed synaptic weights ``[E]`` in ``edge_index`` order."""
        cached = self._cached()
        if cached is not None:
            return cached[0]
        return self.synapses()

    def _cached(self) -> tuple[Tensor, Tensor, Tensor] | None:
        # Per thread: two threads solving with one module must not see each other's blocks.
        # (Read through __dict__ so modules pickled before this existed still work.)
        return self.__dict__.get("_precomputed", {}).get(threading.get_ident())

    @contextmanager
    def precomputed(self, enabled: bool = True) -> Iterator[None]:
        """Compute the weights ``[E]``, ``τ`` and ``b`` (``[N]`` or ``[1]``) once for every
        evaluation in the block.

        A solve evaluates the field tens of times with the same parameters. Computing them
        each time repeats their gathers (per edge type, per cell type) and, under autodiff,
        the backward of each gather: on the full fly visual system, a scatter of 1.5M
        synapse gradients into 605 edge types, contended on the same addresses, at every
        evaluation. Inside the block they are computed once, and autodiff sums the
        evaluations' gradients before a single backward through the gathers: the same
        function, and the same gradients up to summation order.

        :func:`~graphode.solve.solve` enters it where evaluations are differentiated with
        the block (autodiff) or not at all (no gradients, the adjoint's forward pass), and
        enters ``precomputed(enabled=False)`` where they are differentiated separately
        (checkpoint recomputation, the adjoint's backward), so that an enclosing user block
        does not leak in. Changing the parameters, dtype or device inside a block is not
        seen until it ends. A nested block computes afresh under its own grad mode.
        """
        state = self.__dict__.setdefault("_precomputed", {})
        thread = threading.get_ident()
        outer = state.pop(thread, None)
        try:
            if enabled:
                state[thread] = (self.synapses(), self.tau(), self.resting())
            yield
        finally:
            state.pop(thread, None)
            if outer is not None:
                state[thread] = outer

    def recurrent_input(self, v: Tensor) -> Tensor:
        """``A(v)`` for ``v: [B, N]`` → ``[B, N]``."""
        a = self.conv(v.t(), self.edge_index, self.weights())
        return a.t()

    def prepare_args(self, args: tuple) -> tuple:
        """Solver arguments ``(stimulus,)`` with the stimulus wrapped by :func:`as_stimulus`;
        :func:`~graphode.solve.solve` calls this once before integrating."""
        if not args:
            return args
        stimulus = as_stimulus(args[0])
        if (
            self.input_projection is None and stimulus is not None and stimulus.fn is None
            and stimulus.values.dim() == 2 and stimulus.values.size(1) == self.num_nodes
        ):
            # A constant per-neuron drive is added at every evaluation: store it in the
            # state's layout (graphode._layout), so that the addition is not a transpose.
            values = node_major(stimulus.values)
            if values is not stimulus.values:
                stimulus = Stimulus(values=values)
        return (stimulus, *args[1:])

    def drive(self, t: Tensor, stimulus) -> Tensor | None:
        """The stimulus current per neuron at time ``t``: ``[B, N]`` or None."""
        # Only an isinstance check under solve(), which has wrapped the stimulus already;
        # direct calls may still pass a tensor or a callable.
        stimulus = as_stimulus(stimulus)
        if stimulus is None:
            return None
        u = stimulus(t)
        return u if self.input_projection is None else self.input_projection(u)

    def forward(self, t: Tensor, v: Tensor, stimulus=None) -> Tensor:
        if v.dim() != 2 or v.size(1) != self.num_nodes:
            raise ValueError(f"state must be [B, {self.num_nodes}], got {tuple(v.shape)}")
        a = self.recurrent_input(v) if self.recurrent else None
        u = self.drive(t, stimulus)
        bias, tau = self.resting(), self.tau()
        if kernels.leaky_supported(v, a, u, bias, tau):
            # one kernel each way instead of four elementwise ops, two of them broadcasting
            # per-neuron vectors (slow, strided kernels), and their backward
            return kernels.LeakyIntegrator.apply(v, a, u, bias, tau)
        rhs = bias - v
        if a is not None:
            rhs = rhs + a
        if u is not None:
            rhs = rhs + u
        return rhs / tau
