"""javascript/todo.js's K/V line and factor label agree with the engine.

node runs the real todo.js on a fake WebUI page (tests/js/preview_driver.js) for a table of settings and sizes; the
expected text is built here from what the WebUI and the engine do: the pass's size as A1111's processing.py and
img2img.py compute it, the latent at pixels // 8, the per-pass config from `ToDoArgs.config_for_pass` and the grids
and factors from `plan_kv_tokens` (`ToDoConfig.factor_at`, `ratio_to_factor`). Skipped where node is missing.

The page's fetch answers GET todo/v1/layout with what `hosts.layout_of` says of a stand-in of each model kind (a
U-Net of SD1.x or SDXL, each DiT family of `dit.FAMILIES`, nothing loaded); on a DiT the expected line takes the
image grid from the family's own reading of a model call (`Family.shapes` on the latent), the factor from
`ToDoConfig.factor_at` and the K/V grid from `joint.reduced_grid` (`downsample.kv_grid` per frame).
"""

import json
import math
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from todo_ext import hosts, plan_kv_tokens
from todo_ext.args import FIELDS, ToDoArgs, factor_label
from todo_ext.bench.models import LatentDiffusionShell, build_unet
from todo_ext.config import MAX_DEPTH, MAX_RATIO, ToDoConfig
from todo_ext.dit import FAMILIES, depth_of_position
from todo_ext.joint import reduced_grid

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

DRIVER = Path(__file__).parent / "js" / "preview_driver.js"
HEADER = "K/V tokens of self-attention at depth 0 (d1 = depth 1), without → with ToDo:"
LAYOUTS = (("SD1/SD2", (0, 1)), ("SDXL", (1, 2)))
"""Model family and the attention levels of its depths 0 and 1 (log2 of the downscale from the latent)."""
LATENT_SCALE = 8
"""Pixels per latent cell: the WebUI makes the latent at pixels // 8 (processing.py's opt_f), and the VAE encoder's
three stride-2 convolutions floor too."""
DIT_PATCH = 2
"""The latent patch of every DiT family ToDo knows (Flux, Chroma and Qwen-Image fix it in their code; the others
read it from the model, 2 in every released checkpoint)."""
DIT_SCOPES = ("the middle half of the blocks", "the middle three quarters of the blocks",
              "all blocks but the first and last", "every block")
"""The blocks Max depth 0 to 3 covers on a DiT, as the DiT line's header words them (see
test_dit_header_scopes_match_depth_of_position)."""


def layout_answer(model):
    """What GET todo/v1/layout answers with `model` loaded (None: no model), as scripts/todo_script.py serves it."""
    return hosts.layout_of(None if model is None else LatentDiffusionShell(model))


def dit_stand_in(family):
    """An empty module of the family's class name: what `dit.family_of`, and so `hosts.layout_of`, go by."""
    return type(family.classes[0], (nn.Module,), {})()


LAYOUT_ANSWERS = {
    "sd15": layout_answer(build_unet("sd15", width=32)),
    "sdxl": layout_answer(build_unet("sdxl", width=32)),
    "nothing loaded": layout_answer(None),
    **{family.name: layout_answer(dit_stand_in(family)) for family in FAMILIES},
}
FAMILIES_BY_NAME = {family.name: family for family in FAMILIES}


def hires_size(width, height, scale=2.0, resize_x=0, resize_y=0):
    """The hires pass's (shown size, latent height and width), as A1111 v1.10.1's modules/processing.py gets them:
    calculate_target_resolution sets hr_upscale_to_x/y; sample_hr_pass makes the latent at that size // 8 and, with
    both resize sides set, crops truncate_x/y latent columns and rows off to reach the target's aspect."""
    truncate_x = truncate_y = 0
    if resize_x == 0 and resize_y == 0:
        upscale_to = int(width * scale), int(height * scale)
    elif resize_y == 0:
        upscale_to = resize_x, resize_x * height // width
    elif resize_x == 0:
        upscale_to = resize_y * width // height, resize_y
    else:
        if width / height < resize_x / resize_y:
            upscale_to = resize_x, resize_x * height // width
        else:
            upscale_to = resize_y * width // height, resize_y
        truncate_x = (upscale_to[0] - resize_x) // LATENT_SCALE
        truncate_y = (upscale_to[1] - resize_y) // LATENT_SCALE
    shown = (resize_x, resize_y) if resize_x and resize_y else upscale_to
    latent = upscale_to[1] // LATENT_SCALE - truncate_y, upscale_to[0] // LATENT_SCALE - truncate_x
    return shown, latent


def factor_text(factor):
    return f"{factor:g}" if factor.is_integer() else f"{factor:.2f}"


def depth_text(plan, with_todo):
    if not with_todo:
        return str(plan.tokens)
    return f"{plan.tokens} → {plan.kv_tokens} ({factor_text(plan.factor)}x, latent/{2 ** plan.level})"


def unet_layouts(answer):
    """The U-Net layouts the line shows: the loaded one's, or both where the server names no U-Net or DiT."""
    if answer and answer["kind"] == "unet":
        return [(family, tuple(answer["levels"][:2])) for family, levels in LAYOUTS if levels[0] == answer["levels"][0]]
    return LAYOUTS


def pass_text(name, size, latent, config, layouts=LAYOUTS):
    """One pass's line: depth 0 (and depth 1 from Max depth 1 on) of each layout, from the engine's plan."""
    parts = []
    for family, levels in layouts:
        plans = plan_kv_tokens(config or ToDoConfig(ratio=0.0), *latent, levels)
        text = f"{family} {depth_text(plans[0], config)}"
        if config and config.max_depth >= 1:
            text += f", d1 {depth_text(plans[1], config)}"
        parts.append(text)
    return f"{name} {size[0]}×{size[1]}: " + ("" if config else "no ToDo, ") + " · ".join(parts)


def dit_call(family, latent):
    """The family's own reading of one model call on a latent of this (height, width), with a prompt of 77 tokens:
    the image grid of its joint sequences and whether text tokens go with the image."""
    height, width = latent
    video = family.name in ("Wan", "Qwen-Image", "Anima")  # latents with a frame axis: (batch, channels, frames, h, w)
    x = torch.empty(1, 16, *((1,) if video else ()), height, width, device="meta")
    context = torch.empty(1, 77, 64, device="meta")
    model = SimpleNamespace(patch_size=(1, DIT_PATCH, DIT_PATCH) if family.name == "Wan" else DIT_PATCH,
                            pad_tokens_multiple=None, x_embedder=SimpleNamespace(patch_size=DIT_PATCH),
                            img_in=SimpleNamespace(), patch=DIT_PATCH, patch_temporal=1, patch_spatial=DIT_PATCH)
    shapes = family.shapes(model, (x, None, context), {})
    assert len({shape.grid for shape in shapes}) == 1, family.name
    return shapes[0].grid, any(shape.before != 0 or (shape.after and shape.after_name == "text") for shape in shapes)


def grid_text(grid, factor=None):
    """A frame's tokens and grid, height x width as the parameters write grids, and the factor that left them."""
    return f"{math.prod(grid)} ({grid[0]}x{grid[1]}" + ("" if factor is None else f", {factor_text(factor)}x") + ")"


def dit_pass_text(name, size, latent, config, family):
    """One pass's line on a DiT: the image tokens (per frame where the grid has frames), the K/V grid at the
    middle half's factor and, with a deeper ratio, at the outer blocks' (depths 1 to Max depth, one ratio)."""
    grid, text_kept = dit_call(family, latent)
    tokens = math.prod(grid[-2:])
    text = f"{family.name} image tokens {'per frame ' if len(grid) == 3 else ''}{grid_text(grid[-2:])}"
    if config:
        factor = config.factor_at(0, tokens)
        text += f" → {grid_text(reduced_grid(grid, factor)[-2:], factor)}"
        if config.deeper_ratios:
            # Depths 1 to Max depth, the blocks outside the middle half: one deeper ratio for them all.
            [outer] = {config.factor_at(depth, tokens) for depth in range(1, config.max_depth + 1)}
            text += f", outside the middle half {grid_text(reduced_grid(grid, outer)[-2:], outer)}"
        if text_kept:
            text += " + the prompt's text tokens kept"
    return f"{name} {size[0]}×{size[1]}: " + ("" if config else "no ToDo, ") + text


def expected_line(state):
    args = ToDoArgs(**state["todo"])
    answer = state.get("layout")
    family = FAMILIES_BY_NAME[answer["family"]] if answer and answer["kind"] == "dit" else None
    header = HEADER
    if family:
        header = f"Preview of the K/V tokens of attention, without → with ToDo (in {DIT_SCOPES[args.max_depth]}):"

    def describe(name, size, latent, config):
        if family:
            return dit_pass_text(name, size, latent, config, family)
        return pass_text(name, size, latent, config, unet_layouts(answer))

    first_size = state["width"], state["height"]
    resize_by = state.get("resize_by")
    if resize_by:
        # modules/img2img.py, "Resize by": the source image's size times Scale, each side truncated to an int.
        if resize_by["image"] is None:
            return f"{header}\nFirst pass: no image selected"
        first_size = tuple(int(side * resize_by["scale"]) for side in resize_by["image"])
    first_latent = first_size[1] // LATENT_SCALE, first_size[0] // LATENT_SCALE
    lines = [header, describe("First pass", first_size, first_latent, args.config_for_pass(is_hires=False))]
    if state.get("hires"):
        size, latent = hires_size(*first_size, **state["hires"])
        lines.append(describe("Hires pass", size, latent, args.config_for_pass(is_hires=True)))
    return "\n".join(lines)


def page_state(width, height, tab="txt2img", hires=None, resize_by=None, layout=None, **todo):
    """A page state for the driver, with every ToDo control set (ToDoArgs's defaults where not given) and, given a
    key of LAYOUT_ANSWERS, the server's answer to the page's fetch of the layout (else a page without fetch)."""
    args = ToDoArgs(**{"enabled": True, **todo})
    state = {"tab": tab, "width": width, "height": height,
             "todo": {spec.name: getattr(args, spec.name) for spec in FIELDS}}
    if layout is not None:
        state["layout"] = LAYOUT_ANSWERS[layout]
    if hires is not None:
        state["hires"] = hires
    if resize_by is not None:
        state["resize_by"] = resize_by
    return state


def shown_by_todo_js(states):
    result = subprocess.run([NODE, str(DRIVER)], input=json.dumps(states), capture_output=True, text=True,
                            check=True, timeout=120)
    return json.loads(result.stdout)


CASES = {
    # The paper's presets, each at the size it is meant for.
    "ratio 0.75 at 1024": page_state(1024, 1024, ratio=0.75),
    "ratio 0.89 at 1536": page_state(1536, 1536, ratio=0.89),
    "ratio 0.9375 at 2048": page_state(2048, 2048, ratio=0.9375),
    # Snapping: within 2% of a whole factor snaps to it (0.7575: 2.031), beyond stays fractional (0.76: 2.041).
    "ratio 0.7575 snaps to 2x": page_state(1024, 1024, ratio=0.7575),
    "ratio 0.76 stays 2.04x": page_state(1024, 1024, ratio=0.76),
    "ratio 0.5 is 1.41x": page_state(512, 512, ratio=0.5),
    "largest ratio is 8x": page_state(2048, 2048, ratio=MAX_RATIO),
    # Auto: never upsamples a small image, fractional factors, capped at 8.
    "auto on a small image": page_state(512, 512, auto=True),
    "auto 1.5x at 768": page_state(768, 768, auto=True),
    "auto at 2048": page_state(2048, 2048, auto=True),
    "auto capped at 8x": page_state(6144, 6144, auto=True),
    "auto with its own target": page_state(1024, 1024, auto=True, auto_target_tokens=1024),
    "auto with ratio 0": page_state(2048, 2048, auto=True, ratio=0.0),
    # Deeper ratio: -1 follows the ratio (or Auto), a set one pins depths 1 to Max depth.
    "max depth 1, deeper follows ratio": page_state(1024, 1024, max_depth=1),
    "max depth 1, deeper ratio set": page_state(1024, 1024, max_depth=1, deeper_ratio=0.9375),
    "max depth 3 shows d1 only": page_state(1024, 1024, max_depth=3, deeper_ratio=0.5),
    "deeper ratio 0 keeps depth 1": page_state(1024, 1024, max_depth=1, deeper_ratio=0.0),
    "auto, deeper follows auto": page_state(2048, 2048, auto=True, max_depth=1),
    "auto, deeper ratio pinned": page_state(2048, 2048, auto=True, max_depth=1, deeper_ratio=0.75),
    "ratio 0, only deeper": page_state(1024, 1024, ratio=0.0, max_depth=1, deeper_ratio=0.75),
    "ratio 0 alone is no ToDo": page_state(1024, 1024, ratio=0.0),
    "ratio 0, deeper 0 is no ToDo": page_state(1024, 1024, ratio=0.0, max_depth=1, deeper_ratio=0.0),
    "deeper set beyond max depth is no ToDo": page_state(1024, 1024, ratio=0.0, deeper_ratio=0.75),
    "disabled": page_state(1024, 1024, enabled=False, hires={"scale": 2}),
    # Sizes that are not multiples of 64: each level halves a side rounding up.
    "1000x1000": page_state(1000, 1000, max_depth=1),
    "1920x1080": page_state(1920, 1080, max_depth=1),
    "1080x1920 auto": page_state(1080, 1920, auto=True, max_depth=1),
    "520x520": page_state(520, 520, max_depth=1),
    # Hires fix: scale, resize to with one side 0 (the other follows the aspect), both sides (cropped).
    "hires x2": page_state(512, 512, hires={"scale": 2}),
    "hires x2.25 of 512x768": page_state(512, 768, hires={"scale": 2.25}),
    "hires resize width only": page_state(512, 768, hires={"resize_x": 1024}),
    "hires resize height only": page_state(512, 768, hires={"resize_y": 1536}),
    "hires x1.33 of 512x768, no multiple of 8": page_state(512, 768, hires={"scale": 1.33}),
    "hires x1.5 of 520": page_state(520, 520, hires={"scale": 1.5}, max_depth=1),
    "hires resize width 1000 only": page_state(768, 512, hires={"resize_x": 1000}),
    "hires resize height 1000 only": page_state(512, 768, hires={"resize_y": 1000}),
    # Both sides set, on the sliders' step of 8. For a target off that step the WebUI's crop can leave one latent
    # row or column more than target // 8 (1004x1004 from 512x768: 126 rows), which todo.js does not model.
    "hires resize both, cropped": page_state(512, 768, hires={"resize_x": 1024, "resize_y": 1024}),
    "hires resize both, wide": page_state(512, 512, hires={"resize_x": 1920, "resize_y": 1080}),
    # Hires pass modes and Hires pass only.
    "hires same": page_state(512, 512, hires={"scale": 4}, max_depth=1),
    "hires own": page_state(512, 512, hires={"scale": 4}, hires_mode="own", hires_ratio=0.9375),
    "hires own turns auto off": page_state(512, 512, hires={"scale": 4}, auto=True, hires_mode="own"),
    "hires own 0 is no ToDo": page_state(512, 512, hires={"scale": 2}, hires_mode="own", hires_ratio=0.0),
    "hires auto": page_state(512, 512, hires={"scale": 4}, hires_mode="auto", max_depth=1, deeper_ratio=0.5),
    "hires off": page_state(512, 512, hires={"scale": 2}, hires_mode="off"),
    "hires only": page_state(512, 512, hires={"scale": 3}, hires_only=True, ratio=0.89),
    "hires only, hires off": page_state(512, 512, hires={"scale": 2}, hires_only=True, hires_mode="off"),
    # img2img: the "Resize to" sliders, or "Resize by" (the source image times Scale); no hires pass there.
    "img2img resize to": page_state(768, 512, tab="img2img", ratio=0.89),
    "img2img resize by 2": page_state(512, 512, tab="img2img", resize_by={"scale": 2, "image": [768, 512]}),
    "img2img resize by, no image": page_state(512, 512, tab="img2img", resize_by={"scale": 2, "image": None}),
    "img2img resize by 1.5 of 911x512": page_state(
        512, 512, tab="img2img", resize_by={"scale": 1.5, "image": [911, 512]}),
    "img2img resize by 0.75 of 1001x750, auto": page_state(
        512, 512, tab="img2img", resize_by={"scale": 0.75, "image": [1001, 750]}, auto=True, auto_target_tokens=1024),
}

LOADED_CASES = {
    # One U-Net layout where the server names it; both where nothing is loaded.
    "sd15 loaded, max depth 1, hires": page_state(1024, 1024, layout="sd15", max_depth=1, hires={"scale": 2}),
    "sd15 loaded, auto at 1920x1080": page_state(1920, 1080, layout="sd15", auto=True),
    "sdxl loaded, deeper ratio set": page_state(1024, 1024, layout="sdxl", max_depth=1, deeper_ratio=0.9375),
    "sdxl loaded, auto, hires own": page_state(
        512, 768, layout="sdxl", auto=True, hires={"scale": 2}, hires_mode="own", hires_ratio=0.89),
    "sdxl loaded, disabled": page_state(1024, 1024, layout="sdxl", enabled=False, hires={"scale": 1.5}),
    "sdxl loaded, img2img resize by": page_state(
        512, 512, layout="sdxl", tab="img2img", resize_by={"scale": 1.5, "image": [911, 512]}),
    "nothing loaded": page_state(1024, 1024, layout="nothing loaded", max_depth=1),
    # Every DiT family at its usual size, Max depth 1 with a deeper ratio, and a hires pass.
    **{f"{family.name} at 1024, deeper ratio, hires": page_state(
        1024, 1024, layout=family.name, max_depth=1, deeper_ratio=0.89, hires={"scale": 1.5}) for family in FAMILIES},
    **{f"{family.name} at 832x480, disabled": page_state(832, 480, layout=family.name, enabled=False)
       for family in FAMILIES},
    # Flux through the settings: the ratios, snapping, Auto, Max depth and Deeper ratio, odd sizes.
    "Flux ratio 0.89 at 1920x1080": page_state(1920, 1080, layout="Flux", ratio=0.89),
    "Flux ratio 0.76 stays 2.04x": page_state(1024, 1024, layout="Flux", ratio=0.76),
    "Flux largest ratio": page_state(2048, 2048, layout="Flux", ratio=MAX_RATIO),
    "Flux auto at 2048": page_state(2048, 2048, layout="Flux", auto=True),
    "Flux auto at 512 keeps all": page_state(512, 512, layout="Flux", auto=True),
    "Flux auto 1.5x at 1536": page_state(1536, 1536, layout="Flux", auto=True),
    "Flux auto with its own target": page_state(1536, 1536, layout="Flux", auto=True, auto_target_tokens=1024),
    "Flux auto capped at 8x": page_state(8192, 8192, layout="Flux", auto=True, auto_target_tokens=64),
    "Flux auto, deeper pinned": page_state(2048, 2048, layout="Flux", auto=True, max_depth=2, deeper_ratio=0.75),
    "Flux auto, deeper follows": page_state(2048, 2048, layout="Flux", auto=True, max_depth=3),
    **{f"Flux max depth {depth}": page_state(1024, 1024, layout="Flux", max_depth=depth)
       for depth in range(MAX_DEPTH + 1)},
    "Flux max depth 3, deeper 0.9375": page_state(1024, 1024, layout="Flux", max_depth=3, deeper_ratio=0.9375),
    "Flux deeper ratio 0 keeps the outer blocks": page_state(1024, 1024, layout="Flux", max_depth=2, deeper_ratio=0.0),
    "Flux ratio 0, only deeper": page_state(1024, 1024, layout="Flux", ratio=0.0, max_depth=1, deeper_ratio=0.75),
    "Flux ratio 0 alone is no ToDo": page_state(1024, 1024, layout="Flux", ratio=0.0),
    "Flux deeper set beyond max depth": page_state(1024, 1024, layout="Flux", deeper_ratio=0.75),
    "Flux 1000x1000 pads to 63": page_state(1000, 1000, layout="Flux", ratio=0.89),
    "Flux 520x520 pads to 33": page_state(520, 520, layout="Flux"),
    "Flux 1080x1920 auto": page_state(1080, 1920, layout="Flux", auto=True, auto_target_tokens=1024),
    # Hires fix and img2img on a DiT, as on a U-Net.
    "Flux hires x1.33 of 512x768, no multiple of 8": page_state(512, 768, layout="Flux", hires={"scale": 1.33}),
    "Flux hires resize width only": page_state(512, 768, layout="Flux", hires={"resize_x": 1000}),
    "Flux hires resize both": page_state(512, 512, layout="Flux", hires={"resize_x": 1920, "resize_y": 1080}),
    "Flux hires own": page_state(512, 512, layout="Flux", hires={"scale": 4}, hires_mode="own", hires_ratio=0.9375),
    "Flux hires auto": page_state(512, 512, layout="Flux", hires={"scale": 4}, hires_mode="auto", max_depth=1,
                                  deeper_ratio=0.5),
    "Flux hires off": page_state(512, 512, layout="Flux", hires={"scale": 2}, hires_mode="off"),
    "Flux hires only": page_state(512, 512, layout="Flux", hires={"scale": 3}, hires_only=True, ratio=0.89),
    "Flux img2img resize by 1.5 of 911x512": page_state(
        512, 512, layout="Flux", tab="img2img", resize_by={"scale": 1.5, "image": [911, 512]}),
    "Flux img2img resize by, no image": page_state(
        512, 512, layout="Flux", tab="img2img", resize_by={"scale": 2, "image": None}),
    "Wan auto, per frame": page_state(1280, 720, layout="Wan", auto=True, max_depth=1, deeper_ratio=0.75),
    "SD3 at 1344x768": page_state(1344, 768, layout="SD3", ratio=0.89, hires={"scale": 1.5}),
}


def test_kv_line_matches_the_engine_plan():
    states = list(CASES.values())
    for name, state, shown in zip(CASES, states, shown_by_todo_js(states), strict=True):
        assert shown["line"] == expected_line(state), name
        assert shown["warnings"] == [], name


def test_kv_line_for_the_loaded_model_matches_the_engine():
    """The page asks the server once on load and shows the loaded model's line: the U-Net layout it names, or a
    DiT's image tokens, as the engine would reduce them."""
    states = list(LOADED_CASES.values())
    for name, state, shown in zip(LOADED_CASES, states, shown_by_todo_js(states), strict=True):
        assert shown["line"] == expected_line(state), name
        assert (shown["warnings"], shown["log"], shown["requests"]) == ([], [], 1), name
    assert {answer["kind"] for answer in LAYOUT_ANSWERS.values()} == {"unet", "dit", "unknown"}


def test_every_dit_family_has_its_own_line():
    """todo.js words each family the server can name, and the words follow the engine: text kept where the
    family's joint sequence holds the prompt, per frame where its grid has frames."""
    shown = shown_by_todo_js([page_state(1024, 1024, layout=family.name) for family in FAMILIES])
    for family, page in zip(FAMILIES, shown, strict=True):
        first = page["line"].split("\n")[1]
        grid, text_kept = dit_call(family, (128, 128))
        assert first.startswith(f"First pass 1024×1024: {family.name} image tokens "), family.name
        assert first.endswith(" + the prompt's text tokens kept") == text_kept, family.name
        assert ("per frame" in first) == (len(grid) == 3), family.name
    without_text = [family.name for family in FAMILIES if not dit_call(family, (128, 128))[1]]
    assert without_text == ["Wan", "Anima"], "Wan's and Anima's self-attention alone attend without text"


def test_dit_header_scopes_match_depth_of_position():
    """The DiT header's words for the blocks each Max depth covers, against dit.depth_of_position on stacks of the
    real models' sizes (Flux 19 + 38, Qwen-Image 60, Z-Image 2 + 30, SD3.5 Large 38, Wan 14B 40, a round 64)."""
    for blocks in (57, 60, 32, 38, 40, 64):
        depths = [depth_of_position(position, blocks) for position in range(blocks)]
        covered = [sum(depth <= max_depth for depth in depths) for max_depth in range(MAX_DEPTH + 1)]
        assert covered[0] == pytest.approx(blocks / 2, abs=1), ("the middle half", blocks)
        assert covered[1] == pytest.approx(blocks * 3 / 4, abs=1), ("the middle three quarters", blocks)
        assert covered[2] == blocks - 2 and depths[0] == depths[-1] == MAX_DEPTH, ("all but the first and last", blocks)
        assert covered[3] == blocks, ("every block", blocks)
    assert len(DIT_SCOPES) == MAX_DEPTH + 1


def test_factor_label_matches_the_python_label_at_every_slider_stop():
    """The accordion renders factor_label(default) server-side and todo.js rewrites it on every update: the two
    must agree, or the label changes under the user's eyes. Every stop of the Ratio slider (step 0.0025) and its
    maximum."""
    ratios = [round(stop * 0.0025, 4) for stop in range(int(MAX_RATIO / 0.0025) + 1)] + [MAX_RATIO]
    states = [page_state(512, 512, ratio=ratio) for ratio in ratios]
    labels = [shown["factor_label"] for shown in shown_by_todo_js(states)]
    assert labels == [factor_label(ratio) for ratio in ratios]
    assert labels[0] == "0 = off"
    assert factor_label(0.75) in labels and factor_label(0.9375) in labels
