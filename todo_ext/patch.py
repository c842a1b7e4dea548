"""Hooking ToDo into an ldm or sgm UNetModel with torch module hooks on instances.

A forward pre-hook on the U-Net reads the latent's grid, batch and timestep for the call. A forward pre-hook
(with kwargs) on each selected `attn1` hands the attention a downsampled copy of its input as `context`: every
attention implementation the WebUI installs computes K and V from `context`, so the queries stay full and the
K/V projections run on the reduced tokens. No class method is replaced, so the WebUI's attention optimizer and
other extensions that patch the same classes keep working.

The per-call decision (`kv_context`) is host-neutral, so Forge-style hosts reuse it from their attn1 patch. It
reads the grid from the tokens a layer actually gets, so ToDo keeps working under Deep Shrink (Kohya hires fix),
which runs part of the U-Net on a smaller hidden state.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .config import ToDoConfig
from .downsample import downsample_tokens, kv_grid

log = logging.getLogger("todo_ext")

TRAIN_TIMESTEPS = 1000
"""Length of the noise schedule SD was trained with; the U-Net's timestep runs from 999 (noise) to 0."""


class UnsupportedModelError(ValueError):
    """The module is not an ldm/sgm UNetModel with self-attention (SD3's MMDiT, a TensorRT U-Net, ...)."""


def _is_a(module: nn.Module, class_name: str) -> bool:
    """Match by class name along the MRO: ldm and sgm define their own classes, and the WebUI's Token merging
    swaps in subclasses of BasicTransformerBlock."""
    return any(cls.__name__ == class_name for cls in type(module).__mro__)


def _resolution_change(module: nn.Module) -> int:
    if _is_a(module, "Downsample") or getattr(module, "down", False) is True:
        return 1
    if _is_a(module, "Upsample") or getattr(module, "up", False) is True:
        return -1
    return 0


def _unwrapped(block: nn.Module) -> nn.Module:
    """The TimestepEmbedSequential of a U-Net block, also where another extension wrapped it in a module of its
    own (Kohya's A1111 hires fix swaps in a resizing wrapper around input and output blocks)."""
    while not _is_a(block, "TimestepEmbedSequential"):
        children = list(block.children())
        if len(children) != 1:
            break
        block = children[0]
    return block


def _self_attention_blocks(unet: nn.Module) -> list[tuple[tuple[str, int], nn.Module, int]]:
    """Every BasicTransformerBlock of the U-Net with the block it sits in, named as Forge-style hosts name it
    (("input", i), ("middle", 0), ("output", i)), and its level (log2 of the latent's downscale there)."""
    if not all(hasattr(unet, name) for name in ("input_blocks", "middle_block", "output_blocks")):
        raise UnsupportedModelError(
            f"ToDo: {type(unet).__name__} is not an ldm/sgm UNetModel (no input_blocks/middle_block/output_blocks)"
        )
    named_blocks = [
        *((("input", index), block) for index, block in enumerate(unet.input_blocks)),
        (("middle", 0), unet.middle_block),
        *((("output", index), block) for index, block in enumerate(unet.output_blocks)),
    ]
    found = []
    level = 0
    for name, block in named_blocks:
        for layer in _unwrapped(block).children():
            found.extend(
                (name, module, level)
                for module in layer.modules()
                if _is_a(module, "BasicTransformerBlock") and isinstance(getattr(module, "attn1", None), nn.Module)
            )
            level += _resolution_change(layer)
    if not found:
        raise UnsupportedModelError(f"ToDo: {type(unet).__name__} has no BasicTransformerBlock self-attention")
    return found


def _self_attention_levels(unet: nn.Module) -> list[tuple[nn.Module, int]]:
    """Every BasicTransformerBlock of the U-Net with its level."""
    return [(module, level) for _, module, level in _self_attention_blocks(unet)]


def _distinct_levels(blocks: list[tuple[nn.Module, int]]) -> tuple[int, ...]:
    return tuple(sorted({level for _, level in blocks}))


def attention_levels(unet: nn.Module) -> tuple[int, ...]:
    """Levels (log2 of the downscale) with self-attention: (0, 1, 2, 3) on SD1.x/SD2.x (3 = the middle block),
    (1, 2) on SDXL."""
    return _distinct_levels(_self_attention_levels(unet))


@dataclass(frozen=True)
class LevelPlan:
    """What ToDo does at one attention level for one latent size."""

    depth: int
    level: int
    grid: tuple[int, int]
    kv_grid: tuple[int, int]
    factor: float

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def kv_tokens(self) -> int:
        return self.kv_grid[0] * self.kv_grid[1]


def level_grid(latent_height: int, latent_width: int, level: int) -> tuple[int, int]:
    """Token grid at a level: each ldm Downsample (3x3 conv, stride 2, padding 1) halves a side rounding up."""
    scale = 2**level
    return math.ceil(latent_height / scale), math.ceil(latent_width / scale)


_ROUNDINGS: tuple[Callable[[Fraction], int], ...] = (math.floor, round, math.ceil)
"""How a resize inside the U-Net can round a scaled side: torch's interpolate(scale_factor=) floors (Kohya's
A1111 extension), Forge's Kohya hires fix rounds, and ceil covers the rest."""


@functools.lru_cache(maxsize=1024)
def received_grid(tokens: int, latent_size: tuple[int, int], level: int) -> tuple[int, int] | None:
    """The (height, width) grid of `tokens` self-attention tokens at `level` of a U-Net run on a latent of
    `latent_size`, or None where no grid of the latent's aspect has that many tokens.

    The latent's own grid (`level_grid`) unless something inside the U-Net resized the hidden state, as Deep
    Shrink (Kohya hires fix) does: it scales both sides of the grid at some level l <= `level` by one factor s,
    rounding each side (floor, round or ceil), and every Downsample after it halves a side rounding up. A grid
    counts only if one such (l, s, rounding) produces it exactly; of several, the one closest to the latent's
    aspect wins. Token merging leaves counts that such grids rarely have, so ToDo steps aside there; as a count
    can still match by chance (144 = 12x12 of a 16x16 latent), callers that know the tokens were merged say so
    to `kv_context`.
    """
    height, width = latent_size
    own = level_grid(height, width, level)
    if own[0] * own[1] == tokens:
        return own
    aspect = math.log(height / width)
    best = None
    for grid_height in range(1, tokens + 1):
        if tokens % grid_height:
            continue
        grid = (grid_height, tokens // grid_height)
        if not any(_shrink_produces(grid, level_grid(height, width, at), level - at) for at in range(level + 1)):
            continue
        distance = abs(math.log(grid[0] / grid[1]) - aspect)
        if best is None or distance < best[0]:
            best = (distance, grid)
    return None if best is None else best[1]


def _shrink_produces(grid: tuple[int, int], source: tuple[int, int], halvings: int) -> bool:
    """Whether scaling `source` by one factor (some rounding) and then `halvings` ceil-halvings gives `grid`.

    Each side is a step function of the scale that changes only where scale * side crosses a whole or half
    number, so testing those scales and the midpoints between them covers every scale.
    """
    step = 2**halvings
    lowest = Fraction((grid[0] - 1) * step - 1, source[0])
    highest = Fraction(grid[0] * step + 2, source[0])
    breaks = sorted({
        Fraction(2 * whole + half, 2 * side)
        for side in source
        for whole in range(math.floor(lowest * side) - 1, math.ceil(highest * side) + 2)
        for half in (0, 1)
        if whole >= 0
    })
    scales = breaks + [(low + high) / 2 for low, high in itertools.pairwise(breaks)]
    for rounding in _ROUNDINGS:
        for scale in scales:
            sides = [rounding(scale * side) for side in source]
            if min(sides) >= 1 and tuple(-(-side // step) for side in sides) == grid:
                return True
    return False


def plan_kv_tokens(config: ToDoConfig, latent_height: int, latent_width: int,
                   levels: tuple[int, ...]) -> list[LevelPlan]:
    """Grid, factor and K/V grid per attention depth for a latent size; depth i is levels[i]."""
    grids = [level_grid(latent_height, latent_width, level) for level in levels]
    depth0_tokens = grids[0][0] * grids[0][1]
    plans = []
    for depth, (level, grid) in enumerate(zip(levels, grids, strict=True)):
        factor = config.factor_at(depth, depth0_tokens)
        plans.append(LevelPlan(depth, level, grid, kv_grid(grid, factor), factor))
    return plans


def _tiles_inside_forward(attn: nn.Module) -> bool:
    """Whether the WebUI's built-in Hypertile is on for this layer.

    Hypertile wraps `attn1.forward` on the instance and splits the tokens into tiles inside that wrapper, after
    every pre-hook has run: a pre-hook sees the whole grid, but attention would see tiles. Its wrapper keeps its
    settings in the `__webui_hypertile_params` attribute (extensions-builtin/hypertile/hypertile.py).
    """
    params = getattr(attn, "__webui_hypertile_params", None)
    return bool(getattr(params, "enabled", False))


class _ToDoHook:
    """A hook callable that `remove` recognises by its `is_todo_hook` flag, even across module reloads."""

    is_todo_hook = True

    def __init__(self, function: Callable[..., Any]):
        self.function = function

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)


class PassState:
    """What the current U-Net call tells its self-attention layers: latent grid, batch, whether ToDo is on.

    Host-neutral: the torch hooks below fill it from the U-Net's input, a Forge-style host from its own patch
    arguments (`begin`), and both hand every self-attention call to `kv_context`.
    """

    def __init__(self, config: ToDoConfig, levels: tuple[int, ...], warned: set[str]):
        self.config = config
        self.levels = levels
        self.active = False
        self.batch = 0
        self.plans: dict[int, LevelPlan] = {}
        self._latent: tuple[int, int] | None = None
        self._received_plans: dict[tuple[int, int], LevelPlan | None] = {}
        self.stats = {"downsampled": 0, "passed_through": 0, "errors": 0}
        self._warned = warned

    def begin_call(self, latent: torch.Tensor, timesteps: Any) -> None:
        """Start a U-Net call from its input latent (batch, channels, height, width) and timesteps."""
        progress = None
        if self.config.has_step_window and timesteps is not None:
            progress = 1.0 - float(torch.as_tensor(timesteps).flatten()[0]) / (TRAIN_TIMESTEPS - 1)
        self.begin(latent.shape[0], tuple(latent.shape[-2:]), progress)

    def begin(self, batch: int, latent_size: tuple[int, int], progress: float | None) -> None:
        """Start a U-Net call: its batch, latent (height, width) and sampling progress (0 = noise, 1 = done;
        None when the host gives none, which ignores the step window with a warning)."""
        self.active = False
        self.batch = batch
        height, width = int(latent_size[0]), int(latent_size[1])
        if self._latent != (height, width):
            plans = plan_kv_tokens(self.config, height, width, self.levels)
            self.plans = {plan.level: plan for plan in plans}
            self._received_plans = {}
            self._latent = (height, width)
        if self.config.has_step_window:
            if progress is None:
                self.warn_once("no-timestep", "the U-Net got no timestep; the step window is ignored")
            elif not self.config.covers(min(1.0, max(0.0, progress))):
                return
        self.active = True

    def may_downsample(self, level: int) -> bool:
        """Whether ToDo can act at `level` in this call (Auto's factor depends on the tokens a call gets)."""
        plan = self.plans.get(level)
        return self.active and plan is not None and (self.config.auto or plan.factor != 1.0)

    def plan_for(self, level: int, tokens: int) -> LevelPlan | None:
        """The plan for `tokens` actually received at `level`: the latent's own grid, or the grid of the same
        aspect that a Deep Shrink (Kohya hires fix) left there; None where no such grid has that many tokens."""
        plan = self.plans[level]
        if tokens == plan.tokens:
            return plan
        key = (level, tokens)
        if key not in self._received_plans:
            grid = received_grid(tokens, self._latent, level)
            self._received_plans[key] = None if grid is None else self._plan_on(level, grid)
        return self._received_plans[key]

    def _plan_on(self, level: int, grid: tuple[int, int]) -> LevelPlan:
        depth = self.levels.index(level)
        depth0_tokens = grid[0] * grid[1] * 4 ** (level - self.levels[0])
        factor = self.config.factor_at(depth, depth0_tokens)
        return LevelPlan(depth, level, grid, kv_grid(grid, factor), factor)

    def warn_once(self, kind: str, message: str, *, error: bool = False) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("ToDo: %s", message, exc_info=error)


def kv_context(x: torch.Tensor, level: int, state: PassState, *, tokens_merged: bool = False) -> torch.Tensor | None:
    """The downsampled K/V source D(x) for one self-attention call at `level`, or None to leave it exact.

    One decision for every host: the torch hooks here and a Forge-style attn1 patch both call it with the
    attention's input x (batch, tokens, channels). The level comes from the U-Net's structure; the grid from the
    tokens x actually has (see `received_grid`), so layers that a Deep Shrink made smaller are downsampled on
    their shrunken grid. Where no grid fits (Token merging), it steps aside with one warning and counts the call
    in stats["passed_through"]; `tokens_merged` (the host knows Token merging ran on this layer) accepts only the
    latent's own grid. A failure inside ToDo is counted in stats["errors"] and leaves attention exact.
    """
    if not state.may_downsample(level):
        return None
    try:
        plan = state.plan_for(level, x.shape[1]) if x.dim() == 3 and x.shape[0] == state.batch else None
        if tokens_merged and plan is not None and plan.grid != state.plans[level].grid:
            plan = None
        if plan is None:
            state.stats["passed_through"] += 1
            state.warn_once(
                "mismatch",
                f"self-attention at latent/{2**level} got {tuple(x.shape)}, which is no ({state.batch}, height * "
                "width, C) grid of the latent's aspect; another patch (Token merging, Hypertile?) changed the "
                "tokens, so ToDo leaves those layers alone",
            )
            return None
        if plan.factor == 1.0:
            return None
        reduced = downsample_tokens(x, plan.grid, plan.factor, state.config.method)
        state.stats["downsampled"] += 1
        return reduced
    except Exception:
        state.stats["errors"] += 1
        state.warn_once("attn-error", "downsampling failed; attention runs unchanged", error=True)
        return None


def _unet_pre_hook(state: PassState) -> _ToDoHook:
    def read_latent(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        try:
            latent = args[0] if args else kwargs["x"]
            timesteps = args[1] if len(args) > 1 else kwargs.get("timesteps")
            state.begin_call(latent, timesteps)
        except Exception:
            state.active = False
            state.stats["errors"] += 1
            state.warn_once("unet-error", "could not read the U-Net input; attention runs unchanged", error=True)

    return _ToDoHook(read_latent)


def _merges_tokens(block: nn.Module) -> bool:
    """Whether tomesd (the WebUI's Token merging) patched this transformer block: it swaps in a ToMeBlock subclass
    that merges tokens before attn1 (and swaps the class back when removed)."""
    return type(block).__name__ == "ToMeBlock"


def _attn1_pre_hook(state: PassState, level: int, block: nn.Module) -> _ToDoHook:
    def swap_context(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not state.may_downsample(level):
            return None
        try:
            x = args[0] if args else kwargs["x"]
            context = args[1] if len(args) > 1 else kwargs.get("context")
            if context is not None:
                return None
            if _tiles_inside_forward(module):
                state.stats["passed_through"] += 1
                state.warn_once("tiled", "Hypertile tiles this self-attention, so ToDo leaves those layers alone")
                return None
            reduced = kv_context(x, level, state, tokens_merged=_merges_tokens(block))
            if reduced is None:
                return None
            extra = kwargs.get("additional_tokens")
            if extra is not None:
                reduced = torch.cat([extra, reduced], dim=1)
            if len(args) > 1:
                return (args[0], reduced, *args[2:]), kwargs
            return args, {**kwargs, "context": reduced}
        except Exception:
            state.stats["errors"] += 1
            state.warn_once("attn-error", "downsampling failed; attention runs unchanged", error=True)
            return None

    return _ToDoHook(swap_context)


class ToDoHandle:
    """The hooks one `apply` added; `remove()` takes exactly those off again."""

    def __init__(self, unet: nn.Module, config: ToDoConfig, state: PassState, hooks: list[RemovableHandle]):
        self.unet = unet
        self.config = config
        self._state = state
        self._hooks = hooks

    @property
    def stats(self) -> dict[str, int]:
        """Counts of attention calls downsampled, passed through on mismatched tokens, and failed over."""
        return dict(self._state.stats)

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def apply(unet: nn.Module, config: ToDoConfig, *, warned: set[str] | None = None) -> ToDoHandle:
    """Hook ToDo into `unet` (replacing earlier ToDo settings) and return the handle that undoes it.

    Each kind of warning is logged once per `warned` set: pass one set to every `apply` of a generation (first
    pass, hires pass, each batch) to warn once per generation; by default once per `apply`.
    """
    if not isinstance(config, ToDoConfig):
        raise TypeError(f"ToDo: config must be a ToDoConfig, not {type(config).__name__}")
    blocks = _self_attention_levels(unet)
    levels = _distinct_levels(blocks)
    remove(unet)
    state = PassState(config, levels, set() if warned is None else warned)
    hooks = [unet.register_forward_pre_hook(_unet_pre_hook(state), with_kwargs=True)]
    for block, level in blocks:
        depth = levels.index(level)
        if depth <= config.max_depth:
            hooks.append(block.attn1.register_forward_pre_hook(_attn1_pre_hook(state, level, block), with_kwargs=True))
    return ToDoHandle(unet, config, state, hooks)


def remove(unet: nn.Module) -> int:
    """Remove every ToDo hook from `unet` and its submodules, whoever applied them; returns how many."""
    removed = 0
    for module in unet.modules():
        for hook_id, hook in list(module._forward_pre_hooks.items()):
            if getattr(hook, "is_todo_hook", False):
                del module._forward_pre_hooks[hook_id]
                module._forward_pre_hooks_with_kwargs.pop(hook_id, None)
                removed += 1
    return removed


def attention_levels_by_block(unet: nn.Module) -> dict[tuple[str, int], int]:
    """Level of the self-attention in each U-Net block, keyed the way Forge-style hosts name the block they are
    running (`transformer_options["block"]`): ("input", i), ("middle", 0), ("output", i)."""
    return {name: level for name, _, level in _self_attention_blocks(unet)}
