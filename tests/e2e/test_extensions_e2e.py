"""ToDo beside the WebUI extensions that touch the U-Net, on a live AUTOMATIC1111 WebUI that has them installed
(ControlNet 56cec5b2, Tiled Diffusion 22798f68, Kohya Hires.fix 05af9874, Regional Prompter be623452; see
../shared/live-host/README.md, host "a1111-ext").

Set WEBUI_URL to run; skipped otherwise, and each test is skipped where its extension is absent. Standard library
only, like test_webui_e2e.py, whose helpers it uses. What each extension does to the U-Net is in the comments; the
checks read what ToDo recorded (its K/V line: every grid its self-attention layers received) rather than a plan.
Small sizes and 2 steps keep it quick on the tiny-random checkpoint.
"""

import json
import re

import pytest
from test_webui_e2e import BASE, WEBUI_URL, call, kv_entries, pixels, txt2img

from todo_ext.args import INFOTEXT_FIRST_PASS_KV_KEY, INFOTEXT_NOTE_KEY, ToDoArgs

pytestmark = pytest.mark.skipif(not WEBUI_URL, reason="WEBUI_URL is not set (no live WebUI to test against)")

TODO_ON = ToDoArgs(enabled=True, ratio=0.75, max_depth=0).to_list()
"""2x per side at depth 0 only: every depth-0 grid h x w becomes ceil(h/2) x ceil(w/2)."""
SMALL = {**BASE, "steps": 2}
DEPTH0_LAYERS = 5
"""SD1.5 has 5 self-attention layers at depth 0: input_blocks 1 and 2, output_blocks 9, 10 and 11."""


def generate(alwayson, **overrides):
    """(status, body, image, infotext) of a txt2img request with these always-on scripts."""
    status, body = call("/sdapi/v1/txt2img", {**SMALL, **overrides, "alwayson_scripts": alwayson})
    if status != 200:
        return status, body, None, None
    return status, body, body["images"][0], json.loads(body["info"])["infotexts"][0]


def generated(alwayson, **overrides):
    status, body, image, infotext = generate(alwayson, **overrides)
    assert status == 200, body
    return image, infotext


def note_of(infotext):
    match = re.search(rf"{INFOTEXT_NOTE_KEY}: (\"[^\"]*\"|[^,\n]*)", infotext)
    return match.group(1) if match else None


def depth0_grids(entries):
    return {grid: kv_grid for (depth, grid, kv_grid, _), _ in entries.items() if depth == 0}


@pytest.fixture(scope="module")
def scripts():
    status, body = call("/sdapi/v1/scripts")
    assert status == 200, body
    return set(body["txt2img"])


def require(scripts, title):
    if title not in scripts:
        pytest.skip(f"{title} is not installed on this host")


@pytest.fixture(scope="module")
def controlnet(scripts):
    """ControlNet's models and preprocessors, where it is installed: the sd-webui-controlnet extension, or the
    built-in "ControlNet Integrated" of Forge, reForge and Forge Classic (sd_forge_controlnet), whose API has the
    same lists but no /controlnet/version."""
    require(scripts, "controlnet")
    status, modules = call("/controlnet/module_list")
    if status != 200:
        pytest.skip("no ControlNet API on this host")
    return {"models": call("/controlnet/model_list")[1]["model_list"], "modules": modules["module_list"],
            "integrated": call("/controlnet/version")[0] != 200}


@pytest.fixture(scope="module")
def hint():
    """A control image the size of the generated ones (a plain generation: random weights, so it is noise)."""
    return txt2img(steps=1)[0]


@pytest.mark.parametrize("module", ["reference_only", "reference_adain+attn"])
def test_controlnet_reference_modes(controlnet, hint, module):
    """sd-webui-controlnet's reference modes give attn1 an explicit context: x_norm1 itself (the reference's write
    pass) or cat([x_norm1] + bank) (the read pass). ToDo downsamples it set by set and acts.

    The ControlNet Integrated of Forge, reForge and Classic instead replaces attn1 (`set_model_replace_all(attn1_proc,
    "attn1")`, in every layer of 320 channels and more at weight 1) and runs an extra U-Net call per step to record
    the reference: ToDo steps aside in every depth-0 call, both calls of every step, says why, and leaves the image
    exact."""
    if module not in controlnet["modules"]:
        pytest.skip(f"no {module} preprocessor")
    unit = {"enabled": True, "module": module, "model": "None", "image": hint}
    without, _ = generated({"controlnet": {"args": [unit]}})
    image, infotext = generated({"controlnet": {"args": [unit]}, "ToDo": {"args": TODO_ON}})
    if controlnet["integrated"]:
        aside = re.search(r"stepped aside in (\d+) self-attention calls? where another extension replaces the "
                          r"layer's self-attention", note_of(infotext) or "")
        assert aside and int(aside.group(1)) == 2 * DEPTH0_LAYERS * SMALL["steps"], infotext
        assert INFOTEXT_FIRST_PASS_KV_KEY not in infotext, "no call acted on"
        assert pixels(image) == pixels(without), "stepped aside everywhere: the image is exact"
        return
    assert INFOTEXT_NOTE_KEY not in infotext, "ToDo acted in every call: no note"
    entries = kv_entries(infotext)
    assert depth0_grids(entries) == {(32, 32): (16, 16)}, infotext
    assert sum(entries.values()) > DEPTH0_LAYERS * SMALL["steps"], "the reference pass's calls as well"
    assert pixels(image) != pixels(without)


@pytest.mark.parametrize("method", ["MultiDiffusion", "Mixture of Diffusers"])
def test_tiled_diffusion_grid_is_the_tile(scripts, method):
    """Tiled Diffusion runs the U-Net on batches of latent tiles: 384 px (a 48x48 latent) in 32x32 tiles with
    overlap 16 is 2x2 tiles, one batch of 4. ToDo's grid is the tile's, never the whole latent's."""
    require(scripts, "tiled diffusion")
    # ui() order: enabled, method, overwrite_size, keep_input_size, image_width, image_height, tile_width,
    # tile_height, overlap, tile batch size (the rest: upscaler, noise inversion, region control left at defaults)
    tiled = [True, method, False, True, 1024, 1024, 32, 32, 16, 4]
    image, infotext = generated({"Tiled Diffusion": {"args": tiled}, "ToDo": {"args": TODO_ON}},
                                width=384, height=384)
    assert f'Tiled Diffusion: {{"Method": "{method}"' in infotext, "it tiled"
    assert INFOTEXT_NOTE_KEY not in infotext
    entries = kv_entries(infotext)
    assert depth0_grids(entries) == {(32, 32): (16, 16)}, infotext
    without, _ = generated({"Tiled Diffusion": {"args": tiled}}, width=384, height=384)
    assert pixels(image) != pixels(without)


def test_kohya_deep_shrink_grids(scripts):
    """Kohya Hires.fix wraps input_blocks[2] (depth 3) in a Scaler that interpolates its input by 0.5 and
    output_blocks[9] by 2 while the step is below 0.15 of the steps. At 264 px the latent is 33x33: while it
    shrinks, input_blocks[2]'s transformer gets 16x16 and output_blocks[9]'s 32x32 (floor(floor(33*0.5)/0.5) =
    32, not 33; the WebUI's cat hijack resizes it back for the next block), the others 33x33. ToDo reads each
    grid as it is."""
    require(scripts, "kohya hires.fix")
    # ui() order: enable, only_one_pass, d1, d2, s1, s2, scaler, downscale, upscale, smooth_scaling, early_out
    shrink = [True, True, 3, 4, 0.15, 0.3, "bicubic", 0.5, 2.0, True, False]
    image, infotext = generated({"Kohya Hires.fix": {"args": shrink}, "ToDo": {"args": TODO_ON}},
                                width=264, height=264)
    assert "DSHF_s1: 0.15" in infotext, "Deep Shrink ran"
    assert INFOTEXT_NOTE_KEY not in infotext, "no call stepped aside"
    entries = kv_entries(infotext)
    assert depth0_grids(entries) == {(33, 33): (17, 17), (16, 16): (8, 8), (32, 32): (16, 16)}, infotext
    assert entries[(0, (16, 16), (8, 8), 2.0)] == entries[(0, (32, 32), (16, 16), 2.0)], "one in, one out"
    assert sum(entries.values()) % (DEPTH0_LAYERS * SMALL["steps"]) == 0
    without, _ = generated({"Kohya Hires.fix": {"args": shrink}}, width=264, height=264)
    assert pixels(image) != pixels(without)


@pytest.mark.parametrize("mode", ["Attention", "Latent"])
def test_regional_prompter(scripts, mode):
    """Attention mode replaces attn2's forward (not attn1's); Latent mode runs the U-Net once per region and once
    for the negative prompt (batch_cond_uncond off). Neither changes the tokens attn1 gets: ToDo acts in every
    call."""
    require(scripts, "regional prompter")
    # ui() order: active, debug, tab, Matrix split, Mask mode, Prompt mode, divide ratios, base ratios, use base,
    # use common, use common negative, generation mode (the rest at their defaults)
    regions = [True, False, "Matrix", "Columns", "Mask", "Prompt", "1,1", "0.2", False, False, False, mode]
    prompt = "a red cube BREAK a blue ball"
    image, infotext = generated({"Regional Prompter": {"args": regions}, "ToDo": {"args": TODO_ON}},
                                prompt=prompt)
    assert "RP Active: True" in infotext and f"RP Calc Mode: {mode}" in infotext
    assert INFOTEXT_NOTE_KEY not in infotext
    entries = kv_entries(infotext)
    assert depth0_grids(entries) == {(32, 32): (16, 16)}, infotext
    calls = sum(entries.values())
    unet_calls = 3 if mode == "Latent" else 1  # per step: two regions and the negative prompt apart, or one batch
    assert calls % (DEPTH0_LAYERS * SMALL["steps"] * unet_calls) == 0, infotext
    without, _ = generated({"Regional Prompter": {"args": regions}}, prompt=prompt)
    assert pixels(image) != pixels(without)
    assert INFOTEXT_FIRST_PASS_KV_KEY not in generated({}, prompt=prompt)[1], "nothing left behind"


def test_controlnet_lllite_on_the_layers_it_leaves(controlnet, hint):
    """ControlNet-LLLite replaces the forward of attn1.to_q/to_k/to_v in input_blocks[1] (this host's random
    models: depth 0) and concatenates its cond with the full token grid: a downsampled K/V context there failed
    with 500 "Sizes of tensors must match". ToDo steps aside in those calls, says so, and acts on the rest."""
    status, options = call("/sdapi/v1/options")
    assert status == 200, options
    tiny = "tiny" in options["sd_model_checkpoint"]
    models = [name for name in controlnet["models"] if "lllite" in name.lower() and ("tiny" in name) == tiny]
    if not models:
        pytest.skip(f"no ControlNet-LLLite model for {options['sd_model_checkpoint']}: {controlnet['models']}")
    unit = {"enabled": True, "module": "none", "model": models[0], "image": hint}
    status, body, _, infotext = generate({"controlnet": {"args": [unit]}, "ToDo": {"args": TODO_ON}})
    assert status == 200, body
    note = note_of(infotext)
    assert note and "replaced a K/V projection" in note, infotext
    aside = re.search(r"stepped aside in (\d+) self-attention calls? where another extension replaced a K/V "
                      r"projection", note)
    assert aside, note
    entries = kv_entries(infotext)
    assert depth0_grids(entries) == {(32, 32): (16, 16)}, infotext
    acted = sum(entries.values())
    assert acted == (DEPTH0_LAYERS - 1) * int(aside.group(1)), "every other depth-0 layer, in every call"


def test_after_controlnet_lllite_todo_acts_on_every_layer_again(controlnet, hint):
    """ControlNet restores LLLite's projections after its job (clear_all_lllite: `forward` set back to the
    original bound method, `lllite_list` emptied). A later job without LLLite has nothing replaced: ToDo acts in
    every depth-0 call and writes no note."""
    _, infotext = generated({"ToDo": {"args": TODO_ON}})
    assert INFOTEXT_NOTE_KEY not in infotext, infotext
    entries = kv_entries(infotext)
    assert entries == {(0, (32, 32), (16, 16), 2.0): DEPTH0_LAYERS * SMALL["steps"]}, infotext
