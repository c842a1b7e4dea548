"""How ToDo attaches to each host's model: one small adapter per kind of host, picked from the loaded model, each
returning the same `Attachment`.

- `a1111`: AUTOMATIC1111 WebUI (and anything whose `sd_model.model.diffusion_model` is the torch model that
  sampling runs): `todo_ext.apply` / `todo_ext.remove` on that model.
- `forge`: WebUI Forge, reForge, Forge Classic and Forge Neo: on a U-Net an attn1 patch on a clone of
  `sd_model.forge_objects.unet`, the hosts' own patch channel, set before every sampling pass; on a diffusion
  transformer, which no patch channel reaches, `todo_ext.apply` on the patcher's model.

No host module is imported here: the adapters duck-type the objects the glue hands them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from ..attach import remove
from ..config import ToDoConfig
from ..dit import family_of
from ..patch import attention_levels, is_unet
from . import a1111, forge
from .base import Attachment


def attach_for(sd_model: Any) -> Callable[[Any, ToDoConfig, set[str]], Attachment]:
    """The attach of the host that loaded `sd_model`: Forge's patch channel where the model has one, else hooks."""
    return forge.attach if forge.is_forge_model(sd_model) else a1111.attach


def remove_all(sd_model: Any) -> int:
    """Remove every ToDo hook from the models `sd_model` exposes, whoever added them (a copy of ToDo loaded before
    a UI reload included); returns how many."""
    models = {id(model): model for model in (a1111.model_of(sd_model), forge.model_of(sd_model)) if model is not None}
    return sum(remove(model) for model in models.values())


SAMPLER_METHODS = ("sample", "sample_img2img")
"""What every host calls on the pass's sampler (`p.sampler`, made by `sd_samplers.create_sampler`) right after the
scripts' `process_before_every_sampling`: modules/processing.py StableDiffusionProcessingTxt2Img.sample and
sample_hr_pass, StableDiffusionProcessingImg2Img.sample, on A1111, Forge, reForge, Classic and Neo alike."""

ENDS_PASS_FLAG = "ends_todo_pass"


def when_sampling_ends(sampler: Any, cleanup: Callable[[], Any]) -> None:
    """Run `cleanup` when the pass's sampler returns or raises. No host runs a script hook when a job raises (their
    `process_images` keeps only the settings restore in its `finally`, and `postprocess` runs on success only), so
    ToDo wraps the sampler's methods on its instance, once: the host makes a new sampler for each pass (img2img
    one per job, for all its batches). A sampler without them is left alone."""
    if not hasattr(sampler, "__dict__"):
        return
    for name in SAMPLER_METHODS:
        method = getattr(sampler, name, None)
        if callable(method) and not getattr(method, ENDS_PASS_FLAG, False):
            setattr(sampler, name, _ending_with(method, cleanup))


def _ending_with(method: Callable, cleanup: Callable[[], Any]) -> Callable:
    @wraps(method)
    def sample(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        finally:
            cleanup()

    setattr(sample, ENDS_PASS_FLAG, True)
    return sample


def layout_of(sd_model: Any) -> dict[str, Any]:
    """What the live K/V preview needs to know of the loaded model: a U-Net's attention levels (log2 of the
    latent's downscale: SD1.x/SD2.x from 0, SDXL from 1), a diffusion transformer's family (its image tokens are
    2x2 latent patches), or "unknown" (no model loaded yet, or one ToDo cannot act on)."""
    for model in (forge.model_of(sd_model), a1111.model_of(sd_model)):
        if model is None:
            continue
        if is_unet(model):
            return {"kind": "unet", "levels": list(attention_levels(model))}
        family = family_of(model)
        if family is not None:
            return {"kind": "dit", "family": family.name}
    return {"kind": "unknown"}


__all__ = ["Attachment", "a1111", "attach_for", "forge", "layout_of", "remove_all", "when_sampling_ends"]
