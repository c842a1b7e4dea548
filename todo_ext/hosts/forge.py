"""WebUI Forge, reForge, Forge Classic and Forge Neo: ToDo as an attn1 patch on a clone of
`sd_model.forge_objects.unet`, fed by hooks on the U-Net's instances.

All four run a U-Net patcher's `attn1_patch` functions inside BasicTransformerBlock (Forge and Neo:
backend/nn/unet.py `BasicTransformerBlock._forward`; reForge and Classic: ldm_patched/ldm/modules/attention.py)
as `n, context, value = patch(n, context, value, extra_options)`, where `context` and `value` start as `n` and are
what `to_k` and `to_v` project. ToDo hands both a downsampled copy of the K/V tokens, so the queries stay full (or
merged, under the hosts' Token merging) and K/V run on the reduced grid, as the A1111 hooks do. The adapter asks
only for what the objects offer (`clone`, `set_model_attn1_patch`, `model_options`), never for a host's name.

What the patch needs beyond `extra_options` (the block being run) comes from forward pre-hooks on the U-Net's
instances, as on A1111: the one on the U-Net reads the `transformer_options` every host passes it as a keyword
(KModel.apply_model / BaseModel.apply_model), which holds the attn1 replacements (PAG, SAG, reference) and the
attn1 patch list that the hosts keep out of `extra_options`; the one on each SpatialTransformer reads the grid
from its 4-D input. The step window is decided once per step from the sampler's sigma against the schedule's own
`percent_to_sigma`, so Start/End mean the same progress on every host and schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import ToDoConfig
from ..dit import apply_dit
from ..passes import ToDoHandle, UnknownWindow, UnsupportedModelError, compiling, refuse_compiled, remove_hooks
from ..patch import (
    AttentionSite,
    UNetPassState,
    hook_unet,
    is_unet,
    kv_context,
    progress_of_timestep,
    self_attention_sites,
    touched_sites,
)
from .base import Attachment

PATCH_FLAG = "is_todo_patch"
"""Attribute that marks ToDo's attn1 patch function, so a second attach in the same pass replaces it."""


def unet_patcher_of(sd_model: Any) -> Any:
    """`sd_model.forge_objects.unet` where it is a U-Net patcher (clone + attn1 patch channel), else None."""
    patcher = getattr(getattr(sd_model, "forge_objects", None), "unet", None)
    if callable(getattr(patcher, "clone", None)) and callable(getattr(patcher, "set_model_attn1_patch", None)):
        return patcher
    return None


def is_forge_model(sd_model: Any) -> bool:
    return unet_patcher_of(sd_model) is not None


def model_of(sd_model: Any) -> nn.Module | None:
    """The torch module the patcher runs (`.model.diffusion_model`): an ldm-layout U-Net, or Flux, SD3, ..."""
    patcher = unet_patcher_of(sd_model)
    model = getattr(getattr(patcher, "model", None), "diffusion_model", None)
    return model if isinstance(model, nn.Module) else None


def _attn1_patches(model_options: dict) -> list:
    return model_options.get("transformer_options", {}).get("patches", {}).get("attn1_patch", [])


def _runs_patch(sd_model: Any, patch: Callable) -> bool:
    """Whether the patcher that sampling uses now carries `patch` (False after a model switch or a reset)."""
    options = getattr(unet_patcher_of(sd_model), "model_options", None)
    return isinstance(options, dict) and patch in _attn1_patches(options)


def _blocked(state: UNetPassState, n: torch.Tensor, tokens: torch.Tensor, value: torch.Tensor | None,
             extra_options: dict, patch: Callable) -> str | None:
    """Why this call must stay exact, from what the host's transformer block runs around ToDo's patch: a
    replacement of the block's attention (it gets the projected K/V of our shortened tokens, and PAG's returns V,
    which must keep the full token count), a later attn1 patch, keys and values changed apart, tiled queries."""
    block = tuple(extra_options.get("block") or ())
    options = state.call_options
    if options is None:
        if block[:1] == ("middle",):
            state.warn_once("no-options", "the host passed the U-Net no transformer_options, so its attention "
                                          "replacements are unknown; ToDo leaves the middle block (where PAG/SAG "
                                          "replace attention) alone")
            return "replaced"
    else:
        replacements = options.get("patches_replace", {}).get("attn1", {})
        if (*block[:2], extra_options.get("block_index", 0)) in replacements or block[:2] in replacements:
            return "replaced"
        patches = options.get("patches", {}).get("attn1_patch", [])
        if patch in patches and patches.index(patch) < len(patches) - 1:
            return "later-patch"
    if value is not None and value is not tokens:
        return "kv-split"
    if n.shape[0] != tokens.shape[0]:
        return "hypertile"
    return None


def _make_patch(state: UNetPassState, sites: list[AttentionSite]) -> Callable:
    """ToDo's attn1 patch: a plain function, so a host's deep copy of `model_options` keeps it (and its `state`) by
    identity."""
    site_of_block = {site.name: site for site in sites}

    def todo_attn1_patch(n, context, value, extra_options):
        # Under tracing it reads and stores nothing: Neo's Torch Compile Integrated drops the guards on
        # transformer_options, where this patch sits, so a store here would be replayed into later jobs' options
        # (KeyError: 'patches' where they have none). The U-Net's hooks mark the pass as compiled.
        if compiling() or not state.active:
            return n, context, value
        site = site_of_block.get(tuple(extra_options.get("block") or ())[:2])
        if site is None:
            return n, context, value
        state.record.calls += 1
        try:
            tokens = n if context is None else context
            reduced = kv_context(tokens, site.level, state, grid=state.grids.get(id(site.container)),
                                 blocked=_blocked(state, n, tokens, value, extra_options, todo_attn1_patch))
        except Exception:
            state.fail_over()
            return n, context, value
        return (n, context, value) if reduced is None else (n, reduced, reduced)

    setattr(todo_attn1_patch, PATCH_FLAG, True)
    todo_attn1_patch.state = state
    return todo_attn1_patch


def attach(sd_model: Any, config: ToDoConfig, warned: set[str]) -> Attachment:
    """On a U-Net: patch a clone of `sd_model.forge_objects.unet`, put it in place (replacing a ToDo patch already
    on it: Forge calls `process_before_every_sampling` twice in the hires pass) and hook the U-Net's instances that
    feed the patch. On a diffusion transformer: `todo_ext.apply` on the patcher's model, its step window from the
    same schedule. Raises UnsupportedModelError where ToDo cannot act on the model."""
    patcher = unet_patcher_of(sd_model)
    model = model_of(sd_model)
    if model is None:
        raise UnsupportedModelError(f"ToDo: {type(sd_model).__name__} has no torch diffusion model")
    in_window = _sigma_window(config, _noise_schedule(patcher))
    refuse_compiled(model)
    if not is_unet(model):
        handle = apply_dit(model, config, warned, _window_of_call(in_window))
        return Attachment(handle, lambda sigma, _denoiser: in_window(sigma), lambda now: model_of(now) is model)
    sites = self_attention_sites(model)
    levels = tuple(sorted({site.level for site in sites}))
    touched = touched_sites(sites, levels, config)
    remove_hooks(model)
    state = UNetPassState(config, levels, warned)
    patch = _make_patch(state, touched)
    hooks = hook_unet(model, state, touched, _window_of_call(in_window), attn1=False)
    clone = _clone_sharing_patches(patcher)
    patches = _attn1_patches(clone.model_options)
    patches[:] = [other for other in patches if not getattr(other, PATCH_FLAG, False)]
    clone.set_model_attn1_patch(patch)
    sd_model.forge_objects.unet = clone
    handle = ToDoHandle(model, config, state, hooks)
    return Attachment(handle, lambda sigma, _denoiser: in_window(sigma),
                      lambda now: model_of(now) is model and _runs_patch(now, patch))


def _sigma_window(config: ToDoConfig, sampling: Any) -> Callable[[Any], bool]:
    """Whether a sigma lies inside the step window, as the hosts' own percent-based patches decide it:
    `percent_to_sigma` of the model's schedule (discrete for SD1.x/SDXL, where it matches A1111's
    1 - timestep / 999; continuous for EDM models such as Playground v2.5 and CosXL), its bounds computed once per
    pass. Without it, from the timestep of a discrete schedule. Where the schedule tells neither, or its bounds
    raise, every step raises UnknownWindow saying so (ToDo then acts on the step and the note says why). One device
    read per call: once per step."""
    if not config.has_step_window:
        return lambda _sigma: True
    percent_to_sigma = getattr(sampling, "percent_to_sigma", None)
    timestep_of = getattr(sampling, "timestep", None)
    if callable(percent_to_sigma):
        try:
            lowest, highest = float(percent_to_sigma(config.end)), float(percent_to_sigma(config.start))
        except Exception as error:
            return _unknown(f"the schedule's percent_to_sigma raised {type(error).__name__}")
        return lambda sigma: lowest <= float(torch.as_tensor(sigma).flatten()[0]) <= highest
    if callable(timestep_of):
        return lambda sigma: config.covers(progress_of_timestep(timestep_of(torch.as_tensor(sigma).flatten()[:1])))
    if sampling is None:
        return _unknown("the host tells no schedule")
    return _unknown(f"the host's schedule ({type(sampling).__name__}) has neither percent_to_sigma nor timestep")


def _unknown(why: str) -> Callable[[Any], bool]:
    def unknown(_sigma: Any) -> bool:
        raise UnknownWindow(why)

    return unknown


def _window_of_call(in_window: Callable[[Any], bool]) -> Callable[[tuple, dict], bool]:
    """The step window from a U-Net call's `transformer_options["sigmas"]`, for calls no denoiser callback
    preceded."""

    def read(_args: tuple, kwargs: dict) -> bool:
        sigmas = (kwargs.get("transformer_options") or {}).get("sigmas")
        if sigmas is None:
            raise UnknownWindow("the model call told no sigma")
        return in_window(sigmas)

    return read


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
