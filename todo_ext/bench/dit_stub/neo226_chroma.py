"""Mirrors Forge Neo 2.26's backend/nn/chroma.py (Chroma): it imports DoubleStreamBlock and SingleStreamBlock from
flux.py and has no `attention` or `attention_function` of its own, so its blocks attend through flux.py's
`attention_function`. Per-block modulations come from an approximator over the timestep (here one MLP feeding the
blocks' own modulation layers: the contract ToDo relies on is the blocks and the token order, not the weights)."""

from __future__ import annotations

import torch
from torch import nn

from .neo226_flux import DoubleStreamBlock, SingleStreamBlock
from .neo_flux import EmbedND, LastLayer, MLPEmbedder, timestep_embedding, unpatchify
from .neo_utils import pad_to_patch_size


class IntegratedChromaTransformer2DModel(nn.Module):
    """Mirrors chroma.py IntegratedChromaTransformer2DModel.forward(x, timestep, context, guidance=None,
    control=None, transformer_options={}, **kwargs): pads to `patch_size`, patchifies row-major, RoPE ids (0, row,
    column) for the image and 0 for the text, the double blocks on (img, txt), the single blocks on [txt, img] with
    `attn_mask` from `attention_mask`, the image tokens out. No reference latents."""

    def __init__(self, in_channels=4, out_channels=4, context_in_dim=16, hidden_size=64, mlp_ratio=2.0, num_heads=2,
                 depth=1, depth_single_blocks=1, axes_dim=(8, 12, 12), theta=10000, patch_size=2):
        super().__init__()
        self.patch_size = patch_size
        self.pe_embedder = EmbedND(hidden_size // num_heads, theta, axes_dim)
        self.img_in = nn.Linear(in_channels * patch_size * patch_size, hidden_size)
        self.distilled_guidance_layer = MLPEmbedder(32, hidden_size)
        self.txt_in = nn.Linear(context_in_dim, hidden_size)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(hidden_size, num_heads, mlp_ratio)
                                           for _ in range(depth_single_blocks))
        self.final_layer = LastLayer(hidden_size, 1, out_channels * patch_size * patch_size)

    def forward(self, x, timestep, context, guidance=None, control=None, transformer_options={}, **kwargs):  # noqa: B006
        batch, _, height, width = x.shape
        patch = self.patch_size
        x = pad_to_patch_size(x, (patch,) * 2)
        rows, cols = x.shape[-2] // patch, x.shape[-1] // patch
        img = x.view(batch, -1, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5).reshape(batch, rows * cols, -1)
        img_ids = torch.zeros(rows, cols, 3, device=x.device)
        img_ids[..., 1] = torch.arange(rows, device=x.device)[:, None]
        img_ids[..., 2] = torch.arange(cols, device=x.device)[None, :]
        img_ids = img_ids.reshape(1, rows * cols, 3).expand(batch, -1, -1)
        txt_ids = torch.zeros(batch, context.shape[1], 3, device=x.device)
        vec = self.distilled_guidance_layer(timestep_embedding(timestep, 32).to(x.dtype))
        img, txt = self.img_in(img), self.txt_in(context)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        mask = kwargs.get("attention_mask")
        for index, block in enumerate(self.double_blocks):
            transformer_options["block_index"] = index
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe, attn_mask=mask, transformer_options=transformer_options)
        img = torch.cat((txt, img), dim=1)
        for index, block in enumerate(self.single_blocks):
            transformer_options["block_index"] = index
            img = block(img, vec=vec, pe=pe, attn_mask=mask, transformer_options=transformer_options)
        out = self.final_layer(img[:, txt.shape[1]:], vec)
        return unpatchify(out, rows, cols, patch)[:, :, :height, :width]
