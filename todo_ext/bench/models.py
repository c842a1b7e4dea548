"""Real ldm U-Nets (random weights) in the layouts the WebUI loads, and the host behaviour around them.

Used by the benchmark and the tests. The layouts follow the `unet_config` of the WebUI's model configs
(v1-inference.yaml, v2-inference.yaml, sd_xl_base.yaml); `width` scales the channel count for fast tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from ldm.modules import attention as ldm_attention
from ldm.modules.diffusionmodules import openaimodel
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from torch import nn

LAYOUTS = {
    "sd15": dict(
        attention_resolutions=[4, 2, 1], channel_mult=[1, 2, 4, 4], num_heads=8, context_dim=768,
        use_linear_in_transformer=False, transformer_depth=1,
    ),
    "sd21": dict(
        attention_resolutions=[4, 2, 1], channel_mult=[1, 2, 4, 4], num_head_channels=64, context_dim=1024,
        use_linear_in_transformer=True, transformer_depth=1,
    ),
    # SDXL: self-attention only at latent/2 and latent/4. The ldm UNetModel of the WebUI's era runs one
    # transformer block per level (its SpatialTransformer indexes `context` per block), where SDXL has 2 and 10.
    "sdxl": dict(
        attention_resolutions=[4, 2], channel_mult=[1, 2, 4], num_head_channels=64, context_dim=2048,
        use_linear_in_transformer=True, transformer_depth=1,
    ),
}
FULL_WIDTH = 320
LATENT_SCALE = 8
"""Pixels per latent cell (the VAE's downscale)."""


def build_unet(layout: str = "sd15", width: int = FULL_WIDTH, *, context_dim: int | None = None,
               in_channels: int = 4, seed: int = 0) -> UNetModel:
    """An ldm UNetModel in eval mode with seeded random weights; `width` is model_channels (320 in SD),
    `in_channels` the latent's channels (and the output's).

    ldm zero-initialises the output projections of every block (they are trained later); with those left at
    zero the attention layers would not reach the output at all, so they get torch's default init instead.
    """
    params = dict(LAYOUTS[layout])
    if context_dim is not None:
        params["context_dim"] = context_dim
    if "num_heads" in params and width < FULL_WIDTH:
        params["num_heads"] = max(1, width // 40)
    if "num_head_channels" in params and width < FULL_WIDTH:
        params["num_head_channels"] = min(64, width // 2)
    torch.manual_seed(seed)
    unet = UNetModel(
        image_size=32, in_channels=in_channels, out_channels=in_channels, model_channels=width, num_res_blocks=2,
        use_spatial_transformer=True, use_checkpoint=False, legacy=False, **params,
    )
    for module in unet.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and not module.weight.any():
            module.reset_parameters()
    return unet.eval().requires_grad_(False)


class LatentDiffusionShell(nn.Module):
    """The `.model.diffusion_model` nesting of the WebUI's `sd_model` around a bare U-Net: what tomesd.apply_patch
    and the WebUI script look the U-Net up through."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = unet


def cast_unet(unet: UNetModel, dtype: torch.dtype) -> UNetModel:
    """Run the U-Net in `dtype` the way the WebUI does: weights cast, `unet.dtype` set (ldm casts its input to
    it), and the timestep embedding made in that dtype (modules/sd_hijack_unet.py, timestep_embedding).

    GroupNorm stays in float32, as under the WebUI's autocast: ldm's GroupNorm32 normalises in float32 anyway.
    """
    unet.to(dtype)
    for module in unet.modules():
        if isinstance(module, nn.GroupNorm):
            module.float()
    unet.dtype = dtype
    unet.time_embed.register_forward_pre_hook(lambda _module, args: (args[0].to(dtype),))
    return unet


def unet_inputs(unet: UNetModel, batch: int, latent_height: int, latent_width: int, *, timestep: float = 500.0,
                context_tokens: int = 77, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded (x, timesteps, context) for one U-Net call, on the U-Net's device and dtype."""
    param = next(unet.parameters())
    generator = torch.Generator().manual_seed(seed)
    context_dim = next(m.attn2.to_k.in_features for m in unet.modules() if hasattr(m, "attn2"))
    x = torch.randn(batch, unet.in_channels, latent_height, latent_width, generator=generator)
    context = torch.randn(batch, context_tokens, context_dim, generator=generator)
    timesteps = torch.full((batch,), float(timestep))
    return x.to(param), timesteps.to(param.device), context.to(param)


def _sdpa_forward(self, x, context=None, mask=None, **kwargs):
    """CrossAttention.forward on torch SDPA, shaped like the WebUI's "sdp" optimizer (K/V from `context`)."""
    batch, _, channels = x.shape
    context = x if context is None else context
    heads = self.heads
    q = self.to_q(x).view(batch, -1, heads, channels // heads).transpose(1, 2)
    k = self.to_k(context).view(batch, -1, heads, channels // heads).transpose(1, 2)
    v = self.to_v(context).view(batch, -1, heads, channels // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return self.to_out(out.transpose(1, 2).reshape(batch, -1, channels))


@contextlib.contextmanager
def sdpa_attention() -> Iterator[None]:
    """Swap ldm's CrossAttention.forward for the SDPA one, as the WebUI's attention optimizer does."""
    original = ldm_attention.CrossAttention.forward
    ldm_attention.CrossAttention.forward = _sdpa_forward
    try:
        yield
    finally:
        ldm_attention.CrossAttention.forward = original


class _TorchWithResizingCat:
    """torch, except that `cat` resizes a mismatched decoder tensor to its skip connection (nearest).

    Reproduces modules/sd_hijack_unet.py (TorchHijackForUnet), which lets the WebUI run latents that are not
    multiples of 8.
    """

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def cat(tensors, *args, **kwargs):
        if len(tensors) == 2 and tensors[0].shape[-2:] != tensors[1].shape[-2:]:
            tensors = (F.interpolate(tensors[0], tensors[1].shape[-2:], mode="nearest"), tensors[1])
        return torch.cat(tensors, *args, **kwargs)


@contextlib.contextmanager
def webui_skip_resize() -> Iterator[None]:
    """Run ldm's U-Net with the WebUI's resizing skip-concatenation, for latents that are not multiples of 8."""
    original = openaimodel.th
    openaimodel.th = _TorchWithResizingCat()
    try:
        yield
    finally:
        openaimodel.th = original
