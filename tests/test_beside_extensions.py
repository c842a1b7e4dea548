"""ToDo beside the extensions users run with it, reproduced on real ldm U-Nets as each extension changes the U-Net
(read from their sources at the commits named in README's "Works with"): ControlNet's reference modes and
ControlNet-LLLite, Tiled Diffusion, Kohya's Deep Shrink, AnimateDiff's motion modules, and U-Nets without a middle
block; the reference modes, Tiled Diffusion and Deep Shrink also on SDXL's layout, where depth 0 is latent/2. Each
test checks that the generation runs, that ToDo acts where the math allows (the output equals ToDo's formula on what
the layer really attends to, at the layer's depth), and that its record says what happened."""

from __future__ import annotations

import math
import types
from collections import Counter

import pytest
import torch
from ldm.modules.diffusionmodules.util import timestep_embedding
from torch import nn
from torch.nn import functional as F
from unet_helpers import transformer_blocks, use_sgm_blocks

import todo_ext
from todo_ext import ToDoConfig
from todo_ext.bench.models import build_unet, unet_inputs, webui_skip_resize

WIDTH = 32


pytestmark = pytest.mark.usefixtures("sdpa")


def depth0_blocks(unet):
    """SD1.x's level-0 transformer blocks: input_blocks 1 and 2, output_blocks 9 to 11."""
    blocks = transformer_blocks(unet)
    return blocks[:2] + blocks[-3:]


def downsample_grid(t, grid, stride=2):
    batch, _, channels = t.shape
    image = t.transpose(1, 2).reshape(batch, channels, *grid)
    return image[:, :, ::stride, ::stride].flatten(2).transpose(1, 2)


def attention(attn, x, kv):
    """softmax(Q K^T / sqrt(d)) V with Q from x and K, V from the token set kv, through attn's projections."""
    heads = attn.heads
    batch, tokens, channels = x.shape

    def split(t):
        return t.reshape(batch, -1, heads, channels // heads).transpose(1, 2)

    q, k, v = split(attn.to_q(x)), split(attn.to_k(kv)), split(attn.to_v(kv))
    weights = torch.softmax(q @ k.transpose(-1, -2) / (channels // heads) ** 0.5, dim=-1)
    return attn.to_out((weights @ v).transpose(1, 2).reshape(batch, tokens, channels))


def record_attn1(unet):
    """(block, x, output, grid) of every attn1 call, the grid read independently of ToDo from the spatial
    transformer's input; registered after ToDo's hooks."""
    calls, current, handles = [], {}, []
    for module in unet.modules():
        if type(module).__name__ == "SpatialTransformer":
            handles.append(module.register_forward_pre_hook(
                lambda _m, args: current.update(grid=tuple(args[0].shape[-2:]))))
    for block in transformer_blocks(unet):
        handles.append(block.attn1.register_forward_hook(
            lambda _m, args, kwargs, out, block=block: calls.append(
                {"block": block, "x": args[0], "context": kwargs.get("context"), "out": out,
                 "grid": current["grid"]}), with_kwargs=True))
    return calls, handles


# ControlNet's reference modes (sd-webui-controlnet 56cec5b2, scripts/hook.py
# hacked_basic_transformer_inner_forward): every BasicTransformerBlock's `_forward` is replaced on the instance; in
# the write pass the block stores its normed tokens in `bank`, in the read pass attn1 attends to the block's own
# tokens followed by the bank: self.attn1(x_norm1, context=torch.cat([x_norm1] + self.bank, dim=1)); the
# style-fidelity branch runs the unconditional rows alone: self.attn1(x_norm1[uc], context=x_norm1[uc]). The write
# pass runs on the reference image's noised latent, so the bank holds other tokens than the read pass's.


def reference_forward(self, x, context=None):
    x_norm1 = self.norm1(x)
    if self.reference_mode == "write":
        self.bank.append(x_norm1.detach().clone())
        attn1 = self.attn1(x_norm1, context=x_norm1)
    else:
        attn1 = self.attn1(x_norm1, context=torch.cat([x_norm1, *self.bank], dim=1))
        if self.style_fidelity:
            uncond = slice(0, x.shape[0] // 2)
            attn1 = attn1.clone()
            attn1[uncond] = self.attn1(x_norm1[uncond], context=x_norm1[uncond])
    x = attn1 + x
    x = self.attn2(self.norm2(x), context=context) + x
    return self.ff(self.norm3(x)) + x


def hijack_reference(unet, style_fidelity=False):
    for block in transformer_blocks(unet):
        block._forward = types.MethodType(reference_forward, block)
        block.bank = []
        block.reference_mode = "write"
        block.style_fidelity = style_fidelity


def set_reference_mode(unet, mode):
    for block in transformer_blocks(unet):
        block.reference_mode = mode


def inject_reference(unet, reference_latent):
    """ControlNet's forward_webui (hook.py), set on the instance as ControlNet does: within the U-Net's one call,
    the original forward runs on the reference's latent with the blocks writing their bank (`outer.original_forward(
    x=ref_xt, ...)`), then on x with the blocks reading it; ToDo's U-Net hook sees only the outer call."""
    original_forward = unet.forward

    def forward_webui(x, timesteps=None, context=None):
        set_reference_mode(unet, "write")
        original_forward(x=reference_latent, timesteps=timesteps, context=context)
        set_reference_mode(unet, "read")
        return original_forward(x, timesteps, context)

    unet.forward = forward_webui


@pytest.mark.parametrize("style_fidelity", [False, True])
def test_reference_modes_are_downsampled_set_by_set(style_fidelity):
    """attn1 attends to the block's tokens and the reference's: ToDo downsamples both on their grid, so each call
    is softmax(Q [D(x); D(bank)]^T / sqrt(d)) [D(x); D(bank)] (the uncond rows of style fidelity: D(x) only)."""
    unet = build_unet("sd15", WIDTH)
    hijack_reference(unet, style_fidelity)
    x, t, c = unet_inputs(unet, 2, 16, 24)
    inject_reference(unet, unet_inputs(unet, 2, 16, 24, seed=2)[0])
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    calls, _ = record_attn1(unet)
    unet(x, t, c)
    read = calls[len(transformer_blocks(unet)):]
    depth0 = [call for call in read if call["block"] in depth0_blocks(unet)]
    assert len(depth0) == 5 * (2 if style_fidelity else 1)
    for call in depth0:
        x_norm1, attn = call["x"], call["block"].attn1
        if call["x"].shape[0] == 1:
            expected = attention(attn, x_norm1, downsample_grid(x_norm1, call["grid"]))
        else:
            bank = call["block"].bank[0]
            reduced = torch.cat([downsample_grid(x_norm1, call["grid"]), downsample_grid(bank, call["grid"])], 1)
            expected = attention(attn, x_norm1, reduced)
            assert call["context"].shape[1] == 2 * 8 * 12
        torch.testing.assert_close(call["out"], expected, rtol=1e-4, atol=1e-5)
    assert handle.record.aside == {}
    write_and_read = 5 + len(depth0)
    assert handle.record.kv_text() == f"d0 16x24->8x12 (2x) in {write_and_read} calls"


def test_a_context_that_is_not_made_of_the_layers_token_grids_is_left_exact():
    """A context that holds no whole number of the layer's token grids is something ToDo cannot account for (it
    reads shapes only, never values, which would cost a host-device sync per call)."""
    unet = build_unet("sd15", WIDTH)
    hijack_reference(unet)
    for block in transformer_blocks(unet):
        block._forward = types.MethodType(
            lambda self, x, context=None: self.attn1(self.norm1(x), context=self.norm1(x)[:, 1:]) + x, block)
    x, t, c = unet_inputs(unet, 1, 16, 16)
    plain = unet(x, t, c)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    assert torch.equal(unet(x, t, c), plain)
    assert handle.record.aside == {"context": 5}
    assert "not its own token grid" in handle.record.aside_text()


# ControlNet-LLLite (sd-webui-controlnet 56cec5b2, scripts/controlnet_lllite.py): the `forward` of attn1's
# to_q/to_k/to_v is replaced on the instance by one that concatenates a condition embedding sized to the block's
# full token grid: torch.cat([cond, down(x)], dim=2), so a shorter x fails with "Sizes of tensors must match".


def hijack_lllite(projection, tokens):
    original = projection.forward
    cond = torch.randn(1, tokens, 4)
    mix = nn.Linear(projection.in_features + 4, projection.in_features)

    def forward(x):
        return original(x + mix(torch.cat([cond.expand(x.shape[0], -1, -1), x], dim=2)))

    projection.forward = forward


def test_lllite_projections_make_todo_step_aside_in_those_layers_only():
    unet = build_unet("sd15", WIDTH)
    lllite_block = transformer_blocks(unet)[0]
    for name in ("to_q", "to_k", "to_v"):
        hijack_lllite(getattr(lllite_block.attn1, name), 16 * 16)
    x, t, c = unet_inputs(unet, 2, 16, 16)
    lllite_only = unet(x, t, c)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    calls, _ = record_attn1(unet)
    out = unet(x, t, c)
    assert out.shape == x.shape and not torch.equal(out, lllite_only)
    assert [call["context"] is None for call in calls if call["block"] in depth0_blocks(unet)] == [
        True, False, False, False, False]
    assert handle.record.aside == {"projection": 1}
    assert handle.record.kv_text() == "d0 16x16->8x8 (2x) in 4 calls"
    assert "ControlNet-LLLite" in handle.record.aside_text()


def test_projections_lllite_restored_no_longer_make_todo_step_aside():
    """ControlNet's clear_all_lllite restores each projection with `module.forward = original`, the projection's
    own bound method, which stays on the instance for the rest of the session."""
    unet = build_unet("sd15", WIDTH)
    attn1 = transformer_blocks(unet)[0].attn1
    originals = {name: getattr(attn1, name).forward for name in ("to_q", "to_k", "to_v")}
    for name in originals:
        hijack_lllite(getattr(attn1, name), 16 * 16)
    for name, forward in originals.items():
        getattr(attn1, name).forward = forward
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    unet(*unet_inputs(unet, 1, 16, 16))
    assert not handle.record.aside and handle.record.downsampled == 5


# Tiled Diffusion (multidiffusion-upscaler 22798f68): MultiDiffusion replaces the sampler's inner model forward
# and Mixture of Diffusers the model's apply_model; both call the U-Net on batches of latent tiles.


def test_tiles_are_downsampled_on_their_own_grid_and_recorded_as_tiles():
    unet = build_unet("sd15", WIDTH)
    latent, _, c = unet_inputs(unet, 1, 24, 40)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    calls, _ = record_attn1(unet)
    tiles = torch.cat([latent[..., :16, :16], latent[..., 8:, 24:]])
    unet(tiles, torch.full((2,), 500.0), c.expand(2, -1, -1))
    unet(latent[..., :16, 8:24], torch.full((1,), 500.0), c)
    depth0 = [call for call in calls if call["block"] in depth0_blocks(unet)]
    for call in depth0:
        torch.testing.assert_close(
            call["out"], attention(call["block"].attn1, call["x"], downsample_grid(call["x"], (16, 16))),
            rtol=1e-4, atol=1e-5)
    assert handle.record.kv_text() == "d0 16x16->8x8 (2x) in 10 calls"
    assert not handle.record.aside


# Kohya's Deep Shrink (sd-webui-kohya-hiresfix 05af9874, scripts/khrfix.py): at the "Depth" slider's value d (3 by
# default, 4 in its second stage) a Scaler module wrapped around input_blocks[d - 1] and output_blocks[-d] resizes the
# hidden state with F.interpolate(scale_factor=...) (floor) before the block runs: down by `scale` on the input side,
# up by 1 / scale on the output side (the default 0.5 and 2, and smooth scaling's in-between pairs). The WebUI's
# size-safe skip concatenation absorbs the sides that floor(floor(n * s) / s) no longer matches.


class Scaler(nn.Module):
    def __init__(self, scale, block):
        super().__init__()
        self.scale = scale
        self.block = block

    def forward(self, x, *args):
        return self.block(F.interpolate(x, scale_factor=self.scale, mode="bicubic"), *args)


def deep_shrink(unet, depth, scale):
    """KohyaHiresFix.process's denoiser callback at Kohya's "Depth" `depth` (early upsampling off)."""
    unet.input_blocks[depth - 1] = Scaler(scale, unet.input_blocks[depth - 1])
    unet.output_blocks[-depth] = Scaler(1 / scale, unet.output_blocks[-depth])


@pytest.mark.parametrize(("latent", "scale"), [((112, 144), 0.5), ((27, 37), 0.5), ((30, 34), 0.7)])
def test_deep_shrink_at_every_size_is_downsampled_on_the_grid_each_layer_gets(latent, scale):
    """896x1152 (112x144 latent) and odd sizes where the output-side upscale gives a grid no single scale of the
    latent produces: ToDo reads each layer's grid and never steps aside."""
    unet = build_unet("sd15", WIDTH)
    deep_shrink(unet, 3, scale)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    calls, _ = record_attn1(unet)
    with webui_skip_resize():
        out = unet(*unet_inputs(unet, 1, *latent))
    assert out.shape[-2:] == latent
    depth0 = [call for call in calls if call["block"] in depth0_blocks(unet)]
    assert len({call["grid"] for call in depth0}) >= 2, "the reproduction shrinks some depth-0 calls"
    for call in depth0:
        torch.testing.assert_close(
            call["out"], attention(call["block"].attn1, call["x"], downsample_grid(call["x"], call["grid"])),
            rtol=1e-4, atol=1e-5)
    assert not handle.record.aside and handle.record.downsampled == 5
    recorded = {key[1] for key in handle.record.kv}
    assert recorded == {call["grid"] for call in depth0}


# AnimateDiff (sd-webui-animatediff, animatediff/mm_animatediff.py): motion modules (VanillaTemporalModule ->
# TemporalTransformer3DModel -> TemporalTransformerBlock, attention in its own VersatileAttention) are appended to
# input and output blocks, and inserted before a trailing Upsample; the U-Net batch is the frames.


class TemporalTransformerBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.attention = nn.MultiheadAttention(channels, 1, batch_first=True)

    def forward(self, x):
        frames, channels, height, width = x.shape
        tokens = x.permute(2, 3, 0, 1).reshape(height * width, frames, channels)
        out, _ = self.attention(tokens, tokens, tokens)
        return x + out.reshape(height, width, frames, channels).permute(2, 3, 0, 1)


class VanillaTemporalModule(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.temporal_transformer = TemporalTransformerBlock(channels)

    def forward(self, x, *_args):
        return self.temporal_transformer(x)


def add_motion_modules(unet):
    for blocks in (unet.input_blocks, unet.output_blocks):
        for block in blocks:
            channels = next((m.out_channels for m in block.modules() if isinstance(m, nn.Conv2d)), None)
            if channels is None or len(block) < 2:
                continue
            index = len(block) - 1 if type(block[-1]).__name__ == "Upsample" else len(block)
            out_channels = block[0].out_channels if hasattr(block[0], "out_channels") else channels
            block.insert(index, VanillaTemporalModule(out_channels))


def test_animatediff_motion_modules_leave_the_spatial_self_attention_to_todo():
    """ToDo finds the same self-attention layers and levels with motion modules inserted, and acts on them with the
    frames as batch; the motion modules' own attention is untouched."""
    unet = build_unet("sd15", WIDTH)
    levels_before = todo_ext.attention_levels_by_block(unet)
    add_motion_modules(unet)
    assert todo_ext.attention_levels_by_block(unet) == levels_before
    frames = 4
    x, t, c = unet_inputs(unet, frames, 16, 16)
    plain = unet(x, t, c)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    calls, _ = record_attn1(unet)
    assert not torch.equal(unet(x, t, c), plain)
    assert all(call["x"].shape[0] == frames for call in calls)
    assert handle.record.kv_text() == "d0 16x16->8x8 (2x) in 5 calls" and not handle.record.aside


def forward_skipping_a_missing_middle_block(self, x, timesteps=None, context=None):
    """ldm's UNetModel.forward as reForge runs it (ldm_patched/ldm/modules/diffusionmodules/openaimodel.py
    UNetModel._forward): the middle block only where the model has one."""
    emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False))
    h, skips = x, []
    for module in self.input_blocks:
        h = module(h, emb, context)
        skips.append(h)
    if self.middle_block is not None:
        h = self.middle_block(h, emb, context)
    for module in self.output_blocks:
        h = module(torch.cat([h, skips.pop()], dim=1), emb, context)
    return self.out(h)


@pytest.mark.parametrize("layout", ["sd15", "sdxl"])
def test_a_unet_without_a_middle_block_is_downsampled_in_the_blocks_it_has(layout):
    """reForge builds SD-XS, BK-SDM and KOALA-style U-Nets with `middle_block = None` and runs them without it: every
    self-attention layer the U-Net has is downsampled at its own depth, and the record counts them all."""
    unet = build_unet(layout, WIDTH)
    levels_with_middle = todo_ext.attention_levels_by_block(unet)
    unet.middle_block = None
    unet.forward = types.MethodType(forward_skipping_a_missing_middle_block, unet)
    levels = todo_ext.attention_levels_by_block(unet)
    assert levels == {name: level for name, level in levels_with_middle.items() if name != ("middle", 0)}
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75, max_depth=3))
    calls, _ = record_attn1(unet)
    x, t, c = unet_inputs(unet, 1, 16, 24)
    out = unet(x, t, c)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert [call["block"] for call in calls] == transformer_blocks(unet), "every block the U-Net has ran once"
    for call in calls:
        torch.testing.assert_close(
            call["out"], attention(call["block"].attn1, call["x"], downsample_grid(call["x"], call["grid"])),
            rtol=1e-4, atol=1e-5)
    grids_by_depth = sorted({call["grid"] for call in calls}, reverse=True)
    assert {(depth, grid): count for (depth, grid, _, _, _), count in handle.record.kv.items()} == dict(
        Counter((grids_by_depth.index(call["grid"]), call["grid"]) for call in calls))
    assert handle.record.downsampled == len(calls) and not handle.record.aside


# SDXL (sgm's U-Net in the WebUI) has self-attention at latent/2 (depth 0: input_blocks 4-5, output_blocks 3-5) and
# latent/4 (depth 1: input_blocks 7-8, the middle block, output_blocks 0-2), none at latent/1, and its blocks run
# sgm's `_forward` (unet_helpers.sgm_block_forward). SDXL_CONFIG gives the two depths different factors, so a layer
# that ToDo placed at the wrong depth fails the formula.

SDXL_CONFIG = ToDoConfig(ratio=0.75, max_depth=1, deeper_ratios=(0.89,))
SDXL_STRIDES = (2, 3)
"""Per-side factor of SDXL_CONFIG at depth 0 and depth 1."""


def sdxl_unet():
    return use_sgm_blocks(build_unet("sdxl", WIDTH))


def sdxl_depths(unet):
    """The depth of each transformer block, from where it sits in SDXL's layout (read before any block is wrapped)."""
    containers = {0: [unet.input_blocks[4], unet.input_blocks[5], *unet.output_blocks[3:6]],
                  1: [unet.input_blocks[7], unet.input_blocks[8], unet.middle_block, *unet.output_blocks[0:3]]}
    depths = {block: depth for depth, blocks in containers.items() for container in blocks
              for block in transformer_blocks(container)}
    assert len(depths) == len(transformer_blocks(unet))
    return depths


def ceil_grid(grid, factor):
    """Each side divided by `factor`, rounded up: the grid a stride-`factor` subsample keeps, and the grid ldm's
    stride-2 downsamples leave at latent/`factor`."""
    return -(-grid[0] // factor), -(-grid[1] // factor)


def assert_todo_formula(call, depth, token_sets):
    """The call's output is ToDo's formula on what the layer attends to: every query, and keys and values from each
    token set downsampled on the layer's grid with its depth's factor."""
    reduced = torch.cat([downsample_grid(tokens, call["grid"], SDXL_STRIDES[depth]) for tokens in token_sets], dim=1)
    torch.testing.assert_close(call["out"], attention(call["block"].attn1, call["x"], reduced), rtol=1e-4, atol=1e-5)


def received(calls, depths):
    """What the layers really got, counted as ToDo's record counts it: (depth, grid, K/V grid, factor, no other
    tokens kept) per call."""
    return Counter((depth, call["grid"], ceil_grid(call["grid"], SDXL_STRIDES[depth]), float(SDXL_STRIDES[depth]), ())
                   for call in calls for depth in [depths[call["block"]]])


def kv_text_of(grid_counts):
    """The record's text where each depth got one grid, from {depth: (grid, calls)}: "d0 16x24->8x12 (2x) in 10
    calls; d1 ..."."""
    return "; ".join(
        f"d{depth} {grid[0]}x{grid[1]}->{'x'.join(map(str, ceil_grid(grid, SDXL_STRIDES[depth])))} "
        f"({SDXL_STRIDES[depth]}x) in {count} calls" for depth, (grid, count) in sorted(grid_counts.items()))


@pytest.mark.parametrize("style_fidelity", [False, True])
def test_sdxl_reference_modes_are_downsampled_set_by_set_at_latent_2_and_4(style_fidelity):
    """ControlNet swaps the `_forward` of sgm's blocks for its own as it does ldm's (hook.py: BasicTransformerBlockSGM):
    depth 0 gets the layer's tokens and the reference's at latent/2, depth 1 at latent/4, in the write and the read
    pass, and both sets are downsampled with their depth's factor."""
    unet = sdxl_unet()
    depths = sdxl_depths(unet)
    hijack_reference(unet, style_fidelity)
    latent = (32, 48)
    x, t, c = unet_inputs(unet, 2, *latent)
    inject_reference(unet, unet_inputs(unet, 2, *latent, seed=2)[0])
    handle = todo_ext.apply(unet, SDXL_CONFIG)
    calls, _ = record_attn1(unet)
    out = unet(x, t, c)
    assert out.shape == x.shape and torch.isfinite(out).all()
    written = len(transformer_blocks(unet))
    for index, call in enumerate(calls):
        uncond_alone = call["x"].shape[0] == 1
        token_sets = [call["x"]] if index < written or uncond_alone else [call["x"], *call["block"].bank]
        assert_todo_formula(call, depths[call["block"]], token_sets)
    half, quarter = ceil_grid(latent, 2), ceil_grid(latent, 4)
    assert {(depths[call["block"]], call["grid"]) for call in calls} == {(0, half), (1, quarter)}
    assert handle.record.kv == received(calls, depths) and handle.record.aside_text() is None
    calls_at = Counter(depths[call["block"]] for call in calls)
    assert handle.record.kv_text() == kv_text_of({0: (half, calls_at[0]), 1: (quarter, calls_at[1])})


def multidiffusion_tile_batches(latent, tile_height, tile_width, overlap, tile_batch_size):
    """The batches of latent tiles MultiDiffusion runs the U-Net on: the tiles of tile_utils/utils.py split_bboxes
    (sized and overlapped as AbstractDiffusion.init_grid_bbox clamps them), concatenated per batch as
    MultiDiffusion.sample_one_step does (torch.cat([x_in[bbox.slicer] for bbox in bboxes]))."""
    height, width = latent.shape[-2:]
    tile_height, tile_width = min(tile_height, height), min(tile_width, width)
    overlap = max(0, min(overlap, min(tile_width, tile_height) - 4))
    cols = math.ceil((width - overlap) / (tile_width - overlap))
    rows = math.ceil((height - overlap) / (tile_height - overlap))
    dx = (width - tile_width) / (cols - 1) if cols > 1 else 0
    dy = (height - tile_height) / (rows - 1) if rows > 1 else 0
    tiles = []
    for row in range(rows):
        y = min(int(row * dy), height - tile_height)
        for col in range(cols):
            x = min(int(col * dx), width - tile_width)
            tiles.append(latent[..., y:y + tile_height, x:x + tile_width])
    return [torch.cat(tiles[i:i + tile_batch_size]) for i in range(0, len(tiles), tile_batch_size)]


@pytest.mark.parametrize(("latent", "tile"), [((40, 56), (24, 32)), ((30, 45), (32, 32))])
def test_sdxl_tiles_are_downsampled_at_latent_2_and_4_of_the_tile_and_recorded_as_tiles(latent, tile):
    """Each batch of tiles reaches depth 0 at the tile's latent/2 and depth 1 at its latent/4 (not the whole
    latent's), and the record says so; a tile cut to a latent side smaller than the tile has odd grids."""
    unet = sdxl_unet()
    depths = sdxl_depths(unet)
    whole, _, c = unet_inputs(unet, 1, *latent)
    handle = todo_ext.apply(unet, SDXL_CONFIG)
    calls, _ = record_attn1(unet)
    for tiles in multidiffusion_tile_batches(whole, *tile, overlap=8, tile_batch_size=3):
        with webui_skip_resize():
            out = unet(tiles, torch.full((len(tiles),), 500.0), c.expand(len(tiles), -1, -1))
        assert out.shape == tiles.shape and torch.isfinite(out).all()
    for call in calls:
        assert_todo_formula(call, depths[call["block"]], [call["x"]])
    tile = min(tile[0], latent[0]), min(tile[1], latent[1])
    tile_half, tile_quarter = ceil_grid(tile, 2), ceil_grid(tile, 4)
    assert {(depths[call["block"]], call["grid"]) for call in calls} == {(0, tile_half), (1, tile_quarter)}
    assert handle.record.kv == received(calls, depths) and handle.record.aside_text() is None
    calls_at = Counter(depths[call["block"]] for call in calls)
    assert handle.record.kv_text() == kv_text_of({0: (tile_half, calls_at[0]), 1: (tile_quarter, calls_at[1])})


@pytest.mark.parametrize("depth", [3, 4])
@pytest.mark.parametrize(("latent", "scale"), [((64, 80), 0.5), ((27, 37), 0.5), ((30, 34), 0.7)])
def test_sdxl_deep_shrink_at_kohyas_depths_is_downsampled_on_the_grid_each_layer_gets(depth, latent, scale):
    """Kohya's default Depth 3 wraps input_blocks[2], which on SD1.5 holds depth 0's attention but on SDXL comes
    before any: every SDXL attention layer runs shrunken (depth 0 at latent/4). Its second stage's Depth 4 wraps the
    downsample into latent/2 and output_blocks[5], which has depth-0 attention: depth 0 gets shrunken grids and,
    after the output-side upscale, near latent/2 ones. ToDo acts on each at its depth and records each grid."""
    unet = sdxl_unet()
    depths = sdxl_depths(unet)
    deep_shrink(unet, depth, scale)
    handle = todo_ext.apply(unet, SDXL_CONFIG)
    calls, _ = record_attn1(unet)
    x, t, c = unet_inputs(unet, 1, *latent)
    with webui_skip_resize():
        out = unet(x, t, c)
    assert out.shape == x.shape and torch.isfinite(out).all()
    for call in calls:
        assert_todo_formula(call, depths[call["block"]], [call["x"]])
    unshrunk = ceil_grid(latent, 2)
    depth0_grids = [call["grid"] for call in calls if depths[call["block"]] == 0]
    shrunken = [grid for grid in depth0_grids if grid[0] < unshrunk[0] and grid[1] < unshrunk[1]]
    upscaled_back = {3: 0, 4: 1}[depth]  # depth-0 calls after the output-side upscale: Depth 4's output_blocks[5]
    assert len(shrunken) == len(depth0_grids) - upscaled_back
    assert handle.record.kv == received(calls, depths) and handle.record.aside_text() is None
    text = handle.record.kv_text()
    assert all(f"d0 {grid[0]}x{grid[1]}->" in text for grid in depth0_grids)
