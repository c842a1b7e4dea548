"""Joint-attention fidelity proxy: ToDo on a diffusion transformer's attention against exact attention, on image
token grids from real photographs with text tokens beside them.

As the U-Net proxy (`fidelity`), it keeps what decides how much K/V downsampling loses, the spatial statistics of
natural images, and replaces trained layers by fixed random ones, now in the shape of Flux's joint attention:

- sequence: TEXT_TOKENS text tokens, then the image's G x G tokens from a photograph (`fidelity.image_tokens`),
  then, for the reference rows, a second photograph's grid as Flux Kontext appends it. No text encoder is reachable
  here: each text token is the mean of a random set of the image's tokens, as a caption summarises regions;
- attention: HEADS heads of HEAD_DIM; Q and K share one random projection (attention follows similarity, as
  trained attention does), V has its own; two regimes bracket a trained model's heads: "sharp" (the logits as
  they come: each query attends mostly to its own neighbourhood, the text gets little) and "diffuse" (the logits
  divided by 4: attention spreads, and the text takes a real share; the share is in the table); Flux's RoPE (axes
  16, 56, 56 over (index, row, column); text at position 0, the reference at index 1) is applied to Q and K before
  anything is dropped, so kept keys keep their positions;
- ToDo: `todo_ext.joint`, the engine's own reduction: text kept, image keys and values downsampled on their grid,
  with and without the proportional bias (log of each kept key's cell size, an additive mask);
- random drop: the same number of image keys, chosen at random, with and without the same bias (as if each stood
  for an equal share), to separate "which keys" from "how many".

Metric: MSE of the attention output against exact attention, on the image queries, each output divided by the
standard deviation of the exact output. What it does not measure: trained weights, images, or how the error of
one block moves through the others (it is the same random block at every position, so it cannot rank block
positions); its numbers rank the variants, they are not image quality.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from todo_ext.bench.fidelity import IMAGES, SEED, image_tokens, photograph
from todo_ext.joint import JointLayout, Segment, joint_plan, proportional_bias, reduce_keys_values

HEADS = 4
HEAD_DIM = 128
ROPE_AXES = (16, 56, 56)
ROPE_THETA = 10000
TEXT_TOKENS = 256
FACTORS = (2.0, 3.0, 4.0)
METHODS = ("nearest", "nearest-exact", "avg-pool")
REFERENCE_IMAGE = "coffee"


REGIMES = {"sharp": 1.0, "diffuse": 0.25}
"""Attention regimes by the factor on the logits."""


@dataclass(frozen=True)
class JointFidelityRow:
    regime: str
    variant: str
    method: str
    factor: float
    grid: int
    kv_tokens: int
    mse: float
    text_share: float
    """Mean attention mass the image queries put on the text keys in exact attention."""


def rope(positions: torch.Tensor) -> torch.Tensor:
    """Flux's rotary embedding of (index, row, column) positions: per axis, angles position * theta^(-2i/dim)."""
    angles = []
    for axis, dim in enumerate(ROPE_AXES):
        frequencies = ROPE_THETA ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles.append(positions[:, axis:axis + 1].double() * frequencies)
    angle = torch.cat(angles, dim=1).float()
    return torch.stack([angle.cos(), angle.sin()], dim=-1)


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate each adjacent pair of channels of (batch, heads, tokens, HEAD_DIM) by the token's angles."""
    pairs = x.unflatten(-1, (-1, 2))
    cos, sin = rotation[..., 0], rotation[..., 1]
    rotated = torch.stack([pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 0] * sin + pairs[..., 1] * cos], -1)
    return rotated.flatten(-2)


def grid_positions(grid: int, index: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.stack([torch.full((grid * grid,), index), rows.flatten(), cols.flatten()], dim=1)


class JointAttention:
    """Fixed random joint attention with RoPE; K and V may be reduced before attending."""

    def __init__(self, generator: torch.Generator):
        channels = HEADS * HEAD_DIM
        self.channels = channels
        self.query_key = torch.randn(channels, channels, generator=generator) / math.sqrt(channels)
        self.value = torch.randn(channels, channels, generator=generator) / math.sqrt(channels)

    def qkv(self, tokens: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(1, -1, HEADS, HEAD_DIM).transpose(1, 2)

        rotation = rope(positions)
        shared = heads(tokens @ self.query_key)
        return apply_rope(shared, rotation), apply_rope(shared, rotation), heads(tokens @ self.value)


def _text_tokens(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    members = torch.randint(0, image.shape[1], (TEXT_TOKENS, 16), generator=generator)
    return F.layer_norm(image[0, members].mean(1)[None], (HEADS * HEAD_DIM,))


def _sequence(grid: int, image: str, generator: torch.Generator, reference: bool) -> tuple[torch.Tensor, ...]:
    image_part = _image_tokens(image, grid)
    parts = [_text_tokens(image_part, generator), image_part]
    positions = [torch.zeros(TEXT_TOKENS, 3, dtype=torch.long), grid_positions(grid, 0)]
    if reference:
        parts.append(_image_tokens(REFERENCE_IMAGE, grid))
        positions.append(grid_positions(grid, 1))
    return torch.cat(parts, dim=1), torch.cat(positions)


def _image_tokens(name: str, grid: int) -> torch.Tensor:
    tokens = image_tokens(photograph(name), grid, torch.Generator().manual_seed(SEED + 1))
    projection = torch.randn(tokens.shape[-1], HEADS * HEAD_DIM, generator=torch.Generator().manual_seed(SEED + 2))
    return F.layer_norm(tokens @ projection, (HEADS * HEAD_DIM,))


def _layout(grid: int, reference: str | None) -> JointLayout:
    segments = [Segment.kept(TEXT_TOKENS, "text"), Segment.image((grid, grid))]
    if reference == "kept":
        segments.append(Segment.kept(grid * grid, "ref"))
    elif reference == "downsampled":
        segments.append(Segment.image((grid, grid)))
    return JointLayout(tuple(segments))


def _random_plan_index(layout: JointLayout, kept_image: int, generator: torch.Generator) -> torch.Tensor:
    image = layout.segments[1]
    chosen = torch.randperm(image.tokens, generator=generator)[:kept_image].sort().values + TEXT_TOKENS
    rest = torch.arange(TEXT_TOKENS + image.tokens, layout.tokens)
    return torch.cat([torch.arange(TEXT_TOKENS), chosen, rest])


def measure(grids: tuple[int, ...] = (32, 64), images: tuple[str, ...] = IMAGES, factors: tuple[float, ...] = FACTORS,
            methods: tuple[str, ...] = METHODS) -> list[JointFidelityRow]:
    """Rows for plain and proportional ToDo (every method and factor), random drops of the same count, and Kontext
    references kept or downsampled, averaged over the photographs."""
    attention = JointAttention(torch.Generator().manual_seed(SEED))
    collected: dict[tuple, list[tuple[int, float]]] = {}

    def add(key: tuple, kv_tokens: int, output: torch.Tensor, exact: torch.Tensor, image: slice,
            text_share: float) -> None:
        scale = exact[:, :, image].std()
        error = F.mse_loss(output[:, :, image] / scale, exact[:, :, image] / scale).item()
        collected.setdefault(key, []).append((kv_tokens, error, text_share))

    with torch.inference_mode():
        for grid, regime, name, reference in itertools.product(grids, REGIMES, images, (None, "kept", "downsampled")):
            image = slice(TEXT_TOKENS, TEXT_TOKENS + grid * grid)
            generator = torch.Generator().manual_seed(SEED + 3)
            tokens, positions = _sequence(grid, name, generator, reference is not None)
            q, k, v = attention.qkv(tokens, positions)
            q = q * REGIMES[regime]
            exact = F.scaled_dot_product_attention(q, k, v)
            weights = torch.softmax(q[:, :, image] @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM), dim=-1)
            text_share = weights[..., :TEXT_TOKENS].sum(-1).mean().item()
            layout = _layout(grid, reference)
            for factor in factors:
                for method in methods if reference is None else methods[:1]:
                    plan = joint_plan(layout, factor, method, q.device)
                    kept_k, kept_v = reduce_keys_values(k, v, plan, 2)
                    bias = proportional_bias(plan, q.dtype, q.shape[2])
                    variants = {"proportional": bias} if reference else {"plain": None, "proportional": bias}
                    for variant, mask in variants.items():
                        output = F.scaled_dot_product_attention(q, kept_k, kept_v, attn_mask=mask)
                        label = variant if reference is None else f"reference {reference}"
                        add((regime, label, method, factor, grid), plan.kv_tokens, output, exact, image, text_share)
                if reference is None:
                    plan = joint_plan(layout, factor, "nearest", q.device)
                    index = _random_plan_index(layout, plan.kv_tokens - TEXT_TOKENS, generator)
                    kept_k, kept_v = k.index_select(2, index), v.index_select(2, index)
                    for variant, mask in (("random drop", None),
                                          ("random drop, proportional", proportional_bias(plan, q.dtype, q.shape[2]))):
                        output = F.scaled_dot_product_attention(q, kept_k, kept_v, attn_mask=mask)
                        add((regime, variant, "random", factor, grid), plan.kv_tokens, output, exact, image,
                            text_share)
    return [JointFidelityRow(regime, variant, method, factor, grid, round(sum(v[0] for v in values) / len(values)),
                             sum(v[1] for v in values) / len(values), sum(v[2] for v in values) / len(values))
            for (regime, variant, method, factor, grid), values in collected.items()]


def markdown_table(rows: list[JointFidelityRow]) -> str:
    lines = ["| Grid + text | Regime (text's share) | Variant | Method | Factor | K/V tokens | MSE vs exact |",
             "|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r.grid, r.regime, r.factor, r.variant, r.method)):
        lines.append(f"| {row.grid}x{row.grid} + {TEXT_TOKENS} | {row.regime} ({row.text_share:.0%}) | {row.variant} | "
                     f"{row.method} | {row.factor:g}x | {row.kv_tokens} | {row.mse:.3e} |")
    return "\n".join(lines) + "\n"
