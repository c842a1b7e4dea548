"""Mirrors Forge Neo 2.26's extensions-builtin/sd_forge_radial/scripts/forge_radial.py (RadialAttention, Wan only):
it captures `wan.attention` at import, and before every model call (its unet function wrapper) sets `wan.attention`
to that function on the dense steps, or to a functools.wraps wrapper of it that sends the blocks from `dense_block`
on (by `transformer_options["block_index"]`) to its block-sparse kernel. The kernel is a stand-in on CPU: SDPA with
each token attending its own block of tokens and the two beside it, asserting full-length keys and no mask as
Radial's does."""

from __future__ import annotations

from functools import wraps

import torch

from . import neo226_wan as wan
from .neo_attention import attention_pytorch

ORIG_ATTENTION = wan.attention
BLOCK = 4
"""Tokens per sparse block (Radial's are 64 or 128)."""

sparse_calls: list[int] = []
"""The block index of every call the sparse kernel took, for tests."""


def sparse_attention(q, k, v, heads, mask=None, transformer_options={}, **kwargs):  # noqa: B006
    """Stand-in of radial_attn_func: (batch, tokens, heads * dim) in and out."""
    assert q.shape == k.shape
    assert mask is None
    sparse_calls.append(transformer_options.get("block_index", -1))
    block = torch.arange(q.shape[1]) // BLOCK
    band = (block[:, None] - block[None, :]).abs() <= 1
    return attention_pytorch(q, k, v, heads, mask=band)


def radial_model_call(model, dense_block: int, sparse_step: bool, x, timestep, context, **kwargs):
    """Mirrors PatchRadialAttn.patch_radial_attn's unet_wrapper_function for one model call: Radial's options
    in the call's transformer_options, `wan.attention` set for the step, then the model."""
    options = {"radial_attn": {"patch_size": model.patch_size, "dense_block": dense_block}}
    if not sparse_step:
        wan.attention = ORIG_ATTENTION
    else:
        @wraps(ORIG_ATTENTION)
        def try_radial_attn(*args, **kwargs):
            if kwargs.get("transformer_options", {}).get("block_index", -1) >= dense_block:
                return sparse_attention(*args, **kwargs)
            return ORIG_ATTENTION(*args, **kwargs)

        wan.attention = try_radial_attn
    return model(x, timestep, context, transformer_options=options, **kwargs)
