"""Stand-in of modules/shared.py: `opts` and `OptionInfo` (defined in modules/options.py)."""


class OptionInfo:
    """Mirrors modules/options.py OptionInfo (constructor and `.info`)."""

    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.__dict__.update(default=default, label=label, component=component, component_args=component_args,
                             section=section, category_id=category_id, comment_after=comment_after)

    def info(self, info):
        """Mirrors OptionInfo.info."""
        return self._note(f"({info})")

    def needs_reload_ui(self):
        """Mirrors OptionInfo.needs_reload_ui."""
        return self._note("(requires Reload UI)", separator=" ")

    def _note(self, text, separator=""):
        """Both notes are the same span after the setting, the Reload UI one after a space."""
        self.comment_after = f"{self.comment_after}{separator}<span class='info'>{text}</span>"
        return self


class Options:
    """Mirrors modules/options.py Options: `data` holds values, `data_labels` the registered OptionInfo."""

    def __init__(self):
        self.data = {}
        self.data_labels = {}

    def add_option(self, key, info):
        """Mirrors Options.add_option."""
        self.data_labels[key] = info
        if key not in self.data:
            self.data[key] = info.default


opts = Options()

sd_model = None
"""Mirrors shared.sd_model: the loaded model, which every job's `p.sd_model` property returns."""
