"""Stand-in of modules/scripts.py: the Script base class, AlwaysVisible, scripts_data and the runner's hooks."""

import importlib.util
import inspect
import os
import re
import sys
from collections import namedtuple

AlwaysVisible = object()

ScriptClassData = namedtuple("ScriptClassData", "script_class path basedir module")
"""Mirrors scripts.ScriptClassData."""

scripts_data = []
"""Mirrors scripts.scripts_data: every loaded script class with its module (X/Y/Z axes are found through it)."""


def load_module(path):
    """Mirrors modules/script_loading.py load_module: the module is named after the file ("xyz_grid.py")."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def load_scripts(script_files):
    """Mirrors modules/scripts.py load_scripts for (path, basedir) pairs: every basedir goes on sys.path (so a
    script imports the packages next to its scripts/ folder, e.g. Forge Classic's lib_xyz), each file is loaded
    and each Script subclass in it registered in scripts_data with its module."""
    for _, basedir in script_files:
        if basedir not in sys.path:
            sys.path = [basedir, *sys.path]
    for path, basedir in script_files:
        module = load_module(path)
        scripts_data.extend(ScriptClassData(found, path, basedir, module) for found in vars(module).values()
                            if inspect.isclass(found) and issubclass(found, Script))


class Script:
    """Mirrors scripts.Script: the attributes and hook signatures an always-visible script relies on."""

    name = filename = args_from = args_to = None
    alwayson = is_txt2img = is_img2img = False
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

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def elem_id(self, item_id):
        """Mirrors Script.elem_id."""
        on_both_tabs = self.show(True) == self.show(False)
        tab = ("img2img_" if self.is_img2img else "txt2img_") if on_both_tabs else ""
        words = re.sub(r"[^a-z_0-9]", "", "_".join(re.split(r"\s", self.title().lower())))
        return "script_" + tab + words + "_" + item_id


class PostprocessImageArgs:
    """Mirrors scripts.PostprocessImageArgs."""

    def __init__(self, image):
        self.image = image


class ScriptRunner:
    """Mirrors scripts.ScriptRunner for always-visible scripts: `inputs` starts with the selectable-script
    dropdown (slot 0), each script's controls follow from `args_from` = 1 on; `infotext_fields` and
    `paste_field_names` are collected from the scripts as the UI is built (the API's infotext path and the "Send to"
    buttons use these, not what a later `ui()` call leaves on the script); each hook gets
    `p.script_args[args_from:args_to]`, and an exception in a hook is only reported (errors.report), never raised
    to the job."""

    def __init__(self, scripts):
        self.scripts = []
        self.reported = []
        self.inputs = [None]
        self.infotext_fields = []
        self.paste_field_names = []
        for script in scripts:
            script.alwayson = script.show(False) is AlwaysVisible
            controls = script.ui(False) or []
            script.args_from = len(self.inputs)
            script.args_to = script.args_from + len(controls)
            self.inputs.extend(controls)
            self.infotext_fields.extend(script.infotext_fields or [])
            self.paste_field_names += script.paste_field_names or []
            self.scripts.append(script)

    def default_args(self):
        """Mirrors modules/api/api.py Api.init_default_script_args: slot 0 is 0, and every script's `ui()` is
        called again (in a gr.Blocks) for the `value` of each control."""
        import gradio as gr

        script_args = [None] * max([1] + [script.args_to for script in self.scripts])
        script_args[0] = 0
        with gr.Blocks():
            for script in self.scripts:
                controls = script.ui(script.is_img2img)
                if controls:
                    script_args[script.args_from:script.args_to] = [control.value for control in controls]
        return script_args

    def api_script_args(self, script, args, default_script_args=None, infotext_script_args=None):
        """Mirrors modules/api/api.py Api.init_script_args for one always-on script: the defaults, then the
        values read from the request's infotext (by index), then `args[i]` in slot `args_from + i`."""
        script_args = list(self.default_args() if default_script_args is None else default_script_args)
        for index, value in (infotext_script_args or {}).items():
            script_args[index] = value
        for index in range(min(script.args_to - script.args_from, len(args))):
            script_args[script.args_from + index] = args[index]
        return script_args

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

    def before_process_batch(self, p, **kwargs):
        """Mirrors ScriptRunner.before_process_batch: once per batch, before its first pass."""
        self._run("before_process_batch", p, **kwargs)

    def process_before_every_sampling(self, p, **kwargs):
        self._run("process_before_every_sampling", p, **kwargs)

    def postprocess_image(self, p, pp):
        """Mirrors ScriptRunner.postprocess_image: per image, after sampling, before its infotext is written
        (ADetailer runs its inpaint passes here)."""
        self._run("postprocess_image", p, pp)

    def postprocess(self, p, processed):
        self._run("postprocess", p, processed)
