r"""Circuit experiments: select neurons, silence, clamp or drive them, record, lesion-scan.

Connectome modellers perturb the circuit and watch what happens. This package does that on
a :class:`~graphode.dynamics.ConnectomeDynamics` (or any model holding one as
``.dynamics``, e.g. a trained :class:`~graphode.models.ConnectomeClassifier`) without
rebuilding the graph and without copying the synapse tensors.

- :mod:`~graphode.circuits.selection`: :func:`select_neurons` (by original id, index, cell
  type, mask or predicate), :func:`neuron_cell_types`, :func:`neuron_table`;
- :mod:`~graphode.circuits.perturbation`: :class:`Silence`, :class:`Clamp`,
  :class:`Drive`, :func:`poisson_drive`, applied with :func:`perturb` (or
  :func:`silence`) for a block, ``p.apply(model)`` persistently, or for one solve;
- :mod:`~graphode.circuits.recording`: :func:`simulate` under perturbations,
  :func:`record` → :class:`Recording` (tables, means per cell type);
- :mod:`~graphode.circuits.lesions`: :func:`lesion_scan` and :func:`plot_lesions`.

Example (``examples/circuit_experiments.py`` is a complete one)::

    import torch
    from graphode import fly_visual_system, BoundDynamics
    from graphode.circuits import Silence, lesion_scan, perturb, plot_lesions, record, select_neurons

    data = fly_visual_system(extent=4)
    dyn = BoundDynamics(data, tau=0.2, bias=0.5)
    flash = torch.zeros(1, data.num_nodes); flash[:, data.input_mask] = 1.0
    ts = torch.linspace(0, 1, 21)
    control = record(dyn, data, flash, cell_types=["L1", "L2", "Mi1"], t_eval=ts)
    with perturb(dyn, Silence(select_neurons(data, cell_types="L1"))):
        lesioned = record(dyn, data, flash, cell_types=["L1", "L2", "Mi1"], t_eval=ts)
    print(lesioned.by_cell_type().to_dataframe())
    table = lesion_scan(dyn, ["L1", "L2", "L3"], lambda d: float(
        record(d, data, flash, cell_types="Mi1", t_eval=ts).values.mean()), data=data)
    plot_lesions(table, "lesions.png")
"""

from .lesions import lesion_scan, plot_lesions
from .perturbation import (
    Clamp, Drive, Perturbation, PerturbationHandle, Silence, active_perturbations, perturb, poisson_drive, silence,
)
from .recording import CellTypeResponses, Recording, record, simulate
from .selection import neuron_cell_types, neuron_table, select_neurons

__all__ = [
    "select_neurons", "neuron_cell_types", "neuron_table",
    "Perturbation", "PerturbationHandle", "Silence", "Clamp", "Drive", "poisson_drive", "perturb", "silence",
    "active_perturbations",
    "simulate", "record", "Recording", "CellTypeResponses",
    "lesion_scan", "plot_lesions",
]
