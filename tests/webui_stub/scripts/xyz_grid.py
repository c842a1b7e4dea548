"""Stand-in of the A1111 WebUI's scripts/xyz_grid.py (also Forge's, reForge's and Forge Neo's): the axis list,
AxisOption and boolean_choice in the module's namespace, and its Script class."""

from modules import scripts

BOOLEAN_ORDER = ("True", "False")


def boolean_choice(reverse: bool = False):
    """Mirrors scripts/xyz_grid.py boolean_choice."""

    def choice():
        return list(reversed(BOOLEAN_ORDER)) if reverse else list(BOOLEAN_ORDER)

    return choice


def do_nothing(p, x, xs):
    """Mirrors scripts/xyz_grid.py do_nothing."""


def format_nothing(p, opt, x):
    """Mirrors scripts/xyz_grid.py format_nothing."""
    return ""


def format_value_add_label(p, opt, x):
    """Mirrors scripts/xyz_grid.py format_value_add_label."""
    if type(x) is float:
        x = round(x, 8)
    return f"{opt.label}: {x}"


class AxisOption:
    """Mirrors scripts/xyz_grid.py AxisOption."""

    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0, choices=None,
                 prepare=None):
        self.__dict__.update(label=label, type=type, apply=apply, format_value=format_value, confirm=confirm,
                             cost=cost, prepare=prepare, choices=choices)


axis_options = [AxisOption("Nothing", str, do_nothing, format_value=format_nothing)]
"""Mirrors scripts/xyz_grid.py axis_options (the first of its built-in axes)."""


class Script(scripts.Script):
    """Mirrors scripts/xyz_grid.py Script (the X/Y/Z plot)."""

    def title(self):
        return "X/Y/Z plot"
