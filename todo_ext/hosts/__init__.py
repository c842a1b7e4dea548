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


__all__ = ["Attachment", "a1111", "attach_for", "forge", "layout_of", "remove_all"]
