"""Mirrors Forge Neo 2.26's backend/nn/flux.py (Flux.1, Kontext, Flux.2 Klein): the module-level `attention(q, k,
v, pe, mask, transformer_options)` applies RoPE and calls the module global `attention_function` (imported by name,
backend/attention.py's, whose contract 2.26 keeps: neo_attention) with `skip_reshape=True`, the mask and the
options. The model patches at its own `patch_size`: 2 on Flux.1's 16-channel latent, 1 on Klein's, which arrives
already packed (128 channels). Reference latents come as `ref_latents=` or `dynamic_args.ref_latents` and follow
the image; the blocks are neo_flux's with 2.26's forward."""

from __future__ import annotations

import torch

from . import neo_flux
from .neo226_args import dynamic_args
from .neo_attention import attention_function
from .neo_flux import timestep_embedding, unpatchify
from .neo_utils import pad_to_patch_size


def attention(q, k, v, pe, mask=None, transformer_options={}):  # noqa: B006 - the host's signature
    """Mirrors flux.py attention."""
    if pe is not None:
        q, k = neo_flux._apply_rope(q, pe).type_as(v), neo_flux._apply_rope(k, pe).type_as(v)
    return attention_function(q, k, v, q.shape[1], skip_reshape=True, mask=mask,
                              transformer_options=transformer_options)


class DoubleStreamBlock(neo_flux.DoubleStreamBlock):
    """Mirrors flux.py DoubleStreamBlock.forward(img, txt, vec, pe, attn_mask=None, ..., transformer_options={}):
    one call of this module's `attention` over [txt, img]."""

    def forward(self, img, txt, vec, pe, attn_mask=None, transformer_options={}):  # noqa: B006
        (q, k, v), img_mod, txt_mod = self.joint_qkv(img, txt, vec)
        attended = attention(q, k, v, pe, attn_mask, transformer_options)
        return self.streams_after(attended, img, txt, img_mod, txt_mod)


class SingleStreamBlock(neo_flux.SingleStreamBlock):
    """Mirrors flux.py SingleStreamBlock.forward(x, vec, pe, attn_mask=None, ..., transformer_options={})."""

    def forward(self, x, vec, pe, attn_mask=None, transformer_options={}):  # noqa: B006
        (q, k, v), mlp, gate = self.joint_qkv(x, vec)
        attended = attention(q, k, v, pe, attn_mask, transformer_options)
        return self.stream_after(attended, x, mlp, gate)


class IntegratedFluxTransformer2DModel(neo_flux.IntegratedFluxTransformer2DModel):
    """Mirrors flux.py IntegratedFluxTransformer2DModel.forward(x, timestep, context, y=None, guidance=None,
    ref_latents=None, control=None, transformer_options={}, **kwargs): `process_img` pads to `patch_size` and
    patchifies row-major; the references (`ref_latents`, else `dynamic_args.ref_latents`) are patchified alike and
    appended after the image, one latent serving the whole batch (`default_ref_method` "index": RoPE index 1, 2,
    ... as Klein's; "offset": index 1 beside the image as Kontext's); forward_orig runs the double blocks on (img,
    txt), the single blocks on [txt, img], with `block_index` in the options; the image tokens come out."""

    double_block = DoubleStreamBlock
    single_block = SingleStreamBlock

    def __init__(self, *args, default_ref_method="offset", **kwargs):
        super().__init__(*args, **kwargs)
        self.default_ref_method = str(default_ref_method)

    def process_img(self, x, index=0, h_offset=0, w_offset=0):
        """Mirrors IntegratedFluxTransformer2DModel.process_img: tokens of (channels * patch * patch) and their
        RoPE ids (index, row + offset, column + offset), the offsets in latent pixels."""
        patch = self.patch_size
        batch, channels = x.shape[:2]
        x = pad_to_patch_size(x, (patch,) * 2)
        rows, cols = x.shape[-2] // patch, x.shape[-1] // patch
        tokens = x.view(batch, channels, rows, patch, cols, patch).permute(0, 2, 4, 1, 3, 5)
        ids = torch.zeros(rows, cols, 3, dtype=torch.float32, device=x.device)
        ids[..., 0] = index
        ids[..., 1] = torch.arange(rows, device=x.device)[:, None] + (h_offset + patch // 2) // patch
        ids[..., 2] = torch.arange(cols, device=x.device)[None, :] + (w_offset + patch // 2) // patch
        return tokens.reshape(batch, rows * cols, -1), ids.reshape(1, rows * cols, 3).expand(batch, -1, -1)

    def forward_orig(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None, transformer_options={},  # noqa: B006
                     attn_mask=None):
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256).to(img.dtype)) + self.vector_in(y)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        for index, block in enumerate(self.double_blocks):
            transformer_options["block_index"] = index
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe, attn_mask=attn_mask,
                             transformer_options=transformer_options)
        img = torch.cat((txt, img), dim=1)
        for index, block in enumerate(self.single_blocks):
            transformer_options["block_index"] = index
            img = block(img, vec, pe, attn_mask, transformer_options)
        return self.final_layer(img[:, txt.shape[1]:], vec)

    def forward(self, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                transformer_options={}, **kwargs):  # noqa: B006
        batch, _, height, width = x.shape
        patch = self.patch_size
        img, img_ids = self.process_img(x)
        image_tokens = img.shape[1]
        placed_height = placed_width = index = 0
        for ref in ref_latents or dynamic_args.ref_latents:
            h_offset = w_offset = 0
            if self.default_ref_method == "index":
                index += 1
            else:
                index = 1
                if ref.shape[-2] + placed_height > ref.shape[-1] + placed_width:
                    w_offset = placed_width
                else:
                    h_offset = placed_height
                placed_height = max(placed_height, ref.shape[-2] + h_offset)
                placed_width = max(placed_width, ref.shape[-1] + w_offset)
            ref_tokens, ref_ids = self.process_img(ref.to(x), index=index, h_offset=h_offset, w_offset=w_offset)
            ref_tokens, ref_ids = ref_tokens.expand(batch, -1, -1), ref_ids.expand(batch, -1, -1)
            img, img_ids = torch.cat([img, ref_tokens], dim=1), torch.cat([img_ids, ref_ids], dim=1)
        txt_ids = torch.zeros(batch, context.shape[1], 3, dtype=torch.float32, device=x.device)
        out = self.forward_orig(img, img_ids, context, txt_ids, timestep, y, guidance, transformer_options,
                                attn_mask=kwargs.get("attention_mask"))
        rows, cols = -(-height // patch), -(-width // patch)
        return unpatchify(out[:, :image_tokens], rows, cols, patch)[:, :, :height, :width]
