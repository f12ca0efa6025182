"""Classifiers: input → neuron dynamics (ODE) → readout.

:class:`GraphODEClassifier` classifies graphs: every sample is a connectome of its own (a
PyG ``Batch`` from a ``DataLoader``), simulated by one graph-agnostic
:class:`~graphode.dynamics.ConnectomeDynamics` and pooled per graph into ``[num_graphs, C]``.

:class:`ConnectomeClassifier` is the whole model of a task such as "MNIST through the fly
visual system": an image is mapped to a drive current per neuron
(:mod:`graphode.inputs`), the network is simulated from rest with that constant drive
(:mod:`graphode.dynamics`, :func:`graphode.solve`), ``num_records`` snapshots of the
activity are recorded, and a readout (:mod:`graphode.readout`) turns them into logits.

A model is fully described by its config (``to_config`` / ``from_config``), which names the
connectome (``{"name": "fly_visual_system", "extent": 4}``, ``{"name": "random", ...}`` or
``{"path": "edges.csv", ...load_connectome options}``) instead of holding the graph.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from .dynamics import BoundDynamics, ConnectomeDynamics
from .gradients import Gradient, resolve_gradient
from .inputs import SparseProjection, hex_retina, random_pixels
from .readout import LinearReadout, PooledReadout
from ._solve import Solution, solve
from .solvers import Method, resolve_controller, resolve_method
from .connectome import build_connectome

__all__ = ["ConnectomeClassifier", "GraphODEClassifier", "DEFAULT_CONFIG"]


DEFAULT_CONFIG: dict[str, Any] = {
    "connectome": {"name": "fly_visual_system", "extent": 4},
    "num_classes": 10,
    "image_size": (28, 28),
    "input": "retina",  # retina | random
    "input_gain": 1.0,
    "input_neurons": "all",  # all | input_mask: the neurons the random input drives
    "readout": "pooled",  # pooled | linear
    "aggr": "mean",
    # Encode each cell type's mean activity level, which the readout's normalisation removes
    # (see PooledReadout).
    "keep_group_mean": False,
    "hidden": 512,
    "num_records": 4,
    "t_end": 1.0,
    "activation": "relu",
    "backend": "auto",
    "weights": "per_edge_type",
    "gain": 1.0,
    "tau": 0.2,
    "bias": 0.5,
    "recurrent": True,
    "method": "dopri5",
    "rtol": 1e-3,
    "atol": 1e-3,
    "dt0": None,
    "max_steps": 1000,
    "gradient": "autodiff",
    "checkpoints": 4,
}


def solver_options(method, controller, gradient, rtol, atol, dt0, checkpoints, max_steps) -> dict[str, Any]:
    """:func:`~graphode.solve`'s strategies resolved once from names and options:
    ``method``, ``controller``, ``gradient`` objects and ``max_steps``."""
    method = resolve_method(method)
    return dict(
        method=method, controller=resolve_controller(method, controller, rtol, atol, dt0),
        gradient=resolve_gradient(gradient, checkpoints), max_steps=int(max_steps),
    )


class ConnectomeClassifier(nn.Module):
    """Classify stimuli by simulating a connectome and reading out its activity.

    Args:
        data: the connectome ``Data`` (graphode layout; the retina input needs ``pos`` and
            ``input_mask``, the pooled readout ``output_mask`` and ``cell_type``).
        config: overrides of :data:`DEFAULT_CONFIG` (see there for the keys).

    Shapes:
        forward(images ``[B, H, W]`` or ``[B, F]``) → logits ``[B, C]``.
    """

    def __init__(self, data: Data, **config: Any):
        super().__init__()
        unknown = set(config) - set(DEFAULT_CONFIG)
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}")
        cfg = copy.deepcopy(DEFAULT_CONFIG)
        cfg["connectome"] = None  # unknown unless the caller names it (from_config does)
        cfg.update(config)
        cfg["image_size"] = tuple(cfg["image_size"])
        self.config = cfg
        n = int(data.num_nodes)
        self.num_nodes = n
        self.input_map = self._make_input(data, cfg)
        self.dynamics = BoundDynamics(
            data,
            activation=cfg["activation"],
            backend=cfg["backend"],
            weights=cfg["weights"],
            gain=cfg["gain"],
            tau=cfg["tau"],
            bias=cfg["bias"],
            recurrent=cfg["recurrent"],
        )
        for key in ("output_mask", "cell_type"):
            if getattr(data, key, None) is None and cfg["readout"] == "pooled":
                raise ValueError(f"the pooled readout needs data.{key}")
        self.register_buffer("output_mask", getattr(data, "output_mask", torch.ones(n, dtype=torch.bool)))
        self.register_buffer("cell_type", getattr(data, "cell_type", torch.zeros(n, dtype=torch.long)))
        self.register_buffer("pos", getattr(data, "pos", None))
        r = int(cfg["num_records"])
        if r < 1:
            raise ValueError("num_records must be >= 1")
        self.register_buffer("t_eval", torch.linspace(cfg["t_end"] / r, cfg["t_end"], r))
        self.solver_options = solver_options(
            cfg["method"], None, cfg["gradient"], cfg["rtol"], cfg["atol"], cfg["dt0"], cfg["checkpoints"], cfg["max_steps"]
        )
        if cfg["readout"] == "pooled":
            self.readout = PooledReadout(
                r, cfg["num_classes"], int(self.cell_type.max()) + 1, hidden=cfg["hidden"], aggr=cfg["aggr"],
                num_frequencies=6 if self.pos is not None else 0, keep_group_mean=cfg["keep_group_mean"],
            )
        elif cfg["readout"] == "linear":
            self.readout = LinearReadout(n, cfg["num_classes"])
        else:
            raise ValueError(f"unknown readout {cfg['readout']!r}; choose pooled or linear")
        self.last_solution: Solution | None = None

    @staticmethod
    def _make_input(data: Data, cfg: dict[str, Any]) -> SparseProjection:
        if cfg["input"] == "retina":
            return hex_retina(data, cfg["image_size"], gain=cfg["input_gain"])
        if cfg["input"] == "random":
            h, w = cfg["image_size"]
            if cfg["input_neurons"] not in ("all", "input_mask"):
                raise ValueError(f"input_neurons must be 'all' or 'input_mask', got {cfg['input_neurons']!r}")
            only = data.input_mask if cfg["input_neurons"] == "input_mask" else None
            return random_pixels(data, h * w, gain=cfg["input_gain"], neurons=only)
        raise ValueError(f"unknown input mapping {cfg['input']!r}; choose retina or random")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ConnectomeClassifier":
        """Rebuild a model (untrained) from :meth:`to_config`'s output."""
        config = copy.deepcopy(config)
        if not config.get("connectome"):
            raise ValueError("config['connectome'] must name the connectome, e.g. {'name': 'fly_visual_system', 'extent': 4}")
        return cls(build_connectome(config["connectome"]), **config)

    def to_config(self) -> dict[str, Any]:
        cfg = copy.deepcopy(self.config)
        cfg["image_size"] = list(cfg["image_size"])
        return cfg

    def simulate(self, images: Tensor, t_eval: Tensor | None = None, *, y0: Tensor | None = None,
                 **solve_options: Any) -> Solution:
        """Run the network on ``images`` from ``y0`` (default: rest, zeros) over ``(0, t_end)``.

        ``solve_options`` override the model's solver options (``method``, ``controller``,
        ``gradient``, ``max_steps``; see :func:`~graphode.solve`).

        Shapes:
            images ``[B, H, W]`` or ``[B, F]``, y0 ``[B, N]`` → ``ys [B, T, N]`` at
            ``t_eval [T]`` (default: the ``num_records`` record times).
        """
        drive = self.input_map(images.to(self.t_eval.dtype))
        if y0 is None:
            y0 = drive.new_zeros(drive.size(0), self.num_nodes)
        return solve(
            self.dynamics, y0, (0.0, self.config["t_end"]), args=(drive,),
            t_eval=self.t_eval if t_eval is None else t_eval, **{**self.solver_options, **solve_options},
        )

    def forward(self, images: Tensor) -> Tensor:
        sol = self.simulate(images)
        self.last_solution = sol
        return self.readout(sol.ys, self.output_mask, self.cell_type, self.pos)


class GraphODEClassifier(nn.Module):
    """Graph classification with a neural ODE on every graph of a PyG ``Batch``.

    The batch is solved as one ODE (state ``[B, N_total]``, the block-diagonal graph), from
    rest, by ``dynamics`` (graph per call, parameters shared by cell type / edge type); the
    activity of each graph's output neurons at ``num_records`` times is pooled per graph by
    ``readout``.

    Args:
        dynamics: a :class:`~graphode.dynamics.ConnectomeDynamics` (not a bound one).
        readout: a :class:`~graphode.readout.PooledReadout` with ``num_records`` records and
            the dynamics' cell-type vocabulary.
        t_end: simulated time; records at ``t_end / R, 2 t_end / R, …, t_end``.
        num_records: R.
        output_key: the node mask of the neurons read out (all neurons when a graph lacks it).
        method, controller, gradient, rtol, atol, checkpoints, max_steps: the solve's
            strategies (:func:`~graphode.solve`), names resolved once here.

    Shapes:
        forward(batch, stimulus=None) → logits ``[num_graphs, C]`` (``[B · num_graphs, C]``,
        sample-major, for a stimulus of ``B`` samples ``[B, N_total]``).
    """

    def __init__(
        self,
        dynamics: ConnectomeDynamics,
        readout: PooledReadout,
        *,
        t_end: float = 1.0,
        num_records: int = 4,
        output_key: str = "output_mask",
        method: str | Method = "dopri5",
        controller=None,
        gradient: str | Gradient = "autodiff",
        rtol: float | None = None,
        atol: float | None = None,
        checkpoints: int | None = None,
        max_steps: int = 1000,
    ):
        super().__init__()
        if isinstance(dynamics, BoundDynamics):
            raise TypeError("GraphODEClassifier solves a different graph per batch: give it a ConnectomeDynamics, not a BoundDynamics")
        if num_records < 1 or not t_end > 0:
            raise ValueError(f"need num_records >= 1 and t_end > 0, got {num_records} and {t_end}")
        self.dynamics, self.readout, self.output_key = dynamics, readout, output_key
        self.register_buffer("t_eval", torch.linspace(t_end / num_records, t_end, num_records))
        self.t_end = float(t_end)
        self.solver_options = solver_options(method, controller, gradient, rtol, atol, None, checkpoints, max_steps)
        self.last_solution: Solution | None = None

    def forward(self, batch, stimulus=None) -> Tensor:
        n = int(batch.num_nodes)
        b = stimulus.size(0) if isinstance(stimulus, Tensor) else 1
        v0 = self.t_eval.new_zeros(b, n)
        sol = solve(self.dynamics, v0, (0.0, self.t_end), args=(batch, stimulus), t_eval=self.t_eval, **self.solver_options)
        self.last_solution = sol
        mask = getattr(batch, self.output_key, None)
        if mask is None:
            mask = torch.ones(n, dtype=torch.bool, device=v0.device)
        cell_type = getattr(batch, "cell_type", None)
        if cell_type is None:
            cell_type = torch.zeros(n, dtype=torch.long, device=v0.device)
        index = getattr(batch, "batch", None)
        num_graphs = int(getattr(batch, "num_graphs", 1))
        return self.readout(sol.ys, mask, cell_type, getattr(batch, "pos", None) if self.readout.num_frequencies else None,
                            index, num_graphs if index is not None else None)
