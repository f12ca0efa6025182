"""The fly visual system: its connectome, the published model, stimuli and analyses."""

from .connectome import FLY_DESCRIPTION, fly_visual_system, hex_columns, hex_to_cartesian

__all__ = ["fly_visual_system", "hex_columns", "hex_to_cartesian", "FLY_DESCRIPTION"]
