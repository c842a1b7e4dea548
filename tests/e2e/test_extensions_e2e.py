"""ToDo beside the extensions that touch the U-Net, on a live host that has them: AUTOMATIC1111 WebUI with the
sd-webui extensions installed (ControlNet 56cec5b2, Tiled Diffusion 22798f68, Kohya Hires.fix 05af9874, Regional
Prompter be623452; README's "Live-host end-to-end tests" says what the host must hold), or a Forge-family host with
its built-ins (ControlNet Integrated with ControlLLLite, MultiDiffusion Integrated, Kohya HRFix Integrated where the
host ships it: Forge and reForge, not Neo or Classic).

Set WEBUI_URL to run; skipped otherwise, and each test is skipped where its extension is absent. The host is told
apart as test_webui_e2e.webui_host() does (WEBUI_HOST overrides it). Standard library only, like
test_webui_e2e.py, whose helpers it uses. What each extension does to the U-Net is in the comments; the checks
read what ToDo recorded (its K/V line: every grid its self-attention layers received) rather than a plan. Small
sizes and 2 steps keep it quick on the random checkpoints. A ControlLLLite model for the Forge family:
make_random_controllllite.py beside this file.
"""

import json
import re

import pytest
from test_webui_e2e import BASE, WEBUI_URL, call, kv_entries, pixels, png_of, webui_host

from todo_ext.args import INFOTEXT_FIRST_PASS_KV_KEY, INFOTEXT_NOTE_KEY, ToDoArgs

pytestmark = pytest.mark.skipif(not WEBUI_URL, reason="WEBUI_URL is not set (no live WebUI to test against)")

TODO_ON = ToDoArgs(enabled=True, ratio=0.75, max_depth=0).to_list()
"""2x per side at depth 0 only: every depth-0 grid h x w becomes ceil(h/2) x ceil(w/2)."""
SMALL = {**BASE, "steps": 2}
DEPTH0_LAYERS = 5
"""SD1.5 has 5 self-attention layers at depth 0: input_blocks 1 and 2, output_blocks 9, 10 and 11."""


def generate(alwayson, mode="txt2img", **overrides):
    """(status, body, image, infotext) of a txt2img (or img2img) request with these always-on scripts."""
    status, body = call(f"/sdapi/v1/{mode}", {**SMALL, **overrides, "alwayson_scripts": alwayson})
    if status != 200:
        return status, body, None, None
    return status, body, body["images"][0], json.loads(body["info"])["infotexts"][0]


def generated(alwayson, mode="txt2img", **overrides):
    status, body, image, infotext = generate(alwayson, mode, **overrides)
    assert status == 200, body
    return image, infotext


def note_of(infotext):
    match = re.search(rf"{INFOTEXT_NOTE_KEY}: (\"[^\"]*\"|[^,\n]*)", infotext)
    return match.group(1) if match else None


def depth0_grids(entries):
    return {grid: kv_grid for (depth, grid, kv_grid, _), _ in entries.items() if depth == 0}


@pytest.fixture(scope="module")
def scripts():
    """The always-on scripts' titles (lower case), per tab."""
    status, body = call("/sdapi/v1/scripts")
    assert status == 200, body
    return {"txt2img": set(body["txt2img"]), "img2img": set(body["img2img"])}


def require(scripts, title):
    """The tab that has the script: txt2img, else img2img (Forge Classic's MultiDiffusion is img2img only)."""
    for mode in ("txt2img", "img2img"):
        if title in scripts[mode]:
            return mode
    pytest.skip(f"{title} is not installed on this host")


@pytest.fixture(scope="module")
def controlnet(scripts):
    """ControlNet's models and preprocessors, where it is installed: the sd-webui-controlnet extension, or the
    built-in "ControlNet Integrated" of the Forge family (sd_forge_controlnet), whose API has the same lists but no
    /controlnet/version."""
    require(scripts, "controlnet")
    status, modules = call("/controlnet/module_list")
    if status != 200:
        pytest.skip("no ControlNet API on this host")
    modules = modules["module_list"]
    return {"models": call("/controlnet/model_list")[1]["model_list"], "modules": modules,
            "no_preprocessor": "None" if "None" in modules else "none",
            "integrated": call("/controlnet/version")[0] != 200}


@pytest.fixture(scope="module")
def hint():
    """A control image the size of the generated ones: a colour pattern, made here (no generation needed)."""
    return png_of(SMALL["width"], SMALL["height"])


@pytest.fixture(scope="module")
def lllite(controlnet, hint):
    """A ControlNet unit of a (ControlNet-)LLLite model for the loaded checkpoint: sd15_lllite_random or
    sd15_lllite_tiny_random, whichever the host lists (make_random_controllllite.py writes one for the Forge family).
    Skipped only where the host has none."""
    status, options = call("/sdapi/v1/options")
    assert status == 200, options
    checkpoint = options.get("sd_model_checkpoint") or ""
    tiny = "tiny" in checkpoint
    models = [name for name in controlnet["models"] if "lllite" in name.lower() and ("tiny" in name) == tiny]
    if not models:
        pytest.skip(f"no ControlNet-LLLite model for {checkpoint or 'the loaded checkpoint'}: {controlnet['models']}"
                    " (tests/e2e/make_random_controllllite.py makes one)")
    return {"enabled": True, "module": controlnet["no_preprocessor"], "model": models[0], "image": hint}


@pytest.mark.parametrize("module", ["reference_only", "reference_adain+attn"])
def test_controlnet_reference_modes(controlnet, hint, module):
    """sd-webui-controlnet's reference modes give attn1 an explicit context: x_norm1 itself (the reference's write
    pass) or cat([x_norm1] + bank) (the read pass). ToDo downsamples it set by set and acts.

    The ControlNet Integrated of the Forge family instead replaces attn1 (`set_model_replace_all(attn1_proc,
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


LLLITE_CAUSE = {"a1111": ("projection", "another extension replaced a K/V projection of the layer"),
                "forge": ("kv-split", "another patch changed the layer's keys and values apart"),
                "reforge": ("kv-split", "another patch changed the layer's keys and values apart"),
                "classic": ("kv-split", "another patch changed the layer's keys and values apart"),
                "neo": ("kv-split", "another patch changed the layer's keys and values apart")}
"""Why ToDo steps aside where LLLite works, per host, as measured live (see the test)."""


def run_lllite(lllite):
    """A job with LLLite and ToDo: (the note's cause, calls stepped aside, K/V entries). The note is the evidence
    that LLLite ran: only its patch (or its projections on A1111) makes ToDo step aside here."""
    _, infotext = generated({"controlnet": {"args": [lllite]}, "ToDo": {"args": TODO_ON}})
    note = note_of(infotext)
    aside = re.search(r"stepped aside in (\d+) self-attention calls? where (.*?)(?: \(|\"|$)", note or "")
    assert aside, infotext
    return aside.group(2), int(aside.group(1)), kv_entries(infotext)


def test_controlnet_lllite_on_the_layers_it_leaves(controlnet, lllite):
    """LLLite changes attn1's queries, keys and values at input_blocks[1] (the random models': one depth-0 layer of
    five) by a condition sized to the full token grid; a downsampled K/V there failed with 500 "Sizes of tensors
    must match". ToDo steps aside in those calls, says why, and acts on the other four depth-0 layers.

    A1111's sd-webui-controlnet replaces the forward of the layer's to_q/to_k/to_v: cause `projection`. The Forge
    family's built-in ControlLLLite is an attn1 patch (the same function also as attn2 patch) that adds its module's
    output to q, k and v apart; ControlNet's process_before_every_sampling runs before ToDo's, so its patch comes
    first in the list and hands ToDo keys and values that differ: cause `kv-split` (`later-patch` were the order
    the other way round)."""
    cause, words = LLLITE_CAUSE[webui_host()]
    reason, aside, entries = run_lllite(lllite)
    assert reason == words, f"{cause}: {reason}"
    assert depth0_grids(entries) == {(32, 32): (16, 16)}, entries
    acted = sum(entries.values())
    assert aside > 0 and acted == (DEPTH0_LAYERS - 1) * aside, "every other depth-0 layer, in every call"


def test_after_controlnet_lllite_todo_acts_on_every_layer_again(controlnet, lllite):
    """After a job with LLLite, a job without it has nothing replaced or patched: A1111's ControlNet restores the
    projections after its job (clear_all_lllite: `forward` set back to the original bound method, `lllite_list`
    emptied), which ToDo must not take for a replacement; the Forge family's patch lived on a clone of the U-Net
    patcher that the host dropped. ToDo acts in every depth-0 call and writes no note. Runs LLLite itself first."""
    _, aside, _ = run_lllite(lllite)
    assert aside > 0, "LLLite ran"
    _, infotext = generated({"ToDo": {"args": TODO_ON}})
    assert INFOTEXT_NOTE_KEY not in infotext, infotext
    entries = kv_entries(infotext)
    assert entries == {(0, (32, 32), (16, 16), 2.0): DEPTH0_LAYERS * SMALL["steps"]}, infotext


def choices_of(title, mode, label):
    """The choices /sdapi/v1/script-info lists for a script's control."""
    status, infos = call("/sdapi/v1/script-info")
    assert status == 200, infos
    info = next(info for info in infos if info["name"] == title and info["is_img2img"] == (mode == "img2img"))
    return next(arg["choices"] for arg in info["args"] if arg["label"] == label)


@pytest.mark.parametrize("method", ["MultiDiffusion", "Mixture of Diffusers", "SpotDiffusion"])
def test_multidiffusion_integrated_grid_is_the_tile(scripts, method):
    """The Forge family's MultiDiffusion Integrated (sd_forge_multidiffusion) wraps the U-Net function and runs it
    on batches of latent tiles, sized in pixels: 384 px (a 48x48 latent) in 256 px tiles (32x32) with 128 px
    overlap (16) is 2x2 tiles, one batch of 4. ToDo's grid is the tile's, never the whole latent's. Forge Classic
    offers it in img2img only (its show() hides it from txt2img): there the request is an img2img of a pattern.
    reForge adds SpotDiffusion (tiles over a latent rolled by a random shift per step), which fails at 3b56b268
    without ToDo ('Store' object has no attribute 'sigmas'): skipped where the host fails without ToDo."""
    mode = require(scripts, "multidiffusion integrated")
    if method not in choices_of("multidiffusion integrated", mode, "Method"):
        pytest.skip(f"this host's MultiDiffusion Integrated has no {method} (reForge's alone has SpotDiffusion)")
    # ui() order on every host: enabled, method, tile width, tile height, tile overlap, tile batch size
    # (reForge adds SpotDiffusion's shift method, left at its default)
    tiled = [True, method, 256, 256, 128, 4]
    extra = {"init_images": [png_of(384, 384)], "denoising_strength": 1.0} if mode == "img2img" else {}
    status, body, without, _ = generate({"MultiDiffusion Integrated": {"args": tiled}}, mode, width=384, height=384,
                                        **extra)
    if status != 200:
        pytest.skip(f"{method} fails on this host without ToDo: {body}")
    image, infotext = generated({"MultiDiffusion Integrated": {"args": tiled}, "ToDo": {"args": TODO_ON}}, mode,
                                width=384, height=384, **extra)
    assert "multidiffusion_enabled: True" in infotext and f"multidiffusion_method: {method}" in infotext, infotext
    assert INFOTEXT_NOTE_KEY not in infotext, infotext
    entries = kv_entries(infotext)
    assert depth0_grids(entries) == {(32, 32): (16, 16)}, infotext
    assert sum(entries.values()) % DEPTH0_LAYERS == 0, infotext
    assert pixels(image) != pixels(without)


def test_kohya_hrfix_integrated_shrunken_grids(scripts):
    """Forge's and reForge's Kohya HRFix Integrated (sd_forge_kohya_hrfix; Neo and Classic do not ship it) resizes
    the hidden state after input block N (after the skip is stored) by 1/factor while the sigma lies in the window,
    and an output block patch resizes it back to each skip's size. Block 1, factor 2, window 0 to 0.35: at 256 px
    (a 32x32 latent) the first step's U-Net call gives input_blocks[2] and output_blocks[9] 16x16 and
    input_blocks[1], output_blocks[10] and [11] 32x32; the second step (progress about 0.5) is not shrunk. ToDo
    reads each grid as it is: per shrunken call 2 depth-0 calls at 16x16 and 3 at 32x32, per other call 5 at
    32x32."""
    mode = require(scripts, "kohya hrfix integrated")
    # ui() order: enabled, block number, downscale factor, start percent, end percent, downscale after skip,
    # downscale method, upscale method
    shrink = [True, 1, 2.0, 0.0, 0.35, True, "bicubic", "bicubic"]
    image, infotext = generated({"Kohya HRFix Integrated": {"args": shrink}, "ToDo": {"args": TODO_ON}}, mode)
    assert "kohya_hrfix_enabled: True" in infotext and "kohya_hrfix_block_number: 1" in infotext, infotext
    assert INFOTEXT_NOTE_KEY not in infotext, infotext
    entries = kv_entries(infotext)
    assert depth0_grids(entries) == {(32, 32): (16, 16), (16, 16): (8, 8)}, infotext
    shrunken = entries[(0, (16, 16), (8, 8), 2.0)]
    assert shrunken % 2 == 0, "two shrunken depth-0 layers per shrunken call"
    plain = entries[(0, (32, 32), (16, 16), 2.0)] - 3 * shrunken // 2
    assert plain > 0 and plain % DEPTH0_LAYERS == 0, "three full-size layers per shrunken call, five per other"
    without, _ = generated({"Kohya HRFix Integrated": {"args": shrink}}, mode)
    assert pixels(image) != pixels(without)


TODO_DEEP = ToDoArgs(enabled=True, ratio=0.75, max_depth=3).to_list()
"""2x per side at every depth, the middle block (depth 3 on SD1.x: a 4x4 grid at 256 px) included."""
REPLACED = "another extension replaces the layer's self-attention"


def integrated(scripts, prefix):
    """The title of a Forge-family built-in whose title starts so (titles differ between hosts: Forge's SAG adds
    "(SD 1.x, SD 2.x, SDXL)"), or skip."""
    titles = sorted(title for title in scripts["txt2img"] if title.startswith(prefix))
    if not titles:
        pytest.skip(f"{prefix}... is not installed on this host")
    return titles[0]


def aside_calls(infotext, cause_words):
    match = re.search(rf"stepped aside in (\d+) self-attention calls? where {re.escape(cause_words)}",
                      note_of(infotext) or "")
    assert match, infotext
    return int(match.group(1))


def test_stylealign_integrated_replaces_every_self_attention(scripts):
    """Forge's StyleAlign Integrated (sd_forge_stylealign) replaces attn1 in every layer (`set_model_replace_all`,
    attention shared across the batch): ToDo steps aside in every depth-0 call, says why, and the image is
    StyleAlign's alone."""
    title = integrated(scripts, "stylealign integrated")
    align = [True, 1.0]  # ui() order: share attention in batch, strength
    without, _ = generated({title: {"args": align}})
    image, infotext = generated({title: {"args": align}, "ToDo": {"args": TODO_ON}})
    assert "stylealign_enabled: True" in infotext, infotext
    assert aside_calls(infotext, REPLACED) == DEPTH0_LAYERS * SMALL["steps"], infotext
    assert INFOTEXT_FIRST_PASS_KV_KEY not in infotext, "no call acted on"
    assert pixels(image) == pixels(without), "stepped aside everywhere: the image is exact"


def test_perturbed_attention_guidance_integrated_middle_block(scripts):
    """Forge's PAG Integrated runs one more U-Net call per step (the cond batch) with the middle block's attn1
    replaced by one that returns V, which needs V's full token count. At Max depth 3 ToDo reaches the middle block:
    it steps aside there in those calls only, acts on the middle block of the ordinary calls and on every other
    layer of both, so each U-Net call counts 5 depth-0 calls and 1 middle-block call."""
    title = integrated(scripts, "perturbedattentionguidance integrated")
    pag = [True, 3.0, 0.0, 0.0, 1.0]  # ui() order: enabled, scale, attenuation, start step, end step
    _, infotext = generated({title: {"args": pag}, "ToDo": {"args": TODO_DEEP}})
    assert "pagi_enabled: True" in infotext, infotext
    aside = aside_calls(infotext, REPLACED)
    assert aside == SMALL["steps"], "one PAG call per step"
    entries = kv_entries(infotext)
    middle = entries[(3, (4, 4), (2, 2), 2.0)]
    assert middle == SMALL["steps"], "the ordinary calls' middle block: one batched call per step"
    assert entries[(0, (32, 32), (16, 16), 2.0)] == DEPTH0_LAYERS * (middle + aside), infotext


def test_self_attention_guidance_integrated_middle_block(scripts):
    """Forge's and reForge's SAG Integrated replace the middle block's attn1 in every U-Net call (it records the
    attention map there, which needs the full keys) and add a U-Net call per step on a blurred input. At Max depth 3
    ToDo steps aside in every middle-block call and acts on every other layer: 5 depth-0 calls per middle-block
    call stepped aside, and no middle-block grid in the K/V line."""
    title = integrated(scripts, "selfattentionguidance integrated")
    sag = [True, 0.5, 2.0]  # ui() order: enabled, scale, blur sigma (Forge's blur mask threshold left at 1.0)
    _, infotext = generated({title: {"args": sag}, "ToDo": {"args": TODO_DEEP}})
    assert "sag_enabled: True" in infotext, infotext
    aside = aside_calls(infotext, REPLACED)
    entries = kv_entries(infotext)
    assert not [key for key in entries if key[0] == 3], infotext
    assert entries[(0, (32, 32), (16, 16), 2.0)] == DEPTH0_LAYERS * aside, infotext
    assert aside > SMALL["steps"], "SAG's own calls as well"


def test_hypertile_integrated_tiles_the_queries(scripts):
    """reForge's HyperTile Integrated is an attn1 patch that splits the queries of depth-0 layers into tiles (more
    batch rows, fewer tokens each) and an output patch that puts them back. Tile size 128 (a 16-token side) and swap
    size 1 split the 32x32 grid 2x2 in every call, deterministically: ToDo steps aside in every depth-0 call with the
    `hypertile` cause, and the image is HyperTile's alone."""
    title = integrated(scripts, "hypertile integrated")
    tile = [True, 128, 1, 0, False]  # ui() order: enabled, tile size, swap size, max depth, scale depth
    without, _ = generated({title: {"args": tile}})
    image, infotext = generated({title: {"args": tile}, "ToDo": {"args": TODO_ON}})
    assert "HyperTile_enabled: True" in infotext, infotext
    assert aside_calls(infotext, "Hypertile tiles the layer") == DEPTH0_LAYERS * SMALL["steps"], infotext
    assert INFOTEXT_FIRST_PASS_KV_KEY not in infotext
    assert pixels(image) == pixels(without), "stepped aside everywhere: the image is exact"


def test_a1111_hypertile_tiles_the_queries():
    """A1111's built-in Hypertile (extensions-builtin/hypertile, turned on in Settings) replaces the forward of the
    attn1 instances with one that splits the tokens into tiles before attention. At 512 px (a 64x64 latent) the
    tile is 256 px (32 latent rows), so with swap size 1 every depth-0 call is split 2x2: ToDo steps aside in each
    with the `hypertile` cause and the image is Hypertile's alone. The options are put back afterwards."""
    if webui_host() != "a1111":
        pytest.skip("A1111's built-in Hypertile (reForge's HyperTile Integrated has its own test)")
    status, options = call("/sdapi/v1/options")
    assert status == 200, options
    # the options API lists only the options that were set; the others have these defaults (hypertile_script.py)
    defaults = {"hypertile_enable_unet": False, "hypertile_max_depth_unet": 3, "hypertile_max_tile_unet": 256,
                "hypertile_swap_size_unet": 3}
    previous = {key: options.get(key, default) for key, default in defaults.items()}
    assert call("/sdapi/v1/options", dict(zip(defaults, (True, 0, 256, 1), strict=True)))[0] == 200
    try:
        without, _ = generated({}, width=512, height=512)
        image, infotext = generated({"ToDo": {"args": TODO_ON}}, width=512, height=512)
    finally:
        assert call("/sdapi/v1/options", previous)[0] == 200
    assert "Hypertile U-Net: True" in infotext, infotext
    assert aside_calls(infotext, "Hypertile tiles the layer") == DEPTH0_LAYERS * SMALL["steps"], infotext
    assert INFOTEXT_FIRST_PASS_KV_KEY not in infotext
    assert pixels(image) == pixels(without), "stepped aside everywhere: the image is exact"
