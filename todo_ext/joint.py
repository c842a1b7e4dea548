"""ToDo for the joint attention of diffusion transformers: every query stays; of the keys and values, the text (and
padding) tokens are kept and the image tokens are downsampled on their own token grid, per frame for video.

A joint sequence is a row of segments: text, then the image grid, then (Flux Kontext, Qwen-Image-Edit) reference
grids, in the order the model concatenates them. The keys come after RoPE, so every kept key carries its true
position. The nearest methods are one gather along the sequence axis with an index cached per (layout, factor,
method, device); avg-pool averages each cell of a grid.

Dropping image keys shifts softmax mass from the image to the text keys, which a U-Net's self-attention does not
have. The proportional correction (ToMe's proportional attention) gives each kept key the logit bias log(n), n
being the number of tokens of its cell, so that a kept key weighs as much as the keys it stands for; it reaches the
host's attention as an additive float mask over the keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .downsample import cached, kv_grid

Grid = tuple[int, ...]
"""A token grid: (height, width) for an image, (frames, height, width) for a video, row-major in the sequence."""


@dataclass(frozen=True)
class Segment:
    """A run of tokens in a joint sequence: `grid` set for image tokens laid out on it, None for tokens kept as they
    are (`name`: text, ref, pad)."""

    tokens: int
    grid: Grid | None = None
    name: str = "image"

    @classmethod
    def kept(cls, tokens: int, name: str = "text") -> Segment:
        return cls(tokens, None, name)

    @classmethod
    def image(cls, grid: Grid) -> Segment:
        return cls(math.prod(grid), tuple(grid))


@dataclass(frozen=True)
class JointLayout:
    """The segments of a joint attention sequence, in order."""

    segments: tuple[Segment, ...]

    @property
    def tokens(self) -> int:
        return sum(segment.tokens for segment in self.segments)

    @property
    def image(self) -> Grid | None:
        """The first image grid: the one being generated."""
        return next((segment.grid for segment in self.segments if segment.grid is not None), None)

    @property
    def kept(self) -> tuple[tuple[str, int], ...]:
        """The tokens kept as they are, by name in order of appearance: (("text", 512), ("pad", 16))."""
        counts: dict[str, int] = {}
        for segment in self.segments:
            if segment.grid is None:
                counts[segment.name] = counts.get(segment.name, 0) + segment.tokens
        return tuple(counts.items())


def reduced_grid(grid: Grid, factor: float) -> Grid:
    """The grid left after downsampling by `factor`: frames are kept, each frame is downsampled on its own."""
    return (*grid[:-2], *kv_grid(grid[-2:], factor))


def _axis_cells(size: int, factor: float, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per kept row (or column): the token kept by the nearest methods and how many tokens its cell holds."""
    out_size = math.ceil(size / factor)
    offset = 0.5 if method == "nearest-exact" else 0.0
    kept = torch.floor((torch.arange(out_size, dtype=torch.float64) + offset) * factor).clamp_(max=size - 1).long()
    if method == "avg-pool":
        starts = torch.floor(torch.arange(out_size, dtype=torch.float64) * size / out_size)
        ends = torch.ceil(torch.arange(1, out_size + 1, dtype=torch.float64) * size / out_size)
    else:
        starts = torch.floor(torch.arange(out_size, dtype=torch.float64) * factor)
        ends = torch.floor(torch.arange(1, out_size + 1, dtype=torch.float64) * factor).clamp_(max=size)
    return kept, (ends - starts).long()


def _grid_cells(grid: Grid, factor: float, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices (within the grid) of the kept tokens and the token count of each one's cell, frame by frame."""
    rows, row_counts = _axis_cells(grid[-2], factor, method)
    cols, col_counts = _axis_cells(grid[-1], factor, method)
    frame_index = (rows[:, None] * grid[-1] + cols[None, :]).flatten()
    frame_counts = (row_counts[:, None] * col_counts[None, :]).flatten()
    frames = math.prod(grid[:-2])
    frame_size = grid[-2] * grid[-1]
    index = (torch.arange(frames)[:, None] * frame_size + frame_index[None, :]).flatten()
    return index, frame_counts.repeat(frames)


@dataclass(frozen=True)
class JointPlan:
    """How one layout's keys and values are reduced at one factor: the gather index along the sequence (nearest
    methods) and the log of the token count each kept key stands for (0 for kept text)."""

    layout: JointLayout
    factor: float
    method: str
    index: torch.Tensor
    log_counts: torch.Tensor

    @property
    def kv_tokens(self) -> int:
        return self.log_counts.shape[0]


_plan_cache: dict[tuple, JointPlan] = {}
_PLAN_CACHE_LIMIT = 64


def joint_plan(layout: JointLayout, factor: float, method: str, device: torch.device) -> JointPlan:
    """The plan for a layout, cached per (layout, factor, method, device); built outside inference mode so that a
    later call that records gradients can use it."""
    return cached(_plan_cache, _PLAN_CACHE_LIMIT, (layout, factor, method, device),
                  lambda: _new_plan(layout, factor, method, device))


def _new_plan(layout: JointLayout, factor: float, method: str, device: torch.device) -> JointPlan:
    indices, counts, start = [], [], 0
    for segment in layout.segments:
        if segment.grid is None:
            indices.append(torch.arange(start, start + segment.tokens))
            counts.append(torch.ones(segment.tokens, dtype=torch.long))
        else:
            index, cell_counts = _grid_cells(segment.grid, factor, method)
            indices.append(index + start)
            counts.append(cell_counts)
        start += segment.tokens
    return JointPlan(layout, factor, method, torch.cat(indices).to(device),
                     torch.cat(counts).to(torch.float32).log().to(device))


def reduce_keys_values(key: torch.Tensor, value: torch.Tensor, plan: JointPlan,
                       sequence_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept keys and values: one gather along `sequence_dim` for the nearest methods; for avg-pool, each image
    segment averaged cell by cell and the kept segments as they are."""
    if plan.method != "avg-pool":
        return key.index_select(sequence_dim, plan.index), value.index_select(sequence_dim, plan.index)
    return _pooled(key, plan, sequence_dim), _pooled(value, plan, sequence_dim)


def _pooled(tokens: torch.Tensor, plan: JointPlan, sequence_dim: int) -> torch.Tensor:
    tokens = tokens.movedim(sequence_dim, -2)
    parts, start = [], 0
    for segment in plan.layout.segments:
        part = tokens[..., start:start + segment.tokens, :]
        if segment.grid is not None:
            grid = segment.grid
            lead, channels = part.shape[:-2], part.shape[-1]
            frames = math.prod(grid[:-2])
            image = part.reshape(-1, frames, grid[-2], grid[-1], channels).movedim(-1, 2)
            image = image.reshape(-1, channels, grid[-2], grid[-1])
            pooled = F.adaptive_avg_pool2d(image, kv_grid(grid[-2:], plan.factor))
            pooled = pooled.reshape(-1, frames, channels, pooled.shape[-2] * pooled.shape[-1]).movedim(2, -1)
            part = pooled.reshape(*lead, -1, channels)
        parts.append(part)
        start += segment.tokens
    return torch.cat(parts, dim=-2).movedim(-2, sequence_dim)


def proportional_bias(plan: JointPlan, dtype: torch.dtype, queries: int) -> torch.Tensor:
    """The additive attention mask that weighs each kept key by the tokens it stands for, as (1, 1, queries, kept
    keys): an expanded view, no memory per query, whose query dimension survives attention implementations that
    add the mask query slice by query slice (WebUI Forge's split and sub-quadratic attention take mask[:, i:end])."""
    return plan.log_counts.to(dtype).view(1, 1, 1, -1).expand(1, 1, queries, -1)
