"""Mirrors Forge Neo 2.26's backend/nn/ernie.py (Ernie-Image): the joint sequence is the IMAGE first, then the
text; `ErnieImageAttention` applies RoPE and calls the module global `attention_function(q, k, v, heads,
mask=attention_mask)` on (batch, tokens, heads * dim), without skip_reshape or transformer_options. The image is
patched by a strided conv without padding (patch 1 on the packed 128-channel Flux.2 latent)."""

from __future__ import annotations

import torch
from torch import nn

from .neo_attention import attention_function
from .neo_flux import EmbedND, _apply_rope, timestep_embedding


class ErnieImageAttention(nn.Module):
    """Mirrors ernie.py ErnieImageAttention.forward(x, attention_mask=None, image_rotary_emb=None)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.norm_q, self.norm_k = nn.RMSNorm(self.head_dim), nn.RMSNorm(self.head_dim)

    def forward(self, x, attention_mask=None, image_rotary_emb=None):
        batch, tokens = x.shape[:2]
        q = _apply_rope(self.norm_q(self.to_q(x).view(batch, tokens, self.heads, -1)).transpose(1, 2),
                        image_rotary_emb)
        k = _apply_rope(self.norm_k(self.to_k(x).view(batch, tokens, self.heads, -1)).transpose(1, 2),
                        image_rotary_emb)
        q_flat, k_flat = (t.transpose(1, 2).reshape(batch, tokens, -1) for t in (q, k))
        return self.to_out(attention_function(q_flat, k_flat, self.to_v(x), self.heads, mask=attention_mask))


class ErnieImageSharedAdaLNBlock(nn.Module):
    """Mirrors ernie.py ErnieImageSharedAdaLNBlock.forward(x, rotary_pos_emb, temb, attention_mask=None)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.self_attention = ErnieImageAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, rotary_pos_emb, temb, attention_mask=None):
        shift, scale, gate, mlp_shift, mlp_scale, mlp_gate = temb
        x = x + gate * self.self_attention(self.norm(x) * (1 + scale) + shift, attention_mask, rotary_pos_emb)
        return x + mlp_gate * self.mlp(self.norm(x) * (1 + mlp_scale) + mlp_shift)


class ErnieImageModel(nn.Module):
    """Mirrors ernie.py ErnieImageModel.forward(x, timesteps, context, **kwargs): image tokens (side // patch,
    row-major, RoPE ids (text length, row, column)), then the text (ids (index, 0, 0)); the image tokens out."""

    def __init__(self, hidden_size=64, num_attention_heads=2, num_layers=2, in_channels=8, out_channels=8,
                 patch_size=1, text_in_dim=16):
        super().__init__()
        self.patch_size, self.out_channels = patch_size, out_channels
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.text_proj = nn.Linear(text_in_dim, hidden_size, bias=False)
        self.time_embedding = nn.Linear(32, hidden_size)
        self.pos_embed = EmbedND(hidden_size // num_attention_heads, 256, (8, 12, 12))
        self.adaLN_modulation = nn.Linear(hidden_size, 6 * hidden_size)
        self.layers = nn.ModuleList(ErnieImageSharedAdaLNBlock(hidden_size, num_attention_heads)
                                    for _ in range(num_layers))
        self.final_linear = nn.Linear(hidden_size, out_channels * patch_size**2)

    def forward(self, x, timesteps, context, **kwargs):
        batch, _, height, width = x.shape
        patch = self.patch_size
        rows, cols = height // patch, width // patch
        image = self.x_embedder(x).flatten(2).transpose(1, 2)
        text = self.text_proj(context)
        hidden_states = torch.cat([image, text], dim=1)
        text_ids = torch.zeros(text.shape[1], 3)
        text_ids[:, 0] = torch.arange(text.shape[1])
        image_ids = torch.zeros(rows, cols, 3)
        image_ids[..., 0] = text.shape[1]
        image_ids[..., 1] = torch.arange(rows)[:, None]
        image_ids[..., 2] = torch.arange(cols)[None, :]
        ids = torch.cat([image_ids.reshape(-1, 3), text_ids]).expand(batch, -1, -1)
        rotary_pos_emb = self.pos_embed(ids)
        c = self.time_embedding(timestep_embedding(timesteps, 32).to(x.dtype))
        temb = [t.unsqueeze(1) for t in self.adaLN_modulation(c).chunk(6, dim=-1)]
        for layer in self.layers:
            hidden_states = layer(hidden_states, rotary_pos_emb, temb=temb)
        patches = self.final_linear(hidden_states)[:, :rows * cols]
        out = patches.view(batch, rows, cols, patch, patch, self.out_channels).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(batch, self.out_channels, rows * patch, cols * patch)
