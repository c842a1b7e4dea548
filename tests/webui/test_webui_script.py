"""scripts/todo_script.py against the WebUI v1.10.1 stand-in, on a real (small) ldm U-Net."""

import copy
import logging
import types

import pytest
import torch
from torch import nn

from todo_ext.args import FIELDS, INFOTEXT_HIRES_KV_KEY, INFOTEXT_NOTE_KEY, ToDoArgs, infotext_params
from todo_ext.bench.models import LatentDiffusionShell, build_unet


def todo_hook_count(unet):
    return sum(
        1 for module in unet.modules() for hook in module._forward_pre_hooks.values()
        if getattr(hook, "is_todo_hook", False)
    )


def sd_model_of(diffusion_model):
    """What the WebUI's p.sd_model looks like to the script: an nn.Module with .model.diffusion_model."""
    return LatentDiffusionShell(diffusion_model)


@pytest.fixture(scope="module")
def unet():
    return build_unet("sd15", width=32)


@pytest.fixture
def job(webui, unet):
    """Runs one txt2img job through the stand-in's processing order and records what sampling saw."""
    from modules import processing, script_callbacks, scripts, shared

    script = webui.ToDoScript()
    runner = scripts.ScriptRunner([script])
    sd_model = sd_model_of(unet)
    seen = []

    def run(args=(), *, fail_in_hires=False, model=sd_model, scripted=True, steps=1, unet_calls=True,
            sigmas=None, inner_model=None, **p_fields):
        """`steps` U-Net calls per pass (timestep 500), each after the cfg_denoiser callbacks, which get the step's
        sigma from `sigmas` and a denoiser whose `inner_model` is given; `unet_calls=False` samples without
        calling the U-Net (a host whose attention path bypasses it)."""
        context = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(3))

        def sample(p, x):
            diffusion_model = p.sd_model.model.diffusion_model
            seen.append((p.is_hr_pass, todo_hook_count(diffusion_model)))
            if fail_in_hires and p.is_hr_pass:
                raise RuntimeError("out of memory")
            for step in range(steps):
                sigma = None if sigmas is None else torch.tensor([float(sigmas[step])])
                script_callbacks.cfg_denoiser_callback(script_callbacks.CFGDenoiserParams(
                    x, None, sigma, step, steps, None, None, denoiser=types.SimpleNamespace(p=p,
                                                                                           inner_model=inner_model)))
                if unet_calls:
                    x = diffusion_model(x, torch.full((1,), 500.0), context)
            return x

        args = list(args) if isinstance(args, (list, tuple)) else args.to_list()
        shared.sd_model = model
        p = processing.StableDiffusionProcessingTxt2Img(model, runner if scripted else None,
                                                        runner.api_script_args(script, args), **p_fields)
        return p, processing.process_images(p, sample)

    return types.SimpleNamespace(run=run, seen=seen, script=script, runner=runner, sd_model=sd_model)


def test_ui_controls_follow_the_field_list(webui):
    from modules.ui_components import InputAccordion

    script = webui.ToDoScript()
    controls = script.ui(is_img2img=False)
    assert [control.label for control in controls] == [spec.label for spec in FIELDS]
    assert isinstance(controls[0], InputAccordion) and controls[0].value is False
    assert [control.value for control in controls] == ToDoArgs().to_list()
    assert [control.value for control in script.ui(is_img2img=False)] == ToDoArgs().to_list()
    assert script.title() == "ToDo" and script.show(True) is not False


def test_settings_section_and_defaults(webui):
    from modules import script_callbacks, shared

    script_callbacks.ui_settings_callback()
    options = {key: info for key, info in shared.opts.data_labels.items() if key.startswith("todo_")}
    assert {info.section for info in options.values()} == {("todo", "ToDo")}
    shared.opts.data["todo_default_method"] = "avg-pool"
    shared.opts.data["todo_default_ratio"] = 0.9375
    values = {control.label: control.value for control in webui.ToDoScript().ui(False)}
    assert (values["Method"], values["Ratio"]) == ("avg-pool", 0.9375)


def test_settings_registered_at_load_also_without_ui(webui):
    """--nowebui runs no on_ui_settings callback; the options are there once the script has loaded."""
    from modules import script_callbacks, shared

    registered = {key: info for key, info in shared.opts.data_labels.items() if key.startswith("todo_")}
    assert registered and all("Reload UI" in info.comment_after for info in registered.values())
    script_callbacks.ui_settings_callback()
    assert {key for key in shared.opts.data_labels if key.startswith("todo_")} == set(registered)


def test_off_job_leaves_unet_and_infotext_untouched(job):
    _, processed = job.run(ToDoArgs())
    assert job.seen == [(False, 0)]
    assert "ToDo" not in processed.infotexts[0]


def test_on_job_hooks_during_sampling_only_and_changes_output(job, unet):
    _, baseline = job.run(ToDoArgs(), width=128, height=128)
    _, processed = job.run(ToDoArgs(enabled=True, ratio=0.75), width=128, height=128)
    assert job.seen[1][1] > 0
    assert todo_hook_count(unet) == 0
    assert not torch.equal(baseline.images[0], processed.images[0])
    assert "ToDo: True" in processed.infotexts[0]
    assert "ToDo K/V: d0 16x16->8x8 (2x) in 5 calls" in processed.infotexts[0]
    assert not job.runner.reported


def test_kv_line_records_each_depth_the_engine_acted_on(job):
    """What the engine recorded, per depth: the grid each layer got, the K/V grid, the factor, how many calls."""
    _, processed = job.run(ToDoArgs(enabled=True, ratio=0.75, max_depth=1, deeper_ratio=0.9375),
                           width=128, height=128)
    assert processed.infotexts[0].endswith("ToDo K/V: d0 16x16->8x8 (2x) in 5 calls; d1 8x8->2x2 (4x) in 5 calls")


def test_hires_pass_gets_its_own_config(job):
    args = ToDoArgs(enabled=True, ratio=0.75, hires_mode="own", hires_ratio=0.9375)
    _, processed = job.run(args, width=64, height=64, enable_hr=True, hr_scale=2.0)
    assert [seen[0] for seen in job.seen] == [False, True]
    assert all(count > 0 for _, count in job.seen)
    infotext = processed.infotexts[0]
    assert "ToDo K/V: d0 8x8->4x4 (2x) in 5 calls" in infotext
    assert f"{INFOTEXT_HIRES_KV_KEY}: d0 16x16->4x4 (4x) in 5 calls" in infotext


def test_hires_only_and_hires_off(job):
    job.run(ToDoArgs(enabled=True, hires_only=True), enable_hr=True)
    job.run(ToDoArgs(enabled=True, hires_mode="off"), enable_hr=True)
    hooks_per_pass = [count for _, count in job.seen]
    assert hooks_per_pass[0] == 0 and hooks_per_pass[1] > 0, "hires only"
    assert hooks_per_pass[2] > 0 and hooks_per_pass[3] == 0, "hires off"


def test_dict_args_as_the_api_sends_them(job):
    _, processed = job.run([{"enabled": True, "ratio": 0.9375}], width=128, height=128)
    assert "ToDo ratio: 0.9375" in processed.infotexts[0]
    assert "(4x)" in processed.infotexts[0]


def test_infotext_paste_round_trip(job):
    from modules.infotext_utils import parse_parameters_line, paste_values

    args = ToDoArgs(enabled=True, ratio=0.89, max_depth=1, auto=False, method="avg-pool", start=0.1, end=0.9,
                    hires_mode="auto", auto_target_tokens=1024, hires_only=False)
    _, processed = job.run(args, enable_hr=True)
    params = parse_parameters_line(processed.infotexts[0])
    pasted = paste_values(job.script.infotext_fields, params)
    assert ToDoArgs(**{spec.name: value for spec, value in zip(FIELDS, pasted, strict=True)}) == args
    assert set(job.script.paste_field_names) <= set(infotext_params(args))


def test_paste_without_todo_keys_turns_todo_off_like_the_hosts_toggles(job):
    """Hires fix and Refiner (modules/processing_scripts/refiner.py) turn off when their keys are absent."""
    from modules.infotext_utils import parse_parameters_line, paste_values

    _, processed = job.run(ToDoArgs())
    pasted = paste_values(job.script.infotext_fields, parse_parameters_line(processed.infotexts[0]))
    assert pasted == [False] + [None] * (len(FIELDS) - 1)


def test_send_to_img2img_carries_every_control(webui):
    from modules.infotext_utils import send_to_fields

    txt2img, img2img = webui.ToDoScript(), webui.ToDoScript()
    img2img.is_img2img = True
    sources, targets = txt2img.ui(False), img2img.ui(True)
    names = ["Prompt", "Steps", *txt2img.paste_field_names]
    assert send_to_fields(txt2img.infotext_fields, names) == sources
    assert send_to_fields(img2img.infotext_fields, names) == targets


def test_api_infotext_field_sets_every_control_with_its_type(job):
    """The API converts a pasted value to the type of the control's value (bool("False") is True)."""
    from modules.infotext_utils import api_script_values, parse_generation_parameters

    infotext = "Steps: 3, Seed: 1, ToDo: True, ToDo ratio: 0.9375, ToDo auto: False, ToDo hires only: False"
    fields, inputs = job.runner.infotext_fields, job.runner.inputs
    values = api_script_values(fields, inputs, parse_generation_parameters(infotext))
    _, processed = job.run(job.runner.api_script_args(job.script, [], infotext_script_args=values)[1:], width=128,
                           height=128)
    assert "ToDo auto: False" in processed.infotexts[0] and "ToDo ratio: 0.9375" in processed.infotexts[0]
    plain = api_script_values(fields, inputs, parse_generation_parameters("Steps: 3, Seed: 1, Sampler: Euler"))
    assert plain == {job.script.args_from: False}


def test_note_reaches_the_api_info_json_as_text(job):
    import json

    class NotAUNet(nn.Module):
        def forward(self, x, timesteps, context):
            return x

    _, processed = job.run(ToDoArgs(enabled=True), model=sd_model_of(NotAUNet()))
    note = json.loads(processed.js())["extra_generation_params"][INFOTEXT_NOTE_KEY]
    assert note and f"{INFOTEXT_NOTE_KEY}: {note}" in processed.infotexts[0]


def test_one_source_of_defaults_for_ui_api_and_check(webui, unet):
    """Settings > ToDo, read once: the controls (even with values saved in ui-config.json), the API's positional
    defaults (ui() called again), the dict form and the API check agree, also after the setting changes."""
    import json

    from modules import processing, scripts, shared
    from modules.ui_loadsave import UiLoadsave

    from todo_ext.api_validation import validation_error

    shared.opts.data.update(todo_default_ratio=0.5, todo_default_method="avg-pool")
    script = webui.ToDoScript()
    runner = scripts.ScriptRunner([script])
    loadsave = UiLoadsave({f"txt2img/{spec.label}/value": spec.default for spec in FIELDS})
    for control in runner.inputs[script.args_from:]:
        loadsave.add_component(f"txt2img/{control.label}", control)
    shared.opts.data["todo_default_ratio"] = 0.25
    ui_values = [control.value for control in runner.inputs[script.args_from:]]
    assert ui_values == runner.default_args()[script.args_from:script.args_to]
    assert (ui_values[1], ui_values[5]) == (0.5, "avg-pool")

    shared.sd_model = sd_model_of(unet)
    p = processing.StableDiffusionProcessingTxt2Img(None, runner, runner.api_script_args(script, [{"enabled": True}]),
                                                    width=128, height=128)
    processed = processing.process_images(p, lambda p, x: p.sd_model.model.diffusion_model(
        x, torch.full((1,), 500.0), torch.zeros(1, 77, 768)))
    assert "ToDo ratio: 0.5" in processed.infotexts[0] and "ToDo method: avg-pool" in processed.infotexts[0]
    window = json.dumps({"alwayson_scripts": {"ToDo": {"args": [{"end": 0.4, "start": 0.45}]}}}).encode()
    assert validation_error(window, webui.current_defaults())["field"] == "start"
    assert webui.current_defaults().ratio == 0.5


def test_a_failed_job_takes_its_hooks_off_before_it_ends(job, unet):
    """A job that raises skips postprocess, as in the WebUI; the sampler's own call, which raised, takes ToDo off on
    its way out, so nothing of ToDo's is left on the U-Net when the job has failed, before any next job."""
    _, clean = job.run(ToDoArgs(), width=64, height=64)
    with pytest.raises(RuntimeError, match="out of memory"):
        job.run(ToDoArgs(enabled=True), enable_hr=True, fail_in_hires=True)
    assert [count > 0 for _, count in job.seen[1:]] == [True, True], "attached in both passes"
    assert todo_hook_count(unet) == 0
    _, after = job.run(ToDoArgs(), width=64, height=64)
    assert job.seen[-1] == (False, 0)
    assert torch.equal(clean.images[0], after.images[0])


def test_a_finished_pass_leaves_no_hooks_for_the_rest_of_the_job(webui, unet):
    """ToDo is on the U-Net only while its pass samples: after the sampler returns (the VAE decode, another
    script's postprocess_image) the U-Net is the plain one, and the record still writes the infotext."""
    from modules import processing, scripts, shared

    hooks = {}

    class After(scripts.Script):
        def title(self):
            return "after"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def postprocess_image(self, p, pp, *args):
            hooks["after sampling"] = todo_hook_count(unet)

    def sample(p, x):
        hooks["while sampling"] = todo_hook_count(unet)
        return unet(x, torch.full((1,), 500.0), torch.zeros(1, 77, 768))

    todo = webui.ToDoScript()
    runner = scripts.ScriptRunner([todo, After()])
    shared.sd_model = sd_model_of(unet)
    p = processing.StableDiffusionProcessingTxt2Img(shared.sd_model, runner,
                                                    runner.api_script_args(todo, [True]), width=128, height=128)
    processed = processing.process_images(p, sample)
    assert hooks["while sampling"] > 0 and hooks["after sampling"] == 0
    assert "ToDo K/V: d0 16x16->8x8 (2x) in 5 calls" in processed.infotexts[0]


def test_hooks_a_sampler_could_not_take_off_never_reach_a_job_without_scripts(job, webui, unet, monkeypatch):
    """Where ToDo cannot wrap the pass's sampler (a sampler without `sample`/`sample_img2img`), a failed job leaves
    its hooks; jobs with `p.scripts` None (training previews, other extensions) call no script hook, and the
    cfg_denoiser callback before their first U-Net call takes those hooks off."""
    monkeypatch.setattr(webui.hosts, "when_sampling_ends", lambda sampler, cleanup: None)
    _, clean = job.run(ToDoArgs(), width=64, height=64, scripted=False)
    with pytest.raises(RuntimeError, match="out of memory"):
        job.run(ToDoArgs(enabled=True), enable_hr=True, fail_in_hires=True)
    assert todo_hook_count(unet) > 0
    _, after = job.run(ToDoArgs(), width=64, height=64, scripted=False)
    assert job.seen[-1] == (False, 0)
    assert torch.equal(clean.images[0], after.images[0])


def test_first_pass_image_hooks_only_the_hires_pass(job):
    _, processed = job.run(ToDoArgs(enabled=True), enable_hr=True, firstpass_image=object())
    assert job.seen == [(True, job.seen[0][1])] and job.seen[0][1] > 0
    assert INFOTEXT_HIRES_KV_KEY in processed.infotexts[0]


def test_hires_checkpoint_is_hooked_in_its_pass_and_cleaned(job, unet):
    hires_unet = build_unet("sd15", width=32, seed=4)
    job.run(ToDoArgs(enabled=True), enable_hr=True, hr_checkpoint_info=sd_model_of(hires_unet))
    assert [count > 0 for _, count in job.seen] == [True, True]
    assert todo_hook_count(unet) == 0 and todo_hook_count(hires_unet) == 0


def test_hooks_on_a_swapped_out_model_are_removed_too(job, webui, unet, monkeypatch):
    """The next scripted job takes off what a failed job left on a model that is no longer loaded."""
    monkeypatch.setattr(webui.hosts, "when_sampling_ends", lambda sampler, cleanup: None)
    other = build_unet("sd15", width=32, seed=1)
    other_model = sd_model_of(other)
    with pytest.raises(RuntimeError):
        job.run(ToDoArgs(enabled=True), model=other_model, enable_hr=True, fail_in_hires=True)
    assert todo_hook_count(other) > 0
    job.run(ToDoArgs())
    assert todo_hook_count(other) == 0


def test_each_batch_records_its_own_passes(job):
    _, processed = job.run(ToDoArgs(enabled=True), width=128, height=128, n_iter=2, steps=2)
    assert [text.count("ToDo K/V: d0 16x16->8x8 (2x) in 10 calls") for text in processed.infotexts] == [1, 1]


def test_an_unexpected_attach_error_is_reported_once_and_the_image_generates(job, webui, monkeypatch, capsys):
    """Not once per sampling step: the pass stops trying after the first failure."""
    attempts = []

    def broken_attach(*_args):
        attempts.append(1)
        raise RuntimeError("boom")

    monkeypatch.setattr(webui.hosts.a1111, "attach", broken_attach)
    _, processed = job.run(ToDoArgs(enabled=True), enable_hr=True, steps=3)
    assert len(processed.images) == 1 and len(attempts) == 2, "one attempt per pass"
    assert f'{INFOTEXT_NOTE_KEY}: "could not attach (RuntimeError: boom)"' in processed.infotexts[0]
    assert capsys.readouterr().out.count("boom") == 1
    assert not job.runner.reported


def test_a_pass_whose_hooks_never_ran_says_so(job):
    _, processed = job.run(ToDoArgs(enabled=True), unet_calls=False)
    assert "the host never called ToDo there" in processed.infotexts[0]
    assert "ToDo K/V" not in processed.infotexts[0]


def test_unsupported_model_warns_once_and_generates(job, capsys):
    class NotAUNet(nn.Module):
        def forward(self, x, timesteps, context):
            return x * 2

    model = sd_model_of(NotAUNet())
    _, processed = job.run(ToDoArgs(enabled=True), model=model, enable_hr=True)
    assert len(processed.images) == 1
    assert capsys.readouterr().out.count("not supported") == 1
    assert f"{INFOTEXT_NOTE_KEY}: model not supported" in processed.infotexts[0]
    assert not job.runner.reported


def test_alternative_unet_makes_todo_step_aside(job, unet, capsys):
    """A TensorRT-style U-Net (modules/sd_unet.py) bypasses the torch modules: hooks would never fire."""
    from modules import sd_unet

    sd_unet.current_unet = object()
    try:
        _, processed = job.run(ToDoArgs(enabled=True))
    finally:
        sd_unet.current_unet = None
    assert job.seen == [(False, 0)]
    assert "alternative U-Net" in processed.infotexts[0]
    assert capsys.readouterr().out.count("alternative U-Net") == 1


def test_token_merging_composes_without_failing_and_warns_once_per_generation(job, unet, capsys, caplog):
    import tomesd

    model = sd_model_of(unet)
    tomesd.apply_patch(model, ratio=0.5)
    try:
        with caplog.at_level(logging.WARNING, logger="todo_ext"):
            _, processed = job.run(ToDoArgs(enabled=True), width=128, height=128, enable_hr=True, n_iter=2)
    finally:
        tomesd.remove_patch(model)
    assert len(processed.images) == 2 and not job.runner.reported
    assert "stepped aside" in processed.infotexts[0]
    assert capsys.readouterr().out.count("Token merging") == 1
    assert len([r for r in caplog.records if "Token merging changed the tokens" in r.getMessage()]) == 1


def loaded_xyz_grid():
    """A scripts/xyz_grid.py module as modules/scripts.py registers it in scripts_data (AxisOption's signature)."""
    from modules import scripts

    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None,
                     prepare=None):
            self.label, self.type, self.apply, self.confirm, self.choices = label, type, apply, confirm, choices

    xyz_grid = types.SimpleNamespace(axis_options=[], AxisOption=AxisOption,
                                     boolean_choice=lambda reverse=False: lambda: ["False", "True"])
    xyz_class = type("Script", (), {"__module__": "xyz_grid.py"})
    scripts.scripts_data.append(scripts.ScriptClassData(xyz_class, "xyz_grid.py", ".", xyz_grid))
    return xyz_grid


def test_xyz_axes_exist_when_the_script_has_loaded(webui):
    """With --nowebui (webui.py api_only) the API builds the X/Y/Z script's axis list before before_ui runs; the
    WebUI loads scripts/xyz_grid.py before extensions' scripts, so the axes are added at load."""
    import importlib.util

    from modules import scripts

    xyz_grid = loaded_xyz_grid()
    try:
        spec = importlib.util.spec_from_file_location("todo_script_reloaded", webui.__file__)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    finally:
        scripts.scripts_data.clear()
    assert [opt.label for opt in xyz_grid.axis_options][:2] == ["[ToDo] Enabled", "[ToDo] Ratio"]


def test_xyz_axes_added_once_and_applied_per_cell(webui, job):
    from modules import script_callbacks, scripts

    xyz_grid = loaded_xyz_grid()
    try:
        script_callbacks.before_ui_callback()
        script_callbacks.before_ui_callback()
    finally:
        scripts.scripts_data.clear()
    labels = [opt.label for opt in xyz_grid.axis_options]
    assert labels == ["[ToDo] Enabled", "[ToDo] Ratio", "[ToDo] Hires ratio", "[ToDo] Max depth",
                      "[ToDo] Deeper ratio", "[ToDo] Method"]
    axes = {opt.label: opt for opt in xyz_grid.axis_options}
    with pytest.raises(ValueError, match="invalid method"):
        axes["[ToDo] Method"].confirm(None, ["nearest", "cubic"])

    from modules import processing, shared

    shared.sd_model = job.sd_model
    p = processing.StableDiffusionProcessingTxt2Img(job.sd_model, job.runner,
                                                    job.runner.api_script_args(job.script, []), width=128,
                                                    height=128)
    cell = copy.copy(p)
    axes["[ToDo] Enabled"].apply(cell, "True", [])
    axes["[ToDo] Ratio"].apply(cell, 0.9375, [])
    assert not hasattr(p, "todo_overrides")
    processed = processing.process_images(cell, lambda p, x: x)
    assert "ToDo ratio: 0.9375" in processed.infotexts[0]


def test_script_unload_removes_hooks(webui, job, unet, monkeypatch):
    from modules import script_callbacks

    monkeypatch.setattr(webui.hosts, "when_sampling_ends", lambda sampler, cleanup: None)
    with pytest.raises(RuntimeError):
        job.run(ToDoArgs(enabled=True), enable_hr=True, fail_in_hires=True)
    assert todo_hook_count(unet) > 0
    script_callbacks.script_unloaded_callback()
    assert todo_hook_count(unet) == 0


def test_refiner_switch_mid_pass_gets_hooked_and_cleaned(job, unet):
    """The refiner loads another model in the middle of sampling (sd_samplers_common.apply_refiner); the next
    cfg_denoiser callback hooks its U-Net, and the job's end removes both."""
    from modules import processing, script_callbacks, shared

    refiner = build_unet("sd15", width=32, seed=2)
    base_model, refiner_model = sd_model_of(unet), sd_model_of(refiner)
    hooks_seen = []

    def sample(p, x):
        context = torch.zeros(1, 77, 768)
        denoiser = types.SimpleNamespace(p=p)
        for step in range(2):
            if step == 1:
                shared.sd_model = refiner_model
            script_callbacks.cfg_denoiser_callback(
                script_callbacks.CFGDenoiserParams(x, None, None, step, 2, context, context, denoiser))
            current = p.sd_model.model.diffusion_model
            hooks_seen.append((current is refiner, todo_hook_count(current)))
            x = current(x, torch.full((1,), 500.0), context)
        return x

    shared.sd_model = base_model
    p = processing.StableDiffusionProcessingTxt2Img(base_model, job.runner,
                                                    job.runner.api_script_args(job.script, [True]))
    processing.process_images(p, sample)
    assert hooks_seen == [(False, todo_hook_count_when_applied(unet)), (True, todo_hook_count_when_applied(refiner))]
    assert todo_hook_count(unet) == 0 and todo_hook_count(refiner) == 0
    steps = [(each.record.steps, each.record.steps_run) for each in p.todo_job.attachments["first"]]
    # the base model's attach saw the stub's callback at the pass start and the sampler's step 0, both of index 0:
    # one step, with one U-Net call; it counts none of the refiner's steps, which its model never ran
    assert steps == [(1, 1), (1, 1)]


def todo_hook_count_when_applied(unet):
    import todo_ext

    handle = todo_ext.apply(unet, ToDoArgs(enabled=True).config_for_pass(False))
    count = todo_hook_count(unet)
    handle.remove()
    return count


@pytest.mark.parametrize("todo_listed", [True, False], ids=["todo-in-adetailer-list", "todo-not-listed"])
def test_adetailer_inpaint_pass_runs_todo_on_its_crop_only_when_listed(webui, unet, todo_listed):
    """ADetailer (Bing-su/adetailer 36189cbe) runs its inpaint pass inside the job's postprocess_image, before the
    job's own infotext and postprocess: a new job at the crop's size with the job's script args, running only the
    always-on scripts in its list (ToDo is not on it by default). Listed, ToDo acts there with the first-pass
    settings on the crop's own grid (Auto leaves a crop at its target size alone); not listed, the pass runs
    without ToDo, the job's hooks taken off first."""
    from modules import processing, scripts, shared

    todo = webui.ToDoScript()
    context = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(3))
    inner = {}

    def sample(p, x):
        if p.width == 64:
            inner.setdefault("hooks during the inpaint pass", []).append(todo_hook_count(unet))
        return p.sd_model.model.diffusion_model(x, torch.full((1,), 500.0), context)

    class ADetailer(scripts.Script):
        def title(self):
            return "ADetailer"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def postprocess_image(self, p, pp, *args):
            allowed = scripts.ScriptRunner([todo] if todo_listed else [])
            crop = processing.StableDiffusionProcessingTxt2Img(p.sd_model, allowed, p.script_args, width=64, height=64)
            inner["processed"] = processing.process_images(crop, sample)

    runner = scripts.ScriptRunner([todo, ADetailer()])
    shared.sd_model = sd_model_of(unet)
    args = runner.api_script_args(todo, ToDoArgs(enabled=True, auto=True, auto_target_tokens=64).to_list())
    p = processing.StableDiffusionProcessingTxt2Img(shared.sd_model, runner, args, width=128, height=128)
    processed = processing.process_images(p, sample)
    assert "ToDo K/V: d0 16x16->8x8 (2x) in 5 calls" in processed.infotexts[0]
    inpaint_infotext = inner["processed"].infotexts[0]
    if todo_listed:
        assert "ToDo K/V: d0 8x8 kept in 5 calls" in inpaint_infotext
        assert inner["hooks during the inpaint pass"][0] > 0
    else:
        assert "ToDo" not in inpaint_infotext
        assert inner["hooks during the inpaint pass"] == [0]
    assert todo_hook_count(unet) == 0 and not runner.reported


@pytest.mark.parametrize(("inner_model", "sigmas"), [
    (types.SimpleNamespace(sigma_to_t=lambda sigma: sigma / 10), [999.0, 8991.0]),
    (None, [99.9, 899.1]),
], ids=["k-diffusion", "timesteps"])
def test_the_step_window_is_decided_once_per_step_from_the_samplers_values(job, inner_model, sigmas):
    """The denoiser callback decides each step before the U-Net runs: a k-diffusion sampler's sigma through its
    inner model's sigma_to_t, or the timestep that DDIM, PLMS and UniPC hand it. The U-Net gets timestep 500
    (progress 0.5, inside the window) in both steps: only the callback's values say step 1 is outside."""
    args = ToDoArgs(enabled=True, ratio=0.75, start=0.0, end=0.5)
    p, processed = job.run(args, steps=2, sigmas=sigmas, inner_model=inner_model, width=128, height=128)
    record = p.todo_job.record("first")
    assert record.outside_window == 5 and record.downsampled == 5
    assert "ToDo K/V: d0 16x16->8x8 (2x) in 5 calls; 5 calls outside the step window" in processed.infotexts[0]



def raising_sigma_to_t(_sigma):
    raise ValueError("sigma beyond the schedule")


@pytest.mark.parametrize(("sigmas", "inner_model", "why"), [
    ([999.0, 8991.0], types.SimpleNamespace(sigma_to_t=raising_sigma_to_t), "the sampler's schedule raised ValueError"),
    (None, None, "the sampler told no sigma"),
], ids=["schedule-raises", "no-sigma"])
def test_a_step_window_that_cannot_be_decided_is_not_applied_and_the_note_says_why(job, sigmas, inner_model, why):
    """ToDo acts on every step whose window the sampler's values cannot place, and says so: the K/V line counts
    those calls as acted on (none outside the window), the note names the cause. At the default Start/End the
    window does not matter, and nothing is noted."""
    args = ToDoArgs(enabled=True, ratio=0.75, start=0.0, end=0.5)
    _, processed = job.run(args, steps=2, sigmas=sigmas, inner_model=inner_model, width=128, height=128)
    infotext = processed.infotexts[0]
    assert "ToDo K/V: d0 16x16->8x8 (2x) in 10 calls," in infotext and "outside the step window" not in infotext
    assert f'{INFOTEXT_NOTE_KEY}: "step window not applied in 10 self-attention calls: {why}"' in infotext
    assert "ToDo start: 0.0" in infotext and "ToDo end: 0.5" in infotext
    _, whole = job.run(ToDoArgs(enabled=True, ratio=0.75), steps=2, sigmas=sigmas, inner_model=inner_model,
                       width=128, height=128)
    assert INFOTEXT_NOTE_KEY not in whole.infotexts[0]
