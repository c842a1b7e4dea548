"""Mirrors Forge Neo's backend/attention.py (branch neo 283cb2c4; Neo 2.26's rewritten module, exo101's
sd-webui-forge-neo-v3 5692d2d1 webui/backend/attention.py, treats masks and head sizes alike): the attention
implementations and the module-level
`attention_function` that Neo's DiT modules import by name (flux.py and wan.py take `attention_function`, lumina.py
and qwen.py `attention_pytorch` under that name)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from . import kernels

log = logging.getLogger("attention")

IS_SAGE_1 = False
"""Which SageAttention the host imported: version 1 runs head dimensions 64, 96 and 128 only, version 2 up to 128."""


def _heads_first(q, k, v, heads, skip_reshape):
    """The batch, the head dimension and q, k, v as (batch, heads, tokens, dim), from either layout the hosts pass."""
    if skip_reshape:
        return q.shape[0], q.shape[-1], q, k, v
    batch, _, inner = q.shape
    dim_head = inner // heads
    return (batch, dim_head, *(t.view(batch, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v)))


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                      **kwargs):
    """Mirrors backend/attention.py attention_pytorch: q, k, v as (batch, tokens, heads * dim), or as (batch,
    heads, tokens, dim) with `skip_reshape`; a mask (float added to the logits, or bool: True attends) of 2 dims is
    (queries, keys), of 3 dims (batch, queries, keys), of 4 dims (batch, heads, queries, keys), broadcast as SDPA
    does. Other keywords (transformer_options) are ignored."""
    batch, dim_head, q, k, v = _heads_first(q, k, v, heads, skip_reshape)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_four_dims(mask))
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(batch, -1, heads * dim_head)


def _four_dims(mask):
    """A 2-D mask read as (queries, keys), a 3-D one as (batch, queries, keys), as Neo brings them to 4-D."""
    if mask is not None and mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask is not None and mask.dim() == 3:
        mask = mask.unsqueeze(1)
    return mask


def attention_xformers(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                       **kwargs):
    """Mirrors attention.py attention_xformers: q, k, v to (batch, tokens, heads, dim); a mask brought to 4-D is
    copied into a new (its batch, its heads, queries, keys + pad) buffer, its last dimension padded for xformers'
    alignment, and expanded (a view) to (batch, heads, queries, keys)."""
    batch = q.shape[0]
    if skip_reshape:
        dim_head = q.shape[-1]
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
    else:
        dim_head = q.shape[-1] // heads
        q, k, v = (t.reshape(batch, -1, heads, dim_head) for t in (q, k, v))
    mask = _four_dims(mask)
    if mask is not None:
        pad = 8 - mask.shape[-1] % 8
        padded = torch.empty([mask.shape[0], mask.shape[1], q.shape[1], mask.shape[-1] + pad], dtype=q.dtype,
                             device=q.device)
        padded[..., :mask.shape[-1]] = mask
        mask = padded[..., :mask.shape[-1]].expand(batch, heads, -1, -1)
    out = kernels.memory_efficient_attention(q, k, v, attn_bias=mask)
    if skip_output_reshape:
        return out.permute(0, 2, 1, 3)
    return out.reshape(batch, -1, heads * dim_head)


def attention_sage(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                   **kwargs):
    """Mirrors attention.py attention_sage: a head dimension Sage does not run (past 128 on Sage 2, other than 64,
    96 or 128 on Sage 1) falls back to attention_pytorch with the mask; otherwise `sageattn` gets the mask as
    `attn_mask`, which it ignores."""
    if skip_reshape:
        batch, _, _, dim_head = q.shape
        layout = "HND"
    else:
        batch, _, inner = q.shape
        dim_head = inner // heads
        q, k, v = (t.view(batch, -1, heads, dim_head) for t in (q, k, v))
        layout = "NHD"
    mask = _four_dims(mask)
    if (not IS_SAGE_1 and dim_head > 128) or (IS_SAGE_1 and dim_head not in (64, 96, 128)):
        if layout == "NHD":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        return attention_pytorch(q, k, v, heads, mask, skip_reshape=True, skip_output_reshape=skip_output_reshape)
    out = kernels.sageattn(q, k, v, attn_mask=mask, is_causal=False, tensor_layout=layout)
    if layout == "HND":
        return out if skip_output_reshape else out.transpose(1, 2).reshape(batch, -1, heads * dim_head)
    return out.transpose(1, 2) if skip_output_reshape else out.reshape(batch, -1, heads * dim_head)


def attention_flash(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                    **kwargs):
    """Mirrors attention.py attention_flash: asserts there is no mask and otherwise calls flash_attn_func on (batch,
    tokens, heads, dim); where that raises (a mask, a head flash-attn refuses) it logs the error and runs SDPA with
    the mask."""
    batch, dim_head, q, k, v = _heads_first(q, k, v, heads, skip_reshape)
    mask = _four_dims(mask)
    try:
        assert mask is None
        out = kernels.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    except Exception as error:
        log.error("Error running flash_attn: %r", error)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(batch, -1, heads * dim_head)


attention_function = attention_pytorch
"""Mirrors the module-level choice of backend/attention.py (SDPA here: Neo picks Sage, Flash, xformers, PyTorch,
split or basic at import)."""
