"""Mirrors Forge Neo's backend/nn/qwen.py (Qwen-Image, Qwen-Image-Edit): 5-D latents (batch, channels, frames,
height, width), a joint attention over [text, image, edit references] whose RoPE'd q, k, v reach the module global
`attention_function` (Neo imports backend/attention.py's `attention_pytorch` under that name) as (batch, tokens,
heads * dim), called `attention_function(q, k, v, heads, attention_mask)`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .neo_args import dynamic_args
from .neo_attention import attention_pytorch as attention_function
from .neo_flux import EmbedND
from .neo_utils import pad_to_patch_size


def timestep_projection(timesteps: torch.Tensor, dim: int = 64, scale: float = 1000.0) -> torch.Tensor:
    """Mirrors qwen.py Timesteps (flip_sin_to_cos, no shift, scale 1000): [cos, sin] of scale * t."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    angles = scale * timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Mirrors qwen.py apply_rotary_emb on (batch, tokens, heads, dim)."""
    pairs = x.reshape(*x.shape[:-1], -1, 1, 2)
    return (freqs_cis[..., 0] * pairs[..., 0] + freqs_cis[..., 1] * pairs[..., 1]).reshape(*x.shape)


class Attention(nn.Module):
    """Mirrors qwen.py Attention.forward(hidden_states, encoder_hidden_states, encoder_hidden_states_mask=None,
    attention_mask=None, image_rotary_emb=None): image and text streams project their own q, k, v, joined [text,
    image], RoPE'd, flattened to (batch, tokens, heads * dim) for `attention_function`, split back by the text
    length."""

    def __init__(self, query_dim: int, dim_head: int, heads: int, eps: float = 1e-6):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm_q = nn.RMSNorm(dim_head, eps=eps)
        self.norm_k = nn.RMSNorm(dim_head, eps=eps)
        self.norm_added_q = nn.RMSNorm(dim_head, eps=eps)
        self.norm_added_k = nn.RMSNorm(dim_head, eps=eps)
        self.to_q, self.to_k, self.to_v = (nn.Linear(query_dim, inner) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(query_dim, inner) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])
        self.to_add_out = nn.Linear(inner, query_dim)

    def forward(self, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
                attention_mask=None, image_rotary_emb=None):
        text = encoder_hidden_states.shape[1]

        def heads(projection, tokens):
            return projection(tokens).unflatten(-1, (self.heads, -1))

        query = torch.cat([self.norm_added_q(heads(self.add_q_proj, encoder_hidden_states)),
                           self.norm_q(heads(self.to_q, hidden_states))], dim=1)
        key = torch.cat([self.norm_added_k(heads(self.add_k_proj, encoder_hidden_states)),
                         self.norm_k(heads(self.to_k, hidden_states))], dim=1)
        value = torch.cat([heads(self.add_v_proj, encoder_hidden_states), heads(self.to_v, hidden_states)], dim=1)
        query = apply_rotary_emb(query, image_rotary_emb).flatten(start_dim=2)
        key = apply_rotary_emb(key, image_rotary_emb).flatten(start_dim=2)
        joint = attention_function(query, key, value.flatten(start_dim=2), self.heads, attention_mask)
        image = self.to_out[1](self.to_out[0](joint[:, text:]))
        return image, self.to_add_out(joint[:, :text])


class FeedForward(nn.Module):
    """Mirrors qwen.py FeedForward (tanh GELU)."""

    def __init__(self, dim: int, mult: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU(approximate="tanh"), nn.Linear(dim * mult, dim))

    def forward(self, hidden_states):
        return self.net(hidden_states)


class QwenImageTransformerBlock(nn.Module):
    """Mirrors qwen.py QwenImageTransformerBlock.forward(hidden_states, encoder_hidden_states,
    encoder_hidden_states_mask, temb, image_rotary_emb=None) -> (text, image)."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.img_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.img_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.txt_norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.txt_norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.img_mlp = FeedForward(dim)
        self.txt_mlp = FeedForward(dim)
        self.attn = Attention(dim, attention_head_dim, num_attention_heads, eps)

    @staticmethod
    def _modulate(x, params):
        shift, scale, gate = params.chunk(3, dim=-1)
        return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1)), gate.unsqueeze(1)

    def forward(self, hidden_states, encoder_hidden_states, encoder_hidden_states_mask, temb, image_rotary_emb=None):
        img_mod1, img_mod2 = self.img_mod(temb).chunk(2, dim=-1)
        txt_mod1, txt_mod2 = self.txt_mod(temb).chunk(2, dim=-1)
        img_modulated, img_gate1 = self._modulate(self.img_norm1(hidden_states), img_mod1)
        txt_modulated, txt_gate1 = self._modulate(self.txt_norm1(encoder_hidden_states), txt_mod1)
        img_attn, txt_attn = self.attn(img_modulated, txt_modulated, encoder_hidden_states_mask,
                                       image_rotary_emb=image_rotary_emb)
        hidden_states = hidden_states + img_gate1 * img_attn
        encoder_hidden_states = encoder_hidden_states + txt_gate1 * txt_attn
        img_modulated, img_gate2 = self._modulate(self.img_norm2(hidden_states), img_mod2)
        hidden_states = torch.addcmul(hidden_states, img_gate2, self.img_mlp(img_modulated))
        txt_modulated, txt_gate2 = self._modulate(self.txt_norm2(encoder_hidden_states), txt_mod2)
        encoder_hidden_states = torch.addcmul(encoder_hidden_states, txt_gate2, self.txt_mlp(txt_modulated))
        return encoder_hidden_states, hidden_states


class LastLayer(nn.Module):
    """Mirrors qwen.py LastLayer."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim * 2)
        self.norm = nn.LayerNorm(dim, 1e-6, elementwise_affine=False)

    def forward(self, x, conditioning):
        scale, shift = self.linear(F.silu(conditioning)).chunk(2, dim=1)
        return torch.addcmul(shift[:, None, :], self.norm(x), (1 + scale)[:, None, :])


class QwenImageTransformer2DModel(nn.Module):
    """Mirrors qwen.py QwenImageTransformer2DModel: forward(x, timesteps, context, attention_mask=None,
    guidance=None, ref_latents=None, transformer_options={}, control=None, **kwargs) on a (batch, channels, 1,
    height, width) latent: patch 2 (sides padded), RoPE ids (index, row - rows // 2, column - cols // 2), edit
    references (`ref_latents`, or `dynamic_args["ref_latents"]` where set) after the image at index 1, 2, ...;
    text ids count up from max(rows, cols) // 2 on all three axes."""

    def __init__(self, patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=32,
                 num_attention_heads=2, joint_attention_dim=16, axes_dims_rope=(8, 12, 12)):
        super().__init__()
        self.patch_size = patch_size
        self.out_channels = out_channels
        inner = num_attention_heads * attention_head_dim
        self.pe_embedder = EmbedND(attention_head_dim, 10000, axes_dims_rope)
        self.time_text_embed = nn.Sequential(nn.Linear(64, inner), nn.SiLU(), nn.Linear(inner, inner))
        self.txt_norm = nn.RMSNorm(joint_attention_dim, eps=1e-6)
        self.img_in = nn.Linear(in_channels, inner)
        self.txt_in = nn.Linear(joint_attention_dim, inner)
        self.transformer_blocks = nn.ModuleList(QwenImageTransformerBlock(inner, num_attention_heads,
                                                                          attention_head_dim)
                                                for _ in range(num_layers))
        self.norm_out = LastLayer(inner)
        self.proj_out = nn.Linear(inner, patch_size * patch_size * out_channels)

    def process_img(self, x, index=0, h_offset=0, w_offset=0):
        """Mirrors QwenImageTransformer2DModel.process_img: tokens of (channels * 2 * 2), centred RoPE ids."""
        batch = x.shape[0]
        patch = self.patch_size
        padded = pad_to_patch_size(x, (1, patch, patch))
        shape = padded.shape
        rows, cols = shape[-2] // patch, shape[-1] // patch
        tokens = padded.view(batch, shape[1], rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
        tokens = tokens.reshape(batch, rows * cols, shape[1] * patch * patch)
        ids = torch.zeros(rows, cols, 3, device=x.device)
        ids[..., 0] = index
        ids[..., 1] = torch.arange(rows, device=x.device)[:, None] + (h_offset + 1) // patch - rows // 2
        ids[..., 2] = torch.arange(cols, device=x.device)[None, :] + (w_offset + 1) // patch - cols // 2
        return tokens, ids.reshape(1, rows * cols, 3).expand(batch, -1, -1), shape

    def forward(self, x, timesteps, context, attention_mask=None, guidance=None, ref_latents=None,
                transformer_options={}, control=None, **kwargs):  # noqa: B006 - the host's signature
        hidden_states, img_ids, shape = self.process_img(x)
        image_tokens = hidden_states.shape[1]
        if dynamic_args.get("ref_latents") is not None:
            ref_latents = dynamic_args["ref_latents"]
        for index, ref in enumerate(ref_latents or (), start=1):
            ref_tokens, ref_ids, _ = self.process_img(ref.to(x), index=index)
            hidden_states = torch.cat([hidden_states, ref_tokens], dim=1)
            img_ids = torch.cat([img_ids, ref_ids], dim=1)
        rows, cols = shape[-2] // self.patch_size, shape[-1] // self.patch_size
        text_start = max(rows, cols) // 2
        txt_ids = torch.arange(text_start, text_start + context.shape[1], device=x.device, dtype=torch.float32)
        txt_ids = txt_ids.reshape(1, -1, 1).repeat(x.shape[0], 1, 3)
        image_rotary_emb = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1)).squeeze(1).unsqueeze(2).to(x.dtype)
        hidden_states = self.img_in(hidden_states)
        encoder_hidden_states = self.txt_in(self.txt_norm(context))
        temb = self.time_text_embed(timestep_projection(timesteps).to(hidden_states.dtype))
        for block in self.transformer_blocks:
            encoder_hidden_states, hidden_states = block(hidden_states=hidden_states,
                                                         encoder_hidden_states=encoder_hidden_states,
                                                         encoder_hidden_states_mask=attention_mask, temb=temb,
                                                         image_rotary_emb=image_rotary_emb)
        hidden_states = self.proj_out(self.norm_out(hidden_states, temb))[:, :image_tokens]
        patch = self.patch_size
        out = hidden_states.view(shape[0], rows, cols, self.out_channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(shape[0], self.out_channels, 1, rows * patch, cols * patch)[..., :x.shape[-2], :x.shape[-1]]
