"""The ToDo operator D(.): downsample a flattened token grid, keeping the (batch, tokens, channels) layout."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

_index_cache: dict[tuple, torch.Tensor] = {}
_INDEX_CACHE_LIMIT = 256


def kv_grid(grid: tuple[int, int], factor: float) -> tuple[int, int]:
    """Grid left after downsampling by `factor`; ceil, so edge rows and columns of odd grids are kept."""
    height, width = grid
    return math.ceil(height / factor), math.ceil(width / factor)


def _axis_positions(size: int, out_size: int, factor: float, method: str) -> torch.Tensor:
    offset = 0.5 if method == "nearest-exact" else 0.0
    positions = torch.floor((torch.arange(out_size, dtype=torch.float64) + offset) * factor)
    return positions.clamp_(max=size - 1).long()


def gather_index(grid: tuple[int, int], factor: float, method: str, device: torch.device) -> torch.Tensor:
    """Flat indices of the kept tokens, cached per (grid, factor, method, device).

    "nearest" keeps token floor(i * factor) on each axis: a strided subsample that starts at the corner, like
    the paper's strided convolution. "nearest-exact" samples the centre of each cell, floor((i + 0.5) * factor).
    Built outside inference mode: an index made while the host samples under torch.inference_mode would fail a
    later call that records gradients (an extension with trainable modules in the U-Net, such as LLLite).
    """
    return cached(_index_cache, _INDEX_CACHE_LIMIT, (grid, factor, method, device),
                  lambda: _new_index(grid, factor, method, device))


def cached(cache: dict, limit: int, key: tuple, build: Callable[[], Any]) -> Any:
    """`cache[key]`, built on first use outside inference mode (tensors made under the host's inference mode would
    fail a later call that records gradients); the cache starts over once it holds `limit` entries."""
    value = cache.get(key)
    if value is None:
        with torch.inference_mode(False):
            value = build()
        if len(cache) >= limit:
            cache.clear()
        cache[key] = value
    return value


def _new_index(grid: tuple[int, int], factor: float, method: str, device: torch.device) -> torch.Tensor:
    out_height, out_width = kv_grid(grid, factor)
    rows = _axis_positions(grid[0], out_height, factor, method)
    cols = _axis_positions(grid[1], out_width, factor, method)
    return (rows[:, None] * grid[1] + cols[None, :]).flatten().to(device)


def downsample_tokens(tokens: torch.Tensor, grid: tuple[int, int], factor: float, method: str) -> torch.Tensor:
    """D(tokens) for tokens of shape (batch, height * width, channels) laid out row-major on `grid`.

    Nearest methods are one index gather of the kept tokens; "avg-pool" averages each cell (adaptive pooling,
    so fractional factors work) and needs a channels-first copy.
    """
    if factor == 1.0:
        return tokens
    if method == "avg-pool":
        batch, _, channels = tokens.shape
        image = tokens.transpose(1, 2).reshape(batch, channels, *grid)
        pooled = F.adaptive_avg_pool2d(image, kv_grid(grid, factor))
        return pooled.flatten(2).transpose(1, 2)
    return tokens.index_select(1, gather_index(grid, factor, method, tokens.device))
