"""Hooking ToDo into an ldm or sgm UNetModel with torch module hooks on instances.

A forward pre-hook on the U-Net starts each call (the host's options for it, and the step window where no host
decides it per step); one on each spatial transformer reads the grid its layers really get (a tile under Tiled
Diffusion, a shrunken grid under Deep Shrink). A forward pre-hook (with kwargs) on each selected `attn1` hands the
attention a downsampled copy of its input as `context`: every attention implementation the WebUI installs computes
K and V from `context`, so the queries stay full and the K/V projections run on the reduced tokens. No class
method is replaced, so the WebUI's attention optimizer and other extensions that patch the same classes keep
working.

The per-call decision (`kv_context`) is host-neutral, so Forge-style hosts reuse it from their attn1 patch, and
it records what it did (`todo_ext.record`) for the infotext.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .config import ToDoConfig
from .downsample import downsample_tokens, kv_grid
from .passes import (
    PassState,
    ToDoHandle,
    ToDoHook,
    UnknownWindow,
    UnsupportedModelError,
    WindowReader,
    refuse_compiled,
    remove_hooks,
)

TRAIN_TIMESTEPS = 1000
"""Length of the noise schedule SD was trained with; the U-Net's timestep runs from 999 (noise) to 0."""


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


@dataclass(frozen=True)
class AttentionSite:
    """One BasicTransformerBlock of the U-Net: the block it sits in, named as Forge-style hosts name it
    (("input", i), ("middle", 0), ("output", i)), its level (log2 of the latent's downscale there) and the layer
    that holds it (a SpatialTransformer, whose 4-D input carries the token grid the block really gets)."""

    name: tuple[str, int]
    block: nn.Module
    level: int
    container: nn.Module


def self_attention_sites(unet: nn.Module) -> list[AttentionSite]:
    """Every self-attention site of an ldm/sgm UNetModel. A block that a model leaves out (None: the middle block
    of SD-XS, BK-SDM and KOALA-style U-Nets) is skipped."""
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
        if not isinstance(block, nn.Module):
            continue
        for layer in _unwrapped(block).children():
            found.extend(
                AttentionSite(name, module, level, layer)
                for module in layer.modules()
                if _is_a(module, "BasicTransformerBlock") and isinstance(getattr(module, "attn1", None), nn.Module)
            )
            level += _resolution_change(layer)
    if not found:
        raise UnsupportedModelError(f"ToDo: {type(unet).__name__} has no BasicTransformerBlock self-attention")
    return found


def attention_levels(unet: nn.Module) -> tuple[int, ...]:
    """Levels (log2 of the downscale) with self-attention: (0, 1, 2, 3) on SD1.x/SD2.x (3 = the middle block),
    (1, 2) on SDXL."""
    return tuple(sorted({site.level for site in self_attention_sites(unet)}))


@dataclass(frozen=True)
class LevelPlan:
    """What ToDo does at one attention level for one token grid."""

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


def plan_kv_tokens(config: ToDoConfig, latent_height: int, latent_width: int,
                   levels: tuple[int, ...]) -> list[LevelPlan]:
    """Grid, factor and K/V grid per attention depth for a latent size; depth i is levels[i]. For the
    benchmark and previews: in a generation ToDo plans from the grid each layer really gets (`PassState`)."""
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


def _projection_replaced(attn: nn.Module) -> bool:
    """Whether another extension replaced the `forward` of attn1's key or value projection on the instance, as
    ControlNet-LLLite does: its replacement adds a condition sized to the layer's full token grid, so it cannot
    take the downsampled tokens. LLLite's cleanup puts the projection's own bound `forward` back on the instance;
    that one is the projection's own and takes any token count."""
    for name in ("to_k", "to_v"):
        projection = getattr(attn, name, None)
        forward = vars(projection).get("forward") if isinstance(projection, nn.Module) else None
        if forward is not None and getattr(forward, "__self__", None) is not projection:
            return True
    return False


def progress_of_timestep(timesteps: Any) -> float:
    """Sampling progress (0 = noise, 1 = clean) of an ldm U-Net timestep (999 = noise, 0 = clean: the discrete
    schedule SD was trained on). Reads one value from the device: call it once per step, never per attention."""
    timestep = float(torch.as_tensor(timesteps).flatten()[0])
    return min(1.0, max(0.0, 1.0 - timestep / (TRAIN_TIMESTEPS - 1)))


def timestep_window(config: ToDoConfig) -> WindowReader:
    """The step window read from the timestep an ldm-layout U-Net gets (its second argument)."""

    def read(args: tuple, kwargs: dict) -> bool:
        timesteps = args[1] if len(args) > 1 else kwargs.get("timesteps")
        if timesteps is None:
            raise UnknownWindow("the U-Net got no timestep")
        return config.covers(progress_of_timestep(timesteps))

    return read


class UNetPassState(PassState):
    """PassState plus what a U-Net call tells its self-attention layers: the grid each spatial transformer received
    in this call, and the plan of each (level, grid)."""

    def __init__(self, config: ToDoConfig, levels: tuple[int, ...], warned: set[str]):
        super().__init__(config, warned)
        self.levels = levels
        self.grids: dict[int, tuple[int, int]] = {}
        """Grid of each spatial transformer's input in this U-Net call, by id of the transformer."""
        self._plans: dict[tuple[int, tuple[int, int]], LevelPlan] = {}

    def begin_call(self, options: Any, read_window: Callable[[], bool]) -> None:
        self.grids.clear()
        super().begin_call(options, read_window)

    def plan_for(self, level: int, grid: tuple[int, int]) -> LevelPlan:
        """The plan for a layer at `level` that received `grid` (a tile under Tiled Diffusion, the shrunken grid
        under Deep Shrink); Auto sizes it as if the image had that grid."""
        key = (level, grid)
        plan = self._plans.get(key)
        if plan is None:
            depth = self.levels.index(level)
            depth0_tokens = grid[0] * grid[1] * 4 ** (level - self.levels[0])
            factor = self.config.factor_at(depth, depth0_tokens)
            plan = self._plans[key] = LevelPlan(depth, level, grid, kv_grid(grid, factor), factor)
        return plan


def kv_context(x: torch.Tensor, level: int, state: UNetPassState, *, grid: tuple[int, int] | None,
               context: torch.Tensor | None = None, tokens_merged: bool = False,
               blocked: str | None = None) -> torch.Tensor | None:
    """The downsampled K/V source for one self-attention call at `level`, or None to leave it exact.

    One decision for every host: the torch hooks here and a Forge-style attn1 patch both call it with the
    attention's input x (batch, tokens, channels), the grid the layer received (None where the host showed none:
    ToDo then steps aside rather than guess), and the explicit `context` the layer got, if any. A context made of
    token sets of x's grid (ControlNet's reference modes: x followed by the reference's tokens) is downsampled set
    by set, so the result is ToDo's formula on what the layer really attends to. The decision reads shapes only,
    never values, so it costs no host-device sync. Everything ToDo does or declines is counted in `state.record`,
    with the cause: `blocked` is one the caller found (a cause in ASIDE_CAUSES), and `tokens_merged` (the host
    knows Token merging ran on this layer) names the cause of a token count that fills no grid. A failure inside
    ToDo is counted and leaves attention exact. Callers count the call itself (`record.calls`) when it reaches
    them, so a pass whose hooks never ran shows as such.
    """
    if state.sits_out():
        return None
    if blocked is not None:
        state.step_aside(blocked)
        return None
    try:
        tokens = x.shape[1]
        source = x if context is None else context
        if x.dim() != 3 or source.dim() != 3 or source.shape[1] % tokens or source.shape[0] != x.shape[0]:
            state.step_aside("context")
            return None
        if grid is None or grid[0] * grid[1] != tokens:
            state.step_aside("token-merging" if tokens_merged else "grid")
            return None
        plan = state.plan_for(level, grid)
        state.record.acted(plan.depth, plan.grid, plan.kv_grid, plan.factor)
        if plan.factor == 1.0:
            return None
        sets = source.shape[1] // tokens
        batch, _, channels = source.shape
        reduced = downsample_tokens(source.reshape(batch * sets, tokens, channels), plan.grid, plan.factor,
                                    state.config.method)
        return reduced.reshape(batch, sets * reduced.shape[1], channels)
    except Exception:
        state.fail_over()
        return None


def _unet_pre_hook(state: UNetPassState, read_window: WindowReader) -> ToDoHook:
    """Starts each U-Net call: the host's options for it and, where no host decided it, the step window."""

    def read_call(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        try:
            state.begin_call(kwargs.get("transformer_options"), lambda: read_window(args, kwargs))
        except Exception:
            state.fail_call()

    return ToDoHook(read_call)


def _grid_pre_hook(state: UNetPassState) -> ToDoHook:
    """Reads the grid a spatial transformer really gets from its 4-D input (batch, channels, height, width)."""

    def read_grid(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.get("x")
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            state.grids[id(module)] = (int(x.shape[-2]), int(x.shape[-1]))
        else:
            state.grids.pop(id(module), None)

    return ToDoHook(read_grid)


def _merges_tokens(block: nn.Module) -> bool:
    """Whether tomesd (the WebUI's Token merging) patched this transformer block: it swaps in a ToMeBlock subclass
    that merges tokens before attn1 (and swaps the class back when removed)."""
    return type(block).__name__ == "ToMeBlock"


def _attn1_pre_hook(state: UNetPassState, site: AttentionSite) -> ToDoHook:
    def swap_context(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        state.record.calls += 1
        try:
            x = args[0] if args else kwargs["x"]
            context = args[1] if len(args) > 1 else kwargs.get("context")
            blocked = "hypertile" if _tiles_inside_forward(module) else (
                "projection" if _projection_replaced(module) else None)
            reduced = kv_context(x, site.level, state, grid=state.grids.get(id(site.container)), context=context,
                                 tokens_merged=_merges_tokens(site.block), blocked=blocked)
            if reduced is None:
                return None
            extra = kwargs.get("additional_tokens")
            if extra is not None:
                reduced = torch.cat([extra, reduced], dim=1)
            if len(args) > 1:
                return (args[0], reduced, *args[2:]), kwargs
            return args, {**kwargs, "context": reduced}
        except Exception:
            state.fail_over()
            return None

    return ToDoHook(swap_context)


def touched_sites(sites: list[AttentionSite], levels: tuple[int, ...], config: ToDoConfig) -> list[AttentionSite]:
    """The sites at the depths `config` reaches."""
    return [site for site in sites if levels.index(site.level) <= config.max_depth]


def hook_unet(unet: nn.Module, state: UNetPassState, sites: list[AttentionSite], read_window: WindowReader, *,
              attn1: bool) -> list[RemovableHandle]:
    """The hooks that feed `state` from the U-Net's and its spatial transformers' inputs, on the instances; with
    `attn1`, also the pre-hooks that hand each touched attn1 its downsampled keys and values (a host with an attn1
    patch channel calls `kv_context` from its patch instead)."""
    hooks = [unet.register_forward_pre_hook(_unet_pre_hook(state, read_window), with_kwargs=True)]
    for container in {id(site.container): site.container for site in sites}.values():
        hooks.append(container.register_forward_pre_hook(_grid_pre_hook(state), with_kwargs=True))
    if attn1:
        hooks.extend(site.block.attn1.register_forward_pre_hook(_attn1_pre_hook(state, site), with_kwargs=True)
                     for site in sites)
    return hooks


def is_unet(model: nn.Module) -> bool:
    return all(hasattr(model, name) for name in ("input_blocks", "middle_block", "output_blocks"))


def apply_unet(unet: nn.Module, config: ToDoConfig, warned: set[str]) -> ToDoHandle:
    """Hook ToDo into an ldm/sgm U-Net (replacing earlier ToDo settings); the step window is read from the U-Net's
    timestep at each call unless the caller decides it per step (`handle.begin_step`)."""
    refuse_compiled(unet)
    sites = self_attention_sites(unet)
    levels = tuple(sorted({site.level for site in sites}))
    remove_hooks(unet)
    state = UNetPassState(config, levels, warned)
    hooks = hook_unet(unet, state, touched_sites(sites, levels, config), timestep_window(config), attn1=True)
    return ToDoHandle(unet, config, state, hooks)


def attention_levels_by_block(unet: nn.Module) -> dict[tuple[str, int], int]:
    """Level of the self-attention in each U-Net block, keyed the way Forge-style hosts name the block they are
    running (`transformer_options["block"]`): ("input", i), ("middle", 0), ("output", i)."""
    return {site.name: site.level for site in self_attention_sites(unet)}
