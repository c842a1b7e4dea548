"""Mirrors Forge Neo's backend/nn/chroma.py (Chroma): Flux's blocks without per-block modulation layers (an
approximator makes every block's shift, scale and gate), and `attention` imported by name from flux.py, so its
attention goes through flux.py's `attention_function`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .neo_flux import (
    EmbedND,
    MLPEmbedder,
    QKNorm,
    SelfAttention,
    attention,
    split_heads,
    timestep_embedding,
    unpatchify,
)


class Approximator(nn.Module):
    """Mirrors chroma.py Approximator: an MLP from (timestep, guidance, modulation index) to modulation vectors."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, n_layers: int = 2):
        super().__init__()
        self.in_proj = nn.Linear(in_dim, hidden_dim)
        self.layers = nn.ModuleList(MLPEmbedder(hidden_dim, hidden_dim) for _ in range(n_layers))
        self.norms = nn.ModuleList(nn.RMSNorm(hidden_dim, eps=1e-6) for _ in range(n_layers))
        self.out_proj = nn.Linear(hidden_dim, out_dim)

    def forward(self, x):
        x = self.in_proj(x)
        for layer, norm in zip(self.layers, self.norms, strict=True):
            x = x + layer(norm(x))
        return self.out_proj(x)


@dataclass
class ModulationOut:
    """Mirrors chroma.py ModulationOut."""

    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor


def _mlp(hidden_size: int, mlp_ratio: float) -> nn.Sequential:
    inner = int(hidden_size * mlp_ratio)
    return nn.Sequential(nn.Linear(hidden_size, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden_size))


class DoubleStreamBlock(nn.Module):
    """Mirrors chroma.py DoubleStreamBlock.forward(img, txt, mod, pe, attn_mask=None, transformer_options={}): one
    attention call over [txt, img], `attn_mask` and the options passed on to flux.py's `attention`."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_norm1", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_attn", SelfAttention(hidden_size, num_heads, qkv_bias))
            setattr(self, f"{stream}_norm2", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_mlp", _mlp(hidden_size, mlp_ratio))

    def forward(self, img, txt, mod, pe, attn_mask=None, transformer_options={}):  # noqa: B006 - the host's signature
        (img_mod1, img_mod2), (txt_mod1, txt_mod2) = mod
        img_q, img_k, img_v = split_heads(
            self.img_attn.qkv(torch.addcmul(img_mod1.shift, 1 + img_mod1.scale, self.img_norm1(img))), self.num_heads)
        img_q, img_k = self.img_attn.norm(img_q, img_k, img_v)
        txt_q, txt_k, txt_v = split_heads(
            self.txt_attn.qkv(torch.addcmul(txt_mod1.shift, 1 + txt_mod1.scale, self.txt_norm1(txt))), self.num_heads)
        txt_q, txt_k = self.txt_attn.norm(txt_q, txt_k, txt_v)
        attn = attention(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2),
                         torch.cat((txt_v, img_v), dim=2), pe=pe, mask=attn_mask,
                         transformer_options=transformer_options)
        txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]
        img = torch.addcmul(img, img_mod1.gate, self.img_attn.proj(img_attn))
        img = torch.addcmul(img, img_mod2.gate,
                            self.img_mlp(torch.addcmul(img_mod2.shift, 1 + img_mod2.scale, self.img_norm2(img))))
        txt = torch.addcmul(txt, txt_mod1.gate, self.txt_attn.proj(txt_attn))
        txt = torch.addcmul(txt, txt_mod2.gate,
                            self.txt_mlp(torch.addcmul(txt_mod2.shift, 1 + txt_mod2.scale, self.txt_norm2(txt))))
        return img, txt


class SingleStreamBlock(nn.Module):
    """Mirrors chroma.py SingleStreamBlock.forward(x, mod, pe, attn_mask=None, transformer_options={})."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")

    def forward(self, x, mod, pe, attn_mask=None, transformer_options={}):  # noqa: B006 - the host's signature
        qkv, mlp = torch.split(self.linear1(torch.addcmul(mod.shift, 1 + mod.scale, self.pre_norm(x))),
                               [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=transformer_options)
        return torch.addcmul(x, mod.gate, self.linear2(torch.cat((attn, self.mlp_act(mlp)), dim=2)))


class LastLayer(nn.Module):
    """Mirrors chroma.py LastLayer: shift and scale come from the approximator."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)

    def forward(self, x, mod):
        shift, scale = mod
        return self.linear(torch.addcmul(shift, 1 + scale, self.norm_final(x)))


class IntegratedChromaTransformer2DModel(nn.Module):
    """Mirrors chroma.py IntegratedChromaTransformer2DModel: forward(x, timestep, context, **kwargs) pads the
    latent to patch 2, puts the image's RoPE ids on (row, column), the text's at 0, and runs Flux's block order
    with the approximator's modulations (3 vectors per single block, 12 per double block, 2 for the last layer)."""

    def __init__(self, in_channels=16, out_channels=16, context_in_dim=16, hidden_size=64, mlp_ratio=2.0,
                 num_heads=2, depth=1, depth_single_blocks=1, axes_dim=(8, 12, 12), theta=10000, patch_size=2,
                 qkv_bias=True, in_dim=64, hidden_dim=64, n_layers=2):
        super().__init__()
        self.patch_size = patch_size
        self.pe_embedder = EmbedND(hidden_size // num_heads, theta, axes_dim)
        self.img_in = nn.Linear(in_channels, hidden_size)
        self.distilled_guidance_layer = Approximator(in_dim, hidden_size, hidden_dim, n_layers)
        self.txt_in = nn.Linear(context_in_dim, hidden_size)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(hidden_size, num_heads, mlp_ratio, qkv_bias)
                                           for _ in range(depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(hidden_size, num_heads, mlp_ratio)
                                           for _ in range(depth_single_blocks))
        self.final_layer = LastLayer(hidden_size, 1, out_channels)

    def modulations(self, timesteps: torch.Tensor, dtype: torch.dtype):
        """Mirrors inner_forward's approximator input and distribute_modulations: single blocks first, then the
        double blocks' image and text modulations, then the last layer's shift and scale."""
        count = 3 * len(self.single_blocks) + 12 * len(self.double_blocks) + 2
        batch = timesteps.shape[0]
        time_guidance = torch.cat([timestep_embedding(timesteps, 16), timestep_embedding(timesteps * 0, 16)], dim=1)
        index = timestep_embedding(torch.arange(count, device=timesteps.device), 32)
        vectors = self.distilled_guidance_layer(torch.cat(
            [time_guidance.unsqueeze(1).expand(-1, count, -1), index.unsqueeze(0).expand(batch, -1, -1)], dim=-1
        ).to(dtype))
        taken = iter(vectors.split(1, dim=1))

        def modulation_out():
            return ModulationOut(next(taken), next(taken), next(taken))

        single = [modulation_out() for _ in self.single_blocks]
        image = [[modulation_out(), modulation_out()] for _ in self.double_blocks]
        text = [[modulation_out(), modulation_out()] for _ in self.double_blocks]
        return single, list(zip(image, text, strict=True)), (next(taken), next(taken))

    def forward(self, x, timestep, context, **kwargs):
        batch, _, height, width = x.shape
        patch = self.patch_size
        x = nn.functional.pad(x, (0, (-width) % patch, 0, (-height) % patch), mode="circular")
        rows, cols = x.shape[-2] // patch, x.shape[-1] // patch
        img = x.view(batch, -1, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5).reshape(batch, rows * cols, -1)
        img_ids = torch.zeros(rows, cols, 3, dtype=x.dtype, device=x.device)
        img_ids[..., 1] = torch.arange(rows, dtype=x.dtype, device=x.device)[:, None]
        img_ids[..., 2] = torch.arange(cols, dtype=x.dtype, device=x.device)[None, :]
        img_ids = img_ids.reshape(1, rows * cols, 3).expand(batch, -1, -1)
        txt_ids = torch.zeros(batch, context.shape[1], 3, dtype=x.dtype, device=x.device)
        single_mods, double_mods, final_mod = self.modulations(timestep, x.dtype)
        img, txt = self.img_in(img), self.txt_in(context)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        for block, mod in zip(self.double_blocks, double_mods, strict=True):
            img, txt = block(img=img, txt=txt, mod=mod, pe=pe)
        img = torch.cat((txt, img), dim=1)
        for block, mod in zip(self.single_blocks, single_mods, strict=True):
            img = block(img, mod=mod, pe=pe)
        out = self.final_layer(img[:, txt.shape[1]:], final_mod)
        return unpatchify(out, rows, cols, patch)[:, :, :height, :width]
