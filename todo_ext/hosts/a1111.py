"""AUTOMATIC1111 WebUI: torch module hooks on the instances of `sd_model.model.diffusion_model`."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import ToDoConfig
from ..patch import ToDoHandle, apply


def unet_of(sd_model: Any) -> nn.Module | None:
    """The torch U-Net that the WebUI's sampler calls, or None (no model, or not a torch module)."""
    unet = getattr(getattr(sd_model, "model", None), "diffusion_model", None)
    return unet if isinstance(unet, nn.Module) else None


def attach(sd_model: Any, config: ToDoConfig, warned: set[str]) -> ToDoHandle:
    """Hook `config` into the U-Net of `sd_model`; raises UnsupportedModelError where it has no ldm layout."""
    return apply(unet_of(sd_model), config, warned=warned)
