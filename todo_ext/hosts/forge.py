"""WebUI Forge, reForge, Forge Classic and Forge Neo: ToDo as an attn1 patch on a clone of
`sd_model.forge_objects.unet`.

All four run a U-Net patcher's `attn1_patch` functions inside BasicTransformerBlock (Forge and Neo:
backend/nn/unet.py `BasicTransformerBlock._forward`; reForge and Classic: ldm_patched/ldm/modules/attention.py)
as `n, context, value = patch(n, context, value, extra_options)`, where `context` and `value` start as `n` and are
what `to_k` and `to_v` project. ToDo hands both a downsampled copy of the K/V tokens, so the queries stay full (or
merged, under the hosts' Token merging) and K/V run on the reduced grid, as the A1111 hooks do. The adapter asks
only for what the objects offer (`clone`, `set_model_attn1_patch`, `model_options`), never for a host's name.

`extra_options` carries the call's latent shape (`original_shape`), the block being run (`block`) and the sigmas
(`sigmas`); the level of a block comes from walking the U-Net, the grid a block really gets from reForge's
`activations_shape` or the calling SpatialTransformer's `h` and `w`, the step window from the schedule's own
`percent_to_sigma`, so Start/End mean the same progress on every host and schedule.

The hosts keep a block's attn1 *replacement* (PAG, SAG, reference: `patches_replace["attn1"]`) out of
`extra_options`, and PAG adds its replacement only for its extra U-Net call. A replacement gets the projected
K/V of our shortened tokens, and PAG's returns V itself, which must keep the full token count; so the patch
reads the calling block's replacement table and its attn1 patch list from the caller's frame (the host's
`transformer_patches_replace` and `patch` locals) and steps aside where a replacement or a later patch runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch
from torch import nn

from ..config import ToDoConfig
from ..patch import TRAIN_TIMESTEPS, PassState, attention_levels_by_block, kv_context
from ..record import PassRecord

PATCH_FLAG = "is_todo_patch"
"""Attribute that marks ToDo's attn1 patch function, so a second apply in the same pass replaces it."""


def unet_patcher_of(sd_model: Any) -> Any:
    """`sd_model.forge_objects.unet` where it is a U-Net patcher (clone + attn1 patch channel), else None."""
    patcher = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
    if callable(getattr(patcher, "clone", None)) and callable(getattr(patcher, "set_model_attn1_patch", None)):
        return patcher
    return None


def is_forge_model(sd_model: Any) -> bool:
    return unet_patcher_of(sd_model) is not None


def unet_of(sd_model: Any) -> nn.Module | None:
    """The torch module the patcher runs (`.model.diffusion_model`): an ldm-layout U-Net, or Flux, SD3, ..."""
    patcher = unet_patcher_of(sd_model)
    unet = getattr(getattr(patcher, "model", None), "diffusion_model", None)
    return unet if isinstance(unet, nn.Module) else None


def _attn1_patches(model_options: dict) -> list:
    return model_options.get("transformer_options", {}).get("patches", {}).get("attn1_patch", [])


def has_todo_patch(sd_model: Any) -> bool:
    """Whether the patcher that sampling uses now carries an active ToDo patch (False after a model switch)."""
    patcher = unet_patcher_of(sd_model)
    options = getattr(patcher, "model_options", None)
    if not isinstance(options, dict):
        return False
    return any(getattr(patch, PATCH_FLAG, False) and patch.state.active for patch in _attn1_patches(options))


class _PatchState:
    """What ToDo's patch knows for one pass: the level of each block, the model's noise schedule, and the engine's
    per-call state (`todo_ext.PassState`), which every host's attention calls share."""

    def __init__(self, config: ToDoConfig, block_levels: dict[tuple[str, int], int], sampling: Any,
                 warned: set[str]):
        self.config = config
        self.block_levels = block_levels
        levels = tuple(sorted(set(block_levels.values())))
        self.touched_levels = {level for depth, level in enumerate(levels) if depth <= config.max_depth}
        self.sampling = sampling
        self.sigma_window = _sigma_window(config, sampling)
        self.active = True
        self.calls = PassState(config, levels, warned)

    @property
    def stats(self) -> dict[str, int]:
        return self.calls.stats

    def in_window(self, sigmas: Any) -> bool | None:
        """Whether the call's sigma lies inside the step window, as the hosts' own percent-based patches decide
        it: `percent_to_sigma` of the model's schedule (discrete for SD1.x/SDXL, where it matches A1111's
        1 - timestep / 999; continuous for EDM models such as Playground v2.5 and CosXL). Without it, from the
        timestep of a discrete schedule; None where the call or the model tells neither."""
        if not self.config.has_step_window or sigmas is None:
            return None if self.config.has_step_window else True
        sigma = torch.as_tensor(sigmas).flatten()[:1]
        if self.sigma_window is not None:
            lowest, highest = self.sigma_window
            return lowest <= float(sigma) <= highest
        timestep_of = getattr(self.sampling, "timestep", None)
        if not callable(timestep_of):
            return None
        progress = 1.0 - float(timestep_of(sigma).flatten()[0]) / (TRAIN_TIMESTEPS - 1)
        return self.config.covers(min(1.0, max(0.0, progress)))

    def apply(self, n: torch.Tensor, context: torch.Tensor | None, value: torch.Tensor | None, level: int,
              extra_options: dict, caller: FrameType | None, patch: Callable) -> tuple:
        _batch, _channels, latent_height, latent_width = extra_options["original_shape"]
        self.calls.begin((latent_height, latent_width), self.in_window(extra_options.get("sigmas")))
        tokens = n if context is None else context
        blocked = grid = None
        if self.calls.in_window:  # the frames are read only for calls that may act
            blocked = self._blocked(n, tokens, value, extra_options, caller, patch)
            if blocked is None:
                grid = _received_grid(extra_options, caller, tokens.shape[1])
        reduced = kv_context(tokens, level, self.calls, grid=grid, blocked=blocked)
        if reduced is None:
            return n, context, value
        return n, reduced, reduced

    def _blocked(self, n: torch.Tensor, tokens: torch.Tensor, value: torch.Tensor | None, extra_options: dict,
                 caller: FrameType | None, patch: Callable) -> str | None:
        """Why this call must stay exact, from what the host's transformer block runs around ToDo's patch."""
        block = tuple(extra_options.get("block") or ())
        replacements, patch_list = _caller_tables(caller)
        if replacements is None:
            if block[:1] == ("middle",):
                self.calls.warn_once("no-caller", "cannot see the host's attention replacements; ToDo leaves the "
                                                  "middle block (where PAG/SAG replace attention) alone")
                return "replaced"
        elif _replaced(replacements, block, extra_options.get("block_index", 0)):
            return "replaced"
        if patch_list is not None and patch in patch_list and patch_list.index(patch) < len(patch_list) - 1:
            return "later-patch"
        if value is not None and value is not tokens:
            return "kv-split"
        if n.shape[0] != tokens.shape[0]:
            return "hypertile"
        return None


def _sigma_window(config: ToDoConfig, sampling: Any) -> tuple[float, float] | None:
    """The (lowest, highest) sigma of the step window from the schedule's `percent_to_sigma`, once per pass;
    None where there is no window or the schedule has no such method."""
    percent_to_sigma = getattr(sampling, "percent_to_sigma", None)
    if not config.has_step_window or not callable(percent_to_sigma):
        return None
    return float(percent_to_sigma(config.end)), float(percent_to_sigma(config.start))


def _received_grid(extra_options: dict, caller: FrameType | None, tokens: int) -> tuple[int, int] | None:
    """The (height, width) of the spatial transformer input the block runs on: `activations_shape` where the host
    records it, else the `h` and `w` locals of the calling SpatialTransformer.forward (`b, c, h, w = x.shape` in
    every host's backend), found a few frames up; None where neither is there."""
    shape = extra_options.get("activations_shape")
    if isinstance(shape, (list, tuple)) and len(shape) == 4 and shape[2] * shape[3] == tokens:
        return int(shape[2]), int(shape[3])
    frame = caller
    for _ in range(_FRAMES_TO_SPATIAL_TRANSFORMER):
        if frame is None:
            return None
        local_names = frame.f_locals
        height, width = local_names.get("h"), local_names.get("w")
        if (hasattr(local_names.get("self"), "transformer_blocks") and isinstance(height, int)
                and isinstance(width, int) and height * width == tokens):
            return height, width
        frame = frame.f_back
    return None


_FRAMES_TO_SPATIAL_TRANSFORMER = 8
"""How far up from the transformer block the grid search looks: block forward, checkpoint, module call wrappers."""


def _caller_tables(caller: FrameType | None) -> tuple[dict | None, list | None]:
    """The calling BasicTransformerBlock's attn1 replacements and attn1 patch list, where it has them."""
    if caller is None:
        return None, None
    local_names = caller.f_locals
    replacements = local_names.get("transformer_patches_replace")
    patch_list = local_names.get("patch")
    return (replacements if isinstance(replacements, dict) else None,
            patch_list if isinstance(patch_list, list) else None)


def _replaced(replacements: dict, block: tuple, block_index: int) -> bool:
    """Mirrors the hosts' lookup: a replacement for (kind, id, transformer index), else for (kind, id)."""
    attn1 = replacements.get("attn1", {})
    return (*block[:2], block_index) in attn1 or block[:2] in attn1


def _make_patch(state: _PatchState) -> Callable:
    """ToDo's attn1 patch: a plain function, so a host's deep copy of `model_options` keeps it (and its state) by
    identity."""

    def todo_attn1_patch(n, context, value, extra_options):
        if not state.active:
            return n, context, value
        level = state.block_levels.get(tuple(extra_options.get("block") or ())[:2])
        if level not in state.touched_levels:
            return n, context, value
        state.calls.record.calls += 1
        try:
            return state.apply(n, context, value, level, extra_options, sys._getframe(1), todo_attn1_patch)
        except Exception:
            state.calls.step_aside("error")
            state.calls.warn_once("attn-error", "downsampling failed; attention runs unchanged", error=True)
            return n, context, value

    todo_attn1_patch.state = state
    setattr(todo_attn1_patch, PATCH_FLAG, True)
    return todo_attn1_patch


class ForgeHandle:
    """One attach: what ToDo did (`record`, `stats`); `remove()` turns the patch off. The host drops the patched
    clone by itself when it resets `forge_objects` before the next pass."""

    def __init__(self, state: _PatchState, unet: nn.Module):
        self._state = state
        self.unet = unet
        self.config = state.config

    @property
    def record(self) -> PassRecord:
        return self._state.calls.record

    @property
    def stats(self) -> dict[str, int]:
        return self._state.stats

    def remove(self) -> None:
        self._state.active = False


def attach(sd_model: Any, config: ToDoConfig, warned: set[str]) -> ForgeHandle:
    """Patch a clone of `sd_model.forge_objects.unet` and put it in place, replacing a ToDo patch already on it
    (Forge calls `process_before_every_sampling` twice in the hires pass). Raises UnsupportedModelError where
    the model has no ldm U-Net layout (Flux, SD3)."""
    patcher = unet_patcher_of(sd_model)
    unet = unet_of(sd_model)
    block_levels = attention_levels_by_block(unet)
    state = _PatchState(config, block_levels, _noise_schedule(patcher), warned)
    clone = _clone_sharing_patches(patcher)
    patches = _attn1_patches(clone.model_options)
    patches[:] = [patch for patch in patches if not getattr(patch, PATCH_FLAG, False)]
    clone.set_model_attn1_patch(_make_patch(state))
    sd_model.forge_objects.unet = clone
    return ForgeHandle(state, unet)


def _noise_schedule(patcher: Any) -> Any:
    """The schedule sampling will use: reForge's `get_model_object("model_sampling")` sees an object patch such
    as its advanced model sampling (EDM, CosXL) before the patcher is loaded; else Forge's and Neo's
    `model.predictor`, or `model.model_sampling` (reForge, Classic)."""
    get_model_object = getattr(patcher, "get_model_object", None)
    if callable(get_model_object):
        try:
            return get_model_object("model_sampling")
        except (AttributeError, KeyError):
            pass
    model = patcher.model
    return getattr(model, "predictor", None) or getattr(model, "model_sampling", None)


def _clone_sharing_patches(patcher: Any) -> Any:
    """`patcher.clone()` whose `model_options` holds the same patch objects as the original in new containers.

    Forge's and reForge's `clone()` deep-copy `model_options`, and with it every module another extension's patch
    holds (IP-Adapter's attn2 replacement keeps its weights there): one more copy of those weights would live
    through the pass. A newer backend may copy less. Either way ToDo clones with empty options and rebuilds them
    itself: new dicts and lists (so ToDo's patch never lands in the original's), the same patches inside."""
    options = patcher.model_options
    patcher.model_options = {"transformer_options": {}}
    try:
        clone = patcher.clone()
    finally:
        patcher.model_options = options
    clone.model_options = _copy_containers(options)
    return clone


def _copy_containers(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy_containers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_containers(item) for item in value]
    return value
