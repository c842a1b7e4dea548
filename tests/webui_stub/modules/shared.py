"""Stand-in of modules/shared.py: `opts` and `OptionInfo` (defined in modules/options.py)."""


class OptionInfo:
    """Mirrors modules/options.py OptionInfo (constructor and `.info`)."""

    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.section = section
        self.category_id = category_id
        self.comment_after = comment_after

    def info(self, info):
        """Mirrors OptionInfo.info."""
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def needs_reload_ui(self):
        """Mirrors OptionInfo.needs_reload_ui."""
        self.comment_after += " <span class='info'>(requires Reload UI)</span>"
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
