"""Mirrors Forge Neo 2.26's backend/nn/krea.py (Krea 2, SingleStreamDiT): one `Attention` class serves the text
fusion (attention across each token's stacked encoder layers, then over the text alone) and the single-stream
blocks over [text, image, references]; it norms q and k, applies RoPE, repeats the key/value heads up to the query
heads, and calls the module global `attention_function(q, k, v, heads, mask=mask, skip_reshape=True,
transformer_options=...)`. With references the blocks' `attn` is called past the blocks' forward."""

from __future__ import annotations

import torch
from torch import nn

from .neo_attention import attention_function
from .neo_flux import EmbedND, _apply_rope, timestep_embedding
from .neo_utils import pad_to_patch_size


class Attention(nn.Module):
    """Mirrors krea.py Attention.forward(x, freqs=None, mask=None, transformer_options={}): grouped-query heads,
    output gated by sigmoid(gate)."""

    def __init__(self, dim: int, heads: int, kvheads: int | None = None):
        super().__init__()
        self.heads, self.kvheads = heads, kvheads or heads
        self.headdim = dim // heads
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, self.headdim * self.kvheads, bias=False)
        self.wv = nn.Linear(dim, self.headdim * self.kvheads, bias=False)
        self.gate = nn.Linear(dim, dim, bias=False)
        self.q_norm, self.k_norm = nn.RMSNorm(self.headdim), nn.RMSNorm(self.headdim)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x, freqs=None, mask=None, transformer_options={}):  # noqa: B006 - the host's signature
        batch, tokens = x.shape[:2]
        q = self.q_norm(self.wq(x).view(batch, tokens, self.heads, -1).transpose(1, 2))
        k = self.k_norm(self.wk(x).view(batch, tokens, self.kvheads, -1).transpose(1, 2))
        v = self.wv(x).view(batch, tokens, self.kvheads, -1).transpose(1, 2).to(q)
        if freqs is not None:
            q, k = _apply_rope(q, freqs), _apply_rope(k, freqs)
        if self.kvheads != self.heads:
            k = k.repeat_interleave(self.heads // self.kvheads, dim=1)
            v = v.repeat_interleave(self.heads // self.kvheads, dim=1)
        out = attention_function(q, k, v, self.heads, mask=mask, skip_reshape=True,
                                 transformer_options=transformer_options)
        return self.wo(out * torch.sigmoid(self.gate(x)))


class TextFusionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, kvheads: int | None = None):
        super().__init__()
        self.prenorm, self.postnorm = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.attn = Attention(dim, heads, kvheads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, x, mask=None, transformer_options={}):  # noqa: B006
        x = x + self.attn(self.prenorm(x), None, mask, transformer_options)
        return x + self.mlp(self.postnorm(x))


class TextFusionTransformer(nn.Module):
    """Mirrors krea.py TextFusionTransformer: attention across each token's encoder layers, a projection of the
    layers to one, then attention over the text."""

    def __init__(self, layers: int, dim: int, heads: int, kvheads: int | None = None):
        super().__init__()
        self.layerwise_blocks = nn.ModuleList([TextFusionBlock(dim, heads, kvheads)])
        self.projector = nn.Linear(layers, 1, bias=False)
        self.refiner_blocks = nn.ModuleList([TextFusionBlock(dim, heads, kvheads)])

    def forward(self, x, mask=None, transformer_options={}):  # noqa: B006
        batch, tokens, layers, dim = x.shape
        x = x.reshape(batch * tokens, layers, dim)
        for block in self.layerwise_blocks:
            x = block(x, transformer_options=transformer_options)
        x = self.projector(x.reshape(batch, tokens, layers, dim).transpose(2, 3)).squeeze(-1)
        for block in self.refiner_blocks:
            x = block(x, mask, transformer_options)
        return x


class SingleStreamBlock(nn.Module):
    """Mirrors krea.py SingleStreamBlock.forward(x, vec, freqs, mask=None, transformer_options={})."""

    def __init__(self, dim: int, heads: int, kvheads: int | None = None):
        super().__init__()
        self.mod = nn.Parameter(torch.randn(6 * dim) / dim)
        self.prenorm, self.postnorm = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.attn = Attention(dim, heads, kvheads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def modulations(self, vec):
        return (vec + self.mod).chunk(6, dim=-1)

    def forward(self, x, vec, freqs, mask=None, transformer_options={}):  # noqa: B006
        prescale, preshift, pregate, postscale, postshift, postgate = self.modulations(vec)
        x = x + pregate * self.attn((1 + prescale) * self.prenorm(x) + preshift, freqs, mask,
                                    transformer_options=transformer_options)
        return x + postgate * self.mlp((1 + postscale) * self.postnorm(x) + postshift)


def _block_ref_forward(block, x, vec, refvec, split, freqs, transformer_options):
    """Mirrors krea.py _block_ref_forward: the tokens before `split` modulated by the timestep, the references
    after it by timestep 0; the block's `attn` called directly."""
    own, ref = block.modulations(vec), block.modulations(refvec)

    def modulate(h, scale, shift):
        return torch.cat(((1 + own[scale]) * h[:, :split] + own[shift], (1 + ref[scale]) * h[:, split:] + ref[shift]),
                         dim=1)

    def gate(h, index):
        return torch.cat((own[index] * h[:, :split], ref[index] * h[:, split:]), dim=1)

    x = x + gate(block.attn(modulate(block.prenorm(x), 0, 1), freqs, None, transformer_options=transformer_options), 2)
    return x + gate(block.mlp(modulate(block.postnorm(x), 3, 4)), 5)


class SingleStreamDiT(nn.Module):
    """Mirrors krea.py SingleStreamDiT.forward(x, timesteps, context, attention_mask=None, transformer_options={},
    **kwargs) and _forward_with_refs: pads to `patch`, patchifies row-major, fuses the (batch, text, layers *
    dim) context, and runs the blocks on [text, image] or, with `ref_latents`, [text, image, references]
    (references at RoPE index 1, 2, ...); the image tokens come out."""

    def __init__(self, patch=2, channels=4, features=64, heads=2, kvheads=1, layers=2, txtlayers=3, txtdim=16):
        super().__init__()
        self.patch, self.channels, self.txtlayers, self.txtdim = patch, channels, txtlayers, txtdim
        self.first = nn.Linear(channels * patch * patch, features)
        self.tmlp = nn.Sequential(nn.Linear(32, features), nn.SiLU(), nn.Linear(features, features))
        self.tproj = nn.Linear(features, 6 * features)
        self.txtfusion = TextFusionTransformer(txtlayers, txtdim, heads, kvheads)
        self.txtmlp = nn.Linear(txtdim, features)
        self.pe_embedder = EmbedND(features // heads, 10000, (8, 12, 12))
        self.blocks = nn.ModuleList(SingleStreamBlock(features, heads, kvheads) for _ in range(layers))
        self.last = nn.Linear(features, patch * patch * channels)

    def _patchify(self, x):
        patch = self.patch
        x = pad_to_patch_size(x, (patch,) * 2)
        batch, channels, height, width = x.shape
        rows, cols = height // patch, width // patch
        tokens = x.view(batch, channels, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
        ids = torch.zeros(rows, cols, 3)
        ids[..., 1] = torch.arange(rows)[:, None]
        ids[..., 2] = torch.arange(cols)[None, :]
        return tokens.reshape(batch, rows * cols, -1), ids.reshape(1, rows * cols, 3), rows, cols

    def forward(self, x, timesteps, context, attention_mask=None, transformer_options={}, **kwargs):  # noqa: B006
        batch, _, height, width = x.shape
        img, img_ids, rows, cols = self._patchify(x)
        refs = kwargs.get("ref_latents") or []
        ref_tokens, ref_ids = [], []
        for index, ref in enumerate(refs, start=1):
            tokens, ids, _, _ = self._patchify(ref.to(x).expand(batch, -1, -1, -1))
            ids[..., 0] = index
            ref_tokens.append(tokens)
            ref_ids.append(ids)
        img = self.first(torch.cat((img, *ref_tokens), dim=1))
        t = self.tmlp(timestep_embedding(timesteps, 32).unsqueeze(1).to(img.dtype))
        context = context.squeeze(1)
        context = context.reshape(*context.shape[:2], self.txtlayers, self.txtdim)
        context = self.txtmlp(self.txtfusion(context, transformer_options=transformer_options))
        text = context.shape[1]
        combined = torch.cat([context, img], 1)
        pos = torch.cat((torch.zeros(1, text, 3), img_ids, *ref_ids), dim=1).expand(batch, -1, -1)
        freqs = self.pe_embedder(pos)
        if refs:
            refvec = self.tproj(self.tmlp(timestep_embedding(timesteps * 0, 32).unsqueeze(1).to(img.dtype)))
            split = text + rows * cols
            for block in self.blocks:
                combined = _block_ref_forward(block, combined, self.tproj(t), refvec, split, freqs,
                                              transformer_options)
        else:
            for block in self.blocks:
                combined = block(combined, self.tproj(t), freqs, None, transformer_options=transformer_options)
        out = self.last(combined[:, text:text + rows * cols])
        out = out.view(batch, rows, cols, self.channels, self.patch, self.patch).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(batch, self.channels, rows * self.patch, cols * self.patch)[:, :, :height, :width]
