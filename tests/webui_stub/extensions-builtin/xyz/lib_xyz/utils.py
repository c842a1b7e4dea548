"""Stand-in of Forge Classic's extensions-builtin/xyz/lib_xyz/utils.py, where boolean_choice lives."""


BOOLEAN_ORDER = ("True", "False")


def boolean_choice(reverse: bool = False):
    """Mirrors lib_xyz/utils.py boolean_choice."""

    def choice():
        return list(reversed(BOOLEAN_ORDER)) if reverse else list(BOOLEAN_ORDER)

    return choice
