"""graphode: connectome-constrained neural ODEs on PyTorch Geometric and torchode.

Data flows one way::

    edge list ──load_connectome──▶ Data ──ConnectomeConv──▶ ConnectomeDynamics ──solve──▶ readout ──▶ loss

The public API in one import::

    from graphode import fly_visual_system, ConnectomeDynamics, solve
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
)
from .dynamics import ConnectomeDynamics, Stimulus  # noqa: E402
from .flyvis import fly_visual_system  # noqa: E402
from .inputs import SparseProjection, hex_retina, random_pixels  # noqa: E402
from .layer import ConnectomeConv, SparseGraph, available_backends  # noqa: E402
from .models import ConnectomeClassifier, build_connectome  # noqa: E402
from .readout import LinearReadout, PooledReadout  # noqa: E402
from .solve import Solution, SolverError, solve  # noqa: E402
from .synapses import SynapseWeights  # noqa: E402
from .synthetic import random_connectome  # noqa: E402
from .transforms import DegreePreservingShuffle  # noqa: E402

__version__ = "0.1.0"

__all__ = [
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
