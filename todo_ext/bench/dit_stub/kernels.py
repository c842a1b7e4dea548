"""CPU stand-ins for the GPU attention kernels the hosts' backend/attention.py calls, each keeping the contract of the
function it mirrors (layout, scale, what it does with a bias or mask, what it refuses) and computing with PyTorch's
SDPA, so that ToDo's tests can run every host backend on CPU."""

from __future__ import annotations

import torch.nn.functional as F

BIAS_ALIGNMENT = 8
"""xformers reads an attention bias whose rows start at multiples of 8 elements (its memory alignment); the hosts
pad a mask's last dimension for it."""


def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None):
    """Mirrors xformers.ops.memory_efficient_attention: (batch, tokens, heads, dim) or (batch, tokens, dim) inputs,
    scale 1/sqrt(dim) by default, a tensor `attn_bias` of shape (batch, heads, queries, keys) (or (batch, queries,
    keys) for 3-D inputs), broadcast where a dimension is 1, with rows aligned in memory."""
    if attn_bias is not None:
        assert attn_bias.dim() == query.dim(), "xformers takes a bias with as many dimensions as the inputs"
        assert attn_bias.stride(-2) % BIAS_ALIGNMENT == 0, "xformers needs the bias rows aligned to 8 elements"
    if query.dim() == 3:
        bias = None if attn_bias is None else attn_bias.unsqueeze(0)
        q, k, v = (tensor.unsqueeze(0) for tensor in (query, key, value))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale).squeeze(0)
    q, k, v = (tensor.transpose(1, 2) for tensor in (query, key, value))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=scale).transpose(1, 2)


def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, return_lse=False, **kwargs):
    """Mirrors sageattention.sageattn (SageAttention 1 and 2, thu-ml/SageAttention sageattention/core.py): "HND"
    (batch, heads, tokens, dim) or "NHD" (batch, tokens, heads, dim), sm_scale 1/sqrt(dim) by default, any other
    keyword taken and ignored: an `attn_mask` never reaches the kernel. Its int8 quantization of q and k is not
    reproduced here (see todo_ext/bench/bias_bench.py sage_int8_attention)."""
    assert q.shape[-1] <= 128, "SageAttention takes head dimensions up to 128"
    if tensor_layout == "NHD":
        q, k, v = (tensor.transpose(1, 2) for tensor in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=sm_scale)
    if tensor_layout == "NHD":
        out = out.transpose(1, 2)
    return out


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
    """Mirrors flash_attn.flash_attn_func (Dao-AILab/flash-attention flash_attn_interface.py): (batch, tokens, heads,
    dim), scale 1/sqrt(dim) by default, no mask or bias argument, head dimensions up to 256 (this stand-in also
    refuses one that is no multiple of 8, which the real one pads at a cost)."""
    head_dim = q.shape[-1]
    assert head_dim <= 256 and head_dim % 8 == 0, "flash-attn takes head dimensions up to 256, multiples of 8"
    q, k, v = (tensor.transpose(1, 2) for tensor in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=softmax_scale)
    return out.transpose(1, 2)

