"""Mirrors Forge Neo 2.26's backend/args.py `dynamic_args`: a class whose attributes are the process-wide values
(`ref_latents`, a list, empty by default) and whose metaclass also answers `dynamic_args.get(name)`."""

from __future__ import annotations

from typing import ClassVar


class _DynamicArgsMeta(type):
    def get(cls, key, default=None):
        return getattr(cls, key, default)


class dynamic_args(metaclass=_DynamicArgsMeta):
    ref_latents: ClassVar[list] = []
