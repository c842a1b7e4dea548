"""ToDo's Forge/reForge attn1 patch (todo_ext.hosts.forge) on real ldm U-Nets, driven the way Forge's
BasicTransformerBlock runs attn1 patches (tests/forge_stub): same outputs as the A1111 hooks, and the other
attn1 patches and replacements of those hosts alongside."""

import logging

import pytest
import torch
from forge_stub import forge_host

import todo_ext
from todo_ext.bench.models import build_unet, sdpa_attention, unet_inputs
from todo_ext.hosts import forge


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
    assert handle.stats["downsampled"] > 0 and handle.stats["passed_through"] == 0
    torch.testing.assert_close(patched, hooks_run(unet, config, x, 500, context), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(patched, hooks_run(unet, None, x, 500, context), atol=1e-4)


def test_attach_patches_a_clone_and_a_second_attach_replaces_the_patch():
    unet = build_unet("sd15", width=32)
    sd_model = forge_host.ForgeDiffusionEngine(unet)
    original = sd_model.forge_objects.unet
    forge.attach(sd_model, todo_ext.ToDoConfig(ratio=0.75), set())
    first = sd_model.forge_objects.unet
    assert first is not original and original.model_options == {"transformer_options": {}}
    forge.attach(sd_model, todo_ext.ToDoConfig(ratio=0.9375), set())
    patches = sd_model.forge_objects.unet.model_options["transformer_options"]["patches"]["attn1_patch"]
    assert len(patches) == 1 and patches[0].state.config.ratio == 0.9375
    assert forge.has_todo_patch(sd_model)
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
    assert handle.stats["downsampled"] > 0 and forge.has_todo_patch(sd_model)
    handle.remove()
    assert not forge.has_todo_patch(sd_model)
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
    assert (handle.stats["downsampled"] > 0) == config.covers(1 - timestep / 999)


def test_token_merging_before_todo_composes_queries_merged_and_kv_downsampled(caplog):
    unet = build_unet("sd15", width=32)
    sd_model = forge_host.ForgeDiffusionEngine(unet)
    forge_host.apply_token_merging(sd_model, 0.5)
    x, _, context = unet_inputs(unet, 1, 16, 16)
    merged_only = forge_run(sd_model, x, 500, context)
    with caplog.at_level(logging.WARNING, logger="todo_ext"):
        handle = forge.attach(sd_model, todo_ext.ToDoConfig(), set())
        both = forge_run(sd_model, x, 500, context)
    assert handle.stats["downsampled"] > 0 and handle.stats["passed_through"] == 0
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
    assert handle.stats["passed_through"] > 0 and handle.stats["downsampled"] == 0
    assert len(caplog.records) == 1 and "Hypertile" in caplog.records[0].getMessage()


def test_an_attn1_patch_after_todo_makes_it_step_aside(caplog):
    unet = build_unet("sd15", width=32)
    sd_model, handle = attached(unet, todo_ext.ToDoConfig())
    sd_model.forge_objects.unet = forge_host.hypertile_patch(sd_model.forge_objects.unet)
    x, _, context = unet_inputs(unet, 1, 16, 16)
    with caplog.at_level(logging.WARNING, logger="todo_ext"):
        forge_run(sd_model, x, 500, context)
    assert handle.stats["passed_through"] > 0 and handle.stats["downsampled"] == 0
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
    assert handle.stats["passed_through"] == 2 and handle.stats["downsampled"] > 0
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
    assert handle.stats["errors"] > 0 and len(caplog.records) == 1
