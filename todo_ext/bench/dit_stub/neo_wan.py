"""Mirrors Forge Neo's backend/nn/wan.py (Wan 2.x): self-attention over the video's (frames, height, width)
patches and cross-attention to the text, both through the module global `optimized_attention` (backend/attention.py's
`attention_function`, imported under that name), called `optimized_attention(q, k, v, heads=...)` on (batch, tokens,
heads * dim); RoPE (flux.py's `_apply_rope`) on the self-attention's q and k only."""

from __future__ import annotations

import math

import torch
from torch import nn

from .neo_attention import attention_function as optimized_attention
from .neo_flux import EmbedND, _apply_rope
from .neo_utils import pad_to_patch_size


def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Mirrors wan.py sinusoidal_embedding_1d."""
    half = dim // 2
    angles = torch.outer(position.float(), torch.pow(10000, -torch.arange(half).to(position).float().div(half)))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class WanSelfAttention(nn.Module):
    """Mirrors wan.py WanSelfAttention.forward(x, freqs): q and k RMS-normed over all heads, RoPE'd per head."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    def forward(self, x, freqs):
        batch, tokens = x.shape[:2]
        heads, dim = self.num_heads, self.head_dim
        q = _apply_rope(self.norm_q(self.q(x)).view(batch, tokens, heads, dim), freqs)
        k = _apply_rope(self.norm_k(self.k(x)).view(batch, tokens, heads, dim), freqs)
        x = optimized_attention(q.view(batch, tokens, heads * dim), k.view(batch, tokens, heads * dim),
                                self.v(x).view(batch, tokens, heads * dim), heads=self.num_heads)
        return self.o(x)


class WanT2VCrossAttention(WanSelfAttention):
    """Mirrors wan.py WanT2VCrossAttention.forward(x, context, **kwargs): the video's queries, the text's keys."""

    def forward(self, x, context, **kwargs):
        q = self.norm_q(self.q(x))
        k = self.norm_k(self.k(context))
        return self.o(optimized_attention(q, k, self.v(context), heads=self.num_heads))


class WanAttentionBlock(nn.Module):
    """Mirrors wan.py WanAttentionBlock.forward(x, e, freqs, context, context_img_len=257): modulated
    self-attention, cross-attention, feed-forward."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: bool = True, cross_attn_norm: bool = True,
                 eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(dim, num_heads, qk_norm, eps)
        self.norm3 = nn.LayerNorm(dim, eps) if cross_attn_norm else nn.Identity()
        self.cross_attn = WanT2VCrossAttention(dim, num_heads, qk_norm, eps)
        self.norm2 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x, e, freqs, context, context_img_len=257):
        e = (self.modulation.to(x) + e).chunk(6, dim=1)
        x = x + self.self_attn(self.norm1(x) * (1 + e[1]) + e[0], freqs) * e[2]
        x = x + self.cross_attn(self.norm3(x), context, context_img_len=context_img_len)
        return x + self.ffn(self.norm2(x) * (1 + e[4]) + e[3]) * e[5]


class Head(nn.Module):
    """Mirrors wan.py Head."""

    def __init__(self, dim: int, out_dim: int, patch_size, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x, e):
        shift, scale = (self.modulation.to(x) + e.unsqueeze(1)).chunk(2, dim=1)
        return self.head(self.norm(x) * (1 + scale) + shift)


class WanModel(nn.Module):
    """Mirrors wan.py WanModel: forward(x, timestep, context, clip_fea=None, time_dim_concat=None,
    transformer_options={}, **kwargs) on (batch, channels, frames, height, width): pads to the patch size, appends
    `time_dim_concat` (padded too) as further frames, gives each patch the RoPE ids (frame, row, column), and
    forward_orig patch-embeds with a Conv3d and runs the blocks on the (frames * rows * cols) tokens. Its blocks are
    `attention_block` (Neo 2.26's wan.py stand-in has its own)."""

    attention_block = WanAttentionBlock

    def __init__(self, patch_size=(1, 2, 2), text_len=8, in_dim=4, dim=64, ffn_dim=128, freq_dim=32, text_dim=16,
                 out_dim=4, num_heads=2, num_layers=2, qk_norm=True, cross_attn_norm=True, eps=1e-6):
        super().__init__()
        self.patch_size = patch_size
        self.text_len = text_len
        self.in_dim, self.dim, self.freq_dim, self.out_dim = in_dim, dim, freq_dim, out_dim
        def two_layers(inputs, activation):
            return nn.Sequential(nn.Linear(inputs, dim), activation, nn.Linear(dim, dim))

        self.patch_embedding = nn.Conv3d(in_dim, dim, patch_size, patch_size)
        self.text_embedding = two_layers(text_dim, nn.GELU(approximate="tanh"))
        self.time_embedding = two_layers(freq_dim, nn.SiLU())
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(self.attention_block(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps)
                                    for _ in range(num_layers))
        self.head = Head(dim, out_dim, patch_size, eps)
        head_dim = dim // num_heads
        self.rope_embedder = EmbedND(head_dim, 10000.0,
                                     [head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6)])

    def forward_orig(self, x, t, context, clip_fea=None, freqs=None, transformer_options={}, **kwargs):  # noqa: B006
        """Mirrors WanModel.forward_orig: patch embedding, time modulations, text embedding, blocks, head."""
        x = self.patch_embedding(x)
        grid_sizes = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        e = self.time_embedding(sinusoidal_embedding_1d(self.freq_dim, t.flatten()).to(x.dtype))
        e0 = self.time_projection(e).unflatten(1, (6, self.dim))
        context = self.text_embedding(context)
        for block in self.blocks:
            x = block(x, e=e0, freqs=freqs, context=context, context_img_len=None)
        return self.unpatchify(self.head(x, e), grid_sizes)

    def forward(self, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={}, **kwargs):  # noqa: B006
        _, _, frames, height, width = x.shape
        x = pad_to_patch_size(x, self.patch_size)
        if time_dim_concat is not None:
            x = torch.cat([x, pad_to_patch_size(time_dim_concat, self.patch_size)], dim=2)
        grid = [side // patch for side, patch in zip(x.shape[2:], self.patch_size, strict=True)]
        ids = torch.zeros(*grid, 3, dtype=x.dtype, device=x.device)
        for axis, size in enumerate(grid):
            shape = [1, 1, 1]
            shape[axis] = size
            ids[..., axis] = torch.arange(size, dtype=x.dtype, device=x.device).view(shape)
        freqs = self.rope_embedder(ids.reshape(1, -1, 3).expand(x.shape[0], -1, -1)).movedim(1, 2)
        out = self.forward_orig(x, timestep, context, clip_fea=clip_fea, freqs=freqs,
                                transformer_options=transformer_options, **kwargs)
        return out[:, :, :frames, :height, :width]

    def unpatchify(self, x, grid_sizes):
        """Mirrors WanModel.unpatchify."""
        batch = x.shape[0]
        patch = self.patch_size
        x = x[:, :math.prod(grid_sizes)].view(batch, *grid_sizes, *patch, self.out_dim)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(batch, self.out_dim, *(size * step for size, step in zip(grid_sizes, patch, strict=True)))
