"""ToDo under sgm's calling convention (SDXL in the WebUI): attn1(x, context=None, additional_tokens=...,
n_times_crossframe_attn_in_self=...).

sgm is not on PyPI, so the U-Net is ldm's in the SDXL layout, and each block's forward and attention forward are
swapped, per instance, for ones that follow sgm.modules.attention.BasicTransformerBlock._forward and
CrossAttention.forward.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from einops import repeat

import todo_ext
from todo_ext import ToDoConfig
from todo_ext.bench.models import build_unet, unet_inputs


def sgm_attention_forward(self, x, context=None, mask=None, additional_tokens=None,
                          n_times_crossframe_attn_in_self=0):
    """sgm's CrossAttention.forward: extra tokens join the queries and (through the default context) K/V."""
    if additional_tokens is not None:
        n_extra = additional_tokens.shape[1]
        x = torch.cat([additional_tokens, x], dim=1)
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    if n_times_crossframe_attn_in_self:
        frames = x.shape[0] // n_times_crossframe_attn_in_self
        k = repeat(k[::n_times_crossframe_attn_in_self], "b ... -> (b n) ...", n=frames)
        v = repeat(v[::n_times_crossframe_attn_in_self], "b ... -> (b n) ...", n=frames)
    batch, _, channels = q.shape
    q, k, v = (t.reshape(batch, -1, self.heads, channels // self.heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, -1, channels)
    if additional_tokens is not None:
        out = out[:, n_extra:]
    self.calls.append({"x": x, "context": context, "out": out})
    return self.to_out(out)


def make_sgm_block_forward(additional_tokens, n_times):
    def sgm_block_forward(self, x, context=None):
        """sgm's BasicTransformerBlock._forward, with the two extra keywords on attn1 (the extra tokens only where
        their width matches the level's)."""
        matching_extra = additional_tokens if additional_tokens is not None and \
            additional_tokens.shape[-1] == x.shape[-1] else None
        x = self.attn1(
            self.norm1(x),
            context=context if self.disable_self_attn else None,
            additional_tokens=matching_extra,
            n_times_crossframe_attn_in_self=n_times if not self.disable_self_attn else 0,
        ) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x

    return sgm_block_forward


def sgm_style_unet(additional_tokens=None, n_times=0):
    unet = build_unet("sdxl", 64)
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    for block in blocks:
        block._forward = types.MethodType(make_sgm_block_forward(additional_tokens, n_times), block)
        for attn in (block.attn1, block.attn2):
            attn.forward = types.MethodType(sgm_attention_forward, attn)
            attn.calls = []
    return unet, blocks


def strided(tokens, grid):
    batch, _, channels = tokens.shape
    return tokens.reshape(batch, *grid, channels)[:, ::2, ::2].reshape(batch, -1, channels)


@pytest.mark.parametrize("with_extra_tokens", [False, True])
def test_sgm_keywords_pass_through_and_extra_tokens_stay_in_kv(with_extra_tokens):
    extra = torch.randn(2, 3, 128) if with_extra_tokens else None
    unet, blocks = sgm_style_unet(additional_tokens=extra)
    x, t, c = unet_inputs(unet, 2, 16, 16)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75, max_depth=0))
    assert unet(x, t, c).shape == x.shape
    assert handle.record.downsampled == 5
    top_level = [block.attn1.calls[0] for block in blocks if block.attn1.calls[0]["out"].shape[1] == 64]
    assert len(top_level) == 5
    for call in top_level:
        grid_tokens = call["x"][:, 3:] if with_extra_tokens else call["x"]
        expected = strided(grid_tokens, (8, 8))
        if with_extra_tokens:
            expected = torch.cat([extra, expected], dim=1)
        assert torch.equal(call["context"], expected)


def test_cross_frame_attention_keeps_working():
    unet, blocks = sgm_style_unet(n_times=2)
    x, t, c = unet_inputs(unet, 4, 16, 16)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    assert torch.isfinite(unet(x, t, c)).all()
    assert handle.record.downsampled == 5 and not handle.record.aside
    assert {block.attn1.calls[0]["context"].shape for block in blocks if block.attn1.calls[0]["x"].shape[1] == 64} \
        == {torch.Size([4, 16, 128])}
