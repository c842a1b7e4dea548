"""Stand-in of modules/scripts.py: the Script base class, AlwaysVisible, scripts_data and the runner's hooks."""

import re
from collections import namedtuple

AlwaysVisible = object()

ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
"""Mirrors scripts.ScriptClassData."""

scripts_data = []
"""Mirrors scripts.scripts_data: every loaded script class with its module (X/Y/Z axes are found through it)."""


class Script:
    """Mirrors scripts.Script: the attributes and hook signatures an always-visible script relies on."""

    name = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def before_process(self, p, *args):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def elem_id(self, item_id):
        """Mirrors Script.elem_id."""
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"


class ScriptRunner:
    """Mirrors scripts.ScriptRunner for always-visible scripts: each hook gets `p.script_args[args_from:args_to]`,
    and an exception in a hook is only reported (errors.report), never raised to the job."""

    def __init__(self, scripts):
        self.scripts = []
        self.reported = []
        self.inputs = []
        for script in scripts:
            script.alwayson = script.show(False) is AlwaysVisible
            controls = script.ui(False) or []
            script.args_from = len(self.inputs)
            script.args_to = script.args_from + len(controls)
            self.inputs.extend(controls)
            self.scripts.append(script)

    def default_args(self):
        """Mirrors modules/api/api.py init_default_script_args: the `value` of every ui() control."""
        return [control.value for control in self.inputs]

    def _run(self, name, p, *extra, **kwargs):
        for script in self.scripts:
            if getattr(type(script), name) is getattr(Script, name):
                continue
            try:
                getattr(script, name)(p, *extra, *p.script_args[script.args_from:script.args_to], **kwargs)
            except Exception as error:
                self.reported.append((name, error))

    def before_process(self, p):
        self._run("before_process", p)

    def process_before_every_sampling(self, p, **kwargs):
        self._run("process_before_every_sampling", p, **kwargs)

    def postprocess(self, p, processed):
        self._run("postprocess", p, processed)
