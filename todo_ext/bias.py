"""How the proportional bias reaches the host's attention kernel on a DiT.

The hosts' attention functions take the bias as a mask, but each backend pays for a mask differently: CPU SDPA reads
an expanded (1, 1, queries, keys) view for free; Forge's xformers path copies any mask into a (batch * heads,
queries, queries + 8) buffer, Neo's into a (1, 1, queries, keys + 8) one; SDPA on CUDA leaves its flash kernel for
the memory-efficient one; the split and sub-quadratic attentions expand it per batch and head; SageAttention
accepts `attn_mask` and ignores it; flash-attn asserts there is none.

The bias can travel without a mask instead, as one more channel of the head: the queries get a constant `r` and the
keys `log(n) * r` in it, with `r = D^(1/4)` for the padded head dimension D, so that the kernel's default scale
1/sqrt(D) turns their product into exactly log(n); the keys' own channels are scaled by sqrt(D / d) so that q.k
keeps its 1/sqrt(d); values get zero channels, and the output is sliced back to d. The head is padded to a multiple
of 8 (the kernels' alignment): one step of head-dimension FLOPs, copies linear in the tokens, and every kernel keeps
its fast path.

Which way is decided per wrapper from the host function underneath ToDo's (its backend) and per call from the
device and the head dimension (tensor metadata, no sync). Where the channel would move the call off the backend the
user chose (SageAttention past 128 or beyond its head sizes, flash-attn past 256), the bias is dropped: plain ToDo,
as in the paper, and the record says so.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

SDPA, SLICED, XFORMERS, SAGE, FLASH, UNKNOWN = "sdpa", "sliced", "xformers", "sage", "flash", "unknown"

HOST_BACKENDS = {
    "attention_pytorch": SDPA,
    "attention_split": SLICED,
    "attention_sub_quad": SLICED,
    "attention_basic": SLICED,
    "attention_xformers": XFORMERS,
    "attention_sage": SAGE,
    "attention_flash": FLASH,
}
"""The attention implementations of Forge's and Neo's backend/attention.py, by name, and their backend."""

SDPA_MODULES = ("other_impls", "mmditx")
"""Modules whose own `attention(q, k, v, heads, mask=None)` is SDPA: A1111's modules/models/sd3/other_impls.py and
Forge's backend/nn/mmditx.py."""

MASK_FREE_DEVICES = ("cpu",)
"""Devices where SDPA reads the bias mask for free: on CPU it allocates nothing for an expanded mask and ran cheaper
than the channel (docs/benchmark.md, Diffusion transformers)."""

SAGE_HEAD_DIMS = (64, 96, 128)
"""The head dimensions both SageAttention versions keep on Sage: Neo's attention_sage falls back to another backend
past 128 (Sage 2) or off these sizes (Sage 1)."""

FLASH_MAX_HEAD_DIM = 256
ALIGNMENT = 8

MASK, CHANNEL = "mask", "channel"
DROPPED = {
    SAGE: "sage-head",
    FLASH: "flash-head",
}
"""The record's cause where the bias cannot travel, by backend."""


def host_backend(function: Callable) -> str:
    """The backend of the host function under a chain of wrappers (ToDo's `previous`, `__wrapped__` of
    functools.wraps), by its name in the host's attention module."""
    seen = set()
    while id(function) not in seen:
        seen.add(id(function))
        inner = getattr(function, "previous", None) or getattr(function, "__wrapped__", None)
        if inner is None:
            break
        function = inner
    name = getattr(function, "__name__", "")
    module = getattr(function, "__module__", None) or ""
    home = module.rsplit(".", 1)[-1]
    if home.endswith("attention") and name in HOST_BACKENDS:
        return HOST_BACKENDS[name]
    if name == "attention" and home.endswith(SDPA_MODULES):
        return SDPA
    return UNKNOWN


def _aligned(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


def route(backend: str, device_type: str, head_dim: int) -> tuple[str, int | None]:
    """How one call's bias travels: (MASK, None), (CHANNEL, padded head dimension) or (a DROPPED cause, None).
    A function ToDo does not know gets the mask, the contract of the hosts' attention functions."""
    if backend == UNKNOWN or (backend == SDPA and device_type in MASK_FREE_DEVICES):
        return MASK, None
    if backend == SAGE:
        padded = next((size for size in SAGE_HEAD_DIMS if size > head_dim), None)
        return (CHANNEL, padded) if padded is not None else (DROPPED[SAGE], None)
    padded = _aligned(head_dim + 1)
    if backend == FLASH and padded > FLASH_MAX_HEAD_DIM:
        return DROPPED[FLASH], None
    return CHANNEL, padded


def with_channel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_counts: torch.Tensor, heads: int,
                 heads_first: bool, padded: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v with the head padded to `padded` channels and the bias in the first new one. `heads_first`: (batch,
    heads, tokens, dim) as the hosts' `skip_reshape` passes them; else (batch, tokens, heads * dim), returned so."""
    if not heads_first:
        q, k, v = (tensor.unflatten(-1, (heads, -1)) for tensor in (q, k, v))
    head_dim = q.shape[-1]
    extra = padded - head_dim
    root = padded**0.25
    q = F.pad(q, (0, extra))
    q[..., head_dim].fill_(root)
    k = F.pad(k, (0, extra))
    k[..., :head_dim] *= (padded / head_dim) ** 0.5
    column = (log_counts * root).to(k.dtype)
    k[..., head_dim] = column if heads_first else column[:, None]
    v = F.pad(v, (0, extra))
    if not heads_first:
        q, k, v = (tensor.flatten(-2) for tensor in (q, k, v))
    return q, k, v


def without_channel(out: torch.Tensor, heads: int, head_dim: int, heads_first: bool) -> torch.Tensor:
    """The host's output of a padded call cut back to the real head: (batch, heads, tokens, dim) where the host
    returned that (Neo's `skip_output_reshape`), else (batch, tokens, heads * dim)."""
    if heads_first:
        return out[..., :head_dim].contiguous()
    return out.unflatten(-1, (heads, -1))[..., :head_dim].flatten(-2)
