"""Attention-output fidelity proxy: ToDo and ToMe against exact self-attention on token grids from real photographs.

Trained SD weights cannot be downloaded here, so the proxy keeps the one ingredient that decides how much K/V
downsampling loses, the spatial statistics of natural images, and replaces the trained layers by fixed random ones:

- tokens: each photograph (scikit-image's astronaut, coffee, chelsea, rocket), centre-cropped to a square and
  resized to a G x G grid; a token is its cell's 3x3 RGB neighbourhood plus sin/cos position features, through a fixed
  random linear map to C channels and a per-token layer norm (the transformer block's norm1);
- attention: HEADS heads; Q and K share one fixed random projection, so that attention weights follow feature
  similarity as trained self-attention does; V has its own; scaled dot-product softmax attention;
- ToDo: K and V from todo_ext.downsample.downsample_tokens, the engine's own operation, with all queries kept;
- ToMe: tomesd 0.1.3's bipartite_soft_matching_random2d as its patched block uses it on attn1 (merge the tokens,
  attend among the merged tokens, unmerge), with the stride and r that leave as many tokens as ToDo keeps.

Metrics, in the format of the paper's Table 1, with every output divided by the standard deviation of the exact
output: MSE against exact attention, and HPF, the mean absolute value of the 3x3 Laplacian of the output over the
grid (per channel, edge-replicated), a high-pass magnitude that falls when detail is lost.

What it does not measure: images. The paper's MSE and HPF are on decoded images after 50 sampling steps, where
errors compound through the U-Net, the sampler and the VAE. This proxy measures one attention layer's output error
on photograph-like features; its numbers rank the methods, they are not comparable to the paper's in size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from todo_ext.config import METHODS, ratio_to_factor

if TYPE_CHECKING:
    from todo_ext.bench.runner import BenchConfig

IMAGES = ("astronaut", "coffee", "chelsea", "rocket")
CHANNELS = 64
HEADS = 4
POSITION_FREQUENCIES = (1, 2)
RATIOS = (0.75, 0.89, 0.9375)
SEED = 0


@dataclass(frozen=True)
class FidelityRow:
    method: str
    ratio: float
    grid: int
    kv_tokens: int
    mse: float
    hpf: float


def photograph(name: str) -> np.ndarray:
    """A scikit-image sample photograph as float RGB in [0, 1], centre-cropped to a square."""
    import skimage.data

    image = getattr(skimage.data, name)().astype(np.float32) / 255.0
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top:top + side, left:left + side, :3]


def image_tokens(image: np.ndarray, grid: int, generator: torch.Generator) -> torch.Tensor:
    """(1, grid*grid, CHANNELS) layer-normed tokens from an RGB photograph; see the module docstring."""
    from skimage.transform import resize

    cells = torch.from_numpy(resize(image, (grid, grid), anti_aliasing=True).astype(np.float32))
    padded = F.pad(cells.permute(2, 0, 1)[None], (1, 1, 1, 1), mode="replicate")
    neighbourhood = F.unfold(padded, kernel_size=3)[0].T
    axis = torch.arange(grid, dtype=torch.float32) / grid
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    position = [
        fn(2 * math.pi * k * coordinate).flatten()
        for k in POSITION_FREQUENCIES for coordinate in (ys, xs) for fn in (torch.sin, torch.cos)
    ]
    raw = torch.cat([neighbourhood, torch.stack(position, dim=1)], dim=1)
    projection = torch.randn(raw.shape[1], CHANNELS, generator=generator) / math.sqrt(raw.shape[1])
    features = (raw - raw.mean(0)) @ projection
    return F.layer_norm(features, (CHANNELS,))[None]


class RandomSelfAttention:
    """Fixed random self-attention whose K/V may come from a shorter token set."""

    def __init__(self, generator: torch.Generator):
        scale = 1.0 / math.sqrt(CHANNELS)
        self.query_key = torch.randn(CHANNELS, CHANNELS, generator=generator) * scale
        self.value = torch.randn(CHANNELS, CHANNELS, generator=generator) * scale

    def __call__(self, tokens: torch.Tensor, kv_tokens: torch.Tensor | None = None) -> torch.Tensor:
        kv_tokens = tokens if kv_tokens is None else kv_tokens
        q = _split_heads(tokens @ self.query_key)
        k = _split_heads(kv_tokens @ self.query_key)
        v = _split_heads(kv_tokens @ self.value)
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[1], CHANNELS)


def _split_heads(x: torch.Tensor) -> torch.Tensor:
    return x.view(x.shape[0], x.shape[1], HEADS, -1).transpose(1, 2)


def todo_attention(attention: RandomSelfAttention, tokens: torch.Tensor, grid: int, ratio: float,
                   method: str) -> tuple[torch.Tensor, int]:
    """All queries against the engine's downsampled K/V tokens; returns (output, number of K/V tokens)."""
    from todo_ext.downsample import downsample_tokens

    factor = ratio_to_factor(ratio)
    if factor <= 1.0:
        return attention(tokens), tokens.shape[1]
    kv = downsample_tokens(tokens, (grid, grid), factor, method)
    return attention(tokens, kv), kv.shape[1]


def tome_attention(attention: RandomSelfAttention, tokens: torch.Tensor, grid: int,
                   kv_tokens: int) -> tuple[torch.Tensor, int]:
    """tomesd's attn1 path (merge, attend, unmerge) leaving `kv_tokens` tokens where its stride allows."""
    total = tokens.shape[1]
    stride = max(2, math.ceil(math.sqrt(total / kv_tokens) - 1e-9))
    return tome_merged_attention(attention, tokens, grid, stride, total - kv_tokens)


def tome_merged_attention(attention: RandomSelfAttention, tokens: torch.Tensor, grid: int, stride: int,
                          removed: int) -> tuple[torch.Tensor, int]:
    """tomesd 0.1.3's attn1 path with its own arguments: merge `removed` tokens into one dst per stride x stride
    cell, attend among the rest, unmerge; returns (output, tokens attended)."""
    from tomesd.merge import bipartite_soft_matching_random2d

    merge, unmerge = bipartite_soft_matching_random2d(tokens, grid, grid, stride, stride, removed, no_rand=True)
    merged = merge(tokens)
    return unmerge(attention(merged)), merged.shape[1]


def high_pass_magnitude(output: torch.Tensor, grid: int) -> float:
    """Mean |3x3 Laplacian| of every output channel over the token grid (edges replicated)."""
    channels = output.shape[-1]
    image = output[0].T.reshape(channels, 1, grid, grid)
    laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), laplacian).abs().mean().item()


def measure(grids: tuple[int, ...] = (64, 128), images: tuple[str, ...] = IMAGES, ratios: tuple[float, ...] = RATIOS,
            methods: tuple[str, ...] = METHODS, progress=None) -> list[FidelityRow]:
    """Rows for the exact baseline, ToDo (every method and ratio) and ToMe (every ratio), averaged over images."""
    generator = torch.Generator().manual_seed(SEED)
    attention = RandomSelfAttention(generator)
    collected: dict[tuple[str, float, int], list[tuple[int, float, float]]] = {}
    with torch.inference_mode():
        for grid in grids:
            for name in images:
                tokens = image_tokens(photograph(name), grid, torch.Generator().manual_seed(SEED + 1))
                exact = attention(tokens)
                scale = exact.std()
                results = {("exact", 0.0): (exact, tokens.shape[1])}
                for ratio in ratios:
                    for method in methods:
                        results[(f"todo {method}", ratio)] = todo_attention(attention, tokens, grid, ratio, method)
                    kv_tokens = results[(f"todo {methods[0]}", ratio)][1]
                    results[("tome", ratio)] = tome_attention(attention, tokens, grid, kv_tokens)
                for (method, ratio), (output, kv_tokens) in results.items():
                    mse = F.mse_loss(output / scale, exact / scale).item()
                    collected.setdefault((method, ratio, grid), []).append(
                        (kv_tokens, mse, high_pass_magnitude(output / scale, grid)))
                if progress is not None:
                    progress(grid, name)
    return [
        FidelityRow(method, ratio, grid, round(float(np.mean([v[0] for v in values]))),
                    float(np.mean([v[1] for v in values])), float(np.mean([v[2] for v in values])))
        for (method, ratio, grid), values in collected.items()
    ]


def _shortened_layers(config: BenchConfig, latent: int,
                      levels: Sequence[int]) -> list[tuple[int, Callable[..., torch.Tensor]]]:
    """(grid side, approximate attention) for every self-attention level that `config` shortens on a square latent
    of side `latent`: what the engine plans for ToDo, depth 0 with the WebUI's r = int(tokens * ratio) for ToMe."""
    import todo_ext

    if config.kind == "todo":
        method = config.todo.method
        return [
            (plan.grid[0], functools.partial(_downsampled_attention, factor=plan.factor, method=method))
            for plan in todo_ext.plan_kv_tokens(config.todo, latent, latent, tuple(levels)) if plan.factor > 1.0
        ]
    if config.kind == "tome" and levels[0] == 0:
        removed = int(latent * latent * config.tome_ratio)
        return [(latent, functools.partial(_merged_attention, stride=config.tome_stride, removed=removed))]
    return []


def _downsampled_attention(attention, tokens, grid, *, factor, method):
    from todo_ext.downsample import downsample_tokens

    return attention(tokens, downsample_tokens(tokens, (grid, grid), factor, method))


def _merged_attention(attention, tokens, grid, *, stride, removed):
    return tome_merged_attention(attention, tokens, grid, stride, removed)[0]


def configuration_errors(configs: Sequence[BenchConfig], latent: int, levels: Sequence[int],
                         images: tuple[str, ...] = IMAGES, progress=None) -> dict[str, float]:
    """Proxy error of each benchmark configuration at one square latent size, by configuration name.

    Per self-attention level the configuration shortens, the MSE against exact attention on that level's token
    grid (mean over the photographs), summed over those levels: for a configuration that acts at depth 0 only this
    is the depth-0 layer's MSE of `measure`; the sum is a first-order total for one that also acts deeper.
    The baseline, which shortens nothing, gets 0.
    """
    attention = RandomSelfAttention(torch.Generator().manual_seed(SEED))
    errors = {config.name: 0.0 for config in configs}
    layers = {config.name: _shortened_layers(config, latent, levels) for config in configs}
    with torch.inference_mode():
        for name in images:
            image = photograph(name)
            exact_by_grid: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
            for config in configs:
                for grid, approximate in layers[config.name]:
                    if grid not in exact_by_grid:
                        tokens = image_tokens(image, grid, torch.Generator().manual_seed(SEED + 1))
                        exact_by_grid[grid] = tokens, attention(tokens)
                    tokens, exact = exact_by_grid[grid]
                    scale = exact.std()
                    output = approximate(attention, tokens, grid)
                    errors[config.name] += F.mse_loss(output / scale, exact / scale).item() / len(images)
            if progress is not None:
                progress(latent, name)
    return errors


PAPER_TABLE_1 = """| Method | Merge ratio | MSE | HPF |
|---|---|---|---|
| Baseline | – | – | 4.846 |
| ToMe | 0.75 | 2.686e-2 | 4.022 |
| ToMe | 0.89 | 2.671e-2 | 4.003 |
| ToDo | 0.75 | 6.247e-3 | 4.887 |
| ToDo | 0.89 | 9.207e-3 | 4.733 |
"""
"""The paper's Table 1 (SD images at 1536 px, 10 prompts), for side-by-side reading."""


def markdown_table(rows: list[FidelityRow]) -> str:
    """Table 1 layout per grid size: method, ratio, K/V tokens kept, MSE vs exact, HPF (exact's in the first row)."""
    lines = ["| Grid | Method | Merge ratio | K/V tokens | MSE vs exact | HPF |", "|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r.grid, r.method != "exact", r.method.startswith("todo"), r.ratio)):
        name = "Exact attention" if row.method == "exact" else ("ToMe (tomesd)" if row.method == "tome" else
                                                                 "ToDo " + row.method.removeprefix("todo "))
        ratio = "–" if row.method == "exact" else f"{row.ratio:g}"
        mse = "–" if row.method == "exact" else f"{row.mse:.3e}"
        lines.append(f"| {row.grid}x{row.grid} | {name} | {ratio} | {row.kv_tokens} | {mse} | {row.hpf:.3f} |")
    return "\n".join(lines) + "\n"
