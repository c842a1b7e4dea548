"""Stand-in of Forge Classic's extensions-builtin/xyz/lib_xyz/classes.py."""


def format_value_add_label(p, opt, x):
    """Mirrors lib_xyz/axis_format.py format_value_add_label (imported by classes.py)."""
    if type(x) is float:
        x = round(x, 8)
    return f"{opt.label}: {x}"


class AxisOption:
    """Mirrors lib_xyz/classes.py AxisOption."""

    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0, choices=None,
                 prepare=None):
        self.__dict__.update(label=label, type=type, apply=apply, format_value=format_value, confirm=confirm,
                             cost=cost, prepare=prepare, choices=choices)
