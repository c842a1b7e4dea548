"""Stand-in of modules/ui_components.py."""

import gradio as gr


class InputAccordion(gr.Checkbox):
    """Mirrors modules/ui_components.py InputAccordion: a checkbox whose value is the enable flag, shown as an
    accordion (`self.accordion`) with the checkbox in its header; used as a context manager."""

    def __init__(self, value, **kwargs):
        self.accordion_id = kwargs.get("elem_id")
        super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.accordion = gr.Accordion(**{**kwargs, "elem_id": self.accordion_id, "open": value})

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, *exception):
        self.accordion.__exit__(*exception)


InputAccordionImpl = InputAccordion
"""Forge Neo's name for the class (modules/ui_components.py InputAccordionImpl)."""


def neo_input_accordion(value=None, **kwargs):
    """Mirrors Forge Neo's modules/ui_components.py InputAccordion: a function (not a class) that returns an
    InputAccordionImpl."""
    return InputAccordionImpl(value, **kwargs)
