"""ToDo: token downsampling of attention keys and values for Stable Diffusion U-Nets and diffusion transformers
(pure torch)."""

from .attach import apply, remove
from .config import METHODS, ToDoConfig, factor_to_ratio, ratio_to_factor
from .downsample import downsample_tokens
from .passes import ToDoHandle, UnsupportedModelError
from .patch import (
    attention_levels,
    attention_levels_by_block,
    plan_kv_tokens,
)
from .record import PassRecord

__all__ = [
    "METHODS",
    "PassRecord",
    "ToDoConfig",
    "ToDoHandle",
    "UnsupportedModelError",
    "apply",
    "attention_levels",
    "attention_levels_by_block",
    "downsample_tokens",
    "factor_to_ratio",
    "plan_kv_tokens",
    "ratio_to_factor",
    "remove",
]
