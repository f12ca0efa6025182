"""The fly visual system: its connectome, the published model, stimuli and analyses.

- :mod:`graphode.flyvis.connectome`: the connectome on a hexagonal lattice
  (:func:`fly_visual_system`, :func:`hex_columns`, :func:`hex_to_cartesian`), re-exported here;
- :mod:`graphode.flyvis.model`: the published model's parameterisation, initial states and
  Euler loop (:func:`~graphode.flyvis.model.published_dynamics`,
  :func:`~graphode.flyvis.model.simulate`);
- :mod:`graphode.flyvis.stimuli`: flashes, moving edges and bars, gratings and dots as
  column frames, and the published eye (:func:`~graphode.flyvis.stimuli.box_eye`);
- :mod:`graphode.flyvis.analysis`: central-column responses, the flash response index,
  direction selectivity and preferred directions;
- :mod:`graphode.flyvis.plots`: maps on the lattice, polar tuning curves and traces.
"""

from .connectome import FLY_DESCRIPTION, fly_visual_system, hex_columns, hex_to_cartesian

__all__ = ["fly_visual_system", "hex_columns", "hex_to_cartesian", "FLY_DESCRIPTION"]
