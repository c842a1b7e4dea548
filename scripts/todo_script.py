"""WebUI glue for ToDo (AUTOMATIC1111, Forge, reForge): UI, per-pass attach, infotext, settings, X/Y/Z axes,
API validation.

Thin on purpose: argument handling lives in todo_ext.args, the engine in todo_ext, and how ToDo attaches to each
host's U-Net in todo_ext.hosts (hooks on A1111, the U-Net patcher's attn1 patch on Forge and reForge).
"""

import html
import importlib
import json
import weakref
from functools import cache, wraps

import gradio as gr
from modules import script_callbacks, scripts, sd_unet, shared
from modules.infotext_utils import PasteField
from modules.ui_components import InputAccordion

import todo_ext
from todo_ext import api_validation, hosts
from todo_ext import args as todo_args
from todo_ext.api_validation import SCRIPT_TITLE

XYZ_AXIS_PREFIX = "[ToDo] "
SETTINGS_SECTION = ("todo", "ToDo")

_hooked_unets = weakref.WeakSet()
"""Every U-Net this extension hooked, so cleanup also reaches a model that was swapped out mid-job."""

_forge_handles = weakref.WeakSet()
"""ToDo patches put on Forge/reForge U-Net patchers, turned off at cleanup in case a patched clone outlives its job."""

_hooking_job = [lambda: None]
"""A weak reference to the job (processing object, not hashable) that the hooks and patches now attached belong to."""


def remove_all_hooks(sd_model=None) -> int:
    """Take ToDo off every U-Net hooked so far and off `sd_model`'s, whatever happened to the last job; turn off
    every Forge-style patch made so far."""
    unets = list(_hooked_unets)
    current = hosts.a1111.unet_of(sd_model)
    if current is not None:
        unets.append(current)
    _hooked_unets.clear()
    for handle in list(_forge_handles):
        handle.remove()
    _forge_handles.clear()
    return sum(todo_ext.remove(unet) for unet in unets)


@cache
def current_defaults() -> todo_args.ToDoArgs:
    """The defaults of the UI controls, both API forms and the API check: Settings > ToDo as they were when the
    WebUI loaded this script, read once so that all of them agree (the host fills a short positional `args`
    list from the controls' values, which it computes once). Changes apply after Reload UI or a restart."""
    return todo_args.defaults_from_settings({
        spec.name: shared.opts.data.get(todo_args.setting_key(spec), spec.default)
        for spec in todo_args.SETTING_FIELDS
    })


def _component_kind(spec):
    """The gradio component class and its arguments for a field, shared by the accordion and Settings."""
    if spec.kind == "bool":
        return gr.Checkbox, {}
    if spec.kind == "choice":
        return gr.Radio, {"choices": list(spec.choices)}
    return gr.Slider, {"minimum": spec.minimum, "maximum": spec.slider_maximum or spec.maximum, "step": spec.step}


def _component(spec, value, elem_id):
    component, component_args = _component_kind(spec)
    return _not_saved_in_ui_config(component(value=value, label=spec.label, elem_id=elem_id, **component_args))


def _not_saved_in_ui_config(component):
    """Keep a control out of ui-config.json (modules/ui_loadsave.py skips `do_not_save_to_config`): its default
    comes from Settings > ToDo, the one place the API reads too."""
    component.do_not_save_to_config = True
    accordion = getattr(component, "accordion", None)
    if accordion is not None:
        accordion.do_not_save_to_config = True
    return component


PASS_KINDS = ("first", "hires")


class _JobRecord:
    """What ToDo did in one job, for the infotext: the handle of every attach, by pass kind, and the reasons it
    could not attach. The infotext entries are callables the WebUI evaluates when it writes the infotext, after
    sampling, so they state what the engine recorded, never a plan."""

    def __init__(self):
        self.notes = []
        self.handles = {kind: [] for kind in PASS_KINDS}
        self.warned = set()  # engine warnings already logged in this job: each appears once per generation

    def record(self, kind=None):
        kinds = PASS_KINDS if kind is None else (kind,)
        return todo_ext.PassRecord.merged(handle.record for each in kinds for handle in self.handles[each])

    def never_called(self):
        """Passes ToDo attached to whose hooks or patch the host never ran (an attention path that skips them)."""
        return [kind for kind in PASS_KINDS if self.handles[kind] and not self.record(kind).calls]

    def sampling_notes(self):
        """What sampling showed: passes whose hooks or patch the host never ran, calls ToDo stepped aside in."""
        notes = [f"attached to the {kind} pass, but the host never called ToDo there; that pass ran without it"
                 for kind in self.never_called()]
        aside = self.record().aside_text()
        return [*notes, aside] if aside else notes

    def note(self, **_locals):
        return "; ".join([*self.notes, *self.sampling_notes()]) or None

    def new_batch(self):
        for handles in self.handles.values():
            handles.clear()

    def kv_line(self, kind):
        def line(**_locals):
            return self.record(kind).kv_text()

        return line


KV_KEYS = {"first": todo_args.INFOTEXT_FIRST_PASS_KV_KEY, "hires": todo_args.INFOTEXT_HIRES_KV_KEY}


class ToDoScript(scripts.Script):
    def title(self):
        return SCRIPT_TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        defaults = current_defaults()
        spec_of = todo_args.FIELDS_BY_NAME
        made = {}

        def add(name):
            made[name] = _component(spec_of[name], getattr(defaults, name), self.elem_id(name))

        made["enabled"] = _not_saved_in_ui_config(InputAccordion(defaults.enabled, label=spec_of["enabled"].label,
                                                                 elem_id=self.elem_id("enabled")))
        with made["enabled"]:
            with gr.Row():
                add("ratio")
                gr.HTML(html.escape(todo_args.factor_label(defaults.ratio)), elem_id=self.elem_id("factor"))
            with gr.Row():
                add("max_depth")
                add("deeper_ratio")
                add("method")
            with gr.Row():
                add("auto")
                add("auto_target_tokens")
            with gr.Row():
                add("start")
                add("end")
            with gr.Group(), gr.Row():
                add("hires_mode")
                add("hires_ratio")
                add("hires_only")
            hints = {self.elem_id(spec.name): spec.hint for spec in todo_args.FIELDS}
            gr.HTML(
                f'<div class="todo-kv-line" data-todo-hints="{html.escape(json.dumps(hints))}"></div>',
                elem_id=self.elem_id("kv_line"),
            )

        controls = [made[spec.name] for spec in todo_args.FIELDS]
        targets = [todo_args.paste_target(spec) for spec in todo_args.FIELDS]
        self.infotext_fields = [PasteField(control, target) for control, target in zip(controls, targets, strict=True)]
        self.paste_field_names = [spec.infotext_key for spec in todo_args.FIELDS]
        return controls

    def before_process(self, p, *args):
        remove_all_hooks(getattr(p, "sd_model", None))
        p.extra_generation_params = {
            key: value for key, value in p.extra_generation_params.items() if not key.startswith(SCRIPT_TITLE)
        }
        p.todo_job = _JobRecord()

    def before_process_batch(self, p, *args, **kwargs):
        """Each batch's images record what ToDo did in that batch's passes (the WebUI writes their infotexts
        right after the batch)."""
        _job_of(p).new_batch()

    def process_before_every_sampling(self, p, *args, **kwargs):
        remove_all_hooks(getattr(p, "sd_model", None))
        kind = _pass_kind(p)
        job_args = self._job_args(p, args)
        config = job_args.config_for_pass(kind == "hires") if job_args else None
        p.todo_pass_config = config
        if config is None or not hook_unet(p, config):
            return
        job = _job_of(p)
        p.extra_generation_params.update(todo_args.infotext_params(job_args))
        p.extra_generation_params[KV_KEYS[kind]] = job.kv_line(kind)
        p.extra_generation_params[todo_args.INFOTEXT_NOTE_KEY] = job.note

    def postprocess(self, p, processed, *args):
        remove_all_hooks(getattr(p, "sd_model", None))
        job = getattr(p, "todo_job", None)
        if not isinstance(job, _JobRecord):
            return
        params = p.extra_generation_params
        for kind, key in KV_KEYS.items():
            if key in params:
                _write_as_text(params, key)
                print(f"[ToDo] {kind} pass K/V: {params.get(key, 'nothing recorded')}")
        if todo_args.INFOTEXT_NOTE_KEY in params:
            _write_as_text(params, todo_args.INFOTEXT_NOTE_KEY)
        for note in job.sampling_notes():
            print(f"[ToDo] warning: {note}")

    def _job_args(self, p, script_args):
        try:
            job_args = todo_args.parse_script_args(script_args, current_defaults())
            overrides = getattr(p, "todo_overrides", None)
            return job_args.with_values(overrides) if overrides else job_args
        except ValueError as error:
            _step_aside(p, f"invalid arguments, ToDo off ({error})")
            return None


def _pass_kind(p):
    return "hires" if getattr(p, "is_hr_pass", False) else "first"


def _write_as_text(params, key):
    """The API's info JSON (Processed.js, written after postprocess from the same dict) shows a callable as null:
    leave the text that the last infotext got instead (or no key where it has nothing to say)."""
    value = params[key]
    text = value() if callable(value) else value
    if text is None:
        params.pop(key)
    else:
        params[key] = text


def _job_of(p):
    if not isinstance(getattr(p, "todo_job", None), _JobRecord):
        p.todo_job = _JobRecord()
    return p.todo_job


def _step_aside(p, reason):
    job = _job_of(p)
    if reason not in job.notes:
        job.notes.append(reason)
        print(f"[ToDo] warning: {reason}; generating without ToDo")
    p.extra_generation_params[todo_args.INFOTEXT_NOTE_KEY] = job.note


def hook_unet(p, config):
    """Attach `config` to the U-Net of the model loaded now, the host's way (hosts.adapter_for); returns whether
    it did. Where ToDo cannot act it says why once (a warning and a note) and stops trying for this pass."""
    job = _job_of(p)
    sd_model = getattr(p, "sd_model", None)
    adapter = hosts.adapter_for(sd_model)
    unet = adapter.unet_of(sd_model)
    reason = None
    if unet is None:
        reason = "the loaded model has no torch U-Net"
    elif adapter is hosts.a1111 and sd_unet.current_unet is not None:
        reason = "an alternative U-Net (e.g. TensorRT) runs instead of the torch one"
    else:
        try:
            handle = adapter.attach(sd_model, config, job.warned)
        except todo_ext.UnsupportedModelError:
            reason = f"model not supported ({type(unet).__name__}; needs SD1.x/SD2.x/SDXL attention)"
        except Exception as error:
            reason = f"could not attach ({type(error).__name__}: {error})"
            if reason not in job.notes:
                todo_ext.patch.log.exception("ToDo: could not attach to %s", type(unet).__name__)
    if reason is not None:
        p.todo_pass_config = None
        _step_aside(p, reason)
        return False
    if adapter is hosts.forge:
        _forge_handles.add(handle)
    else:
        _hooked_unets.add(unet)
    _hooking_job[0] = weakref.ref(p)
    job.handles[_pass_kind(p)].append(handle)
    return True


def _attached(sd_model):
    if hosts.forge.is_forge_model(sd_model):
        return hosts.forge.has_todo_patch(sd_model)
    unet = hosts.a1111.unet_of(sd_model)
    return unet is None or unet in _hooked_unets


def follow_model_switch(params):
    """Runs before every U-Net call of every sampling job, scripted or not (CFGDenoiser.forward).

    Another job than the one that attached ToDo (one that raised skipped its postprocess; jobs with `p.scripts`
    None never call scripts) finds and removes the hooks and patches here before its first U-Net call. In the
    attaching job, the refiner loads another model in the middle of a pass (sd_samplers_common.apply_refiner) with
    no script hook in between; this attaches to the new U-Net before its first call (Forge reads
    `forge_objects.unet` anew for every step)."""
    p = getattr(params.denoiser, "p", None)
    if (len(_hooked_unets) or len(_forge_handles)) and p is not _hooking_job[0]():
        remove_all_hooks(getattr(p, "sd_model", None))
        return
    config = getattr(p, "todo_pass_config", None)
    if config is None or _attached(getattr(p, "sd_model", None)):
        return
    hook_unet(p, config)


_said = set()
"""The optional integrations that could not attach in this load, each said once."""


def _optional(what):
    """Guard an optional integration (Settings, X/Y/Z axes, API validation): where the host lacks what it needs, it
    prints one line, once per load, naming what is missing, and the rest of ToDo loads and works without it; no
    integration can stop the script from loading or the UI from being built."""

    def guard(integration):
        @wraps(integration)
        def guarded(*args, **kwargs):
            try:
                return integration(*args, **kwargs)
            except Exception as error:
                if what not in _said:
                    _said.add(what)
                    print(f"[ToDo] {what} ({str(error) or type(error).__name__}); the rest of ToDo works")
                return None

        return guarded

    return guard


@_optional("Settings > ToDo not added")
def on_ui_settings():
    """Settings > ToDo. Also called when this script loads: with --nowebui the WebUI runs no on_ui_settings
    callback (modules/ui.py create_ui does), and the API's options model is built from the options registered
    when modules/api/models.py is imported, after scripts have loaded."""
    for spec in todo_args.SETTING_FIELDS:
        component, component_args = _component_kind(spec)
        option = shared.OptionInfo(spec.default, f"Default {spec.label.lower()}", component, component_args or None,
                                   section=SETTINGS_SECTION, category_id="sd")
        shared.opts.add_option(todo_args.setting_key(spec), option.info(spec.hint).needs_reload_ui())


def _xyz_override(name, **also):
    def apply(p, value, _values):
        p.todo_overrides = {**getattr(p, "todo_overrides", {}), name: value, **also}

    return apply


def _xyz_confirm(name):
    def confirm(_p, values):
        for value in values:
            todo_args.FIELDS_BY_NAME[name].coerce(value)

    return confirm


def _xyz_grid_module():
    """The X/Y/Z plot's module wherever the host keeps it: scripts/xyz_grid.py (A1111, Forge, reForge, Neo) or
    extensions-builtin/xyz/scripts/xyz_grid.py (Forge Classic); the script loader names it "xyz_grid.py" on both."""
    return next((data.module for data in scripts.scripts_data if data.script_class.__module__ == "xyz_grid.py"),
                None)


def _enabled_choices(xyz_grid):
    """The host's boolean_choice(reverse=True): in the xyz_grid module, or in lib_xyz.utils on Forge Classic (whose
    script basedir is on sys.path), or the same choices made here where neither has it."""
    boolean_choice = getattr(xyz_grid, "boolean_choice", None)
    if boolean_choice is None:
        try:
            boolean_choice = importlib.import_module("lib_xyz.utils").boolean_choice
        except (ImportError, AttributeError):
            return lambda: ["False", "True"]
    return boolean_choice(reverse=True)


@_optional("X/Y/Z axes not added")
def add_xyz_axes(xyz_grid_may_load_later=False):
    """X/Y/Z plot axes, added the way the built-in Hypertile does, once per loaded xyz_grid module.

    Called when this script loads (A1111 loads scripts/xyz_grid.py before extensions' scripts), because with
    --nowebui the API builds the X/Y/Z script's axis list before `before_ui` runs; `before_ui` adds them should the
    X/Y/Z script have loaded later, and only it says when there is none (at load one may still come)."""
    xyz_grid = _xyz_grid_module()
    if xyz_grid is None:
        if xyz_grid_may_load_later:
            return
        raise LookupError("no X/Y/Z plot script loaded")
    if any(opt.label.startswith(XYZ_AXIS_PREFIX) for opt in xyz_grid.axis_options):
        return
    depths = todo_args.FIELDS_BY_NAME["max_depth"]
    xyz_grid.axis_options.extend([
        xyz_grid.AxisOption(XYZ_AXIS_PREFIX + "Enabled", str, _xyz_override("enabled"),
                            confirm=_xyz_confirm("enabled"), choices=_enabled_choices(xyz_grid)),
        xyz_grid.AxisOption(XYZ_AXIS_PREFIX + "Ratio", float, _xyz_override("ratio"), confirm=_xyz_confirm("ratio")),
        xyz_grid.AxisOption(XYZ_AXIS_PREFIX + "Hires ratio", float, _xyz_override("hires_ratio", hires_mode="own"),
                            confirm=_xyz_confirm("hires_ratio")),
        xyz_grid.AxisOption(XYZ_AXIS_PREFIX + "Max depth", int, _xyz_override("max_depth"),
                            confirm=_xyz_confirm("max_depth"),
                            choices=lambda: [str(depth) for depth in range(int(depths.maximum) + 1)]),
        xyz_grid.AxisOption(XYZ_AXIS_PREFIX + "Deeper ratio", float, _xyz_override("deeper_ratio"),
                            confirm=_xyz_confirm("deeper_ratio")),
        xyz_grid.AxisOption(XYZ_AXIS_PREFIX + "Method", str, _xyz_override("method"), confirm=_xyz_confirm("method"),
                            choices=lambda: list(todo_args.FIELDS_BY_NAME["method"].choices)),
    ])


@_optional("API validation of ToDo args not installed")
def install_api_validation(_demo, app):
    """Reject invalid ToDo args (and ToDo keys of the `infotext` field) with 422 before generation, behind the
    API's authentication; exceptions in script hooks would only be logged."""
    from modules.infotext_utils import parse_generation_parameters

    api_validation.install(app, current_defaults, parse_generation_parameters)


def on_script_unloaded():
    remove_all_hooks()


on_ui_settings()
add_xyz_axes(xyz_grid_may_load_later=True)
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_before_ui(add_xyz_axes)
script_callbacks.on_app_started(install_api_validation)
script_callbacks.on_script_unloaded(on_script_unloaded)
script_callbacks.on_cfg_denoiser(follow_model_switch)
