"""javascript/todo.js's K/V line and factor label agree with the engine.

node runs the real todo.js on a fake WebUI page (tests/js/preview_driver.js) for a table of settings and sizes; the
expected text is built here from what the WebUI and the engine do: the pass's size as A1111's processing.py and
img2img.py compute it, the latent at pixels // 8, the per-pass config from `ToDoArgs.config_for_pass` and the grids
and factors from `plan_kv_tokens` (`ToDoConfig.factor_at`, `ratio_to_factor`). Skipped where node is missing.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from todo_ext import plan_kv_tokens
from todo_ext.args import FIELDS, ToDoArgs, factor_label
from todo_ext.config import MAX_RATIO, ToDoConfig

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

DRIVER = Path(__file__).parent / "js" / "preview_driver.js"
HEADER = "K/V tokens of self-attention at depth 0 (d1 = depth 1), without → with ToDo:"
LAYOUTS = (("SD1/SD2", (0, 1)), ("SDXL", (1, 2)))
"""Model family and the attention levels of its depths 0 and 1 (log2 of the downscale from the latent)."""
LATENT_SCALE = 8
"""Pixels per latent cell: the WebUI makes the latent at pixels // 8 (processing.py's opt_f), and the VAE encoder's
three stride-2 convolutions floor too."""


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


def depth_text(plan, with_todo):
    if not with_todo:
        return str(plan.tokens)
    factor = f"{plan.factor:g}" if plan.factor.is_integer() else f"{plan.factor:.2f}"
    return f"{plan.tokens} → {plan.kv_tokens} ({factor}x, latent/{2 ** plan.level})"


def pass_text(name, size, latent, config):
    """One pass's line: depth 0 (and depth 1 from Max depth 1 on) of each layout, from the engine's plan."""
    parts = []
    for family, levels in LAYOUTS:
        plans = plan_kv_tokens(config or ToDoConfig(ratio=0.0), *latent, levels)
        text = f"{family} {depth_text(plans[0], config)}"
        if config and config.max_depth >= 1:
            text += f", d1 {depth_text(plans[1], config)}"
        parts.append(text)
    return f"{name} {size[0]}×{size[1]}: " + ("" if config else "no ToDo, ") + " · ".join(parts)


def expected_line(state):
    args = ToDoArgs(**state["todo"])
    first_size = state["width"], state["height"]
    resize_by = state.get("resize_by")
    if resize_by:
        # modules/img2img.py, "Resize by": the source image's size times Scale, each side truncated to an int.
        if resize_by["image"] is None:
            return f"{HEADER}\nFirst pass: no image selected"
        first_size = tuple(int(side * resize_by["scale"]) for side in resize_by["image"])
    first_latent = first_size[1] // LATENT_SCALE, first_size[0] // LATENT_SCALE
    lines = [HEADER, pass_text("First pass", first_size, first_latent, args.config_for_pass(is_hires=False))]
    if state.get("hires"):
        size, latent = hires_size(*first_size, **state["hires"])
        lines.append(pass_text("Hires pass", size, latent, args.config_for_pass(is_hires=True)))
    return "\n".join(lines)


def page_state(width, height, tab="txt2img", hires=None, resize_by=None, **todo):
    """A page state for the driver, with every ToDo control set (ToDoArgs's defaults where not given)."""
    args = ToDoArgs(**{"enabled": True, **todo})
    state = {"tab": tab, "width": width, "height": height,
             "todo": {spec.name: getattr(args, spec.name) for spec in FIELDS}}
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


def test_kv_line_matches_the_engine_plan():
    states = list(CASES.values())
    for name, state, shown in zip(CASES, states, shown_by_todo_js(states), strict=True):
        assert shown["line"] == expected_line(state), name
        assert shown["warnings"] == [], name


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
