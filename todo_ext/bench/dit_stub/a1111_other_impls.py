"""Mirrors AUTOMATIC1111's modules/models/sd3/other_impls.py `attention`, which mmdit.py imports by name."""

from __future__ import annotations

import torch.nn.functional as F


def attention(q, k, v, heads, mask=None):
    """Mirrors other_impls.py attention: q, k, v as (batch, tokens, heads * dim); heads split, SDPA, merged."""
    batch, _, inner = q.shape
    dim_head = inner // heads
    q, k, v = (t.view(batch, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, -1, heads * dim_head)
