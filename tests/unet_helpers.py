"""Helpers of the engine tests on real ldm U-Nets."""

import types


def transformer_blocks(unet):
    """The U-Net's BasicTransformerBlocks in module order (input blocks, middle, output blocks)."""
    return [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]


def sgm_block_forward(self, x, context=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
    """sgm's BasicTransformerBlock._forward (generative-models 0ad7de9, sgm/modules/attention.py), which SDXL's
    blocks run in the WebUI: attn1 gets `context=None` and sgm's two extra keywords, which the WebUI's attention
    optimizers take as **kwargs and ignore."""
    x = self.attn1(
        self.norm1(x),
        context=context if self.disable_self_attn else None,
        additional_tokens=additional_tokens,
        n_times_crossframe_attn_in_self=n_times_crossframe_attn_in_self if not self.disable_self_attn else 0,
    ) + x
    x = self.attn2(self.norm2(x), context=context, additional_tokens=additional_tokens) + x
    return self.ff(self.norm3(x)) + x


def use_sgm_blocks(unet):
    """Run every BasicTransformerBlock of an ldm U-Net as sgm's (sgm is not on PyPI); returns the U-Net."""
    for block in transformer_blocks(unet):
        block._forward = types.MethodType(sgm_block_forward, block)
    return unet
