"""Mirrors the latent helpers of Forge Neo's backend/utils.py that the DiTs patchify with."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_patch_size(img: torch.Tensor, patch_size=(2, 2), padding_mode: str = "circular") -> torch.Tensor:
    """Mirrors backend/utils.py pad_to_patch_size: pads every axis after (batch, channels) at its end, circularly, up
    to a multiple of its patch size (so a side of 7 at patch 2 becomes 8 tokens' worth: ceil(7 / 2))."""
    pad: list[int] = []
    for axis, patch in zip(reversed(range(2, img.dim())), reversed(patch_size), strict=True):
        pad += [0, (-img.shape[axis]) % patch]
    return F.pad(img, pad, mode=padding_mode)


def process_img(x: torch.Tensor, index: int = 0, h_offset: int = 0, w_offset: int = 0):
    """Mirrors backend/utils.py process_img (Flux, Flux Kontext): pad to patch 2, patchify row-major into tokens of
    (channels * 2 * 2), and the RoPE position ids (index, row + h_offset, column + w_offset) of each token, the
    offsets given in latent pixels."""
    patch = 2
    batch, channels = x.shape[:2]
    x = pad_to_patch_size(x, (patch, patch))
    rows, cols = x.shape[-2] // patch, x.shape[-1] // patch
    tokens = x.view(batch, channels, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
    tokens = tokens.reshape(batch, rows * cols, channels * patch * patch)
    ids = torch.zeros(rows, cols, 3, dtype=x.dtype, device=x.device)
    ids[..., 0] = index
    ids[..., 1] = torch.arange(rows, dtype=x.dtype, device=x.device)[:, None] + (h_offset + 1) // patch
    ids[..., 2] = torch.arange(cols, dtype=x.dtype, device=x.device)[None, :] + (w_offset + 1) // patch
    return tokens, ids.reshape(1, rows * cols, 3).expand(batch, -1, -1)
