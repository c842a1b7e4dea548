"""`apply` and `remove` for every model ToDo knows: ldm/sgm U-Nets (SD1.x, SD2.x, SDXL) through hooks on their
instances, diffusion transformers (Flux and Flux.2 Klein, Chroma, Lumina 2 / Z-Image, Qwen-Image, Wan, Krea 2, Anima,
Ernie-Image, SD3) through their attention function, swapped for the job."""

from __future__ import annotations

from torch import nn

from .config import ToDoConfig
from .dit import apply_dit, remove_dit
from .passes import ToDoHandle, remove_hooks
from .patch import apply_unet, is_unet


def apply(model: nn.Module, config: ToDoConfig, *, warned: set[str] | None = None) -> ToDoHandle:
    """Attach ToDo to `model` (replacing earlier ToDo settings on it) and return the handle that undoes it; raises
    UnsupportedModelError where ToDo cannot act on the model.

    Each kind of warning is logged once per `warned` set: pass one set to every `apply` of a generation (first
    pass, hires pass, each batch) to warn once per generation; by default once per `apply`.
    """
    if not isinstance(config, ToDoConfig):
        raise TypeError(f"ToDo: config must be a ToDoConfig, not {type(config).__name__}")
    warned = set() if warned is None else warned
    if is_unet(model):
        return apply_unet(model, config, warned)
    return apply_dit(model, config, warned)


def remove(model: nn.Module) -> int:
    """Take every ToDo hook off `model`, whoever attached it, and switch off ToDo's attention function wrappers
    of it; returns how many hooks were removed."""
    remove_dit(model)
    return remove_hooks(model)
