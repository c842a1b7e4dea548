"""Stand-in of Forge Classic's extensions-builtin/xyz/scripts/xyz_grid.py: the axis list is lib_xyz's, AxisOption
comes from lib_xyz.classes, and boolean_choice is not in this module's namespace (it stays in lib_xyz.utils)."""

from lib_xyz import builtins
from lib_xyz.classes import AxisOption  # noqa: F401 (the module attribute extensions use, as on Classic)
from modules import scripts

axis_options = builtins.builtin_options
"""Mirrors xyz_grid.py axis_options (the very list lib_xyz/builtins.py builds)."""


class XYZ(scripts.Script):
    """Mirrors xyz_grid.py XYZ (the X/Y/Z plot)."""

    def title(self):
        return "X/Y/Z Plot"
