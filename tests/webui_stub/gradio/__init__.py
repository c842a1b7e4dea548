"""Stand-in of the gradio 3.41.2 components the script builds (pinned in the WebUI's requirements_versions.txt).

Components keep their constructor arguments; `value` is what the WebUI reads as the default (modules/api/api.py
init_default_script_args reads `elem.value`). Layout blocks are context managers that do nothing.
"""


class Block:
    """Mirrors gradio.blocks.Block: a component or layout with keyword configuration."""

    def __init__(self, value=None, **kwargs):
        self.value = value
        self.kwargs = kwargs
        self.label = kwargs.get("label")
        self.elem_id = kwargs.get("elem_id")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def change(self, fn=None, **kwargs):
        """Mirrors gradio.events.Changeable.change; the stand-in registers nothing."""


class Checkbox(Block):
    """Mirrors gradio.components.Checkbox."""


class Slider(Block):
    """Mirrors gradio.components.Slider."""


class Radio(Block):
    """Mirrors gradio.components.Radio."""


class HTML(Block):
    """Mirrors gradio.components.HTML."""


class Row(Block):
    """Mirrors gradio.layouts.Row."""


class Group(Block):
    """Mirrors gradio.layouts.Group."""


class Column(Block):
    """Mirrors gradio.layouts.Column."""


class Accordion(Block):
    """Mirrors gradio.layouts.Accordion."""


class Blocks(Block):
    """Mirrors gradio.blocks.Blocks, used as the context modules/api/api.py calls ui() in."""
