"""ToDo's Forge/reForge attn1 patch (todo_ext.hosts.forge) on real ldm U-Nets, driven the way Forge's
BasicTransformerBlock runs attn1 patches (tests/forge_stub): same outputs as the A1111 hooks, and the other
attn1 patches and replacements of those hosts alongside."""

import logging

import pytest
import torch
from forge_stub import forge_host

import todo_ext
from todo_ext.bench.models import build_unet, sdpa_attention, unet_inputs, webui_skip_resize
from todo_ext.hosts import forge
from todo_ext.record import JobRecord


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def unet(request):
    return build_unet(request.param, width=32)


def forge_run(sd_model, x, timestep, context):
    sigma = forge_host.sigma_at_timestep(sd_model, timestep).expand(x.shape[0])
    return forge_host.calc_cond_uncond_batch(sd_model.forge_objects.unet, x, sigma, context)


def hooks_run(unet, config, x, timestep, context):
    handle = todo_ext.apply(unet, config) if config is not None else None
    try:
        with sdpa_attention():
            return unet(x, torch.full((x.shape[0],), float(timestep)), context)
    finally:
        if handle is not None:
            handle.remove()


def attached(unet, config):
    sd_model = forge_host.ForgeDiffusionEngine(unet)
    handle = forge.attach(sd_model, config, set())
    return sd_model, handle


CONFIGS = [
    todo_ext.ToDoConfig(ratio=0.75),
    todo_ext.ToDoConfig(ratio=0.89, max_depth=3, method="avg-pool"),
    todo_ext.ToDoConfig(auto=True, auto_target_tokens=64, max_depth=1),
]


def test_the_stand_in_runs_the_plain_unet_like_the_unet_itself(unet):
    x, _, context = unet_inputs(unet, 2, 16, 24)
    plain = forge_run(forge_host.ForgeDiffusionEngine(unet), x, 500, context)
    torch.testing.assert_close(plain, hooks_run(unet, None, x, 500, context), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("config", CONFIGS, ids=["paper", "deep-avgpool", "auto"])
def test_the_patch_gives_the_same_output_as_the_hooks(unet, config):
    x, _, context = unet_inputs(unet, 2, 16, 24)
    sd_model, handle = attached(unet, config)
    patched = forge_run(sd_model, x, 500, context)
    assert handle.record.downsampled > 0 and not handle.record.aside
    torch.testing.assert_close(patched, hooks_run(unet, config, x, 500, context), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(patched, hooks_run(unet, None, x, 500, context), atol=1e-4)


def test_attach_patches_a_clone_and_a_second_attach_replaces_the_patch():
    unet = build_unet("sd15", width=32)
    sd_model = forge_host.ForgeDiffusionEngine(unet)
    original = sd_model.forge_objects.unet
    first_attach = forge.attach(sd_model, todo_ext.ToDoConfig(ratio=0.75), set())
    first = sd_model.forge_objects.unet
    assert first is not original and original.model_options == {"transformer_options": {}}
    handle = forge.attach(sd_model, todo_ext.ToDoConfig(ratio=0.9375), set())
    patches = sd_model.forge_objects.unet.model_options["transformer_options"]["patches"]["attn1_patch"]
    assert len(patches) == 1 and patches[0].state.config.ratio == 0.9375
    assert handle.attached(sd_model) and not first_attach.attached(sd_model)
    x, _, context = unet_inputs(unet, 1, 16, 16)
    torch.testing.assert_close(forge_run(sd_model, x, 500, context),
                               hooks_run(unet, todo_ext.ToDoConfig(ratio=0.9375), x, 500, context),
                               atol=1e-5, rtol=1e-4)


def test_a_clone_made_after_the_patch_keeps_it_working():
    """Scripts after ToDo clone the patcher again: the deep copy keeps ToDo's plain function and its state."""
    unet = build_unet("sd15", width=32)
    sd_model, handle = attached(unet, todo_ext.ToDoConfig())
    sd_model.forge_objects.unet = sd_model.forge_objects.unet.clone()
    x, _, context = unet_inputs(unet, 1, 16, 16)
    forge_run(sd_model, x, 500, context)
    assert handle.record.downsampled > 0 and handle.attached(sd_model)
    handle.remove()
    assert not handle.attached(sd_model)
    torch.testing.assert_close(forge_run(sd_model, x, 500, context), hooks_run(unet, None, x, 500, context),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_class", [forge_host.KModel, forge_host.BaseModel], ids=["forge", "reforge"])
@pytest.mark.parametrize("timestep", [999, 700, 400, 100])
def test_the_step_window_means_what_it_means_with_the_hooks(timestep, model_class):
    unet = build_unet("sd15", width=32)
    config = todo_ext.ToDoConfig(start=0.2, end=0.5)
    x, _, context = unet_inputs(unet, 1, 16, 16)
    sd_model = forge_host.ForgeDiffusionEngine(unet, model_class)
    handle = forge.attach(sd_model, config, set())
    torch.testing.assert_close(forge_run(sd_model, x, timestep, context),
                               hooks_run(unet, config, x, timestep, context), atol=1e-5, rtol=1e-4)
    assert (handle.record.downsampled > 0) == config.covers(1 - timestep / 999)


def test_token_merging_before_todo_composes_queries_merged_and_kv_downsampled(caplog):
    unet = build_unet("sd15", width=32)
    sd_model = forge_host.ForgeDiffusionEngine(unet)
    forge_host.apply_token_merging(sd_model, 0.5)
    x, _, context = unet_inputs(unet, 1, 16, 16)
    merged_only = forge_run(sd_model, x, 500, context)
    with caplog.at_level(logging.WARNING, logger="todo_ext"):
        handle = forge.attach(sd_model, todo_ext.ToDoConfig(), set())
        both = forge_run(sd_model, x, 500, context)
    assert handle.record.downsampled > 0 and not handle.record.aside
    assert not torch.allclose(both, merged_only, atol=1e-4)
    assert not caplog.records


def test_hypertile_before_todo_makes_it_step_aside_once_with_a_count(caplog):
    unet = build_unet("sd15", width=32)
    sd_model = forge_host.ForgeDiffusionEngine(unet)
    sd_model.forge_objects.unet = forge_host.hypertile_patch(sd_model.forge_objects.unet)
    x, _, context = unet_inputs(unet, 1, 16, 16)
    tiled_only = forge_run(sd_model, x, 500, context)
    with caplog.at_level(logging.WARNING, logger="todo_ext"):
        handle = forge.attach(sd_model, todo_ext.ToDoConfig(), set())
        forge_run(sd_model, x, 500, context)
        torch.testing.assert_close(forge_run(sd_model, x, 500, context), tiled_only)
    assert set(handle.record.aside) == {"hypertile"} and handle.record.downsampled == 0
    assert len(caplog.records) == 1 and "Hypertile" in caplog.records[0].getMessage()


def test_an_attn1_patch_after_todo_makes_it_step_aside(caplog):
    unet = build_unet("sd15", width=32)
    sd_model, handle = attached(unet, todo_ext.ToDoConfig())
    sd_model.forge_objects.unet = forge_host.hypertile_patch(sd_model.forge_objects.unet)
    x, _, context = unet_inputs(unet, 1, 16, 16)
    with caplog.at_level(logging.WARNING, logger="todo_ext"):
        forge_run(sd_model, x, 500, context)
    assert set(handle.record.aside) == {"later-patch"} and handle.record.downsampled == 0
    assert len(caplog.records) == 1 and "after ToDo" in caplog.records[0].getMessage()


@pytest.mark.parametrize("layout", ["sd15", "sdxl"])
def test_middle_block_replacements_pag_and_sag_keep_working(layout, caplog):
    """PAG's extra call replaces the middle block's attn1 by one that returns V; ToDo there would shorten V."""
    unet = build_unet(layout, width=32)
    config = todo_ext.ToDoConfig(ratio=0.75, max_depth=3)
    sd_model, handle = attached(unet, config)
    x, _, context = unet_inputs(unet, 1, 16, 16)
    patcher = sd_model.forge_objects.unet
    pag_options = forge_host.set_model_options_patch_replace(
        dict(patcher.model_options), forge_host.pag_attention, "attn1", "middle", 0)
    sigma = forge_host.sigma_at_timestep(sd_model, 500)
    with caplog.at_level(logging.WARNING, logger="todo_ext"):
        pag = forge_host.calc_cond_uncond_batch(patcher, x, sigma, context, model_options=pag_options)
        sag_patcher = patcher.clone()
        sag_patcher.set_model_attn1_replace(forge_host.pag_attention, "middle", 0, 0)
        sag = forge_host.calc_cond_uncond_batch(sag_patcher, x, sigma, context)
    assert pag.shape == x.shape and torch.equal(pag, sag)
    assert handle.record.aside == {"replaced": 2} and handle.record.downsampled > 0
    assert ["replaces the layer's self-attention" in record.getMessage() for record in caplog.records] == [True]


def test_models_without_the_ldm_layout_are_rejected_clearly():
    flux_like = torch.nn.Sequential(torch.nn.Linear(4, 4))
    sd_model = forge_host.ForgeDiffusionEngine(flux_like)
    before = sd_model.forge_objects.unet
    with pytest.raises(todo_ext.UnsupportedModelError):
        forge.attach(sd_model, todo_ext.ToDoConfig(), set())
    assert sd_model.forge_objects.unet is before


def test_a_failure_inside_the_patch_falls_back_to_exact_attention(monkeypatch, caplog):
    unet = build_unet("sd15", width=32)
    sd_model, handle = attached(unet, todo_ext.ToDoConfig())

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(todo_ext.patch, "downsample_tokens", broken)
    x, _, context = unet_inputs(unet, 1, 16, 16)
    with caplog.at_level(logging.WARNING, logger="todo_ext"):
        out = forge_run(sd_model, x, 500, context)
    torch.testing.assert_close(out, hooks_run(unet, None, x, 500, context), atol=1e-5, rtol=1e-4)
    assert set(handle.record.aside) == {"error"} and len(caplog.records) == 1


def forge_run_at_sigma(sd_model, x, sigma, context):
    return forge_host.calc_cond_uncond_batch(sd_model.forge_objects.unet, x, torch.tensor([sigma]), context)


@pytest.mark.parametrize("progress", [0.1, 0.3, 0.45, 0.7, 0.9])
def test_the_step_window_on_an_edm_schedule_is_progress_through_its_sigmas(progress):
    """Playground v2.5 and CosXL (continuous EDM): the U-Net's timestep is 0.25 * log(sigma), not 0..999; ToDo
    reads the window from the schedule's own percent_to_sigma, as the hosts' percent-based patches do."""
    unet = build_unet("sd15", width=32)
    schedule = forge_host.PredictionContinuousEDM()
    sd_model = forge_host.ForgeDiffusionEngine(unet, lambda model: forge_host.KModel(model, schedule))
    config = todo_ext.ToDoConfig(start=0.2, end=0.5)
    handle = forge.attach(sd_model, config, set())
    x, _, context = unet_inputs(unet, 1, 16, 16)
    forge_run_at_sigma(sd_model, x, schedule.percent_to_sigma(progress), context)
    assert (handle.record.downsampled > 0) == config.covers(progress)
    assert handle.record.outside_window == (0 if config.covers(progress) else 5)


def test_reforge_object_patched_schedule_is_the_one_read():
    """reForge's advanced model sampling swaps the schedule in as an object patch; `model.model_sampling` still
    holds the discrete one until the patcher is loaded."""
    unet = build_unet("sd15", width=32)
    sd_model = forge_host.ForgeDiffusionEngine(unet, forge_host.BaseModel)
    schedule = forge_host.PredictionContinuousEDM()
    patcher = forge_host.ReforgeUnetPatcher(sd_model.forge_objects.unet.model)
    patcher.add_object_patch("model_sampling", schedule)
    sd_model.forge_objects.unet = patcher
    handle = forge.attach(sd_model, todo_ext.ToDoConfig(start=0.0, end=0.5), set())
    x, _, context = unet_inputs(unet, 1, 16, 16)
    forge_run_at_sigma(sd_model, x, schedule.percent_to_sigma(0.9), context)
    assert handle.record.downsampled == 0 and handle.record.outside_window == 5
    forge_run_at_sigma(sd_model, x, schedule.percent_to_sigma(0.25), context)
    assert handle.record.downsampled == 5


class NoSchedule(forge_host.KModel):
    """A model object that tells no schedule (neither `predictor` nor `model_sampling`), calling the U-Net at a
    fixed timestep."""

    def __init__(self, diffusion_model):
        super().__init__(diffusion_model)
        self.predictor = None

    def apply_model(self, x, sigma, context, transformer_options, **extra_conds):
        return forge_host.forge_unet_call(self.diffusion_model, x, torch.full((x.shape[0],), 500.0), context,
                                          transformer_options, **extra_conds)


def test_a_host_that_tells_no_schedule_gets_no_step_window_and_the_record_says_why(caplog):
    unet = build_unet("sd15", width=32)
    sd_model = forge_host.ForgeDiffusionEngine(unet, NoSchedule)
    attachment = forge.attach(sd_model, todo_ext.ToDoConfig(start=0.5), set())
    x, _, context = unet_inputs(unet, 1, 16, 16)
    with caplog.at_level(logging.WARNING, logger="todo_ext"):
        attachment.begin_step(torch.tensor([1.0]), None)
        forge_run_at_sigma(sd_model, x, 1.0, context)
        forge_run_at_sigma(sd_model, x, 1.0, context)
    record = attachment.record
    assert record.downsampled == 10 and record.outside_window == 0
    assert record.window_notes() == ["step window not applied in 10 self-attention calls: the host tells no schedule"]
    assert [r.getMessage() for r in caplog.records] == [
        "ToDo: step window not applied: the host tells no schedule; ToDo acts on the step as if it were inside the "
        "window"]


class IPAdapterLike(torch.nn.Module):
    """An attn2 replacement holding its weights, as Forge's IPAdapterPlus CrossAttentionPatch holds IPAdapter."""

    def __init__(self):
        super().__init__()
        self.to_kv = torch.nn.Linear(768, 2 * 320)

    def __call__(self, q, k, v, extra_options):
        return q


def test_attach_shares_other_patches_instead_of_copying_their_weights():
    """The hosts' clone() deep-copies model_options and every module an IP-Adapter patch holds; ToDo's attach
    keeps the same patch objects (and so one copy of the weights) in new containers."""
    unet = build_unet("sd15", width=32)
    sd_model = forge_host.ForgeDiffusionEngine(unet)
    adapter = IPAdapterLike()
    sd_model.forge_objects.unet.set_model_attn2_replace(adapter, "input", 1, 0)
    host_clone = sd_model.forge_objects.unet.clone()
    assert host_clone.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)] is not adapter
    original = sd_model.forge_objects.unet
    forge.attach(sd_model, todo_ext.ToDoConfig(), set())
    options = sd_model.forge_objects.unet.model_options["transformer_options"]
    assert options["patches_replace"]["attn2"][("input", 1, 0)] is adapter
    assert "patches" not in original.model_options["transformer_options"], "the original keeps no ToDo patch"
    assert original.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)] is adapter


class ScaledInput(torch.nn.Module):
    """Kohya's Deep Shrink: the hidden state resized before the block (floor of side * scale)."""

    def __init__(self, block, scale):
        super().__init__()
        self.block, self.scale = block, scale

    def forward(self, h, *args, **kwargs):
        return self.block(torch.nn.functional.interpolate(h, scale_factor=self.scale), *args, **kwargs)


def wrapped_in_calls(function, depth):
    """`function` behind `depth` Python calls (a checkpoint wrapper, a profiler, a chain of other extensions'
    wrappers): nothing between the host and ToDo's patch may change what the patch reads."""
    for _ in range(depth):
        function = (lambda inner: lambda *args, **kwargs: inner(*args, **kwargs))(function)
    return function


@pytest.mark.parametrize("wrapper_depth", [0, 12])
def test_deep_shrink_grids_are_read_from_the_spatial_transformers_input(wrapper_depth, monkeypatch):
    """The grid comes from a hook on each SpatialTransformer instance, never from the host's stack frames, so the
    patch acts on the shrunken grid as the A1111 hooks do, whatever wraps the host's transformer block."""
    monkeypatch.setattr(forge_host, "_transformer_block_forward",
                        wrapped_in_calls(forge_host._transformer_block_forward, wrapper_depth))
    unet = build_unet("sd15", width=32)
    unet.input_blocks[2] = ScaledInput(unet.input_blocks[2], 0.5)
    config = todo_ext.ToDoConfig(ratio=0.75)
    sd_model, handle = attached(unet, config)
    x, _, context = unet_inputs(unet, 1, 24, 32)
    with webui_skip_resize():
        patched = forge_run(sd_model, x, 500, context)
        hooked = hooks_run(unet, config, x, 500, context)
    assert not handle.record.aside
    assert {key[1] for key in handle.record.kv} == {(24, 32), (12, 16)}
    torch.testing.assert_close(patched, hooked, atol=1e-5, rtol=1e-4)


def test_spectrum_like_forecast_steps_run_no_patch_and_the_computed_steps_are_downsampled():
    """Forge Neo's Spectrum (upstream extensions-builtin/sd_forge_spectrum/lib_spectrum/forecaster.py,
    `SpectrumNode.patch`: `spectrum_unet_wrapper`, a U-Net function wrapper) forecasts the output of some steps
    instead of running the U-Net: those steps reach no attn1 patch, so the record counts only the computed ones,
    nothing fails, and the steps the host began (the denoiser callback, as the glue calls it) against those in
    which the model ran tell the note how many the host answered without it."""
    unet = build_unet("sd15", width=32)
    sd_model, handle = attached(unet, todo_ext.ToDoConfig())
    outputs = []

    def spectrum(apply_model, args):
        if len(outputs) % 2:
            outputs.append(outputs[-1])
        else:
            outputs.append(apply_model(args["input"], args["timestep"], **args["c"]))
        return outputs[-1]

    sd_model.forge_objects.unet.model_options["model_function_wrapper"] = spectrum
    x, _, context = unet_inputs(unet, 1, 16, 16)
    for timestep in (900, 700, 500, 300):
        handle.begin_step(forge_host.sigma_at_timestep(sd_model, timestep), None)
        assert forge_run(sd_model, x, timestep, context).shape == x.shape
    assert handle.record.calls == 2 * 5 and handle.record.downsampled == 2 * 5
    assert (handle.record.steps, handle.record.steps_run) == (4, 2)
    job = JobRecord()
    job.attachments["first"].append(handle)
    assert job.sampling_notes() == ["the host ran the model in 2 of 4 steps of the first pass (a cache such as "
                                    "Spectrum answered the other 2 without it) and the K/V line counts the calls "
                                    "that ran"]
