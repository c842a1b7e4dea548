"""Mirrors WebUI Forge's backend/attention.py (main dfdcbab6): attention implementations that take `mask`,
`attn_precision` and `skip_reshape` and no other keywords, and the module-level `attention_function` that
backend/nn/flux.py imports by name (Forge picks xformers whenever it is importable, else PyTorch, split or
sub-quadratic attention at import: split with --attention-split, sub-quadratic with --attention-quad or where
PyTorch attention is not enabled)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import kernels

SPLIT_STEPS = 2
"""How many query slices attention_split cuts (Forge picks a power of two from the free memory)."""


def _heads_first(tensor: torch.Tensor, heads: int, skip_reshape: bool) -> torch.Tensor:
    if skip_reshape:
        return tensor
    batch, tokens, inner = tensor.shape
    return tensor.view(batch, tokens, heads, inner // heads).transpose(1, 2)


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    """Mirrors attention.py attention_pytorch: SDPA with the mask as given."""
    batch = q.shape[0]
    q, k, v = (_heads_first(t, heads, skip_reshape) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, -1, heads * q.shape[-1])


def attention_split(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    """Mirrors attention.py attention_split when memory makes it slice: q, k, v as (batch * heads, tokens, dim),
    the queries cut into SPLIT_STEPS slices where they divide evenly; a 2-D mask is (queries, keys) and added as
    mask[i:end], any other is brought to (batch * heads, its second-to-last dim, keys) and added as
    mask[:, i:end], that dim taken for the queries."""
    batch = q.shape[0]
    q, k, v = (_heads_first(t, heads, skip_reshape) for t in (q, k, v))
    dim = q.shape[-1]
    q, k, v = (t.reshape(batch * heads, -1, dim) for t in (q, k, v))
    if mask is not None and mask.dim() != 2:
        rows, keys = mask.shape[-2:]
        mask = mask.reshape(mask.shape[0], -1, rows, keys).expand(batch, heads, -1, -1).reshape(-1, rows, keys)
    queries = q.shape[1]
    slice_size = queries // SPLIT_STEPS if queries % SPLIT_STEPS == 0 else queries
    out = torch.empty_like(q)
    for start in range(0, queries, slice_size):
        end = start + slice_size
        logits = q[:, start:end] @ k.transpose(1, 2) * dim**-0.5
        if mask is not None:
            logits = logits + (mask[start:end] if mask.dim() == 2 else mask[:, start:end])
        out[:, start:end] = logits.softmax(dim=-1) @ v
    return out.view(batch, heads, queries, dim).transpose(1, 2).reshape(batch, queries, heads * dim)


def attention_xformers(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    """Mirrors attention.py attention_xformers: q, k, v to (batch * heads, tokens, dim) with `skip_reshape`, else
    (batch, tokens, heads, dim); any mask is copied into a new (q's first dim, queries, queries + pad) buffer, its
    last dimension padded for xformers' alignment, and handed over sliced to the keys."""
    if skip_reshape:
        batch, _, _, dim_head = q.shape
        q, k, v = (t.reshape(batch * heads, -1, dim_head) for t in (q, k, v))
    else:
        batch, _, inner = q.shape
        dim_head = inner // heads
        q, k, v = (t.reshape(batch, -1, heads, dim_head) for t in (q, k, v))
    if mask is not None:
        pad = 8 - q.shape[1] % 8
        padded = torch.empty([q.shape[0], q.shape[1], q.shape[1] + pad], dtype=q.dtype, device=q.device)
        padded[:, :, :mask.shape[-1]] = mask
        mask = padded[:, :, :mask.shape[-1]]
    out = kernels.memory_efficient_attention(q, k, v, attn_bias=mask)
    if skip_reshape:
        return out.reshape(batch, heads, -1, dim_head).transpose(1, 2).reshape(batch, -1, heads * dim_head)
    return out.reshape(batch, -1, heads * dim_head)


attention_function = attention_pytorch
