"""Mirrors Forge Neo's backend/attention.py: the attention implementations and the module-level
`attention_function` that Neo's DiT modules import by name (flux.py and wan.py take `attention_function`, lumina.py
and qwen.py `attention_pytorch` under that name)."""

from __future__ import annotations

import torch.nn.functional as F


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                      **kwargs):
    """Mirrors backend/attention.py attention_pytorch: q, k, v as (batch, tokens, heads * dim), or as (batch,
    heads, tokens, dim) with `skip_reshape`; a mask (float added to the logits, or bool: True attends) of 2 dims is
    (queries, keys), of 3 dims (batch, queries, keys), of 4 dims (batch, heads, queries, keys), broadcast as SDPA
    does. Other keywords (transformer_options) are ignored."""
    if skip_reshape:
        batch, _, _, dim_head = q.shape
    else:
        batch, _, inner = q.shape
        dim_head = inner // heads
        q, k, v = (t.view(batch, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(batch, -1, heads * dim_head)


attention_function = attention_pytorch
"""Mirrors the module-level choice of backend/attention.py (SDPA here: Neo picks Sage, Flash, xformers, PyTorch,
split or basic at import)."""
