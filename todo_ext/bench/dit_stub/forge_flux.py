"""Mirrors WebUI Forge's backend/nn/flux.py (Flux): the blocks of Neo's flux.py, but the module-level
`attention(q, k, v, pe)` applies RoPE and calls the module global `attention_function` (imported by name from
backend/attention.py) with heads positional, `skip_reshape=True` and no other keyword: no mask, no options."""

from __future__ import annotations

from . import neo_flux
from .forge_attention import attention_function


def attention(q, k, v, pe):
    """Mirrors flux.py attention."""
    q, k = neo_flux._apply_rope(q, pe), neo_flux._apply_rope(k, pe)
    return attention_function(q, k, v, q.shape[1], skip_reshape=True)


class DoubleStreamBlock(neo_flux.DoubleStreamBlock):
    """Mirrors flux.py DoubleStreamBlock: one call of this module's `attention` over [txt, img]."""

    def forward(self, img, txt, vec, pe):
        (q, k, v), img_mod, txt_mod = self.joint_qkv(img, txt, vec)
        return self.streams_after(attention(q, k, v, pe=pe), img, txt, img_mod, txt_mod)


class SingleStreamBlock(neo_flux.SingleStreamBlock):
    """Mirrors flux.py SingleStreamBlock: one call of this module's `attention` over the [txt, img] stream."""

    def forward(self, x, vec, pe):
        (q, k, v), mlp, gate = self.joint_qkv(x, vec)
        return self.stream_after(attention(q, k, v, pe=pe), x, mlp, gate)


class IntegratedFluxTransformer2DModel(neo_flux.IntegratedFluxTransformer2DModel):
    """Mirrors flux.py IntegratedFluxTransformer2DModel: forward(x, timestep, context, y, guidance=None, **kwargs),
    Neo's order and patching with this module's blocks (Forge reads no Kontext references: `dynamic_args` stays
    empty for it)."""

    double_block = DoubleStreamBlock
    single_block = SingleStreamBlock
