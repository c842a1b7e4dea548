"""WebUI glue for ToDo (AUTOMATIC1111, Forge, reForge): UI, per-pass attach, infotext, settings, X/Y/Z axes,
API validation.

Thin on purpose: argument handling lives in todo_ext.args, the engine in todo_ext, and how ToDo attaches to each
host's U-Net in todo_ext.hosts (hooks on A1111, the U-Net patcher's attn1 patch on Forge and reForge).
"""

import html
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
from todo_ext import xyz as todo_xyz
from todo_ext.api_validation import SCRIPT_TITLE
from todo_ext.record import JobRecord

SETTINGS_SECTION = ("todo", "ToDo")

_attachments = []
"""Every attach made and not yet removed, whichever model it went to: cleanup also reaches a model that was swapped
out mid-job, or a patched clone that outlives its job."""

_hooking_job = [lambda: None]
"""A weak reference to the job (processing object, not hashable) that the attachments now in place belong to."""


def remove_all_hooks(sd_model=None) -> int:
    """Take ToDo off every model attached to so far and off `sd_model`'s, whatever happened to the last job."""
    for attachment in _attachments:
        attachment.remove()
    _attachments.clear()
    return hosts.remove_all(sd_model)


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
        p.todo_job = JobRecord()

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
        if config is None or not attach(p, config):
            return
        hosts.when_sampling_ends(getattr(p, "sampler", None), remove_all_hooks)
        job = _job_of(p)
        p.extra_generation_params.update(todo_args.infotext_params(job_args))
        p.extra_generation_params[KV_KEYS[kind]] = job.kv_line(kind)
        p.extra_generation_params[todo_args.INFOTEXT_NOTE_KEY] = job.note

    def postprocess(self, p, processed, *args):
        remove_all_hooks(getattr(p, "sd_model", None))
        job = getattr(p, "todo_job", None)
        if not isinstance(job, JobRecord):
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
            overrides = getattr(p, todo_xyz.OVERRIDES_ATTRIBUTE, None)
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
    if not isinstance(getattr(p, "todo_job", None), JobRecord):
        p.todo_job = JobRecord()
    return p.todo_job


def _step_aside(p, reason):
    job = _job_of(p)
    if reason not in job.notes:
        job.notes.append(reason)
        print(f"[ToDo] warning: {reason}; generating without ToDo")
    p.extra_generation_params[todo_args.INFOTEXT_NOTE_KEY] = job.note


def attach(p, config):
    """Attach `config` to the model loaded now, the host's way (hosts.attach_for); returns whether it did. Where
    ToDo cannot act it says why once (a warning and a note) and stops trying for this pass."""
    job = _job_of(p)
    sd_model = getattr(p, "sd_model", None)
    reason = None
    if sd_unet.current_unet is not None:
        reason = "an alternative U-Net (e.g. TensorRT) runs instead of the torch one"
    else:
        try:
            attachment = hosts.attach_for(sd_model)(sd_model, config, job.warned)
        except todo_ext.UnsupportedModelError as error:
            reason = f"model not supported ({str(error).removeprefix('ToDo: ')})"
        except Exception as error:
            reason = f"could not attach ({type(error).__name__}: {error})"
            if reason not in job.notes:
                todo_ext.passes.log.exception("ToDo: could not attach to %s", type(sd_model).__name__)
    if reason is not None:
        p.todo_pass_config = None
        _step_aside(p, reason)
        return False
    _attachments.append(attachment)
    _hooking_job[0] = weakref.ref(p)
    job.attachments[_pass_kind(p)].append(attachment)
    return True


def on_denoiser_step(params):
    """Runs before every step's U-Net calls of every sampling job, scripted or not (CFGDenoiser.forward).

    Another job than the one that attached ToDo finds and removes the attachments here before its first U-Net call
    (where the pass's sampler could not be wrapped to take them off, and a job that raised skipped its postprocess;
    jobs with `p.scripts` None never call scripts). In the attaching
    job, the refiner loads another model in the middle of a pass (sd_samplers_common.apply_refiner) with no script
    hook in between; this attaches to the new model before its first call (Forge reads `forge_objects.unet` anew
    for every step). Then the step window is decided for the step, once, before the U-Net runs."""
    p = getattr(params.denoiser, "p", None)
    if _attachments and p is not _hooking_job[0]():
        remove_all_hooks(getattr(p, "sd_model", None))
        return
    config = getattr(p, "todo_pass_config", None)
    if config is None:
        return
    sd_model = getattr(p, "sd_model", None)
    if not any(attachment.attached(sd_model) for attachment in _attachments) and not attach(p, config):
        return
    for attachment in _attachments:
        if attachment.attached(sd_model):  # one left by a model switch would count steps its model never ran
            attachment.begin_step(params.sigma, params.denoiser, getattr(params, "sampling_step", None))


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


@_optional("X/Y/Z axes not added")
def add_xyz_axes(xyz_grid_may_load_later=False):
    """X/Y/Z plot axes, added the way the built-in Hypertile does, once per loaded xyz_grid module.

    Called when this script loads (A1111 loads scripts/xyz_grid.py before extensions' scripts), because with
    --nowebui the API builds the X/Y/Z script's axis list before `before_ui` runs; `before_ui` adds them should the
    X/Y/Z script have loaded later, and only it says when there is none (at load one may still come)."""
    xyz_grid = todo_xyz.xyz_grid_module(scripts.scripts_data)
    if xyz_grid is None:
        if xyz_grid_may_load_later:
            return
        raise LookupError("no X/Y/Z plot script loaded")
    todo_xyz.add_axes(xyz_grid)


@_optional("API validation of ToDo args not installed")
def install_api_validation(_demo, app):
    """Reject invalid ToDo args (and ToDo keys of the `infotext` field) with 422 before generation, behind the
    API's authentication; exceptions in script hooks would only be logged."""
    from modules.infotext_utils import parse_generation_parameters

    api_validation.install(app, current_defaults, parse_generation_parameters)


LAYOUT_ROUTE = "/todo/v1/layout"
"""The loaded model's layout for the live K/V preview (javascript/todo.js)."""


@_optional("K/V preview of the loaded model's layout not served")
def serve_model_layout(_demo, app):
    """GET LAYOUT_ROUTE: the model loaded now (read without loading one, as sd_models.model_data holds it)."""
    from modules import sd_models

    if not any(getattr(route, "path", None) == LAYOUT_ROUTE for route in app.routes):
        app.add_api_route(LAYOUT_ROUTE, lambda: hosts.layout_of(sd_models.model_data.sd_model), methods=["GET"])


def on_script_unloaded():
    remove_all_hooks()


on_ui_settings()
add_xyz_axes(xyz_grid_may_load_later=True)
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_before_ui(add_xyz_axes)
script_callbacks.on_app_started(install_api_validation)
script_callbacks.on_app_started(serve_model_layout)
script_callbacks.on_script_unloaded(on_script_unloaded)
script_callbacks.on_cfg_denoiser(on_denoiser_step)
