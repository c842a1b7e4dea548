"""Mirrors Forge Neo's backend/nn/flux.py (Flux, Flux Kontext): RoPE applied inside the module-level `attention`,
which calls the module global `attention_function` imported by name from backend/attention.py; double blocks attend
over [txt, img], single blocks over the concatenated [txt, img] stream; Kontext reference latents follow the image."""

from __future__ import annotations

import math

import torch
from torch import nn

from .neo_args import dynamic_args
from .neo_attention import attention_function
from .neo_utils import process_img


def attention(q, k, v, pe, mask=None, transformer_options={}):  # noqa: B006 - the host's signature
    """Mirrors flux.py attention: q, k, v as (batch, heads, tokens, dim); RoPE on q and k, then the module's
    `attention_function` with heads positional and `skip_reshape`, mask and transformer_options as keywords."""
    if pe is not None:
        q, k = _apply_rope(q, pe).type_as(v), _apply_rope(k, pe).type_as(v)
    heads = q.shape[1]
    return attention_function(q, k, v, heads, skip_reshape=True, mask=mask, transformer_options=transformer_options)


def rope(pos: torch.Tensor, dim: int, theta: int) -> torch.Tensor:
    """Mirrors flux.py rope: per position and frequency the 2x2 rotation [[cos, -sin], [sin, cos]] of angle
    pos * theta^(-2i/dim), as (batch, tokens, dim / 2, 2, 2)."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    angles = pos.to(torch.float64)[..., None] * (1.0 / theta**exponents)
    cos, sin = torch.cos(angles), torch.sin(angles)
    return torch.stack([cos, -sin, sin, cos], dim=-1).view(*angles.shape, 2, 2).float()


def _apply_rope(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Mirrors flux.py _apply_rope: rotates each pair of channels (2i, 2i + 1) by its position's rotation."""
    pairs = x.to(freqs_cis.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    rotated = freqs_cis[..., 0] * pairs[..., 0] + freqs_cis[..., 1] * pairs[..., 1]
    return rotated.reshape(*x.shape).type_as(x)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000, time_factor: float = 1000.0):
    """Mirrors flux.py timestep_embedding: [cos, sin] of time_factor * t at geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = time_factor * t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class EmbedND(nn.Module):
    """Mirrors flux.py EmbedND: the rotations of every position axis side by side, (batch, 1, tokens, dim / 2, 2,
    2); Lumina, Qwen-Image and Wan import it from flux.py."""

    def __init__(self, dim: int, theta: int, axes_dim):
        super().__init__()
        self.dim, self.theta, self.axes_dim = dim, theta, list(axes_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        axes = [rope(ids[..., axis], size, self.theta) for axis, size in enumerate(self.axes_dim)]
        return torch.cat(axes, dim=-3).unsqueeze(1)


class MLPEmbedder(nn.Module):
    """Mirrors flux.py MLPEmbedder."""

    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x):
        return self.out_layer(nn.functional.silu(self.in_layer(x)))


class QKNorm(nn.Module):
    """Mirrors flux.py QKNorm: RMS norms of queries and keys per head."""

    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = nn.RMSNorm(dim, eps=1e-6)
        self.key_norm = nn.RMSNorm(dim, eps=1e-6)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    """Mirrors flux.py SelfAttention: the qkv projection, QK norm and output projection a block uses."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)


def split_heads(qkv: torch.Tensor, heads: int):
    """(batch, tokens, 3 * heads * dim) -> q, k, v as (batch, heads, tokens, dim), as the blocks split them."""
    batch, tokens, _ = qkv.shape
    return qkv.view(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)


class Modulation(nn.Module):
    """Mirrors flux.py Modulation: shift, scale and gate (twice for a double block) from the vector."""

    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim)

    def forward(self, vec):
        return self.lin(nn.functional.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)


def _mlp(hidden_size: int, mlp_ratio: float) -> nn.Sequential:
    inner = int(hidden_size * mlp_ratio)
    return nn.Sequential(nn.Linear(hidden_size, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden_size))


class DoubleStreamBlock(nn.Module):
    """Mirrors flux.py DoubleStreamBlock.forward(img, txt, vec, pe): each stream projects its own q, k, v; one
    attention call over [txt, img] (text first), split back by the text length. The work before and after the
    call is in `joint_qkv` and `streams_after` (for Forge's flux.py stand-in, whose blocks do the same)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_mod", Modulation(hidden_size, double=True))
            setattr(self, f"{stream}_norm1", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_attn", SelfAttention(hidden_size, num_heads, qkv_bias))
            setattr(self, f"{stream}_norm2", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_mlp", _mlp(hidden_size, mlp_ratio))

    def joint_qkv(self, img, txt, vec):
        """q, k, v of [txt, img] as (batch, heads, tokens, dim), and each stream's modulations."""
        img_mod, txt_mod = self.img_mod(vec), self.txt_mod(vec)
        img_q, img_k, img_v = split_heads(self.img_attn.qkv((1 + img_mod[1]) * self.img_norm1(img) + img_mod[0]),
                                          self.num_heads)
        img_q, img_k = self.img_attn.norm(img_q, img_k, img_v)
        txt_q, txt_k, txt_v = split_heads(self.txt_attn.qkv((1 + txt_mod[1]) * self.txt_norm1(txt) + txt_mod[0]),
                                          self.num_heads)
        txt_q, txt_k = self.txt_attn.norm(txt_q, txt_k, txt_v)
        qkv = (torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2), torch.cat((txt_v, img_v), dim=2))
        return qkv, img_mod, txt_mod

    def streams_after(self, attn, img, txt, img_mod, txt_mod):
        """Each stream's residuals from its part of the attention output, then its MLP."""
        txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]
        img = img + img_mod[2] * self.img_attn.proj(img_attn)
        img = img + img_mod[5] * self.img_mlp((1 + img_mod[4]) * self.img_norm2(img) + img_mod[3])
        txt = txt + txt_mod[2] * self.txt_attn.proj(txt_attn)
        txt = txt + txt_mod[5] * self.txt_mlp((1 + txt_mod[4]) * self.txt_norm2(txt) + txt_mod[3])
        return img, txt

    def forward(self, img, txt, vec, pe):
        (q, k, v), img_mod, txt_mod = self.joint_qkv(img, txt, vec)
        return self.streams_after(attention(q, k, v, pe=pe), img, txt, img_mod, txt_mod)


class SingleStreamBlock(nn.Module):
    """Mirrors flux.py SingleStreamBlock.forward(x, vec, pe): one attention call over the [txt, img] stream, its qkv
    and MLP input from one linear layer (`joint_qkv` and `stream_after`, as in DoubleStreamBlock)."""

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
        self.modulation = Modulation(hidden_size, double=False)

    def joint_qkv(self, x, vec):
        """q, k, v of the stream as (batch, heads, tokens, dim), the MLP input and the gate."""
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = torch.split(self.linear1((1 + scale) * self.pre_norm(x) + shift),
                               [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        return (q, k, v), mlp, gate

    def stream_after(self, attn, x, mlp, gate):
        """The gated residual of the attention output beside the MLP's."""
        return x + gate * self.linear2(torch.cat((attn, self.mlp_act(mlp)), dim=2))

    def forward(self, x, vec, pe):
        (q, k, v), mlp, gate = self.joint_qkv(x, vec)
        return self.stream_after(attention(q, k, v, pe=pe), x, mlp, gate)


class LastLayer(nn.Module):
    """Mirrors flux.py LastLayer."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :])


def unpatchify(tokens: torch.Tensor, rows: int, cols: int, patch: int) -> torch.Tensor:
    """(batch, rows * cols, channels * patch * patch) -> (batch, channels, rows * patch, cols * patch)."""
    batch = tokens.shape[0]
    image = tokens.view(batch, rows, cols, -1, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return image.reshape(batch, -1, rows * patch, cols * patch)


class IntegratedFluxTransformer2DModel(nn.Module):
    """Mirrors flux.py IntegratedFluxTransformer2DModel: forward(x, timestep, context, y, guidance=None,
    control=None, transformer_options={}, **kwargs) patchifies the latent at 2 (padding odd sides), appends the
    Kontext reference latents of `dynamic_args["ref_latents"]` after the image (position index 1, offset beside
    the ones before), runs the double blocks on (img, txt), then the single blocks on [txt, img], and keeps the
    image tokens. Its blocks are `double_block` and `single_block` (Forge's flux.py stand-in has its own)."""

    double_block = DoubleStreamBlock
    single_block = SingleStreamBlock

    def __init__(self, in_channels=4, out_channels=4, vec_in_dim=8, context_in_dim=16, hidden_size=64, mlp_ratio=2.0,
                 num_heads=2, depth=1, depth_single_blocks=1, axes_dim=(8, 12, 12), theta=10000, patch_size=2,
                 qkv_bias=True, guidance_embed=False):
        super().__init__()
        self.patch_size = patch_size
        self.guidance_embed = guidance_embed
        self.pe_embedder = EmbedND(hidden_size // num_heads, theta, axes_dim)
        self.img_in = nn.Linear(in_channels * patch_size * patch_size, hidden_size)
        self.time_in = MLPEmbedder(256, hidden_size)
        self.vector_in = MLPEmbedder(vec_in_dim, hidden_size)
        self.guidance_in = MLPEmbedder(256, hidden_size) if guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(context_in_dim, hidden_size)
        self.double_blocks = nn.ModuleList(self.double_block(hidden_size, num_heads, mlp_ratio, qkv_bias)
                                           for _ in range(depth))
        self.single_blocks = nn.ModuleList(self.single_block(hidden_size, num_heads, mlp_ratio)
                                           for _ in range(depth_single_blocks))
        self.final_layer = LastLayer(hidden_size, 1, out_channels * patch_size * patch_size)

    def inner_forward(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None):
        """Mirrors IntegratedFluxTransformer2DModel.inner_forward: the vector from timestep (guidance) and y, RoPE
        of [txt ids, img ids], the double blocks, then the single blocks on [txt, img]; the image part out."""
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256).to(img.dtype))
        if self.guidance_embed:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe)
        img = torch.cat((txt, img), dim=1)
        for block in self.single_blocks:
            img = block(img, vec=vec, pe=pe)
        return self.final_layer(img[:, txt.shape[1]:], vec)

    def forward(self, x, timestep, context, y, guidance=None, control=None, transformer_options={}, **kwargs):  # noqa: B006
        batch, _, height, width = x.shape
        rows, cols = -(-height // self.patch_size), -(-width // self.patch_size)
        img, img_ids = process_img(x)
        image_tokens = img.shape[1]
        placed_height = placed_width = 0
        for ref in dynamic_args.get("ref_latents") or ():
            h_offset = w_offset = 0
            if ref.shape[-2] + placed_height > ref.shape[-1] + placed_width:
                w_offset = placed_width
            else:
                h_offset = placed_height
            ref_tokens, ref_ids = process_img(ref.to(x), index=1, h_offset=h_offset, w_offset=w_offset)
            img, img_ids = torch.cat([img, ref_tokens], dim=1), torch.cat([img_ids, ref_ids], dim=1)
            placed_height = max(placed_height, ref.shape[-2] + h_offset)
            placed_width = max(placed_width, ref.shape[-1] + w_offset)
        txt_ids = torch.zeros(batch, context.shape[1], 3, dtype=x.dtype, device=x.device)
        out = self.inner_forward(img, img_ids, context, txt_ids, timestep, y, guidance)
        return unpatchify(out[:, :image_tokens], rows, cols, self.patch_size)[:, :, :height, :width]
