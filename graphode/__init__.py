"""graphode: connectome-constrained neural ODEs on PyTorch Geometric and torchode.

Data flows one way::

    edge list ──load_connectome──▶ Data ──ConnectomeConv──▶ ConnectomeDynamics ──solve──▶ readout ──▶ loss

The public API in one import::

    from graphode import fly_visual_system, ConnectomeDynamics, BoundDynamics, solve

``ConnectomeDynamics`` takes the graph at every call (any ``Data`` or ``Batch``);
``BoundDynamics`` holds one connectome and allows per-synapse parameters. Circuit
experiments (select, silence, clamp, drive and record neurons; lesion scans) are in
:mod:`graphode.circuits`.
"""

import warnings as _warnings

# PyG's import calls torch.jit.script, which torch >= 2.10 reports as deprecated on every run.
_warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

from .connectome import (  # noqa: E402
    ConnectomeFormatError,
    load_connectome,
    load_graph,
    save_graph,
    to_networkx,
    to_scipy,
    validate_connectome,
    build_connectome,
    random_connectome,
    DegreePreservingShuffle,
)
from .dynamics import BoundDynamics, ConnectomeDynamics, Stimulus  # noqa: E402
from .field import VectorField  # noqa: E402
from .gap_junctions import GapJunctions  # noqa: E402
from .gradients import Adjoint, Autodiff, Checkpoint  # noqa: E402
from .flyvis import fly_visual_system  # noqa: E402
from .inputs import NodeDrive, SparseProjection, hex_retina, random_pixels  # noqa: E402
from .layer import (  # noqa: E402
    AutoBackend, Backend, ConnectomeConv, CSRBackend, PygBackend, SparseGraph, SparseTensorBackend,
    TorchScatterBackend, TritonBackend, available_backends,
)
from .models import ConnectomeClassifier, GraphODEClassifier  # noqa: E402
from .readout import LinearReadout, PooledReadout  # noqa: E402
from ._solve import Solution, solve  # noqa: E402
from .solvers import Adaptive, Dopri5, Euler, FixedStep, Heun, SolverError, Tsit5  # noqa: E402
from .synapses import SynapseWeights  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Adaptive",
    "Adjoint",
    "AutoBackend",
    "Autodiff",
    "Backend",
    "CSRBackend",
    "PygBackend",
    "SparseTensorBackend",
    "TorchScatterBackend",
    "TritonBackend",
    "BoundDynamics",
    "Checkpoint",
    "Dopri5",
    "Euler",
    "FixedStep",
    "GapJunctions",
    "GraphODEClassifier",
    "Heun",
    "NodeDrive",
    "Tsit5",
    "VectorField",
    "ConnectomeClassifier",
    "ConnectomeConv",
    "ConnectomeDynamics",
    "ConnectomeFormatError",
    "DegreePreservingShuffle",
    "LinearReadout",
    "PooledReadout",
    "Solution",
    "SolverError",
    "SparseGraph",
    "SparseProjection",
    "Stimulus",
    "SynapseWeights",
    "available_backends",
    "build_connectome",
    "fly_visual_system",
    "hex_retina",
    "load_connectome",
    "load_graph",
    "random_connectome",
    "random_pixels",
    "save_graph",
    "solve",
    "to_networkx",
    "to_scipy",
    "validate_connectome",
]
