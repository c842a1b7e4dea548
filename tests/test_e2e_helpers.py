"""The live-host tests' own helpers, checked without a host: the PNG decoding every pixel comparison uses, the check
that an image is not uniform, and the host detection from command-line flags."""

import base64
import io
import random
import struct
import zlib

import pytest
from e2e.test_webui_e2e import (
    HOST_MARKER_FLAGS,
    assert_not_uniform,
    decoded_png,
    host_of_flags,
    pixels,
    png_of,
)
from PIL import Image


def _paeth(left, up, corner):
    estimate = left + up - corner
    return min((abs(estimate - left), 0, left), (abs(estimate - up), 1, up), (abs(estimate - corner), 2, corner))[2]


def _filtered(kind, row, previous, channels):
    out = bytearray()
    for x, value in enumerate(row):
        left = row[x - channels] if x >= channels else 0
        up, corner = previous[x], previous[x - channels] if x >= channels else 0
        predictor = (0, left, up, (left + up) // 2, _paeth(left, up, corner))[kind]
        out.append((value - predictor) & 0xFF)
    return bytes(out)


def _png(width, height, channels, data, kinds):
    """A PNG whose rows use the given filter types in turn (as an encoder may choose per row)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    stride, previous, raw = width * channels, bytes(width * channels), b""
    for y in range(height):
        row = data[y * stride:(y + 1) * stride]
        kind = kinds[y % len(kinds)]
        raw += bytes([kind]) + _filtered(kind, row, previous, channels)
        previous = row
    color = {3: 2, 4: 6}[channels]
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0,
                                                                              0, 0))
                            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")).decode()


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("kinds", [[0], [1], [2], [3], [4], [0, 1, 2, 3, 4]])
def test_decoded_png_undoes_every_filter(channels, kinds):
    rng = random.Random(sum(kinds) * 10 + channels)
    width, height = 7, 6
    data = bytes(rng.randrange(256) for _ in range(width * height * channels))
    png = _png(width, height, channels, data, kinds)
    assert decoded_png(png) == (width, height, channels, data)
    mode = {3: "RGB", 4: "RGBA"}[channels]
    assert Image.open(io.BytesIO(base64.b64decode(png))).convert(mode).tobytes() == data


def test_decoded_png_reads_what_pillow_writes():
    image = Image.effect_noise((33, 20), 60).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    assert decoded_png(encoded) == (33, 20, 3, image.tobytes())


def test_same_pixels_whatever_the_filters():
    rng = random.Random(1)
    data = bytes(rng.randrange(256) for _ in range(5 * 4 * 3))
    assert pixels(_png(5, 4, 3, data, [0])) == pixels(_png(5, 4, 3, data, [4, 1]))


@pytest.mark.parametrize("value", [(0, 0, 0), (255, 255, 255), (12, 200, 7)])
def test_a_uniform_image_fails_the_check(value):
    """A black image (sampling gone to NaN) or any other single colour: compared pixels would prove nothing."""
    png = _png(6, 5, 3, bytes(value) * 30, [0, 1, 2, 3, 4])
    with pytest.raises(AssertionError, match="uniform image"):
        assert_not_uniform(png)
    with pytest.raises(AssertionError, match="uniform image"):
        pixels(png)


def test_one_differing_pixel_is_not_uniform():
    data = bytearray(b"\x00" * 30 * 3)
    data[-1] = 1
    assert_not_uniform(_png(6, 5, 3, bytes(data), [1]))


def test_png_of_is_a_varied_pattern():
    png = png_of(40, 24)
    assert decoded_png(png)[:3] == (40, 24, 3)
    assert Image.open(io.BytesIO(base64.b64decode(png))).size == (40, 24)
    assert_not_uniform(png)


A1111_FLAGS = {"api": True, "ckpt": None, "precision": "autocast", "no_half": False}
BACKEND_FLAGS = {"always_cpu": False, "pin_shared_memory": False}


@pytest.mark.parametrize("host", sorted(HOST_MARKER_FLAGS))
def test_host_of_flags_names_each_forge_family_host(host):
    assert host_of_flags({**A1111_FLAGS, **BACKEND_FLAGS, HOST_MARKER_FLAGS[host]: False}) == host


def test_host_of_flags_a1111_and_unknown():
    assert host_of_flags(A1111_FLAGS) == "a1111"
    assert host_of_flags({**A1111_FLAGS, **BACKEND_FLAGS}) is None, "a Forge-family host no marker names"
    two = {**BACKEND_FLAGS, HOST_MARKER_FLAGS["neo"]: [], HOST_MARKER_FLAGS["classic"]: False}
    assert host_of_flags(two) is None
