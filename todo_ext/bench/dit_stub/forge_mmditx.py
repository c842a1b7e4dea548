"""Mirrors WebUI Forge's backend/nn/mmditx.py (SD3, SD3.5): the module-level `attention(q, k, v, heads, mask=None)`
that every block calls on (batch, tokens, heads * dim), joint blocks mixing [context, x], and SD3.5 Medium's second
self-attention over x alone in the blocks of `x_block_self_attn_layers`. No RoPE: a cropped absolute position
embedding is added to the patches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def attention(q, k, v, heads, mask=None):
    """Mirrors mmditx.py attention: heads split, SDPA with the mask, heads merged."""
    batch, _, inner = q.shape
    dim_head = inner // heads
    q, k, v = (t.view(batch, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, -1, heads * dim_head)


class PatchEmbed(nn.Module):
    """Mirrors mmditx.py PatchEmbed: a strided conv, no padding (an odd side loses its last row or column)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = (patch_size,) * 2
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).mT


def modulate(x, shift, scale):
    """Mirrors mmditx.py modulate: scale around 1 and shift, per token."""
    return x * (scale[:, None] + 1) + shift[:, None]


class TimestepEmbedder(nn.Module):
    """Mirrors mmditx.py TimestepEmbedder."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 64):
        super().__init__()
        self.half = frequency_embedding_size // 2
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t, dtype):
        half = self.half
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        angles = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).to(dtype))


class SelfAttention(nn.Module):
    """Mirrors mmditx.py SelfAttention: pre_attention makes (q, k, v) as (batch, tokens, heads * dim),
    post_attention projects the output."""

    def __init__(self, dim: int, num_heads: int, pre_only: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)

    def pre_attention(self, x):
        """Mirrors SelfAttention.pre_attention (split_qkv, no QK norm here)."""
        q, k, v = self.qkv(x).reshape(x.shape[0], x.shape[1], 3, -1).unbind(2)
        return q, k, v

    def post_attention(self, x):
        """Mirrors SelfAttention.post_attention."""
        return self.proj(x)


class DismantledBlock(nn.Module):
    """Mirrors mmditx.py DismantledBlock: adaLN-modulated attention and MLP; with `x_block_self_attn` a second
    attention (attn2) over the same normed x, its own shift, scale and gate (9 modulations)."""

    def __init__(self, hidden_size: int, num_heads: int, pre_only: bool = False, x_block_self_attn: bool = False):
        super().__init__()
        self.pre_only = pre_only
        self.x_block_self_attn = x_block_self_attn
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads, pre_only)
        if x_block_self_attn:
            self.attn2 = SelfAttention(hidden_size, num_heads)
        if not pre_only:
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(hidden_size, 2 * hidden_size), nn.GELU(approximate="tanh"),
                                     nn.Linear(2 * hidden_size, hidden_size))
        self.n_mods = 9 if x_block_self_attn else 2 if pre_only else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, self.n_mods * hidden_size))

    def pre_attention(self, x, c):
        """Mirrors DismantledBlock.pre_attention: q, k, v of the modulated x, and what post_attention needs (the
        modulations, in order: shift and scale of the attention's input, its gate, the MLP's shift, scale, gate)."""
        mods = self.adaLN_modulation(c).chunk(self.n_mods, dim=1)
        qkv = self.attn.pre_attention(modulate(self.norm1(x), mods[0], mods[1]))
        return (qkv, None) if self.pre_only else (qkv, (x, *mods[2:6]))

    def _mlp_residual(self, x, shift, scale, gate):
        return x + gate[:, None] * self.mlp(modulate(self.norm2(x), shift, scale))

    def post_attention(self, attn, x, gate, mlp_shift, mlp_scale, mlp_gate):
        """Mirrors DismantledBlock.post_attention: gated residual, then the modulated MLP."""
        return self._mlp_residual(x + gate[:, None] * self.attn.post_attention(attn), mlp_shift, mlp_scale, mlp_gate)

    def pre_attention_x(self, x, c):
        """Mirrors DismantledBlock.pre_attention_x: both attentions' q, k, v from one norm of x (attn2's shift,
        scale and gate are the last three modulations)."""
        mods = self.adaLN_modulation(c).chunk(self.n_mods, dim=1)
        normed = self.norm1(x)
        first = self.attn.pre_attention(modulate(normed, mods[0], mods[1]))
        second = self.attn2.pre_attention(modulate(normed, mods[6], mods[7]))
        return first, second, (x, *mods[2:6], mods[8])

    def post_attention_x(self, attn, attn2, x, gate, mlp_shift, mlp_scale, mlp_gate, gate2):
        """Mirrors DismantledBlock.post_attention_x: both attentions' gated residuals, then the MLP."""
        x = x + gate[:, None] * self.attn.post_attention(attn) + gate2[:, None] * self.attn2.post_attention(attn2)
        return self._mlp_residual(x, mlp_shift, mlp_scale, mlp_gate)


def mix(context, x, context_block, x_block, c, attend):
    """One joint block: `attend(q, k, v, heads)` over [context, x] with the x block's heads, then, in an
    x_block_self_attn block, over x alone with attn2's projections. Both hosts' block_mixing are this, each with
    the `attention` of its own module (the name ToDo replaces)."""
    context_qkv, context_rest = context_block.pre_attention(context, c)
    if x_block.x_block_self_attn:
        x_qkv, x_qkv2, x_rest = x_block.pre_attention_x(x, c)
    else:
        (x_qkv, x_rest), x_qkv2 = x_block.pre_attention(x, c), None
    joint = attend(*(torch.cat(pair, dim=1) for pair in zip(context_qkv, x_qkv, strict=True)),
                   x_block.attn.num_heads)
    split = context_qkv[0].shape[1]
    context = None if context_block.pre_only else context_block.post_attention(joint[:, :split], *context_rest)
    if x_qkv2 is None:
        return context, x_block.post_attention(joint[:, split:], *x_rest)
    image_only = attend(*x_qkv2, x_block.attn2.num_heads)
    return context, x_block.post_attention_x(joint[:, split:], image_only, *x_rest)


def block_mixing(context, x, context_block, x_block, c):
    """Mirrors mmditx.py block_mixing, calling this module's `attention`."""
    return mix(context, x, context_block, x_block, c, attention)


class JointBlock(nn.Module):
    """Mirrors mmditx.py JointBlock: forward(context, x, c=...) is block_mixing of its two halves."""

    def __init__(self, hidden_size: int, num_heads: int, pre_only: bool, x_block_self_attn: bool = False):
        super().__init__()
        self.context_block = DismantledBlock(hidden_size, num_heads, pre_only=pre_only)
        self.x_block = DismantledBlock(hidden_size, num_heads, x_block_self_attn=x_block_self_attn)

    def forward(self, context, x, c):
        return block_mixing(context, x, self.context_block, self.x_block, c)


class FinalLayer(nn.Module):
    """Mirrors mmditx.py FinalLayer."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, 1e-6, False)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        return self.linear(modulate(self.norm_final(x), *self.adaLN_modulation(c).chunk(2, dim=1)))


class MMDiTX(nn.Module):
    """Mirrors mmditx.py MMDiTX: forward(x, t, y=None, context=None, control=None, transformer_options={},
    **kwargs); hidden size 64 * depth with `depth` heads (the host's "magic"), the last block's context half
    pre-only, `transformer_options["skip_layers"]` skipped, x patch-embedded plus the cropped position embedding,
    optional register tokens before the context."""

    def __init__(self, patch_size=2, in_channels=4, depth=2, adm_in_channels=8, context_dim=16, register_length=0,
                 pos_embed_max_size=16, x_block_self_attn_layers=()):
        super().__init__()
        hidden_size = 64 * depth
        self.out_channels, self.pos_side = in_channels, pos_embed_max_size
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = nn.Sequential(nn.Linear(adm_in_channels, hidden_size), nn.SiLU(),
                                        nn.Linear(hidden_size, hidden_size))
        self.context_embedder = nn.Linear(context_dim, hidden_size)
        self.register_length = register_length
        if register_length:
            self.register = nn.Parameter(torch.randn(1, register_length, hidden_size))
        self.register_buffer("pos_embed", torch.randn(1, pos_embed_max_size**2, hidden_size) * 0.1)
        self.joint_blocks = nn.ModuleList(JointBlock(hidden_size, depth, pre_only=i == depth - 1,
                                                     x_block_self_attn=i in x_block_self_attn_layers)
                                          for i in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def cropped_pos_embed(self, hw):
        """Mirrors MMDiTX.cropped_pos_embed: the centre (height // p, width // p) of the position grid."""
        patch = self.x_embedder.patch_size[0]
        rows, cols = hw[0] // patch, hw[1] // patch
        top, left = (self.pos_side - rows) // 2, (self.pos_side - cols) // 2
        grid = self.pos_embed.view(1, self.pos_side, self.pos_side, -1)
        return grid[:, top:top + rows, left:left + cols].reshape(1, rows * cols, -1)

    def unpatchify(self, x, hw):
        """Mirrors MMDiTX.unpatchify."""
        patch = self.x_embedder.patch_size[0]
        rows, cols = hw[0] // patch, hw[1] // patch
        x = x.reshape(x.shape[0], rows, cols, patch, patch, self.out_channels)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], self.out_channels, rows * patch, cols * patch)

    def forward(self, x, t, y=None, context=None, control=None, transformer_options={}, **kwargs):  # noqa: B006
        skipped = set(transformer_options.get("skip_layers", ()))
        hw = x.shape[-2:]
        x = self.x_embedder(x) + self.cropped_pos_embed(hw).to(x)
        c = self.t_embedder(t, dtype=x.dtype)
        if y is not None:
            c = c + self.y_embedder(y)
        text = self.context_embedder(context)
        if self.register_length:
            text = torch.cat((self.register.expand(x.shape[0], -1, -1), text), dim=1)
        for index, block in enumerate(self.joint_blocks):
            if index not in skipped:
                text, x = block(text, x, c=c)
        return self.unpatchify(self.final_layer(x, c), hw)
