"""Mirrors Forge Neo 2.26's backend/nn/anima.py (Anima, on Cosmos): each block's self-attention runs over the
image's (frames, rows, columns) patches alone and its cross-attention from them to the text, both through
`SelfCrossAttention.torch_attention_op`, which calls the module global `attention_function(q, k, v, heads,
skip_reshape=True, transformer_options=...)` on (batch, heads, tokens, dim); RoPE on the self-attention's q and k
only. Reference latents (`dynamic_args.ref_latents`) are appended as further frames before patching."""

from __future__ import annotations

import torch
from torch import nn

from .neo226_args import dynamic_args
from .neo_attention import attention_function
from .neo_flux import EmbedND, _apply_rope, timestep_embedding
from .neo_utils import pad_to_patch_size


class SelfCrossAttention(nn.Module):
    """Mirrors anima.py SelfCrossAttention: self-attention where `context_dim` is None, else cross-attention."""

    def __init__(self, query_dim: int, context_dim: int | None, n_heads: int, head_dim: int):
        super().__init__()
        self.is_self = context_dim is None
        self.n_heads, self.head_dim = n_heads, head_dim
        inner = n_heads * head_dim
        self.q_proj = nn.Linear(query_dim, inner, bias=False)
        self.k_proj = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.v_proj = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.q_norm, self.k_norm = nn.RMSNorm(head_dim), nn.RMSNorm(head_dim)
        self.output_proj = nn.Linear(inner, query_dim, bias=False)

    @staticmethod
    def torch_attention_op(q, k, v, transformer_options={}):  # noqa: B006 - the host's signature
        """Mirrors SelfCrossAttention.torch_attention_op: (batch, tokens, heads, dim) in, heads first to the call."""
        return attention_function(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), q.shape[-2],
                                  skip_reshape=True, transformer_options=transformer_options)

    def forward(self, x, context=None, rope_emb=None, transformer_options={}):  # noqa: B006
        source = x if context is None else context
        q = self.q_norm(self.q_proj(x).unflatten(-1, (self.n_heads, self.head_dim)))
        k = self.k_norm(self.k_proj(source).unflatten(-1, (self.n_heads, self.head_dim)))
        v = self.v_proj(source).unflatten(-1, (self.n_heads, self.head_dim))
        if self.is_self and rope_emb is not None:
            q = _apply_rope(q.transpose(1, 2), rope_emb).transpose(1, 2)
            k = _apply_rope(k.transpose(1, 2), rope_emb).transpose(1, 2)
        return self.output_proj(self.torch_attention_op(q, k, v, transformer_options=transformer_options))


class Block(nn.Module):
    """Mirrors anima.py Block: modulated self-attention, cross-attention to the text, MLP."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = SelfCrossAttention(dim, None, heads, dim // heads)
        self.cross_attn = SelfCrossAttention(dim, context_dim, heads, dim // heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.adaln = nn.Linear(dim, 6 * dim)

    def forward(self, x, emb, context, rope_emb, transformer_options={}):  # noqa: B006
        shift, scale, gate, cross_shift, cross_scale, mlp_gate = self.adaln(emb).chunk(6, dim=-1)
        x = x + gate * self.self_attn(self.norm(x) * (1 + scale) + shift, rope_emb=rope_emb,
                                      transformer_options=transformer_options)
        x = x + self.cross_attn(self.norm(x) * (1 + cross_scale) + cross_shift, context,
                                transformer_options=transformer_options)
        return x + mlp_gate * self.mlp(self.norm(x))


class Anima(nn.Module):
    """Mirrors anima.py Anima.forward(x, timesteps, context, padding_mask=None, **kwargs) on (batch, channels,
    frames, height, width): references appended along the frames, padding to (patch_temporal, patch_spatial,
    patch_spatial), the padding-mask channel concatenated, patches row-major over (frames, rows, columns)."""

    def __init__(self, in_channels=4, model_channels=64, num_heads=2, num_blocks=2, patch_spatial=2, patch_temporal=1,
                 context_dim=16):
        super().__init__()
        self.patch_spatial, self.patch_temporal = patch_spatial, patch_temporal
        self.in_channels = in_channels
        self.x_embedder = nn.Linear((in_channels + 1) * patch_spatial**2 * patch_temporal, model_channels)
        self.t_embedder = nn.Linear(32, model_channels)
        self.pos_embedder = EmbedND(model_channels // num_heads, 10000, (8, 12, 12))
        self.blocks = nn.ModuleList(Block(model_channels, context_dim, num_heads) for _ in range(num_blocks))
        self.final_layer = nn.Linear(model_channels, in_channels * patch_spatial**2 * patch_temporal)

    def forward(self, x, timesteps, context, padding_mask=None, **kwargs):
        frames, height, width = x.shape[2:]
        for ref in dynamic_args.ref_latents:
            x = torch.cat((x, ref.to(x).expand(x.shape[0], -1, -1, -1, -1)), dim=2)
        pt, ps = self.patch_temporal, self.patch_spatial
        x = pad_to_patch_size(x, (pt, ps, ps))
        batch, _, t, h, w = x.shape
        x = torch.cat((x, torch.zeros(batch, 1, t, h, w, dtype=x.dtype)), dim=1)
        grid = (t // pt, h // ps, w // ps)
        tokens = x.view(batch, -1, grid[0], pt, grid[1], ps, grid[2], ps).permute(0, 2, 4, 6, 1, 3, 5, 7)
        x = self.x_embedder(tokens.reshape(batch, grid[0] * grid[1] * grid[2], -1))
        ids = torch.stack(torch.meshgrid(*(torch.arange(side, dtype=torch.float32) for side in grid), indexing="ij"),
                          dim=-1)
        rope_emb = self.pos_embedder(ids.reshape(1, -1, 3).expand(batch, -1, -1))
        emb = self.t_embedder(timestep_embedding(timesteps, 32).to(x.dtype)).unsqueeze(1)
        for block in self.blocks:
            x = block(x, emb, context, rope_emb, transformer_options=kwargs.get("transformer_options", {}))
        out = self.final_layer(x).view(batch, *grid, self.in_channels, pt, ps, ps).permute(0, 4, 1, 5, 2, 6, 3, 7)
        out = out.reshape(batch, self.in_channels, t, h, w)
        return out[:, :, :frames, :height, :width]
