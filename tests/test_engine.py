"""The ToDo engine on real ldm U-Nets (random weights, small widths)."""

from __future__ import annotations

import copy
import logging
import types

import pytest
import tomesd
import torch
from ldm.modules.attention import CrossAttention
from torch import nn
from unet_helpers import transformer_blocks

import todo_ext
from todo_ext import ToDoConfig
from todo_ext.bench.models import (
    LatentDiffusionShell,
    build_unet,
    cast_unet,
    unet_inputs,
    webui_skip_resize,
)

WIDTH = 32
LDM_EINSUM_FORWARD = CrossAttention.forward


pytestmark = pytest.mark.usefixtures("sdpa")


def paper_attention(attn: nn.Module, x: torch.Tensor, grid: tuple[int, int], stride: int = 2):
    """softmax(Q D(K)^T / sqrt(d)) D(V), with D the strided nearest-neighbour subsample of K and V on their grid."""
    batch, tokens, channels = x.shape
    heads = attn.heads

    def down(t):
        image = t.transpose(1, 2).reshape(batch, channels, *grid)
        return image[:, :, ::stride, ::stride].flatten(2).transpose(1, 2)

    def split(t):
        return t.reshape(batch, -1, heads, channels // heads).transpose(1, 2)

    q, k, v = split(attn.to_q(x)), split(down(attn.to_k(x))), split(down(attn.to_v(x)))
    weights = torch.softmax(q @ k.transpose(-1, -2) / (channels // heads) ** 0.5, dim=-1)
    return attn.to_out((weights @ v).transpose(1, 2).reshape(batch, tokens, channels))


def record_attn1(unet):
    """Capture (input, context kwarg, output) of every attn1 call; registered after ToDo's hooks, so it sees the
    context ToDo handed in."""
    calls = []
    handles = []
    for block in transformer_blocks(unet):
        def pre(module, args, kwargs, block=block):
            calls.append({"block": block, "x": args[0], "context": kwargs.get("context")})

        def post(module, args, kwargs, output):
            calls[-1]["out"] = output

        handles.append(block.attn1.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.attn1.register_forward_hook(post, with_kwargs=True))
    return calls, handles


def total_todo_hooks(unet):
    return sum(getattr(h, "is_todo_hook", False) for m in unet.modules() for h in m._forward_pre_hooks.values())


def test_unet_output_matches_the_papers_formula():
    unet = build_unet("sd15", WIDTH)
    x, t, c = unet_inputs(unet, 2, 16, 16)
    todo_ext.apply(unet, ToDoConfig(ratio=0.75, max_depth=0))
    calls, _ = record_attn1(unet)
    unet(x, t, c)
    downsampled = [call for call in calls if call["context"] is not None]
    assert len(downsampled) == 5
    for call in downsampled:
        assert call["context"].shape == (2, 64, WIDTH)
        expected = paper_attention(call["block"].attn1, call["x"], (16, 16))
        torch.testing.assert_close(call["out"], expected, rtol=1e-4, atol=1e-5)


def test_ratio_zero_is_bit_identical_to_the_plain_unet():
    unet = build_unet("sd15", WIDTH)
    x, t, c = unet_inputs(unet, 2, 16, 16)
    reference = unet(x, t, c)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.0, max_depth=3))
    assert torch.equal(unet(x, t, c), reference)
    assert handle.record.downsampled == 0


def test_downsampling_changes_the_output_and_remove_restores_it_bit_for_bit():
    unet = build_unet("sd15", WIDTH)
    x, t, c = unet_inputs(unet, 2, 16, 16)
    reference = unet(x, t, c)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    assert not torch.equal(unet(x, t, c), reference)
    handle.remove()
    assert total_todo_hooks(unet) == 0
    assert torch.equal(unet(x, t, c), reference)


def test_remove_function_clears_hooks_whoever_applied_them():
    unet = build_unet("sdxl", WIDTH)
    x, t, c = unet_inputs(unet, 1, 16, 16)
    reference = unet(x, t, c)
    todo_ext.apply(unet, ToDoConfig(ratio=0.75, max_depth=1))
    assert todo_ext.remove(unet) == 1 + 11 + 11, "the U-Net's, each spatial transformer's and each attn1's"
    assert todo_ext.remove(unet) == 0
    assert all(not m._forward_pre_hooks for m in unet.modules())
    assert torch.equal(unet(x, t, c), reference)


def test_applying_twice_replaces_the_settings_instead_of_stacking():
    unet = build_unet("sd15", WIDTH)
    x, t, c = unet_inputs(unet, 1, 16, 16)
    todo_ext.apply(unet, ToDoConfig(ratio=0.75, max_depth=1))
    hooks_once = total_todo_hooks(unet)
    todo_ext.apply(unet, ToDoConfig(ratio=0.75, max_depth=1))
    assert total_todo_hooks(unet) == hooks_once
    stacked = unet(x, t, c)
    todo_ext.remove(unet)
    todo_ext.apply(unet, ToDoConfig(ratio=0.75, max_depth=1))
    assert torch.equal(unet(x, t, c), stacked)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.9375, max_depth=0))
    calls, _ = record_attn1(unet)
    unet(x, t, c)
    assert {call["context"].shape[1] for call in calls if call["context"] is not None} == {16}
    assert handle.record.downsampled == 5


@pytest.mark.parametrize("latent", [(135, 240), (125, 125), (17, 31)])
def test_odd_grids_use_ceil_arithmetic(latent):
    """1080x1920, 1000x1000 and 136x248 px: latents that are not multiples of 8, run as the WebUI runs them."""
    unet = build_unet("sd15", WIDTH)
    x, t, c = unet_inputs(unet, 1, *latent)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75, max_depth=1))
    calls, _ = record_attn1(unet)
    with webui_skip_resize():
        out = unet(x, t, c)
    assert out.shape == x.shape
    assert handle.record.downsampled == 10 and not handle.record.aside
    level1 = (-(-latent[0] // 2), -(-latent[1] // 2))
    for call in calls:
        grid = latent if call["x"].shape[1] == latent[0] * latent[1] else level1
        if call["context"] is None:
            continue
        kv = (-(-grid[0] // 2), -(-grid[1] // 2))
        assert call["context"].shape[1] == kv[0] * kv[1]
        torch.testing.assert_close(call["out"], paper_attention(call["block"].attn1, call["x"], grid),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_every_batch_size_is_downsampled(batch):
    unet = build_unet("sd15", WIDTH)
    x, t, c = unet_inputs(unet, batch, 16, 16)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    calls, _ = record_attn1(unet)
    unet(x, t, c)
    contexts = [call["context"] for call in calls if call["context"] is not None]
    assert [tuple(ctx.shape) for ctx in contexts] == [(batch, 64, WIDTH)] * 5
    assert handle.record.downsampled == 5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_dtype_and_stays_close_to_the_formula(dtype):
    unet = cast_unet(build_unet("sd15", WIDTH), dtype)
    x, t, c = unet_inputs(unet, 1, 16, 16)
    todo_ext.apply(unet, ToDoConfig(ratio=0.75, method="nearest"))
    calls, _ = record_attn1(unet)
    out = unet(x, t, c)
    assert out.dtype == dtype
    downsampled = [call for call in calls if call["context"] is not None]
    assert len(downsampled) == 5
    for call in downsampled:
        assert call["context"].dtype == dtype
        assert call["out"].dtype == dtype
        attn_fp32 = copy.deepcopy(call["block"].attn1).float()
        expected = paper_attention(attn_fp32, call["x"].float(), (16, 16))
        torch.testing.assert_close(call["out"].float(), expected, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    ("layout", "max_depth", "expected_grids"),
    [
        ("sd15", 0, {256: 64}),
        ("sd15", 1, {256: 64, 64: 16}),
        ("sd15", 3, {256: 64, 64: 16, 16: 4, 4: 1}),
        ("sdxl", 0, {64: 16}),
        ("sdxl", 1, {64: 16, 16: 4}),
    ],
)
def test_depth_counts_from_the_top_attention_level(layout, max_depth, expected_grids):
    """Depth 0 is latent/1 on SD1.x and latent/2 on SDXL; deeper levels stay exact beyond max_depth."""
    unet = build_unet(layout, WIDTH)
    x, t, c = unet_inputs(unet, 1, 16, 16)
    todo_ext.apply(unet, ToDoConfig(ratio=0.75, max_depth=max_depth))
    calls, _ = record_attn1(unet)
    unet(x, t, c)
    seen = {}
    for call in calls:
        tokens = call["x"].shape[1]
        seen[tokens] = None if call["context"] is None else call["context"].shape[1]
    for tokens, kv_tokens in seen.items():
        assert kv_tokens == expected_grids.get(tokens), f"{tokens} tokens -> {kv_tokens} K/V tokens"


def test_deeper_ratios_set_each_level_on_its_own():
    unet = build_unet("sd15", WIDTH)
    x, t, c = unet_inputs(unet, 1, 24, 24)
    todo_ext.apply(unet, ToDoConfig(ratio=0.89, max_depth=2, deeper_ratios=(0.75, 0.0)))
    calls, _ = record_attn1(unet)
    unet(x, t, c)
    seen = {call["x"].shape[1]: call["context"] for call in calls}
    assert seen[576].shape[1] == 64
    assert seen[144].shape[1] == 36
    assert seen[36] is None


@pytest.mark.parametrize(("layout", "levels"), [("sd15", (0, 1, 2, 3)), ("sd21", (0, 1, 2, 3)), ("sdxl", (1, 2))])
def test_auto_mode_picks_the_papers_factors(layout, levels):
    """Fixed K/V budget of 4096 tokens at depth 0: 512 px exact on SD1.x, then 2x, 3x, 4x (SDXL one size up)."""
    unet = build_unet(layout, WIDTH)
    assert todo_ext.attention_levels(unet) == levels
    config = ToDoConfig(auto=True, max_depth=1)
    scale = 2 if layout == "sdxl" else 1
    for pixels, factor in [(512, 1), (1024, 2), (1536, 3), (2048, 4)]:
        latent = pixels * scale // 8
        plans = todo_ext.plan_kv_tokens(config, latent, latent, levels)
        assert [plan.factor for plan in plans[:2]] == [factor, factor]
        assert plans[0].kv_tokens == 4096
        assert all(plan.factor == 1 for plan in plans[2:])


def test_auto_mode_follows_each_pass_and_never_upsamples():
    unet = build_unet("sd15", WIDTH)
    todo_ext.apply(unet, ToDoConfig(auto=True, auto_target_tokens=64))
    calls, _ = record_attn1(unet)
    for side, kv_tokens in [(8, None), (16, 64), (32, 64)]:
        calls.clear()
        unet(*unet_inputs(unet, 1, side, side))
        top = [call["context"] for call in calls if call["x"].shape[1] == side * side]
        assert {None if ctx is None else ctx.shape[1] for ctx in top} == {kv_tokens}


def test_step_window_reads_progress_from_the_timestep():
    unet = build_unet("sd15", WIDTH)
    todo_ext.apply(unet, ToDoConfig(ratio=0.75, start=0.0, end=0.5))
    plain = build_unet("sd15", WIDTH)
    for timestep, expect_downsampled in [(999.0, True), (600.0, True), (400.0, False), (0.0, False)]:
        x, t, c = unet_inputs(unet, 2, 16, 16, timestep=timestep)
        reference = plain(x, t, c)
        assert torch.equal(unet(x, t, c), reference) is not expect_downsampled, timestep


def test_an_unreadable_unet_input_counts_its_attention_calls_as_errors(monkeypatch, caplog):
    """Where the U-Net's input cannot be read (here: its timestep), the call's attention runs exact and the record
    says error, not "outside the step window"."""
    unet = build_unet("sd15", WIDTH)
    x, t, c = unet_inputs(unet, 1, 16, 16)
    reference = unet(x, t, c)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75, start=0.2, end=0.8))

    def unreadable(_timesteps):
        raise RuntimeError("unreadable timestep")

    monkeypatch.setattr(todo_ext.patch, "progress_of_timestep", unreadable)
    with caplog.at_level(logging.WARNING, logger="todo_ext"):
        assert torch.equal(unet(x, t, c), reference)
    assert handle.record.aside == {"error": 5} and handle.record.outside_window == 0
    assert [r.getMessage() for r in caplog.records] == [
        "ToDo: could not read the U-Net input; attention runs unchanged"]


def token_merged_unet():
    """A small SD1.5 U-Net with the WebUI's Token merging (tomesd, 0.5) applied."""
    unet = build_unet("sd15", WIDTH)
    tomesd.apply_patch(LatentDiffusionShell(unet), ratio=0.5, use_rand=False)
    return unet


def test_token_merging_makes_todo_step_aside_with_one_warning(caplog):
    """tomesd (the WebUI's Token merging) merges tokens before attn1: ToDo passes through, never raises."""
    unet = token_merged_unet()
    x, t, c = unet_inputs(unet, 2, 16, 16)
    tome_only = unet(x, t, c)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    with caplog.at_level(logging.WARNING, logger="todo_ext"):
        both = unet(x, t, c)
        unet(x, t, c)
    assert torch.equal(both, tome_only)
    assert handle.record.aside == {"token-merging": 10}
    assert handle.record.downsampled == 0
    assert len([r for r in caplog.records if "Token merging changed the tokens" in r.getMessage()]) == 1


def test_a_shared_warning_set_warns_once_across_the_passes_of_a_generation(caplog):
    unet = token_merged_unet()
    generation_warnings = set()
    with caplog.at_level(logging.WARNING, logger="todo_ext"):
        for side in (16, 32):
            todo_ext.apply(unet, ToDoConfig(ratio=0.75), warned=generation_warnings)
            unet(*unet_inputs(unet, 1, side, side))
        todo_ext.apply(unet, ToDoConfig(ratio=0.75))
        unet(*unet_inputs(unet, 1, 16, 16))
    assert len([r for r in caplog.records if "Token merging changed the tokens" in r.getMessage()]) == 2
    assert generation_warnings == {"token-merging"}


def test_a_failure_inside_todo_falls_back_to_exact_attention(monkeypatch, caplog):
    unet = build_unet("sd15", WIDTH)
    x, t, c = unet_inputs(unet, 1, 16, 16)
    reference = unet(x, t, c)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr("todo_ext.patch.downsample_tokens", broken)
    with caplog.at_level(logging.WARNING, logger="todo_ext"):
        assert torch.equal(unet(x, t, c), reference)
    assert handle.record.aside == {"error": 5}
    assert len([r for r in caplog.records if "downsampling failed" in r.getMessage()]) == 1


def test_works_under_the_plain_einsum_attention_too():
    """Attention optimizers differ in kernel, not in where K/V come from: the result matches SDPA's."""
    unet = build_unet("sd15", WIDTH)
    x, t, c = unet_inputs(unet, 1, 16, 16)
    todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    with_sdpa = unet(x, t, c)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CrossAttention, "forward", LDM_EINSUM_FORWARD)
        with_einsum = unet(x, t, c)
    torch.testing.assert_close(with_einsum, with_sdpa, rtol=1e-4, atol=1e-4)


def test_unsupported_modules_are_rejected_clearly():
    with pytest.raises(todo_ext.UnsupportedModelError, match="neither an ldm/sgm U-Net nor a diffusion transformer"):
        todo_ext.apply(nn.Linear(4, 4), ToDoConfig())
    with pytest.raises(TypeError, match="ToDoConfig"):
        todo_ext.apply(build_unet("sd15", WIDTH), {"ratio": 0.5})


def hypertile_like_wrapper(attn, tiles_per_side):
    """What the WebUI's Hypertile does to attn1: an instance-level forward that attends within tiles, with its
    settings on the `__webui_hypertile_params` attribute."""
    original = attn.forward
    params = types.SimpleNamespace(enabled=True)
    setattr(attn, "__webui_hypertile_params", params)

    def tiled_forward(x, *args, **kwargs):
        if not params.enabled:
            return original(x, *args, **kwargs)
        batch, tokens, channels = x.shape
        side = int(tokens**0.5)
        n, tile = tiles_per_side, side // tiles_per_side
        tiled = x.reshape(batch, n, tile, n, tile, channels).permute(0, 1, 3, 2, 4, 5)
        out = original(tiled.reshape(batch * n * n, tile * tile, channels), *args, **kwargs)
        out = out.reshape(batch, n, n, tile, tile, channels).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(batch, tokens, channels)

    attn.forward = tiled_forward
    return params


def test_hypertile_makes_todo_step_aside_and_todo_returns_when_it_is_off(caplog):
    unet = build_unet("sd15", WIDTH)
    top_blocks = [block for block in transformer_blocks(unet)][:2]
    switches = [hypertile_like_wrapper(block.attn1, 2) for block in top_blocks]
    x, t, c = unet_inputs(unet, 2, 16, 16)
    hypertile_only = unet(x, t, c)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    with caplog.at_level(logging.WARNING, logger="todo_ext"):
        both = unet(x, t, c)
    assert torch.isfinite(both).all()
    assert handle.record.aside == {"hypertile": 2}
    assert handle.record.downsampled == 3
    assert len([r for r in caplog.records if "Hypertile" in r.getMessage()]) == 1
    todo_ext.remove(unet)
    for switch in switches:
        switch.enabled = False
    plain = unet(x, t, c)
    todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    assert not torch.equal(unet(x, t, c), plain)
    assert not torch.equal(hypertile_only, plain)


class ShrunkInput(nn.Module):
    """Deep Shrink (Kohya hires fix) as the hosts run it: the hidden state resized by `scale` before an input block.

    rounding "floor" is Kohya's A1111 extension (F.interpolate with scale_factor, bicubic, in a module wrapped
    around input_blocks[N]); "round" is Forge's and reForge's built-in one (bicubic resize to round(side * scale),
    an input-block patch after the skip). The way back up is the WebUI's size-safe skip concatenation.
    """

    def __init__(self, block: nn.Module, scale: float, rounding: str):
        super().__init__()
        self.block = block
        self.scale = scale
        self.rounding = rounding

    def forward(self, h, *args):
        if self.rounding == "floor":
            h = nn.functional.interpolate(h, scale_factor=self.scale, mode="bicubic")
        else:
            size = [round(side * self.scale) for side in h.shape[-2:]]
            h = nn.functional.interpolate(h, size=size, mode="bicubic")
        return self.block(h, *args)


def deep_shrink(unet, block_index, scale=0.5, rounding="floor"):
    unet.input_blocks[block_index] = ShrunkInput(unet.input_blocks[block_index], scale, rounding)


def record_attn1_with_grids(unet):
    """record_attn1, plus the (height, width) of the hidden state each call's SpatialTransformer received: the grid
    the attention really runs on, read independently of ToDo."""
    current = {}
    for module in unet.modules():
        if type(module).__name__ == "SpatialTransformer":
            module.register_forward_pre_hook(lambda _m, args: current.update(grid=tuple(args[0].shape[-2:])))
    calls, _ = record_attn1(unet)
    for block in transformer_blocks(unet):
        block.attn1.register_forward_pre_hook(lambda _m, _args: calls[-1].update(grid=current["grid"]))
    return calls


# Depth 0 is latent/1 on SD1.x and latent/2 on SDXL; the shrunken block is the first one with self-attention there
# (Forge's default, block 3 after the skip, is exactly this block on SDXL).
DEPTH0_SHRINK = {"sd15": (1, 0), "sdxl": (4, 1)}


@pytest.mark.parametrize("layout", ["sd15", "sdxl"])
@pytest.mark.parametrize(("latent", "rounding"), [((32, 32), "floor"), ((24, 40), "round"), ((27, 45), "floor"),
                                                  ((27, 45), "round")])
@pytest.mark.parametrize("apply_first", [True, False])
def test_deep_shrink_at_depth_0_is_downsampled_on_the_shrunken_grid(layout, latent, rounding, apply_first):
    """Every depth-0 attn1 call is downsampled, each output is softmax(Q D(K)^T / sqrt(d)) D(V) on the grid it got.

    Kohya's A1111 extension wraps the block in the denoiser callback, after ToDo hooked the U-Net (apply_first); a
    later pass hooks a U-Net that is wrapped already.
    """
    unet = build_unet(layout, WIDTH)
    block_index, level = DEPTH0_SHRINK[layout]
    x, t, c = unet_inputs(unet, 2, *latent)
    config = ToDoConfig(ratio=0.75, max_depth=0)
    if apply_first:
        handle = todo_ext.apply(unet, config)
        deep_shrink(unet, block_index, 0.5, rounding)
    else:
        deep_shrink(unet, block_index, 0.5, rounding)
        handle = todo_ext.apply(unet, config)
    calls = record_attn1_with_grids(unet)
    with webui_skip_resize():
        out = unet(x, t, c)
    assert out.shape == x.shape
    own_grid = (-(-latent[0] // 2**level), -(-latent[1] // 2**level))
    depth0 = [call for call in calls if call["block"] in transformer_blocks(unet)[:2] + transformer_blocks(unet)[-3:]]
    assert sum(call["grid"] != own_grid for call in depth0) == 4, "the reproduction shrinks four depth-0 calls"
    assert handle.record.downsampled == len(depth0) and not handle.record.aside
    for call in depth0:
        grid = call["grid"]
        assert call["context"].shape[1] == -(-grid[0] // 2) * -(-grid[1] // 2)
        torch.testing.assert_close(call["out"], paper_attention(call["block"].attn1, call["x"], grid),
                                   rtol=1e-4, atol=1e-5)
    assert all(call["context"] is None for call in calls if call not in depth0)


def test_deep_shrink_reaches_deeper_depths_with_their_own_ratio():
    """A shrink at depth 0 shrinks depth 1 as well: downsampled there on its grid with the deeper ratio (3x)."""
    unet = build_unet("sd15", WIDTH)
    deep_shrink(unet, 1, 0.5, "floor")
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75, max_depth=1, deeper_ratios=(0.89,)))
    calls = record_attn1_with_grids(unet)
    with webui_skip_resize():
        unet(*unet_inputs(unet, 1, 40, 56))
    blocks = transformer_blocks(unet)
    depth1 = [call for call in calls if call["block"] in blocks[2:4] + blocks[-6:-3]]
    assert {call["grid"] for call in depth1} == {(10, 14)}
    assert not handle.record.aside
    for call in depth1:
        assert call["context"].shape[1] == 4 * 5
        torch.testing.assert_close(call["out"], paper_attention(call["block"].attn1, call["x"], (10, 14), stride=3),
                                   rtol=1e-4, atol=1e-5)


def test_auto_follows_the_tokens_each_call_gets_under_deep_shrink():
    """Auto's factor comes from the call's own token count: the shrunken 16x16 calls fit the 256-token target and
    stay exact, the 32x32 call where the size-safe concat restored the grid is halved."""
    unet = build_unet("sd15", WIDTH)
    deep_shrink(unet, 1, 0.5, "floor")
    handle = todo_ext.apply(unet, ToDoConfig(auto=True, auto_target_tokens=256))
    calls = record_attn1_with_grids(unet)
    with webui_skip_resize():
        unet(*unet_inputs(unet, 1, 32, 32))
    depth0 = {(call["grid"], None if call["context"] is None else call["context"].shape[1])
              for call in calls if call["grid"][0] >= 16}
    assert depth0 == {((16, 16), None), ((32, 32), 256)}
    assert handle.record.downsampled == 1 and not handle.record.aside


def test_token_merging_on_a_grid_of_another_aspect_still_steps_aside(caplog):
    """On a 16x24 latent tomesd leaves 192 tokens: 12x16 has that many, but no resize of 16x24 gives it."""
    unet = token_merged_unet()
    x, t, c = unet_inputs(unet, 1, 16, 24)
    tome_only = unet(x, t, c)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    with caplog.at_level(logging.WARNING, logger="todo_ext"):
        assert torch.equal(unet(x, t, c), tome_only)
    assert handle.record.aside == {"token-merging": 5}
    assert handle.record.downsampled == 0
    assert len([r for r in caplog.records if "Token merging changed the tokens" in r.getMessage()]) == 1


def test_token_merging_whose_count_happens_to_be_a_grid_still_steps_aside():
    """tomesd at 0.4375 leaves 144 of 256 tokens: 12x12 is what a 0.75 resize of 16x16 gives, but the blocks are
    tomesd's, so ToDo steps aside."""
    unet = build_unet("sd15", WIDTH)
    tomesd.apply_patch(LatentDiffusionShell(unet), ratio=0.4375, use_rand=False)
    x, t, c = unet_inputs(unet, 1, 16, 16)
    tome_only = unet(x, t, c)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    assert torch.equal(unet(x, t, c), tome_only)
    assert handle.record.downsampled == 0 and handle.record.aside == {"token-merging": 5}
