"""Drive a live WebUI (AUTOMATIC1111 v1.10.1, Forge or reForge, started with --api and this extension) over HTTP.

Set WEBUI_URL (e.g. http://127.0.0.1:7860) to run; skipped otherwise. Standard library only. Small sizes and
steps keep it quick; a GPU host is expected but not required.
"""

import base64
import json
import os
import struct
import urllib.error
import urllib.request
import zlib

import pytest

from todo_ext.args import (
    INFOTEXT_FIRST_PASS_KV_KEY,
    INFOTEXT_HIRES_KV_KEY,
    INFOTEXT_NOTE_KEY,
    ToDoArgs,
    args_from_infotext,
)

WEBUI_URL = os.environ.get("WEBUI_URL", "").rstrip("/")
pytestmark = pytest.mark.skipif(not WEBUI_URL, reason="WEBUI_URL is not set (no live WebUI to test against)")

BASE = {"prompt": "a red cube on a table", "negative_prompt": "", "steps": 3, "width": 256, "height": 256,
        "seed": 1234, "sampler_name": "Euler", "cfg_scale": 5, "batch_size": 1}
HIRES = {"enable_hr": True, "hr_upscaler": "Latent", "hr_additional_modules": ["Use same choices"],
         "hr_cfg": BASE["cfg_scale"]}
"""Hires fix the same on every host: Forge answers 500 without `hr_additional_modules`, reForge runs the hires
pass at `hr_cfg` 1.0 unless told; A1111's API model ignores both fields."""


def call(path, payload=None, timeout=600):
    """(status, JSON body) of a GET (no payload) or POST request; HTTP errors are returned, not raised."""
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(WEBUI_URL + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def pixels(png_base64):
    """The decompressed image data of a PNG (its IDAT chunks): equal for equal pixels, whatever the infotext."""
    data = base64.b64decode(png_base64)
    position, idat = 8, b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        if kind == b"IDAT":
            idat += data[position + 8:position + 8 + length]
        position += 12 + length
    return zlib.decompress(idat)


def txt2img(todo_args=None, **overrides):
    payload = {**BASE, **overrides}
    if todo_args is not None:
        payload["alwayson_scripts"] = {"ToDo": {"args": todo_args}}
    status, body = call("/sdapi/v1/txt2img", payload)
    assert status == 200, body
    return body["images"][0], json.loads(body["info"])["infotexts"][0]


def test_script_info_describes_the_args():
    status, scripts = call("/sdapi/v1/script-info")
    assert status == 200
    todo = [script for script in scripts if script["name"] == "todo" and not script["is_img2img"]]
    assert todo and [arg["label"] for arg in todo[0]["args"]][:2] == ["Enable ToDo", "Ratio"]


def test_todo_off_writes_nothing():
    _, infotext = txt2img()
    assert "ToDo" not in infotext


def test_todo_on_positional():
    image, infotext = txt2img(ToDoArgs(enabled=True, ratio=0.75).to_list())
    assert "ToDo: True" in infotext and f"{INFOTEXT_FIRST_PASS_KV_KEY}:" in infotext
    assert INFOTEXT_NOTE_KEY not in infotext, "ToDo acted: it did not step aside"
    assert pixels(image) != pixels(txt2img()[0]), "same seed, different pixels with ToDo on"


def test_todo_on_dict_args_and_hires_fix():
    _, infotext = txt2img([{"enabled": True, "hires_mode": "own", "hires_ratio": 0.9375}], **HIRES,
                          hr_scale=2, hr_second_pass_steps=2, denoising_strength=0.6)
    assert f"{INFOTEXT_HIRES_KV_KEY}:" in infotext and "(4x" in infotext.split(INFOTEXT_HIRES_KV_KEY)[1]
    assert infotext.count(f"{INFOTEXT_FIRST_PASS_KV_KEY}:") == 1 and infotext.count(INFOTEXT_HIRES_KV_KEY) == 1
    assert INFOTEXT_NOTE_KEY not in infotext


def test_hires_pass_only():
    _, infotext = txt2img([{"enabled": True, "hires_only": True}], **HIRES, hr_scale=1.5, hr_second_pass_steps=1,
                          denoising_strength=0.5, steps=2)
    assert f"{INFOTEXT_HIRES_KV_KEY}:" in infotext and f"{INFOTEXT_FIRST_PASS_KV_KEY}:" not in infotext
    assert INFOTEXT_NOTE_KEY not in infotext


@pytest.mark.parametrize("args", [[True, 2.0], [{"enabled": True, "method": "bicubic"}], [{"unknown": 1}]])
def test_invalid_args_rejected_before_generation(args):
    status, body = call("/sdapi/v1/txt2img", {**BASE, "alwayson_scripts": {"todo": {"args": args}}})
    assert 400 <= status < 500 and body["field"] in body["detail"] and body["allowed"]
    assert call("/sdapi/v1/txt2img", {**BASE, "steps": 1})[0] == 200


def test_todo_with_the_hosts_token_merging_acts_or_says_why():
    """Never silently nothing: with Token merging on, ToDo either changes the image without a note (Forge and
    reForge: it composes) or adds a note that it stepped aside (A1111). The option is reset through
    /sdapi/v1/options afterwards (reForge does not restore an override_settings of it)."""
    status, options = call("/sdapi/v1/options")
    assert status == 200
    previous = options.get("token_merging_ratio", 0.0)
    assert call("/sdapi/v1/options", {"token_merging_ratio": 0.5})[0] == 200
    try:
        merged, _ = txt2img(steps=2)
        image, infotext = txt2img(ToDoArgs(enabled=True).to_list(), steps=2)
    finally:
        assert call("/sdapi/v1/options", {"token_merging_ratio": previous})[0] == 200
    assert f"{INFOTEXT_FIRST_PASS_KV_KEY}:" in infotext
    if INFOTEXT_NOTE_KEY in infotext:
        assert "stepped aside" in infotext.split(INFOTEXT_NOTE_KEY)[1]
    else:
        assert pixels(image) != pixels(merged)


def test_infotext_round_trip_through_png_info():
    args = ToDoArgs(enabled=True, ratio=0.89, max_depth=1, method="avg-pool", start=0.0, end=0.8,
                    hires_mode="off")
    image, _ = txt2img(args.to_list())
    status, info = call("/sdapi/v1/png-info", {"image": image})
    assert status == 200
    assert args_from_infotext(info["parameters"]) == args


def test_todo_off_image_identical_before_and_after_a_todo_job():
    before, _ = txt2img()
    txt2img(ToDoArgs(enabled=True, ratio=0.9375).to_list(), **HIRES, hr_scale=1.5, hr_second_pass_steps=1,
            denoising_strength=0.5)
    after, _ = txt2img()
    assert pixels(before) == pixels(after)


def test_deeper_ratio_by_name_reaches_depth_1_and_the_infotext():
    _, infotext = txt2img([{"enabled": True, "max_depth": 1, "deeper_ratio": 0.9375}])
    assert "ToDo deeper ratio: 0.9375" in infotext
    assert "d1 256->16 (4x)" in infotext.split(INFOTEXT_FIRST_PASS_KV_KEY)[1]


def test_positional_args_from_before_deeper_ratio_keep_the_ratio_at_every_depth():
    old = [True, 0.75, 1, False, 4096, "nearest", 0.0, 1.0, "same", 0.75, False]
    old_image, infotext = txt2img(old)
    assert "ToDo deeper ratio: -1.0" in infotext and "d1 256->64 (2x)" in infotext
    same_image, _ = txt2img([*old, -1])
    assert pixels(old_image) == pixels(same_image)


def test_invalid_deeper_ratio_is_rejected_naming_it():
    status, body = call("/sdapi/v1/txt2img", {**BASE, "alwayson_scripts": {"ToDo": {"args": [
        {"enabled": True, "deeper_ratio": 1.5}]}}})
    assert status == 422 and body["field"] == "deeper_ratio"
