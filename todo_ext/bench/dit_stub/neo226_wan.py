"""Mirrors Forge Neo 2.26's backend/nn/wan.py (Wan 2.x): the self-attention calls the module-level `attention` (a
rebindable wrapper of `attention_function`, there for RadialAttention) as `attention(q, k, v, heads=...,
transformer_options=...)`; the cross-attention calls `attention_function` directly. forward_orig puts each block's
index into `transformer_options["block_index"]`. Patching, RoPE and token order are neo_wan's."""

from __future__ import annotations

from . import neo_wan
from .neo_attention import attention_function
from .neo_flux import _apply_rope


def attention(*args, **kwargs):
    """Mirrors wan.py attention."""
    function = attention_function
    return function(*args, **kwargs)


class WanSelfAttention(neo_wan.WanSelfAttention):
    """Mirrors wan.py WanSelfAttention.forward(x, freqs, transformer_options={})."""

    def forward(self, x, freqs, transformer_options={}):  # noqa: B006 - the host's signature
        batch, tokens = x.shape[:2]
        heads, dim = self.num_heads, self.head_dim
        q = _apply_rope(self.norm_q(self.q(x)).view(batch, tokens, heads, dim), freqs)
        k = _apply_rope(self.norm_k(self.k(x)).view(batch, tokens, heads, dim), freqs)
        x = attention(q.view(batch, tokens, heads * dim), k.view(batch, tokens, heads * dim),
                      self.v(x).view(batch, tokens, heads * dim), heads=heads, transformer_options=transformer_options)
        return self.o(x)


class WanT2VCrossAttention(neo_wan.WanSelfAttention):
    """Mirrors wan.py WanT2VCrossAttention.forward(x, context, **kwargs), through `attention_function`."""

    def forward(self, x, context, **kwargs):
        q = self.norm_q(self.q(x))
        k = self.norm_k(self.k(context))
        return self.o(attention_function(q, k, self.v(context), heads=self.num_heads))


class WanAttentionBlock(neo_wan.WanAttentionBlock):
    """Mirrors wan.py WanAttentionBlock.forward(x, e, freqs, context, context_img_len=257, transformer_options={})."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: bool = True, cross_attn_norm: bool = True,
                 eps: float = 1e-6):
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps)
        self.self_attn = WanSelfAttention(dim, num_heads, qk_norm, eps)
        self.cross_attn = WanT2VCrossAttention(dim, num_heads, qk_norm, eps)

    def forward(self, x, e, freqs, context, context_img_len=257, transformer_options={}):  # noqa: B006
        e = (self.modulation.to(x) + e).chunk(6, dim=1)
        x = x + self.self_attn(self.norm1(x) * (1 + e[1]) + e[0], freqs, transformer_options=transformer_options) * e[2]
        cross = self.cross_attn(self.norm3(x), context, context_img_len=context_img_len)
        x = x + cross
        return x + self.ffn(self.norm2(x) * (1 + e[4]) + e[3]) * e[5]


class WanModel(neo_wan.WanModel):
    """Mirrors wan.py WanModel: neo_wan's forward, with 2.26's blocks and `block_index` set per block."""

    attention_block = WanAttentionBlock

    def forward_orig(self, x, t, context, clip_fea=None, freqs=None, transformer_options={}, **kwargs):  # noqa: B006
        x = self.patch_embedding(x)
        grid_sizes = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        e = self.time_embedding(neo_wan.sinusoidal_embedding_1d(self.freq_dim, t.flatten()).to(x.dtype))
        e0 = self.time_projection(e).unflatten(1, (6, self.dim))
        context = self.text_embedding(context)
        transformer_options.update(total_blocks=len(self.blocks))
        for index, block in enumerate(self.blocks):
            transformer_options["block_index"] = index
            x = block(x, e=e0, freqs=freqs, context=context, context_img_len=None,
                      transformer_options=transformer_options)
        return self.unpatchify(self.head(x, e), grid_sizes)
