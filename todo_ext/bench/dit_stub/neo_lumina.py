"""Mirrors Forge Neo's backend/nn/lumina.py (Lumina Image 2.0, Z-Image): NextDiT with a context refiner over the
caption, a noise refiner over the image and the main layers over [caption, image]; JointAttention applies RoPE,
repeats the key/value heads for grouped-query attention, and calls the module global `attention_function` (Neo
imports backend/attention.py's `attention_pytorch` under that name). Z-Image pads the caption and the image each
to a multiple of `pad_tokens_multiple` with learned pad tokens."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .neo_attention import attention_pytorch as attention_function
from .neo_flux import EmbedND
from .neo_utils import pad_to_patch_size


def modulate(x, scale):
    """Mirrors lumina.py modulate."""
    return x * (1 + scale.unsqueeze(1))


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000):
    """Mirrors lumina.py timestep_embedding."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    angles = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Mirrors lumina.py TimestepEmbedder."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 64, output_size: int | None = None):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, output_size or hidden_size))

    def forward(self, t, dtype):
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size).to(dtype))


class JointAttention(nn.Module):
    """Mirrors lumina.py JointAttention.forward(x, x_mask, freqs_cis, transformer_options={}): q with n_heads, k
    and v with n_kv_heads, RoPE on (batch, tokens, heads, dim), the key/value heads repeated up to n_heads before
    the call, then `attention_function(q, k, v, heads, x_mask, skip_reshape=True, transformer_options=...)` on
    (batch, heads, tokens, dim)."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None, qk_norm: bool):
        super().__init__()
        self.n_local_heads = n_heads
        self.n_local_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.head_dim = dim // n_heads
        self.qkv = nn.Linear(dim, (n_heads + 2 * self.n_local_kv_heads) * self.head_dim, bias=False)
        self.out = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    @staticmethod
    def apply_rotary_emb(x_in: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
        """Mirrors JointAttention.apply_rotary_emb (the rotation of flux.py's rope, on (batch, tokens, heads, dim))."""
        pairs = x_in.reshape(*x_in.shape[:-1], -1, 1, 2)
        return (freqs_cis[..., 0] * pairs[..., 0] + freqs_cis[..., 1] * pairs[..., 1]).reshape(*x_in.shape)

    def forward(self, x, x_mask, freqs_cis, transformer_options={}):  # noqa: B006 - the host's signature
        batch, tokens, _ = x.shape
        kv_width = self.n_local_kv_heads * self.head_dim
        xq, xk, xv = torch.split(self.qkv(x), [self.n_local_heads * self.head_dim, kv_width, kv_width], dim=-1)
        xq = self.q_norm(xq.view(batch, tokens, self.n_local_heads, self.head_dim))
        xk = self.k_norm(xk.view(batch, tokens, self.n_local_kv_heads, self.head_dim))
        xv = xv.view(batch, tokens, self.n_local_kv_heads, self.head_dim)
        xq = self.apply_rotary_emb(xq, freqs_cis)
        xk = self.apply_rotary_emb(xk, freqs_cis)
        repeats = self.n_local_heads // self.n_local_kv_heads
        xk = xk.unsqueeze(3).repeat(1, 1, 1, repeats, 1).flatten(2, 3)
        xv = xv.unsqueeze(3).repeat(1, 1, 1, repeats, 1).flatten(2, 3)
        output = attention_function(xq.movedim(1, 2), xk.movedim(1, 2), xv.movedim(1, 2), self.n_local_heads, x_mask,
                                    skip_reshape=True, transformer_options=transformer_options)
        return self.out(output)


class FeedForward(nn.Module):
    """Mirrors lumina.py FeedForward (SiLU-gated)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        for name, (inputs, outputs) in {"w1": (dim, hidden_dim), "w2": (hidden_dim, dim),
                                        "w3": (dim, hidden_dim)}.items():
            setattr(self, name, nn.Linear(inputs, outputs, bias=False))

    def forward(self, x):
        gated = F.silu(self.w1(x)) * self.w3(x)
        return self.w2(gated)


class JointTransformerBlock(nn.Module):
    """Mirrors lumina.py JointTransformerBlock.forward(x, x_mask, freqs_cis, adaln_input=None,
    transformer_options={}): modulated by the timestep except in the context refiner (`modulation=False`)."""

    def __init__(self, layer_id: int, dim: int, n_heads: int, n_kv_heads: int | None, norm_eps: float, qk_norm: bool,
                 modulation: bool = True, z_image_modulation: bool = False, adaln_dim: int = 64):
        super().__init__()
        self.layer_id = layer_id
        self.attention = JointAttention(dim, n_heads, n_kv_heads, qk_norm)
        self.feed_forward = FeedForward(dim, 2 * dim)
        self.attention_norm1 = nn.RMSNorm(dim, eps=norm_eps)
        self.ffn_norm1 = nn.RMSNorm(dim, eps=norm_eps)
        self.attention_norm2 = nn.RMSNorm(dim, eps=norm_eps)
        self.ffn_norm2 = nn.RMSNorm(dim, eps=norm_eps)
        self.modulation = modulation
        if modulation:
            layers = [nn.Linear(adaln_dim, 4 * dim)]
            self.adaLN_modulation = nn.Sequential(*layers) if z_image_modulation else nn.Sequential(nn.SiLU(), *layers)

    def forward(self, x, x_mask, freqs_cis, adaln_input=None, transformer_options={}):  # noqa: B006
        if self.modulation:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(adaln_input).chunk(4, dim=1)
            attended = self.attention(modulate(self.attention_norm1(x), scale_msa), x_mask, freqs_cis,
                                      transformer_options=transformer_options)
            x = x + gate_msa.unsqueeze(1).tanh() * self.attention_norm2(attended)
            fed = self.feed_forward(modulate(self.ffn_norm1(x), scale_mlp))
            return x + gate_mlp.unsqueeze(1).tanh() * self.ffn_norm2(fed)
        attended = self.attention(self.attention_norm1(x), x_mask, freqs_cis, transformer_options=transformer_options)
        x = x + self.attention_norm2(attended)
        return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))


class FinalLayer(nn.Module):
    """Mirrors lumina.py FinalLayer."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, adaln_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(adaln_dim, hidden_size))

    def forward(self, x, c):
        return self.linear(modulate(self.norm_final(x), self.adaLN_modulation(c)))


class NextDiT(nn.Module):
    """Mirrors lumina.py NextDiT: forward(x, timesteps, context, num_tokens=None, attention_mask=None, **kwargs)
    pads the latent to the patch size, embeds the caption, and patchify_and_embed pads caption and image with their
    pad tokens (Z-Image), gives the caption RoPE ids (i + 1, 0, 0) and the image (caption length + 1, row, column)
    (pad tokens 0), refines the caption alone (context_refiner, with the caption mask) and the padded image alone
    (noise_refiner, no mask), then runs the layers on [caption, image] and keeps the image tokens."""

    def __init__(self, patch_size=2, in_channels=4, dim=64, n_layers=2, n_refiner_layers=1, n_heads=2,
                 n_kv_heads=None, norm_eps=1e-5, qk_norm=True, cap_feat_dim=16, axes_dims=(8, 12, 12),
                 rope_theta=10000.0, z_image_modulation=False, time_scale=1.0, pad_tokens_multiple=None):
        super().__init__()
        self.patch_size = patch_size
        self.out_channels = in_channels
        self.time_scale = time_scale
        self.pad_tokens_multiple = pad_tokens_multiple
        self.x_embedder = nn.Linear(patch_size * patch_size * in_channels, dim)
        # The width of the timestep embedding, which every modulation takes (Neo writes min(dim, 256) or
        # min(dim, 1024): the same at its widths).
        adaln_dim = 256 if z_image_modulation else min(dim, 1024)

        def block(layer_id, **kwargs):
            return JointTransformerBlock(layer_id, dim, n_heads, n_kv_heads, norm_eps, qk_norm, adaln_dim=adaln_dim,
                                         **kwargs)

        self.noise_refiner = nn.ModuleList(block(i, z_image_modulation=z_image_modulation)
                                           for i in range(n_refiner_layers))
        self.context_refiner = nn.ModuleList(block(i, modulation=False) for i in range(n_refiner_layers))
        self.t_embedder = TimestepEmbedder(min(dim, 1024), output_size=adaln_dim)
        self.cap_embedder = nn.Sequential(nn.RMSNorm(cap_feat_dim, eps=norm_eps), nn.Linear(cap_feat_dim, dim))
        self.layers = nn.ModuleList(block(i, z_image_modulation=z_image_modulation) for i in range(n_layers))
        self.final_layer = FinalLayer(dim, patch_size, self.out_channels, adaln_dim)
        if pad_tokens_multiple is not None:
            self.x_pad_token = nn.Parameter(torch.randn(1, dim))
            self.cap_pad_token = nn.Parameter(torch.randn(1, dim))
        self.rope_embedder = EmbedND(dim // n_heads, rope_theta, axes_dims)

    def _padded(self, tokens: torch.Tensor, pad_token: nn.Parameter) -> torch.Tensor:
        extra = (-tokens.shape[1]) % self.pad_tokens_multiple
        return torch.cat((tokens, pad_token.to(tokens).unsqueeze(0).repeat(tokens.shape[0], extra, 1)), dim=1)

    def patchify_and_embed(self, x, cap_feats, cap_mask, t, transformer_options={}):  # noqa: B006
        """Mirrors NextDiT.patchify_and_embed: [caption, image] tokens, their RoPE, both refiners run."""
        batch, channels, height, width = x.shape
        patch = self.patch_size
        if self.pad_tokens_multiple is not None:
            cap_feats = self._padded(cap_feats, self.cap_pad_token)
        cap_ids = torch.zeros(batch, cap_feats.shape[1], 3, device=x.device)
        cap_ids[:, :, 0] = torch.arange(cap_feats.shape[1], dtype=torch.float32, device=x.device) + 1.0
        rows, cols = height // patch, width // patch
        x = self.x_embedder(x.view(batch, channels, rows, patch, cols, patch).permute(0, 2, 4, 3, 5, 1)
                            .flatten(3).flatten(1, 2))
        x_ids = torch.zeros(batch, rows * cols, 3, device=x.device)
        x_ids[:, :, 0] = cap_feats.shape[1] + 1
        x_ids[:, :, 1] = torch.arange(rows, dtype=torch.float32, device=x.device).repeat_interleave(cols)
        x_ids[:, :, 2] = torch.arange(cols, dtype=torch.float32, device=x.device).repeat(rows)
        if self.pad_tokens_multiple is not None:
            x = self._padded(x, self.x_pad_token)
            x_ids = F.pad(x_ids, (0, 0, 0, x.shape[1] - x_ids.shape[1]))
        freqs_cis = self.rope_embedder(torch.cat((cap_ids, x_ids), dim=1)).movedim(1, 2).to(x.dtype)
        caption = cap_ids.shape[1]
        for layer in self.context_refiner:
            cap_feats = layer(cap_feats, cap_mask, freqs_cis[:, :caption], transformer_options=transformer_options)
        for layer in self.noise_refiner:
            x = layer(x, None, freqs_cis[:, caption:], t, transformer_options=transformer_options)
        return torch.cat((cap_feats, x), dim=1), caption, freqs_cis

    def forward(self, x, timesteps, context, num_tokens=None, attention_mask=None, **kwargs):
        batch, _, height, width = x.shape
        x = pad_to_patch_size(x, (self.patch_size, self.patch_size))
        t = self.t_embedder((1.0 - timesteps) * self.time_scale, dtype=x.dtype)
        cap_feats = self.cap_embedder(context)
        transformer_options = kwargs.get("transformer_options", {})
        rows, cols = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens, caption, freqs_cis = self.patchify_and_embed(x, cap_feats, attention_mask, t, transformer_options)
        for layer in self.layers:
            tokens = layer(tokens, None, freqs_cis, t, transformer_options=transformer_options)
        out = self.final_layer(tokens, t)[:, caption:caption + rows * cols]
        patch = self.patch_size
        image = out.view(batch, rows, cols, patch, patch, self.out_channels).permute(0, 5, 1, 3, 2, 4)
        return -image.reshape(batch, self.out_channels, rows * patch, cols * patch)[:, :, :height, :width]
