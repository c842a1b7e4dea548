"""ToDo on the diffusion transformers of a live host: WebUI Forge with the random SD3.5 Medium of
make_random_forge_dit.py, A1111 with the random SD3 Medium of make_random_a1111_sd3.py, or any host that lists a DiT
checkpoint ToDo knows (Flux, Chroma, Lumina 2 / Z-Image, Qwen-Image, Wan, SD3) and loads it unmodified.

Set WEBUI_URL as for test_webui_e2e.py. Which listed checkpoint is a DiT, and of which family, the host says: each
is loaded once by a one-step 64 px job, then ToDo's own route GET /todo/v1/layout reports the loaded model's layout
(WEBUI_DIT_MODELS, comma-separated checkpoint titles, limits the probe to those). Each request selects its model with
`override_settings`. A family the host runs but lists no checkpoint of is skipped with the reason.

Forge Neo 2.26 loads the text encoders of its DiTs from separate files ("VAE / Text Encoder"; make_random_neo_dit.py
writes them): WEBUI_DIT_MODULES names them per checkpoint, `model=file[+file],...` (e.g.
`flux-dev-random=t5xxl-random.safetensors,zimage-random=qwen3-4b-random.safetensors`). When it is set, every request
selects its model's files through `override_settings["forge_additional_modules"]` (none for a model it does not
name, such as the U-Net checkpoint).
"""

import json
import os
import re

import pytest
from test_webui_e2e import WEBUI_URL, call, hires, kv_line, pixels, png_of, webui_host, xyz_ratio_axis

from todo_ext.args import INFOTEXT_FIRST_PASS_KV_KEY, INFOTEXT_HIRES_KV_KEY, INFOTEXT_NOTE_KEY

pytestmark = pytest.mark.skipif(not WEBUI_URL, reason="WEBUI_URL is not set (no live WebUI to test against)")

LAYOUT_ROUTE = "/todo/v1/layout"
SIZE = 256
BASE = {"prompt": "a red cube on a table", "negative_prompt": "", "steps": 2, "width": SIZE, "height": SIZE,
        "seed": 1234, "sampler_name": "Euler", "scheduler": "simple", "cfg_scale": 1, "batch_size": 1}
PROBE = {**BASE, "steps": 1, "width": 64, "height": 64}
EVERY_BLOCK = {"enabled": True, "ratio": 0.75, "max_depth": 3}
"""The live checkpoints have one or two blocks of each kind: Max depth 3 reaches every attention block."""
OUTSIDE_WINDOW = re.compile(r"(\d+) calls? outside the step window")
BIAS_PART = re.compile(r"bias as (mask|channel) in (\d+) calls?")
"""How the proportional bias reached the host's kernel (todo_ext/bias.py): a mask on CPU SDPA, the channel on
Forge's sub-quadratic attention (its CPU default)."""
IMAGE_PART = re.compile(r"img (?P<grid>\d+x\d+)->(?P<kv>\d+x\d+) \((?P<factor>[\d.]+)x\)(?P<kept>(?: \+ \d+ \w+)*)"
                        r"(?: kept)? in (?P<calls>\d+) calls?")
FLUX_FAMILY = ("Flux", "Chroma")
HOST_FAMILIES = {"a1111": ("SD3",), "forge": ("Flux", "Chroma", "SD3"),
                 "neo": ("Flux", "Chroma", "Lumina 2 / Z-Image", "Qwen-Image", "Wan", "Krea 2", "Anima", "Ernie-Image")}
"""The DiT families ToDo acts on per host (README, Hosts; Krea 2, Anima and Ernie-Image from Neo 2.26 on); reForge
and Classic run none."""
FORGE_FLUX_DEPTH = ("WebUI Forge fixes Flux's and Chroma's depth at 19 double and 38 single blocks in its detection"
                    " (huggingface_guess) and builds what it detects: a random checkpoint at that depth (12 B"
                    " parameters) does not fit a CPU test machine. tests/test_dit.py runs ToDo on the stand-ins of"
                    " Forge's flux.py (case flux-forge) and of Chroma (case chroma)")
NEO_ERNIE_SIZE = ("Forge Neo 2.26 builds Ernie-Image at the 36 layers of 4096 its config fixes (about 8 B parameters,"
                  " 16 GB in bf16) whatever the checkpoint holds: no random fixture fits a CPU test machine beside its"
                  " text encoder. tests/test_dit.py runs ToDo on the stand-in of 2.26's ernie.py (case ernie)")
NO_LIVE_FIXTURE = {("forge", "Flux"): FORGE_FLUX_DEPTH, ("forge", "Chroma"): FORGE_FLUX_DEPTH,
                   ("neo", "Ernie-Image"): NEO_ERNIE_SIZE}


def dit_modules():
    entries = [entry.split("=", 1) for entry in os.environ.get("WEBUI_DIT_MODULES", "").split(",") if "=" in entry]
    return {model: [name for name in files.split("+") if name] for model, files in entries}


MODULES = dit_modules()


def model_settings(model):
    """The override_settings that select `model` (a title or name the host lists), with its text encoders where
    WEBUI_DIT_MODULES names them by the checkpoint's name (its file name without extension or hash)."""
    settings = {"sd_model_checkpoint": model}
    if MODULES:
        name = os.path.splitext(model.split(" [")[0])[0]
        settings["forge_additional_modules"] = MODULES.get(model, MODULES.get(name, []))
    return settings


def probe_layouts():
    """{checkpoint title: layout} for every checkpoint the host lists (or WEBUI_DIT_MODELS names): a one-step job
    loads it, then ToDo's layout route says what the host built ({"kind": "unet" | "dit" | "unknown", ...}); a
    checkpoint whose job fails maps to {"kind": "failed", "error": ...}. None where the host lacks the route. The
    host's selected checkpoint is selected again afterwards, for the tests that use it."""
    named = [name for name in os.environ.get("WEBUI_DIT_MODELS", "").split(",") if name]
    status, models = call("/sdapi/v1/sd-models")
    assert status == 200, models
    status, options = call("/sdapi/v1/options")
    assert status == 200, options
    layouts = {}
    try:
        for title in named or [model["title"] for model in models]:
            status, body = call("/sdapi/v1/txt2img", {**PROBE, "override_settings": model_settings(title),
                                                      "override_settings_restore_afterwards": False}, timeout=1800)
            if status != 200:
                layouts[title] = {"kind": "failed", "error": f"{status} {body}"}
                continue
            status, layout = call(LAYOUT_ROUTE)
            if status == 404:
                return None
            assert status == 200, layout
            layouts[title] = layout
    finally:
        call("/sdapi/v1/options", {"sd_model_checkpoint": options["sd_model_checkpoint"]}, timeout=1800)
    return layouts


LAYOUTS = probe_layouts() if WEBUI_URL else {}
needs_layouts = pytest.mark.skipif(LAYOUTS is None, reason=f"the host does not serve ToDo's {LAYOUT_ROUTE}")
DITS = {title: layout["family"] for title, layout in (LAYOUTS or {}).items() if layout["kind"] == "dit"}
MODELS = list(DITS)
needs_dit = pytest.mark.skipif(not MODELS, reason="the host lists no DiT checkpoint that ToDo acts on")
FAMILIES = sorted({*HOST_FAMILIES.get(webui_host(), ()), *DITS.values()}) if WEBUI_URL else []


def models_of(family):
    """The host's checkpoints of `family`; skips, with the reason, where it lists none."""
    models = [title for title, of in DITS.items() if of == family]
    if not models:
        host = webui_host()
        pytest.skip(NO_LIVE_FIXTURE.get((host, family), f"the host ({host}) lists no {family} checkpoint"))
    return models


@needs_layouts
def test_every_listed_checkpoint_loads():
    """The probe's one-step job ran on every checkpoint: a fixture the host cannot load fails here, by name."""
    failed = {title: layout["error"] for title, layout in LAYOUTS.items() if layout["kind"] == "failed"}
    assert not failed, failed


def generate(model, todo_args=None, route="txt2img", **overrides):
    payload = {**BASE, **overrides, "override_settings": model_settings(model)}
    if todo_args is not None:
        payload["alwayson_scripts"] = {"ToDo": {"args": todo_args}}
    status, body = call(f"/sdapi/v1/{route}", payload, timeout=1800)
    assert status == 200, body
    image = pixels(body["images"][0])
    assert len(set(image[1::97])) > 2, f"{model} gave a uniform image: the comparison would prove nothing"
    return image, json.loads(body["info"])["infotexts"][0]


def image_parts(infotext, key=INFOTEXT_FIRST_PASS_KV_KEY):
    """The `img ...` parts of a K/V line: (grid, K/V grid, factor, kept tokens) -> calls. Every part must parse."""
    line = kv_line(infotext, key)
    assert line, f"no {key} in {infotext!r}"
    parts = {}
    for part in line.split("; "):
        if OUTSIDE_WINDOW.fullmatch(part) or BIAS_PART.fullmatch(part):
            continue
        match = IMAGE_PART.fullmatch(part)
        assert match, f"unreadable part {part!r} of {line!r}"
        kept = tuple(re.findall(r"\+ (\d+) (\w+)", match["kept"]))
        parts[(match["grid"], match["kv"], float(match["factor"]), kept)] = int(match["calls"])
    return parts


def token_grid(pixels_per_side):
    """The image-token grid side of the DiTs ToDo knows: an 8x VAE, then patches of 2 (the model pads)."""
    return -(-(pixels_per_side // 8) // 2)


@needs_layouts
@pytest.mark.parametrize("family", FAMILIES)
def test_todo_acts_on_the_image_tokens_and_off_stays_identical(family):
    for model in models_of(family):
        before, plain_infotext = generate(model)
        on, infotext = generate(model, [EVERY_BLOCK])
        after, _ = generate(model)
        assert "ToDo" not in plain_infotext
        side = token_grid(SIZE)
        parts = image_parts(infotext)
        assert {(grid, kv, factor) for grid, kv, factor, _ in parts} == {
            (f"{side}x{side}", f"{side // 2}x{side // 2}", 2.0)}, infotext
        assert re.search(rf"; bias as (mask|channel) in {sum(parts.values())} calls?", infotext), infotext
        assert INFOTEXT_NOTE_KEY not in infotext
        assert on != before, f"{model}: same seed, different pixels with ToDo on"
        assert before == after, f"{model}: ToDo off is bit-identical before and after a ToDo job"


@needs_layouts
@pytest.mark.parametrize("family", [family for family in FAMILIES if family in FLUX_FAMILY])
def test_flux_family_keeps_the_prompts_tokens(family):
    for model in models_of(family):
        _, infotext = generate(model, [EVERY_BLOCK])
        kept = {kept for _, _, _, kept in image_parts(infotext)}
        assert len(kept) == 1 and next(iter(kept))[0][1] == "text" and int(next(iter(kept))[0][0]) > 0, infotext


@needs_dit
def test_hires_fix_with_its_own_ratio_on_a_dit():
    model = MODELS[0]
    _, infotext = generate(model, [{**EVERY_BLOCK, "hires_mode": "own", "hires_ratio": 0.9375}],
                           **{**hires(), "hr_cfg": 1, "hr_cfg_scale": 1}, hr_scale=2, hr_second_pass_steps=1,
                           denoising_strength=0.6)
    side = token_grid(2 * SIZE)
    hires_parts = image_parts(infotext, INFOTEXT_HIRES_KV_KEY)
    assert {(grid, kv, factor) for grid, kv, factor, _ in hires_parts} == {
        (f"{side}x{side}", f"{side // 4}x{side // 4}", 4.0)}, infotext


@needs_dit
def test_invalid_args_are_rejected_on_a_dit_too():
    status, body = call("/sdapi/v1/txt2img", {**BASE, "override_settings": model_settings(MODELS[0]),
                                              "alwayson_scripts": {"ToDo": {"args": [True, 2.0]}}})
    assert status == 422 and body["field"] == "ratio"


@needs_dit
def test_a_unet_checkpoint_is_unchanged_by_dit_jobs():
    """An SD1.5 image without ToDo is the same before and after ToDo ran on a DiT (nothing of ToDo stays on the
    attention functions), and ToDo still acts on the U-Net."""
    unets = [title for title, layout in LAYOUTS.items() if layout["kind"] == "unet" and layout["levels"][0] == 0]
    if not unets:
        pytest.skip("the host lists no SD1.x/SD2.x U-Net checkpoint")
    before, _ = generate(unets[0], cfg_scale=5)
    generate(MODELS[0], [EVERY_BLOCK])
    after, _ = generate(unets[0], cfg_scale=5)
    _, infotext = generate(unets[0], [{"enabled": True}], cfg_scale=5)
    assert before == after
    assert re.search(r"ToDo K/V: d0 32x32->16x16 \(2x\)", infotext), infotext


@needs_dit
def test_img2img_on_a_dit_acts_on_the_grid_of_the_size_it_generates():
    """img2img at 384 px from a 256 px init image: the K/V line names the 384 px image's token grid."""
    before, _ = generate(MODELS[0], route="img2img", width=384, height=384, init_images=[png_of(SIZE, SIZE)],
                         denoising_strength=0.75)
    on, infotext = generate(MODELS[0], [EVERY_BLOCK], route="img2img", width=384, height=384,
                            init_images=[png_of(SIZE, SIZE)], denoising_strength=0.75)
    side = token_grid(384)
    assert {(grid, kv, factor) for grid, kv, factor, _ in image_parts(infotext)} == {
        (f"{side}x{side}", f"{side // 2}x{side // 2}", 2.0)}, infotext
    assert on != before


@needs_dit
def test_the_step_window_on_a_flow_schedule_leaves_the_first_step_exact():
    """Start 0.01 of 2 steps: the first step (pure noise, progress 0) runs exact and is counted outside the step
    window, the second is downsampled: the window is read from the schedule the DiT samples with."""
    _, infotext = generate(MODELS[0], [{**EVERY_BLOCK, "start": 0.01}])
    outside = OUTSIDE_WINDOW.search(kv_line(infotext))
    assert outside, infotext
    assert sum(image_parts(infotext).values()) == int(outside.group(1)), "one step inside, one step outside"


@needs_dit
def test_xyz_ratio_axis_on_a_dit():
    _, scripts = call("/sdapi/v1/script-info")
    xyz = next(script for script in scripts if script["name"] == "x/y/z plot" and not script["is_img2img"])
    status, body = call("/sdapi/v1/txt2img", {**BASE, "override_settings": model_settings(MODELS[0]),
                                               "script_name": "x/y/z plot",
                                               "script_args": xyz_ratio_axis(xyz, "0.75, 0.9375"),
                                               "alwayson_scripts": {"ToDo": {"args": [EVERY_BLOCK]}}},
                        timeout=1800)
    assert status == 200, body
    side = token_grid(SIZE)
    factors = {}
    for infotext in json.loads(body["info"])["infotexts"]:
        if kv_line(infotext):
            ratio = re.search(r"ToDo ratio: ([\d.]+)", infotext).group(1)
            factors[ratio] = {(grid, kv, factor) for grid, kv, factor, _ in image_parts(infotext)}
    assert factors == {"0.75": {(f"{side}x{side}", f"{side // 2}x{side // 2}", 2.0)},
                       "0.9375": {(f"{side}x{side}", f"{side // 4}x{side // 4}", 4.0)}}, factors
