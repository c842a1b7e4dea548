"""Mirrors AUTOMATIC1111's modules/models/sd3/mmdit.py (SD3 Medium): `attention` imported by name from
other_impls.py into this module's namespace, where block_mixing looks it up; joint blocks over [context, x], the
context led by the model's register tokens where it has them."""

from __future__ import annotations

import torch
from torch import nn

from .a1111_other_impls import attention
from .forge_mmditx import DismantledBlock, FinalLayer, PatchEmbed, TimestepEmbedder, mix


def block_mixing(context, x, context_block, x_block, c):
    """Mirrors mmdit.py block_mixing: one `attention(q, k, v, heads)` over [context, x], this module's."""
    return mix(context, x, context_block, x_block, c, attention)


class JointBlock(nn.Module):
    """Mirrors mmdit.py JointBlock."""

    def __init__(self, hidden_size: int, num_heads: int, pre_only: bool):
        super().__init__()
        self.context_block = DismantledBlock(hidden_size, num_heads, pre_only=pre_only)
        self.x_block = DismantledBlock(hidden_size, num_heads)

    def forward(self, context, x, c):
        return block_mixing(context, x, self.context_block, self.x_block, c)


class MMDiT(nn.Module):
    """Mirrors mmdit.py MMDiT: forward(x, t, y=None, context=None) (sd3_impls.py BaseModel.apply_model passes
    context and y as keywords); hidden size 64 * depth with `depth` heads, register tokens before the context."""

    def __init__(self, patch_size=2, in_channels=4, depth=2, adm_in_channels=8, context_dim=16, register_length=2,
                 pos_embed_max_size=16):
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
        self.joint_blocks = nn.ModuleList(JointBlock(hidden_size, depth, pre_only=i == depth - 1)
                                          for i in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def cropped_pos_embed(self, hw):
        """Mirrors MMDiT.cropped_pos_embed."""
        patch = self.x_embedder.patch_size[0]
        rows, cols = hw[0] // patch, hw[1] // patch
        top, left = (self.pos_side - rows) // 2, (self.pos_side - cols) // 2
        grid = self.pos_embed.view(1, self.pos_side, self.pos_side, -1)
        return grid[:, top:top + rows, left:left + cols].reshape(1, rows * cols, -1)

    def forward(self, x, t, y=None, context=None):
        hw = x.shape[-2:]
        x = self.cropped_pos_embed(hw) + self.x_embedder(x)
        c = self.t_embedder(t, dtype=x.dtype)
        if y is not None:
            c = c + self.y_embedder(y)
        text = self.context_embedder(context)
        if self.register_length:
            text = torch.cat((self.register.expand(x.shape[0], -1, -1), text), dim=1)
        for block in self.joint_blocks:
            text, x = block(text, x, c=c)
        patch = self.x_embedder.patch_size[0]
        rows, cols = hw[0] // patch, hw[1] // patch
        out = self.final_layer(x, c).reshape(x.shape[0], rows, cols, patch, patch, self.out_channels)
        return torch.einsum("nhwpqc->nchpwq", out).reshape(x.shape[0], self.out_channels, rows * patch, cols * patch)
