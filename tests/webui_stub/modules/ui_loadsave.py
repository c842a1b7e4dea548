"""Stand-in of modules/ui_loadsave.py: how ui-config.json overrides the values the UI's controls were built with."""

import gradio as gr
from modules.ui_components import InputAccordion


class UiLoadsave:
    """Mirrors ui_loadsave.UiLoadsave: `ui_settings` holds the saved values (ui-config.json) by "path/field"."""

    def __init__(self, ui_settings=None):
        self.ui_settings = dict(ui_settings or {})

    def add_component(self, path, x):
        """Mirrors UiLoadsave.add_component for the `value` fields of the controls ToDo builds: a saved value
        replaces the control's, an unsaved one is recorded; `do_not_save_to_config` opts a control out."""

        def apply_field(obj, field):
            if getattr(obj, "do_not_save_to_config", False) is True:
                return
            key = f"{path}/{field}"
            if isinstance(obj, gr.Accordion) and isinstance(x, InputAccordion) and field == "value":
                field = "open"
            if self.ui_settings.get(key) is None:
                self.ui_settings[key] = getattr(obj, field, None)
            else:
                setattr(obj, field, self.ui_settings[key])

        if type(x) in (gr.Slider, gr.Radio, gr.Checkbox):
            apply_field(x, "value")
        if type(x) is InputAccordion:
            apply_field(x, "value")
            apply_field(x.accordion, "value")
