"""How ToDo attaches to each host's U-Net: one small adapter per kind of host, picked from the loaded model.

- `a1111`: AUTOMATIC1111 WebUI (and anything whose `sd_model.model.diffusion_model` is the torch U-Net that
  sampling runs): torch module hooks on the U-Net instances (`todo_ext.apply` / `todo_ext.remove`).
- `forge`: WebUI Forge, reForge, Forge Classic and Forge Neo: an attn1 patch on a clone of
  `sd_model.forge_objects.unet`, the hosts' own patch channel, set before every sampling pass.

No host module is imported here: the adapters duck-type the objects the glue hands them.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from . import a1111, forge


def adapter_for(sd_model: Any) -> ModuleType:
    """The adapter for the model loaded now: Forge's patch channel where the model has one, else the hooks."""
    return forge if forge.is_forge_model(sd_model) else a1111


__all__ = ["a1111", "adapter_for", "forge"]
