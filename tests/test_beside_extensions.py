"""ToDo beside the extensions users run with it, reproduced on real ldm U-Nets as each extension changes the U-Net
(read from their sources at the commits named in README's "Works with"): ControlNet's reference modes and
ControlNet-LLLite, Tiled Diffusion, Kohya's Deep Shrink, AnimateDiff's motion modules, and U-Nets without a middle
block. Each test checks that the generation runs, that ToDo acts where the math allows (the output equals ToDo's
formula on what the layer really attends to), and that its record says what happened."""

from __future__ import annotations

import types
from collections import Counter

import pytest
import torch
from ldm.modules.diffusionmodules.util import timestep_embedding
from torch import nn
from torch.nn import functional as F
from unet_helpers import transformer_blocks

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


def test_a_context_that_is_not_the_layers_own_tokens_is_left_exact():
    """A context whose first set is not the attention's own input is something ToDo cannot account for."""
    unet = build_unet("sd15", WIDTH)
    hijack_reference(unet)
    for block in transformer_blocks(unet):
        block._forward = types.MethodType(
            lambda self, x, context=None: self.attn1(self.norm1(x), context=self.norm1(x).flip(1)) + x, block)
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
    assert {(depth, grid): count for (depth, grid, _, _), count in handle.record.kv.items()} == dict(
        Counter((grids_by_depth.index(call["grid"]), call["grid"]) for call in calls))
    assert handle.record.downsampled == len(calls) and not handle.record.aside

