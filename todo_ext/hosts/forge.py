"""WebUI Forge and reForge: ToDo as an attn1 patch on a clone of `sd_model.forge_objects.unet`.

Both hosts run a U-Net patcher's `attn1_patch` functions inside BasicTransformerBlock (Forge:
backend/nn/unet.py `BasicTransformerBlock._forward`; reForge: ldm_patched/ldm/modules/attention.py
`BasicTransformerBlock.forward`) as `n, context, value = patch(n, context, value, extra_options)`, where
`context` and `value` start as `n` and are what `to_k` and `to_v` project. ToDo hands both a downsampled copy of
the tokens, so the queries stay full and K/V run on the reduced grid, as the A1111 hooks do.

`extra_options` carries the call's latent shape (`original_shape`), the block being run (`block`) and the
sigmas (`sigmas`); the level of a block comes from walking the U-Net, the step window from the model's own
sigma -> timestep conversion, so "progress" means what it means on A1111 (1 - timestep / 999).

Forge and reForge keep a block's attn1 *replacement* (PAG, SAG: `patches_replace["attn1"]`) out of
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
    """What ToDo's patch knows for one pass: the level of each block, the model's sigma -> timestep conversion,
    and the engine's per-call state (`todo_ext.PassState`), which every host's attention calls share."""

    def __init__(self, config: ToDoConfig, block_levels: dict[tuple[str, int], int],
                 timestep_of: Callable[[torch.Tensor], torch.Tensor] | None, warned: set[str]):
        self.config = config
        self.block_levels = block_levels
        levels = tuple(sorted(set(block_levels.values())))
        self.touched_levels = {level for depth, level in enumerate(levels) if depth <= config.max_depth}
        self.timestep_of = timestep_of
        self.active = True
        self.calls = PassState(config, levels, warned)

    @property
    def stats(self) -> dict[str, int]:
        return self.calls.stats

    def step_aside(self, kind: str, message: str) -> None:
        self.calls.stats["passed_through"] += 1
        self.calls.warn_once(kind, message)

    def progress(self, sigmas: Any) -> float | None:
        """Progress through the noise schedule, from the timestep the U-Net gets for these sigmas (the A1111
        hooks read that timestep directly); None where the call has no sigmas."""
        if not self.config.has_step_window or sigmas is None or self.timestep_of is None:
            return None
        timestep = self.timestep_of(torch.as_tensor(sigmas).flatten()[:1])
        return 1.0 - float(timestep.flatten()[0]) / (TRAIN_TIMESTEPS - 1)

    def apply(self, n: torch.Tensor, context: torch.Tensor | None, value: torch.Tensor | None, level: int,
              extra_options: dict, caller: FrameType | None, patch: Callable) -> tuple:
        unchanged = (n, context, value)
        batch, _channels, latent_height, latent_width = extra_options["original_shape"]
        self.calls.begin(int(batch), (latent_height, latent_width), self.progress(extra_options.get("sigmas")))
        if not self.calls.may_downsample(level):
            return unchanged
        block = tuple(extra_options.get("block") or ())
        replacements, patch_list = _caller_tables(caller)
        if replacements is None:
            if block[:1] == ("middle",):
                self.step_aside("no-caller", "cannot see the host's attention replacements; ToDo leaves the "
                                             "middle block (where PAG/SAG replace attention) alone")
                return unchanged
        elif _replaced(replacements, block, extra_options.get("block_index", 0)):
            self.step_aside("replaced", f"another extension (PAG, SAG?) replaces the self-attention of the {block[0]} "
                                        "block, so ToDo leaves it alone there")
            return unchanged
        if patch_list is not None and patch in patch_list and patch_list.index(patch) < len(patch_list) - 1:
            self.step_aside("later-patch", "another attn1 patch runs after ToDo's and may change its K/V tokens, "
                                           "so ToDo leaves those layers alone")
            return unchanged
        tokens = n if context is None else context
        if value is not None and value is not tokens:
            self.step_aside("kv-split", "another patch changed self-attention's keys and values apart, so ToDo "
                                        "leaves those layers alone")
            return unchanged
        if n.shape[0] != tokens.shape[0]:
            self.step_aside("tiled", "Hypertile tiles this self-attention, so ToDo leaves those layers alone")
            return unchanged
        reduced = kv_context(tokens, level, self.calls)
        if reduced is None:
            return unchanged
        return n, reduced, reduced


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
    """ToDo's attn1 patch: a plain function, so the hosts' deep copy of `model_options` keeps it (and its state)
    by identity."""

    def todo_attn1_patch(n, context, value, extra_options):
        if not state.active:
            return n, context, value
        level = state.block_levels.get(tuple(extra_options.get("block") or ())[:2])
        if level not in state.touched_levels:
            return n, context, value
        try:
            return state.apply(n, context, value, level, extra_options, sys._getframe(1), todo_attn1_patch)
        except Exception:
            state.stats["errors"] += 1
            state.calls.warn_once("attn-error", "downsampling failed; attention runs unchanged", error=True)
            return n, context, value

    todo_attn1_patch.state = state
    setattr(todo_attn1_patch, PATCH_FLAG, True)
    return todo_attn1_patch


class ForgeHandle:
    """One attach: counters for the infotext note; `remove()` turns the patch off. The host drops the patched
    clone by itself when it resets `forge_objects` before the next pass."""

    def __init__(self, state: _PatchState, unet: nn.Module):
        self._state = state
        self.unet = unet
        self.config = state.config

    @property
    def stats(self) -> dict[str, int]:
        """Counts of attention calls downsampled, passed through (another patch or replacement), failed over."""
        return dict(self._state.stats)

    def remove(self) -> None:
        self._state.active = False


def attach(sd_model: Any, config: ToDoConfig, warned: set[str]) -> ForgeHandle:
    """Patch a clone of `sd_model.forge_objects.unet` and put it in place, replacing a ToDo patch already on it
    (Forge calls `process_before_every_sampling` twice in the hires pass). Raises UnsupportedModelError where
    the model has no ldm U-Net layout (Flux, SD3)."""
    patcher = unet_patcher_of(sd_model)
    unet = unet_of(sd_model)
    block_levels = attention_levels_by_block(unet)
    model = patcher.model
    sampling = getattr(model, "predictor", None) or getattr(model, "model_sampling", None)
    state = _PatchState(config, block_levels, getattr(sampling, "timestep", None), warned)
    clone = patcher.clone()
    patches = _attn1_patches(clone.model_options)
    patches[:] = [patch for patch in patches if not getattr(patch, PATCH_FLAG, False)]
    clone.set_model_attn1_patch(_make_patch(state))
    sd_model.forge_objects.unet = clone
    return ForgeHandle(state, unet)
