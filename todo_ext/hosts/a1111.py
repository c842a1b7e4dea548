"""AUTOMATIC1111 WebUI: ToDo on `sd_model.model.diffusion_model`: hooks on the U-Net's instances, or SD3's
attention function swapped for the job (`todo_ext.apply`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..attach import apply
from ..config import ToDoConfig
from ..passes import UnsupportedModelError
from ..patch import progress_of_timestep
from .base import Attachment


def model_of(sd_model: Any) -> nn.Module | None:
    """The torch model that the WebUI's sampler calls, or None (no model, or not a torch module)."""
    model = getattr(getattr(sd_model, "model", None), "diffusion_model", None)
    return model if isinstance(model, nn.Module) else None


def attach(sd_model: Any, config: ToDoConfig, warned: set[str]) -> Attachment:
    """Hook `config` into the model of `sd_model`; raises UnsupportedModelError where ToDo cannot act on it."""
    model = model_of(sd_model)
    if model is None:
        raise UnsupportedModelError(f"ToDo: {type(sd_model).__name__} has no torch diffusion model")
    return Attachment(apply(model, config, warned=warned), _in_window(config), lambda now: model_of(now) is model)


def _in_window(config: ToDoConfig):
    """The step window from the sampler's values: the k-diffusion samplers hand the denoiser a sigma, which its
    inner model turns into the index of the model's 1000-step schedule (`sigma_to_t`: the ldm timestep, and on SD3
    the SD3Denoiser's discrete flow schedule); DDIM, PLMS and UniPC hand it the timestep itself
    (modules/sd_samplers_timesteps.py)."""

    def in_window(sigma: Any, denoiser: Any) -> bool:
        sigma_to_t = getattr(getattr(denoiser, "inner_model", None), "sigma_to_t", None)
        timestep = sigma_to_t(sigma[:1]) if callable(sigma_to_t) else sigma
        return config.covers(progress_of_timestep(timestep))

    return in_window
