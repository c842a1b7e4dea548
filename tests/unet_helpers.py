"""Helpers of the engine tests on real ldm U-Nets."""


def transformer_blocks(unet):
    """The U-Net's BasicTransformerBlocks in module order (input blocks, middle, output blocks)."""
    return [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
