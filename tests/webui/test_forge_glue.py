"""scripts/todo_script.py on a Forge-style host: the WebUI stand-in (tests/webui_stub) for the script API and the
Forge stand-in (tests/forge_stub) for `forge_objects`, the U-Net patcher and Forge's pass order."""

import types

import pytest
import torch
from forge_stub import forge_host

from todo_ext.args import INFOTEXT_FIRST_PASS_KV_KEY, INFOTEXT_HIRES_KV_KEY, INFOTEXT_NOTE_KEY, ToDoArgs
from todo_ext.bench.models import build_unet
from todo_ext.hosts import forge


@pytest.fixture(scope="module")
def unet():
    return build_unet("sd15", width=32)


def todo_patches(sd_model):
    options = sd_model.forge_objects.unet.model_options["transformer_options"]
    return [patch for patch in options.get("patches", {}).get("attn1_patch", []) if getattr(patch, forge.PATCH_FLAG,
                                                                                            False)]


@pytest.fixture
def job(webui, unet):
    """Runs txt2img jobs in Forge's pass order and records, per sampling pass, the ToDo patches in place."""
    from modules import processing, script_callbacks, scripts, shared

    script = webui.ToDoScript()
    runner = scripts.ScriptRunner([script])
    seen = []

    def sample(p, x):
        patches = todo_patches(p.sd_model)
        seen.append(types.SimpleNamespace(hires=p.is_hr_pass, patches=patches,
                                          configs=[patch.state.config for patch in patches],
                                          options=p.sd_model.forge_objects.unet.model_options))
        context = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(3))
        sigma = forge_host.sigma_at_timestep(p.sd_model, 500)
        script_callbacks.cfg_denoiser_callback(
            script_callbacks.CFGDenoiserParams(x, None, sigma, 0, 1, context, context, types.SimpleNamespace(p=p)))
        return forge_host.calc_cond_uncond_batch(p.sd_model.forge_objects.unet, x, sigma, context)

    def run(args=(), *, model=None, sample=sample, token_merging_ratio=0.0, **p_fields):
        shared.sd_model = model or forge_host.ForgeDiffusionEngine(unet)  # what p.sd_model returns, as on Forge
        script_args = list(args) if isinstance(args, (list, tuple)) else args.to_list()
        p = processing.StableDiffusionProcessingTxt2Img(shared.sd_model, runner,
                                                        runner.api_script_args(script, script_args), **p_fields)
        return p, forge_host.process_images(p, sample, token_merging_ratio=token_merging_ratio)

    return types.SimpleNamespace(run=run, seen=seen, runner=runner, sample=sample)


def test_off_job_patches_nothing(job):
    _, processed = job.run(ToDoArgs())
    assert [pass_.patches for pass_ in job.seen] == [[]]
    assert "ToDo" not in processed.infotexts[0]


def test_first_pass_patches_a_clone_and_acts(job):
    _, baseline = job.run(ToDoArgs(), width=128, height=128)
    p, processed = job.run(ToDoArgs(enabled=True, ratio=0.75), width=128, height=128)
    assert len(job.seen[1].patches) == 1
    assert job.seen[1].patches[0].state.record.downsampled > 0
    assert not torch.equal(baseline.images[0], processed.images[0])
    infotext = processed.infotexts[0]
    assert "ToDo: True" in infotext and f"{INFOTEXT_FIRST_PASS_KV_KEY}: d0 16x16->8x8 (2x) in 5 calls" in infotext
    assert INFOTEXT_NOTE_KEY not in infotext and not job.runner.reported
    assert p.sd_model.forge_objects_after_applying_lora.unet.model_options == {"transformer_options": {}}
    assert not job.seen[1].patches[0].state.active, "the job's end turns the patch off"


def test_hires_double_call_gives_one_patch_and_one_kv_line_per_pass(job, capsys):
    args = ToDoArgs(enabled=True, ratio=0.75, hires_mode="own", hires_ratio=0.9375)
    _, processed = job.run(args, width=64, height=64, enable_hr=True, hr_scale=2.0)
    assert [(pass_.hires, len(pass_.patches)) for pass_ in job.seen] == [(False, 1), (True, 1)]
    assert [config.ratio for pass_ in job.seen for config in pass_.configs] == [0.75, 0.9375]
    infotext = processed.infotexts[0]
    assert infotext.count(f"{INFOTEXT_FIRST_PASS_KV_KEY}:") == 1 and infotext.count(INFOTEXT_HIRES_KV_KEY) == 1
    assert f"{INFOTEXT_HIRES_KV_KEY}: d0 16x16->4x4 (4x) in 5 calls" in infotext
    assert capsys.readouterr().out.count("hires pass K/V:") == 1


def test_hires_only_and_hires_off(job):
    job.run(ToDoArgs(enabled=True, hires_only=True), enable_hr=True)
    job.run(ToDoArgs(enabled=True, hires_mode="off"), enable_hr=True)
    assert [len(pass_.patches) for pass_ in job.seen] == [0, 1, 1, 0]


def test_refiner_switch_mid_pass_gets_the_patch(job, unet):
    from modules import script_callbacks, shared

    refiner = forge_host.ForgeDiffusionEngine(build_unet("sd15", width=32, seed=2))
    patched = []

    def sample(p, x):
        context = torch.zeros(1, 77, 768)
        for step in range(2):
            if step == 1:
                shared.sd_model = refiner  # Forge: apply_refiner reloads shared.sd_model, which p.sd_model returns
            script_callbacks.cfg_denoiser_callback(
                script_callbacks.CFGDenoiserParams(x, None, None, step, 2, context, context,
                                                   types.SimpleNamespace(p=p)))
            patched.append(len(todo_patches(p.sd_model)))
            sigma = forge_host.sigma_at_timestep(p.sd_model, 500)
            x = forge_host.calc_cond_uncond_batch(p.sd_model.forge_objects.unet, x, sigma, context)
        return x

    job.run(ToDoArgs(enabled=True), sample=sample)
    assert patched == [1, 1]
    assert todo_patches(refiner)[0].state.record.downsampled > 0


@pytest.mark.parametrize("hires", [False, True])
def test_models_without_the_ldm_layout_warn_once_and_generate(job, capsys, hires):
    class FluxLike(torch.nn.Module):
        def forward(self, x, timesteps, context, **kwargs):
            return x * 2

    _, processed = job.run(ToDoArgs(enabled=True), model=forge_host.ForgeDiffusionEngine(FluxLike()),
                           enable_hr=hires)
    assert len(processed.images) == 1 and not job.runner.reported
    assert capsys.readouterr().out.count("not supported") == 1
    assert f"{INFOTEXT_NOTE_KEY}: model not supported (FluxLike" in processed.infotexts[0]
    assert INFOTEXT_FIRST_PASS_KV_KEY not in processed.infotexts[0]


def test_token_merging_composes_with_todo(job):
    _, merged = job.run(ToDoArgs(), token_merging_ratio=0.5, width=128, height=128)
    _, both = job.run(ToDoArgs(enabled=True), token_merging_ratio=0.5, width=128, height=128)
    record = job.seen[1].patches[0].state.record
    assert record.downsampled > 0 and not record.aside
    assert INFOTEXT_NOTE_KEY not in both.infotexts[0]
    assert not torch.equal(merged.images[0], both.images[0])


def test_hypertile_before_todo_makes_it_step_aside_with_a_note(job, capsys):
    def tile_then_sample(p, x):
        p.sd_model.forge_objects.unet = forge_host.hypertile_patch(p.sd_model.forge_objects.unet)
        patcher = p.sd_model.forge_objects.unet
        patches = patcher.model_options["transformer_options"]["patches"]["attn1_patch"]
        patches.insert(0, patches.pop())  # a built-in script's patch, set before the extension's
        return job.sample(p, x)

    _, processed = job.run(ToDoArgs(enabled=True), sample=tile_then_sample)
    assert "stepped aside in" in processed.infotexts[0]
    assert capsys.readouterr().out.count("warning:") == 1


def test_a_backend_that_never_runs_attn1_patches_is_noticed(job, capsys):
    """A rewritten backend whose attention goes another way (wrap_attn / optimized_attention_override) would
    leave ToDo's patch uncalled: the pass says so instead of claiming ToDo acted."""

    def sample_without_attn1_patches(p, x):
        patcher = p.sd_model.forge_objects.unet
        sigma = forge_host.sigma_at_timestep(p.sd_model, 500)
        context = torch.randn(1, 77, 768)
        return forge_host.calc_cond_uncond_batch(patcher, x, sigma, context,
                                                 model_options={"transformer_options": {}})

    _, processed = job.run(ToDoArgs(enabled=True), sample=sample_without_attn1_patches)
    assert "attached to the first pass, but the host never called ToDo there" in processed.infotexts[0]
    assert "ToDo K/V" not in processed.infotexts[0]
    assert capsys.readouterr().out.count("never called ToDo") == 1


def test_a_clone_that_drops_model_options_keeps_the_other_patches(job, unet):
    model = forge_host.ForgeDiffusionEngine(unet)
    bare = forge_host.BarePatcher(model.forge_objects.unet.model)
    bare.set_model_attn2_replace(forge_host.pag_attention, "input", 1, 0)
    model.forge_objects_after_applying_lora.unet = bare
    _, processed = job.run(ToDoArgs(enabled=True), model=model, width=128, height=128)
    options = job.seen[0].options["transformer_options"]
    assert options["patches_replace"]["attn2"][("input", 1, 0)] is forge_host.pag_attention
    assert len(job.seen[0].patches) == 1 and "ToDo K/V: d0 16x16->8x8 (2x) in 5 calls" in processed.infotexts[0]


@pytest.mark.usefixtures("attention_functions")
def test_a_dit_job_writes_its_joint_attention_into_the_kv_line(job):
    """Chroma (tests/dit_stub) in Forge's engine: the glue attaches through its attention function on every pass,
    the step window comes from the Flux schedule (start 0.5 = sigma 0.5), and each pass's K/V line names the image
    grid and the text kept; the job's end takes ToDo's wrapper off the module function."""
    from modules import script_callbacks

    from todo_ext.bench.dit_stub import neo_chroma, neo_flux

    original = neo_flux.attention_function
    torch.manual_seed(0)
    model = forge_host.ForgeDiffusionEngine(
        neo_chroma.IntegratedChromaTransformer2DModel().eval(),
        model_class=lambda chroma: forge_host.KModel(chroma, forge_host.PredictionFlux()))
    text = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(3))

    def sample(p, x):
        for step, sigma in enumerate((0.9, 0.4)):
            sigmas = torch.tensor([sigma])
            script_callbacks.cfg_denoiser_callback(script_callbacks.CFGDenoiserParams(
                x, None, sigmas, step, 2, text, text, types.SimpleNamespace(p=p)))
            with torch.no_grad():
                x = forge_host.calc_cond_uncond_batch(p.sd_model.forge_objects.unet, x, sigmas, text)
        return x

    _, processed = job.run(ToDoArgs(enabled=True, start=0.5), model=model, sample=sample, width=80, height=64,
                           enable_hr=True)
    infotext = processed.infotexts[0]
    assert f"{INFOTEXT_FIRST_PASS_KV_KEY}: img 4x5->2x3 (2x) + 8 text kept in 2 calls; bias as mask in 2 calls; " \
           "2 calls outside the step window" in infotext
    assert f"{INFOTEXT_HIRES_KV_KEY}: img 8x10->4x5 (2x) + 8 text kept in 2 calls; bias as mask in 2 calls; " \
           "2 calls outside the step window" in infotext
    assert INFOTEXT_NOTE_KEY not in infotext
    assert neo_flux.attention_function is original


class ScheduleWithoutPercents(forge_host.Prediction):
    """A schedule whose percent_to_sigma fails, as a host's custom schedule might."""

    def percent_to_sigma(self, percent):
        raise ValueError("no percent on this schedule")


def test_a_step_window_that_cannot_be_decided_is_not_applied_and_the_note_says_why(job, unet):
    model = forge_host.ForgeDiffusionEngine(
        unet, model_class=lambda diffusion_model: forge_host.KModel(diffusion_model, ScheduleWithoutPercents()))
    _, processed = job.run(ToDoArgs(enabled=True, start=0.3), model=model, width=128, height=128)
    infotext = processed.infotexts[0]
    assert f"{INFOTEXT_FIRST_PASS_KV_KEY}: d0 16x16->8x8 (2x) in 5 calls," in infotext
    assert (f'{INFOTEXT_NOTE_KEY}: "step window not applied in 5 self-attention calls: the schedule\'s '
            'percent_to_sigma raised ValueError"') in infotext


def todo_hook_count(module):
    return sum(1 for each in module.modules() for hook in each._forward_pre_hooks.values()
               if getattr(hook, "is_todo_hook", False))


def test_a_failed_job_leaves_no_hook_and_no_active_patch(job, unet):
    """Forge's hooks on the U-Net's instances feed the patch; a job whose sampler raises takes them off (and turns
    the patch off) as the sampler's call unwinds, before the job has ended."""
    hooks_while_sampling = []

    def sample_then_fail(p, x):
        job.sample(p, x)
        hooks_while_sampling.append(todo_hook_count(unet))
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        job.run(ToDoArgs(enabled=True), sample=sample_then_fail)
    assert hooks_while_sampling[0] > 0 and todo_hook_count(unet) == 0
    assert [patch.state.active for patch in job.seen[0].patches] == [False]


@pytest.mark.usefixtures("attention_functions")
def test_a_failed_dit_job_leaves_no_wrapper_in_the_attention_function(job):
    from todo_ext.bench.dit_stub import neo_chroma, neo_flux

    original = neo_flux.attention_function
    model = forge_host.ForgeDiffusionEngine(
        neo_chroma.IntegratedChromaTransformer2DModel().eval(),
        model_class=lambda chroma: forge_host.KModel(chroma, forge_host.PredictionFlux()))
    swapped = []

    def fail_in_sampling(p, x):
        swapped.append(neo_flux.attention_function is not original)
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        job.run(ToDoArgs(enabled=True), model=model, sample=fail_in_sampling, width=80, height=64)
    assert swapped == [True]
    assert neo_flux.attention_function is original and todo_hook_count(model.forge_objects.unet.model) == 0
