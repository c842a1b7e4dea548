"""Stand-in of Forge Classic's extensions-builtin/xyz/lib_xyz/utils.py, where boolean_choice lives."""


def boolean_choice(reverse: bool = False):
    """Mirrors lib_xyz/utils.py boolean_choice."""

    def choice():
        return ["False", "True"] if reverse else ["True", "False"]

    return choice
