"""Stand-in of Forge Classic's extensions-builtin/xyz/lib_xyz/builtins.py: the built-in axes (the first of them)."""

from .classes import AxisOption


def do_nothing(p, x, xs):
    """Mirrors lib_xyz/axis_application.py do_nothing."""


def format_nothing(p, opt, x):
    """Mirrors lib_xyz/axis_format.py format_nothing."""
    return ""


builtin_options = [AxisOption("Nothing", str, do_nothing, format_value=format_nothing)]
"""Mirrors lib_xyz/builtins.py builtin_options."""
