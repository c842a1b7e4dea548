"""ToDo's X/Y/Z plot axes, added the way the WebUI's built-in Hypertile adds its own.

The glue hands in the host's loaded X/Y/Z module; nothing of the host is imported when this module loads. Each axis
sets `p.todo_overrides`, which the script applies over its arguments for the job.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from .args import FIELDS_BY_NAME

AXIS_PREFIX = "[ToDo] "
OVERRIDES_ATTRIBUTE = "todo_overrides"


def xyz_grid_module(scripts_data: Iterable[Any]) -> Any:
    """The X/Y/Z plot's module wherever the host keeps it: scripts/xyz_grid.py (A1111, Forge, reForge, Neo) or
    extensions-builtin/xyz/scripts/xyz_grid.py (Forge Classic); the script loader names it "xyz_grid.py" on both."""
    return next((data.module for data in scripts_data if data.script_class.__module__ == "xyz_grid.py"), None)


def _override(name: str, **also: Any) -> Callable:
    def apply(p: Any, value: Any, _values: Any) -> None:
        setattr(p, OVERRIDES_ATTRIBUTE, {**getattr(p, OVERRIDES_ATTRIBUTE, {}), name: value, **also})

    return apply


def _confirm(name: str) -> Callable:
    def confirm(_p: Any, values: Iterable[Any]) -> None:
        for value in values:
            FIELDS_BY_NAME[name].coerce(value)

    return confirm


def _enabled_choices(xyz_grid: Any) -> Callable[[], list[str]]:
    """The host's boolean_choice(reverse=True): in the xyz_grid module, or in lib_xyz.utils on Forge Classic (whose
    script basedir is on sys.path), or the same choices made here where neither has it."""
    boolean_choice = getattr(xyz_grid, "boolean_choice", None)
    if boolean_choice is None:
        try:
            boolean_choice = importlib.import_module("lib_xyz.utils").boolean_choice
        except (ImportError, AttributeError):
            return lambda: ["False", "True"]
    return boolean_choice(reverse=True)


def add_axes(xyz_grid: Any) -> None:
    """Add ToDo's axes to a loaded X/Y/Z module once (a second call finds them there)."""
    if any(option.label.startswith(AXIS_PREFIX) for option in xyz_grid.axis_options):
        return
    axis = xyz_grid.AxisOption
    max_depth = int(FIELDS_BY_NAME["max_depth"].maximum)
    xyz_grid.axis_options.extend([
        axis(AXIS_PREFIX + "Enabled", str, _override("enabled"), confirm=_confirm("enabled"),
             choices=_enabled_choices(xyz_grid)),
        axis(AXIS_PREFIX + "Ratio", float, _override("ratio"), confirm=_confirm("ratio")),
        axis(AXIS_PREFIX + "Hires ratio", float, _override("hires_ratio", hires_mode="own"),
             confirm=_confirm("hires_ratio")),
        axis(AXIS_PREFIX + "Max depth", int, _override("max_depth"), confirm=_confirm("max_depth"),
             choices=lambda: [str(depth) for depth in range(max_depth + 1)]),
        axis(AXIS_PREFIX + "Deeper ratio", float, _override("deeper_ratio"), confirm=_confirm("deeper_ratio")),
        axis(AXIS_PREFIX + "Method", str, _override("method"), confirm=_confirm("method"),
             choices=lambda: list(FIELDS_BY_NAME["method"].choices)),
    ])
