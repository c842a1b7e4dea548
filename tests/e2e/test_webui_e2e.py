"""Drive a live WebUI (AUTOMATIC1111 v1.10.1 or a Forge-family host, started with --api and this extension) over HTTP.

Set WEBUI_URL (e.g. http://127.0.0.1:7860) to run; skipped otherwise. Standard library only. Small sizes and
steps keep it quick; a GPU host is expected but not required. WEBUI_AUTH=user:pass when the host runs with
`--api-auth user:pass` (the authentication tests need it), WEBUI_CORS_ORIGIN=http://example.test when it runs with
`--cors-allow-origins http://example.test`. Where the hosts behave differently by design (Token merging), each test
asserts the behaviour of the host it runs on: webui_host() tells A1111, Forge, reForge, Forge Classic and Forge Neo
apart by a command-line flag only that host has (the flag names of /openapi.json's `Flags` schema, or of
/sdapi/v1/cmd-flags); WEBUI_HOST=a1111|forge|reforge|classic|neo overrides it.
"""

import base64
import json
import os
import re
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
WEBUI_AUTH = os.environ.get("WEBUI_AUTH", "")
WEBUI_CORS_ORIGIN = os.environ.get("WEBUI_CORS_ORIGIN", "")
pytestmark = pytest.mark.skipif(not WEBUI_URL, reason="WEBUI_URL is not set (no live WebUI to test against)")
needs_auth = pytest.mark.skipif(not WEBUI_AUTH, reason="WEBUI_AUTH is not set (host without --api-auth)")
needs_cors = pytest.mark.skipif(not WEBUI_CORS_ORIGIN, reason="WEBUI_CORS_ORIGIN is not set")

BASE = {"prompt": "a red cube on a table", "negative_prompt": "", "steps": 3, "width": 256, "height": 256,
        "seed": 1234, "sampler_name": "Euler", "cfg_scale": 5, "batch_size": 1}
HIRES_FIELDS = {"enable_hr": True, "hr_additional_modules": ["Use same choices"], "hr_cfg": BASE["cfg_scale"],
                "hr_cfg_scale": BASE["cfg_scale"]}
"""Hires fix the same on every host: Forge answers 500 without `hr_additional_modules`, reForge runs the hires
pass at `hr_cfg` 1.0 unless told, Classic answers 500 without `hr_cfg_scale`; A1111's API model ignores them."""


def call_with_headers(path, payload=None, timeout=600, *, authenticate=True, headers=None):
    """(status, JSON body, response headers) of a GET (no payload) or POST request; HTTP errors are returned."""
    data = None if payload is None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    if WEBUI_AUTH and authenticate:
        headers["Authorization"] = "Basic " + base64.b64encode(WEBUI_AUTH.encode()).decode()
    request = urllib.request.Request(WEBUI_URL + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}"), error.headers


def call(path, payload=None, timeout=600):
    """(status, JSON body) of a GET (no payload) or POST request; HTTP errors are returned, not raised."""
    status, body, _ = call_with_headers(path, payload, timeout)
    return status, body


FORGE_FAMILY = ("forge", "reforge", "classic", "neo")
HOSTS = ("a1111", *FORGE_FAMILY)
HOST_MARKER_FLAGS = {"forge": "skip_google_blockly", "reforge": "cache_classic", "classic": "persistent_patches",
                     "neo": "ckpt_dirs"}
"""A command-line flag only that host's parser has (read from each host's source at the commits in README's
Hosts)."""


def host_flags():
    """The names of every command-line flag the host's parser knows, set or not: the properties of the `Flags`
    schema in /openapi.json (the model of /sdapi/v1/cmd-flags, built from the parser), else the answer of
    /sdapi/v1/cmd-flags itself. The schema comes first because Forge's cmd-flags answers 500 (its response model
    declares `port` a string, and the int fails pydantic 2's validation)."""
    status, schema = call("/openapi.json")
    schemas = schema.get("components", {}).get("schemas", {}) if status == 200 else {}
    flags = schemas.get("Flags", {}).get("properties")
    if flags:
        return set(flags)
    status, flags = call("/sdapi/v1/cmd-flags")
    assert status == 200, f"neither /openapi.json's Flags schema nor /sdapi/v1/cmd-flags: {status} {flags}"
    return set(flags)


def host_of_flags(flags):
    """"a1111", "forge", "reforge", "classic" or "neo" from a host's flag names; None for a Forge-family
    host (it has the backends' --always-cpu, which A1111 lacks) that none of the marker flags names."""
    found = [host for host, flag in HOST_MARKER_FLAGS.items() if flag in flags]
    if len(found) == 1:
        return found[0]
    return "a1111" if not found and "always_cpu" not in flags else None


_host = []


def webui_host():
    """The host under test: WEBUI_HOST if set (one of HOSTS), else detected from its command-line flags."""
    if not _host:
        override = os.environ.get("WEBUI_HOST", "").strip().lower()
        if override:
            assert override in HOSTS, f"WEBUI_HOST={override!r}; allowed: {', '.join(HOSTS)}"
            _host.append(override)
        else:
            host = host_of_flags(host_flags())
            assert host, f"unknown Forge-family host; set WEBUI_HOST to one of {', '.join(FORGE_FAMILY)}"
            _host.append(host)
    return _host[0]


_upscaler = []


def hires_upscaler():
    """An upscaler the host offers for hires fix: its first latent upscale mode, else its first image upscaler
    other than "None". Hosts list different ones (Forge Neo 2.26 has no "Latent")."""
    if not _upscaler:
        status, modes = call("/sdapi/v1/latent-upscale-modes")
        names = [mode["name"] for mode in modes] if status == 200 else []
        if not names:
            status, upscalers = call("/sdapi/v1/upscalers")
            assert status == 200, upscalers
            names = [upscaler["name"] for upscaler in upscalers if upscaler["name"] != "None"]
        assert names, "the host offers no upscaler for hires fix"
        _upscaler.append(names[0])
    return _upscaler[0]


def hires():
    """The request fields of a hires fix pass, with the host's upscaler."""
    return {**HIRES_FIELDS, "hr_upscaler": hires_upscaler()}


def decoded_png(png_base64):
    """(width, height, bytes per pixel, pixel bytes) of an 8-bit, non-interlaced PNG, its scanline filters undone:
    equal for equal pixels, whatever the infotext and whatever filters the encoder chose."""
    data = base64.b64decode(png_base64)
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, idat, header = 8, b"", None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        chunk = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        position += 12 + length
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color)
    assert depth == 8 and channels and not interlace, f"unsupported PNG: depth {depth}, color {color}"
    raw, stride = zlib.decompress(idat), width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            left = row[x - channels] if x >= channels else 0
            up, corner = previous[x], previous[x - channels] if x >= channels else 0
            if kind == 1:
                row[x] = (row[x] + left) & 0xFF
            elif kind == 2:
                row[x] = (row[x] + up) & 0xFF
            elif kind == 3:
                row[x] = (row[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                nearest = min((abs(estimate - left), 0, left), (abs(estimate - up), 1, up),
                              (abs(estimate - corner), 2, corner))[2]
                row[x] = (row[x] + nearest) & 0xFF
        rows.append(bytes(row))
        previous = row
    return width, height, channels, b"".join(rows)


def png_of(width, height):
    """A base64 RGB PNG of a colour pattern (a control or init image made without generating one)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + bytes(channel for x in range(width) for channel in
                                    (x * 255 // width, y * 255 // height, (x // 16 + y // 16) % 2 * 255))
                    for y in range(height))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return base64.b64encode(png).decode()


def assert_not_uniform(png_base64):
    """Fails where every pixel of the image has one value: a black image from a sampling that went to NaN (Forge
    Classic's random checkpoint does on some prompts, ToDo on or off) is equal to any other black image and differs
    from none, so a pixel comparison of it proves nothing either way."""
    _, _, channels, data = decoded_png(png_base64)
    first = data[:channels]
    assert data != first * (len(data) // channels), f"uniform image: every pixel is {tuple(first)}"


def pixels(png_base64):
    """The decoded pixels of a PNG, for comparing two images; checks first that the image is not uniform, so that
    neither "identical" nor "different" can hold for a reason other than the one a test states."""
    assert_not_uniform(png_base64)
    return decoded_png(png_base64)[3]


KV_PART = re.compile(r"d(?P<depth>\d+) (?P<h>\d+)x(?P<w>\d+)(?:->(?P<kh>\d+)x(?P<kw>\d+) \((?P<factor>[\d.]+)x\)| kept)"
                     r" in (?P<calls>\d+) calls?")


def kv_line(infotext, key=INFOTEXT_FIRST_PASS_KV_KEY):
    """The value of a K/V key ("ToDo K/V" or "ToDo hires K/V") in an infotext, or None where it is absent."""
    match = re.search(rf"(?:^|[,\n] ?){re.escape(key)}: ([^,\n]*)", infotext)
    return match.group(1).strip() if match else None


def kv_entries(infotext, key=INFOTEXT_FIRST_PASS_KV_KEY):
    """What ToDo recorded for a pass: {(depth, grid, K/V grid, factor): attention calls}, read from its K/V line
    ("d0 32x32->16x16 (2x) in 15 calls; d1 16x16 kept in 15 calls; 5 calls outside the step window"). Every part
    of the line must parse."""
    line = kv_line(infotext, key)
    assert line, f"no {key} in {infotext!r}"
    entries = {}
    for part in line.split("; "):
        if re.fullmatch(r"d\d+ \+\d+ more grids|(none \()?\d+ calls? outside the step window\)?", part):
            continue
        match = KV_PART.fullmatch(part)
        assert match, f"unreadable {key} part {part!r} in {line!r}"
        grid = (int(match["h"]), int(match["w"]))
        kv_grid = (int(match["kh"]), int(match["kw"])) if match["kh"] else grid
        factor = float(match["factor"]) if match["factor"] else 1.0
        entries[(int(match["depth"]), grid, kv_grid, factor)] = int(match["calls"])
    return entries


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
    entries = kv_entries(infotext)
    assert set(entries) == {(0, (32, 32), (16, 16), 2.0)}, infotext
    calls = entries[(0, (32, 32), (16, 16), 2.0)]
    assert calls > 0 and calls % (5 * BASE["steps"]) == 0, "5 self-attention layers at depth 0, every step"
    assert INFOTEXT_NOTE_KEY not in infotext, "ToDo acted: it did not step aside"
    assert pixels(image) != pixels(txt2img()[0]), "same seed, different pixels with ToDo on"


def test_todo_on_dict_args_and_hires_fix():
    _, infotext = txt2img([{"enabled": True, "hires_mode": "own", "hires_ratio": 0.9375}], **hires(),
                          hr_scale=2, hr_second_pass_steps=2, denoising_strength=0.6)
    assert f"{INFOTEXT_HIRES_KV_KEY}:" in infotext and "(4x" in infotext.split(INFOTEXT_HIRES_KV_KEY)[1]
    assert (0, (64, 64), (16, 16), 4.0) in kv_entries(infotext, INFOTEXT_HIRES_KV_KEY), "512 px: a 64x64 grid"
    assert infotext.count(f"{INFOTEXT_FIRST_PASS_KV_KEY}:") == 1 and infotext.count(INFOTEXT_HIRES_KV_KEY) == 1
    assert INFOTEXT_NOTE_KEY not in infotext


def test_hires_pass_only():
    _, infotext = txt2img([{"enabled": True, "hires_only": True}], **hires(), hr_scale=1.5, hr_second_pass_steps=1,
                          denoising_strength=0.5, steps=2)
    assert f"{INFOTEXT_HIRES_KV_KEY}:" in infotext and f"{INFOTEXT_FIRST_PASS_KV_KEY}:" not in infotext
    assert INFOTEXT_NOTE_KEY not in infotext


@pytest.mark.parametrize("args", [[True, 2.0], [{"enabled": True, "method": "bicubic"}], [{"unknown": 1}]])
def test_invalid_args_rejected_before_generation(args):
    status, body = call("/sdapi/v1/txt2img", {**BASE, "alwayson_scripts": {"todo": {"args": args}}})
    assert 400 <= status < 500 and body["field"] in body["detail"] and body["allowed"]
    assert call("/sdapi/v1/txt2img", {**BASE, "steps": 1})[0] == 200


def require_a1111_token_merging(merged, **overrides):
    """On A1111, skip unless Token merging still changes the image (ToDo off): it changes the tokens attn1 gets
    only while tomesd's patch of the BasicTransformerBlock class reaches the instances. sd-webui-controlnet
    (56cec5b2) leaves its saved `_forward` on every instance after a reference-mode job (hook.py: the bound method it
    saved, put back as an instance attribute), which shadows the class's for the rest of the session: Token merging
    then changes nothing, and nothing is left for ToDo to step aside from."""
    if pixels(merged) == pixels(txt2img(**overrides)[0]):
        pytest.skip("Token merging changes nothing on this host now (after a ControlNet reference job, "
                    "sd-webui-controlnet's `_forward` left on the instances shadows tomesd's patch); restart it")


def test_todo_with_the_hosts_token_merging():
    """Each host's documented behaviour with Token merging on. A1111: tomesd merges the tokens before attn1, so
    ToDo steps aside in every depth-0 call (the merged tokens fill no grid) with the note "Token merging changed the
    tokens", writes no K/V line, and the image is the one Token merging gives alone. The Forge family: Token merging
    is an attn1 patch that merges only the queries, so ToDo composes with it: no note, its K/V line, another image.
    The option is reset through /sdapi/v1/options afterwards (reForge does not restore an override_settings of
    it)."""
    host = webui_host()
    status, options = call("/sdapi/v1/options")
    assert status == 200
    previous = options.get("token_merging_ratio", 0.0)
    assert call("/sdapi/v1/options", {"token_merging_ratio": 0.5})[0] == 200
    try:
        merged, _ = txt2img(steps=2)
        image, infotext = txt2img(ToDoArgs(enabled=True).to_list(), steps=2)
    finally:
        assert call("/sdapi/v1/options", {"token_merging_ratio": previous})[0] == 200
    if host == "a1111":
        require_a1111_token_merging(merged, steps=2)
        note = infotext.split(f"{INFOTEXT_NOTE_KEY}: ")[1] if INFOTEXT_NOTE_KEY in infotext else ""
        aside = re.match(r'"?stepped aside in (\d+) self-attention calls? where Token merging changed the tokens', note)
        assert aside and int(aside.group(1)) == 5 * 2, infotext
        assert kv_line(infotext) is None, "no depth-0 call acted on"
        assert pixels(image) == pixels(merged), "stepped aside everywhere: the image is Token merging's alone"
    else:
        assert INFOTEXT_NOTE_KEY not in infotext, infotext
        assert kv_entries(infotext) == {(0, (32, 32), (16, 16), 2.0): 5 * 2}, infotext
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
    txt2img(ToDoArgs(enabled=True, ratio=0.9375).to_list(), **hires(), hr_scale=1.5, hr_second_pass_steps=1,
            denoising_strength=0.5)
    after, _ = txt2img()
    assert pixels(before) == pixels(after)


def test_deeper_ratio_by_name_reaches_depth_1_and_the_infotext():
    _, infotext = txt2img([{"enabled": True, "max_depth": 1, "deeper_ratio": 0.9375}])
    assert "ToDo deeper ratio: 0.9375" in infotext
    assert (1, (16, 16), (4, 4), 4.0) in kv_entries(infotext)


def test_positional_args_from_before_deeper_ratio_keep_the_ratio_at_every_depth():
    old = [True, 0.75, 1, False, 4096, "nearest", 0.0, 1.0, "same", 0.75, False]
    old_image, infotext = txt2img(old)
    assert "ToDo deeper ratio: -1.0" in infotext and (1, (16, 16), (8, 8), 2.0) in kv_entries(infotext)
    same_image, _ = txt2img([*old, -1])
    assert pixels(old_image) == pixels(same_image)


def test_invalid_deeper_ratio_is_rejected_naming_it():
    status, body = call("/sdapi/v1/txt2img", {**BASE, "alwayson_scripts": {"ToDo": {"args": [
        {"enabled": True, "deeper_ratio": 1.5}]}}})
    assert status == 422 and body["field"] == "deeper_ratio"


@pytest.mark.parametrize(
    ("infotext", "key"),
    [("Steps: 3, Sampler: Euler, Seed: 1, ToDo: True, ToDo ratio: abc", "ToDo ratio"),
     ("Steps: 3, Sampler: Euler, Seed: 1, ToDo: True, ToDo method: bicubic", "ToDo method")],
)
def test_invalid_todo_keys_in_the_infotext_field_rejected_before_generation(infotext, key):
    status, body = call("/sdapi/v1/txt2img", {**BASE, "infotext": infotext})
    assert status == 422, body
    assert body["field"] == key and key in body["detail"] and body["allowed"]


def test_valid_todo_keys_in_the_infotext_field_apply():
    status, body = call("/sdapi/v1/txt2img", {**BASE, "infotext": "Steps: 3, Sampler: Euler, Seed: 1"})
    if status == 500:
        pytest.skip(f"this host's own `infotext` request field fails without any ToDo key: {body}")
    infotext = "Steps: 3, Sampler: Euler, Seed: 1, ToDo: True, ToDo ratio: 0.9375, ToDo method: avg-pool"
    _, info = txt2img(infotext=infotext)
    assert "ToDo ratio: 0.9375" in info and "ToDo method: avg-pool" in info and "(4x)" in info
    assert (0, (32, 32), (8, 8), 4.0) in kv_entries(info)


def test_rejection_carries_the_hosts_timing_header():
    """A1111 and reForge time every answer (X-Process-Time); the live Forge answers without it. A 422 from ToDo
    carries it wherever the host's other answers do."""
    _, _, accepted_headers = call_with_headers("/sdapi/v1/options")
    status, _, response_headers = call_with_headers(
        "/sdapi/v1/txt2img", {**BASE, "alwayson_scripts": {"ToDo": {"args": [True, 2.0]}}})
    assert status == 422
    assert bool(response_headers.get("X-Process-Time")) == bool(accepted_headers.get("X-Process-Time"))


@needs_cors
def test_cors_header_on_rejection():
    status, _, response_headers = call_with_headers(
        "/sdapi/v1/txt2img", {**BASE, "alwayson_scripts": {"ToDo": {"args": [True, 2.0]}}},
        headers={"Origin": WEBUI_CORS_ORIGIN})
    assert status == 422 and response_headers.get("Access-Control-Allow-Origin") == WEBUI_CORS_ORIGIN


@needs_auth
@pytest.mark.parametrize("todo", [{"args": [True, 2.0]}, None])
def test_unauthenticated_requests_get_401_whatever_their_todo_args(todo):
    payload = {**BASE, **({"alwayson_scripts": {"ToDo": todo}} if todo else {})}
    status, body, _ = call_with_headers("/sdapi/v1/txt2img", payload, authenticate=False)
    assert status == 401 and "field" not in body
    status, body, _ = call_with_headers("/sdapi/v1/txt2img", {**BASE, "infotext": "Steps: 1, Seed: 1, ToDo ratio: x"},
                                        authenticate=False)
    assert status == 401 and "field" not in body


def test_note_in_the_info_json_is_the_infotexts_text():
    """The info JSON has what the infotext has: on A1111 Token merging makes ToDo step aside and "ToDo note" says
    so in both; on the Forge family ToDo composes with it and neither has a note (see the test above)."""
    status, body = call("/sdapi/v1/txt2img", {**BASE, "alwayson_scripts": {"ToDo": {"args": [True]}},
                                               "override_settings": {"token_merging_ratio": 0.5}})
    assert status == 200, body
    info = json.loads(body["info"])
    note = info["extra_generation_params"].get("ToDo note")
    infotext = info["infotexts"][0]
    if webui_host() == "a1111":
        require_a1111_token_merging(txt2img(override_settings={"token_merging_ratio": 0.5})[0])
        assert isinstance(note, str) and "Token merging changed the tokens" in note, info
        assert f"ToDo note: {note}" in infotext or f'ToDo note: "{note}"' in infotext
    else:
        assert note is None and "ToDo note:" not in infotext, infotext
        assert INFOTEXT_FIRST_PASS_KV_KEY in infotext


def setting(options, name):
    """A Settings > ToDo default as /sdapi/v1/options reports it: the hosts list only the options in
    `shared.opts.data` (those saved in config.json or set since; seen live on A1111 v1.10.1 too, whose list lacked
    every todo_default_* and hypertile_* option), so an absent one has its built-in default."""
    return options.get(f"todo_default_{name}", getattr(ToDoArgs(), name))


def test_api_defaults_are_the_settings():
    status, options = call("/sdapi/v1/options")
    assert status == 200
    _, scripts = call("/sdapi/v1/script-info")
    todo = next(script for script in scripts if script["name"] == "todo" and not script["is_img2img"])
    values = {arg["label"]: arg["value"] for arg in todo["args"]}
    assert values["Ratio"] == setting(options, "ratio")
    assert values["Method"] == setting(options, "method")


def xyz_ratio_axis(xyz, values):
    """The X/Y/Z plot script's args with "[ToDo] Ratio" on the X axis over `values`, no Y or Z axis, and every
    cell's image returned (reForge's API otherwise returns only the grid's infotext)."""
    choices = xyz["args"][0]["choices"]
    script_args = [arg["value"] for arg in xyz["args"]]
    script_args[0], script_args[1] = choices.index("[ToDo] Ratio"), values
    script_args[3] = script_args[6] = 0
    labels = [arg["label"] for arg in xyz["args"]]
    script_args[labels.index("Include Sub Images")] = True
    return script_args


def test_xyz_axes_offered_and_applied():
    """Also with --nowebui, where the API builds the X/Y/Z script's axis list before before_ui."""
    _, scripts = call("/sdapi/v1/script-info")
    xyz = next(script for script in scripts if script["name"] == "x/y/z plot" and not script["is_img2img"])
    choices = xyz["args"][0]["choices"]
    assert {"[ToDo] Ratio", "[ToDo] Deeper ratio", "[ToDo] Method"} <= set(choices)
    status, body = call("/sdapi/v1/txt2img", {**BASE, "script_name": "x/y/z plot",
                                               "script_args": xyz_ratio_axis(xyz, "0.75, 0.9375"),
                                               "alwayson_scripts": {"ToDo": {"args": [True]}}})
    assert status == 200, body
    infotexts = json.loads(body["info"])["infotexts"]
    assert any("ToDo ratio: 0.9375" in text for text in infotexts)
    assert any("ToDo ratio: 0.75" in text for text in infotexts)


def test_ui_controls_show_the_settings_not_ui_config():
    """The UI's controls (gradio's /config, after ui-config.json was applied) show Settings > ToDo too."""
    try:
        with urllib.request.urlopen(WEBUI_URL + "/config", timeout=60) as response:
            config = json.loads(response.read())
    except urllib.error.HTTPError as error:
        pytest.skip(f"no UI to inspect (--nowebui?): {error.code}")
    values = {component["props"].get("elem_id"): component["props"].get("value")
              for component in config["components"] if "props" in component}
    _, options = call("/sdapi/v1/options")
    assert values["script_txt2img_todo_ratio"] == setting(options, "ratio")
    assert values["script_img2img_todo_method"] == setting(options, "method")
    assert values["script_txt2img_todo_deeper_ratio"] == setting(options, "deeper_ratio")
