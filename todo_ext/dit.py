"""Attaching ToDo to diffusion transformers: Flux, Chroma, Lumina 2 / Z-Image, Qwen-Image, Wan and SD3.

Their joint attention goes through a module-level function of the model's own module (`attention_function` in
Forge's and Neo's backend/nn/flux.py, lumina.py and qwen.py, `optimized_attention` in wan.py, `attention` in
Forge's mmditx.py and A1111's modules/models/sd3/mmdit.py), called with the keys after RoPE; no patch channel of
the hosts reaches it. So ToDo replaces that one name for the job, chained to whatever was there, and acts only
while the attached model runs one of its attention blocks (instance hooks on the model and the blocks say when);
any other caller goes straight to the previous function. The image grid of each call comes from the model's
input, read by a forward pre-hook on the model instance. `remove()` restores the name, or, where another extension
wrapped it since, leaves ToDo's wrapper in that chain switched off.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import nn

from .config import MAX_DEPTH, ToDoConfig
from .joint import JointLayout, Segment, joint_plan, proportional_bias, reduce_keys_values, reduced_grid
from .passes import (
    PassState,
    ToDoHandle,
    ToDoHook,
    UnsupportedModelError,
    compiling,
    pass_through_traced,
    refuse_compiled,
    remove_hooks,
)

WRAPPER_FLAG = "is_todo_wrapper"


@dataclass(frozen=True)
class CallShape:
    """A joint sequence the model's input tells: `before` kept tokens (text), the image grid, `after` kept tokens
    (reference latents, padding: named by `after_name`); the one given as None holds whatever the attention call
    has beyond the rest (text of a length only the call shows, references)."""

    before: int | None
    grid: tuple[int, ...]
    after: int | None = 0
    after_name: str = "ref"

    def layout_for(self, tokens: int) -> JointLayout | None:
        image = math.prod(self.grid)
        before, after = self.before, self.after
        if before is None:
            before = tokens - image - after
        elif after is None:
            after = tokens - image - before
        if before < 0 or after < 0 or before + image + after != tokens:
            return None
        segments = [Segment.kept(before, "text")] if before else []
        segments.append(Segment.image(self.grid))
        if after:
            segments.append(Segment.kept(after, self.after_name))
        return JointLayout(tuple(segments))


def _patches(size: int, patch: int) -> int:
    """Tokens along one side after the model pads it to the patch size: ceil(size / patch)."""
    return -(-size // patch)


def _input(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _text_then_image_shapes(model: nn.Module, args: tuple, kwargs: dict) -> list[CallShape]:
    """Flux and Chroma (backend/nn/flux.py and chroma.py forward) and Qwen-Image (backend/nn/qwen.py forward, on a
    (batch, channels, frames, height, width) latent): text, then the image at patch 2, then any Kontext or edit
    reference latents."""
    x, context = _input(args, kwargs, 0, "x"), _input(args, kwargs, 2, "context")
    grid = (_patches(x.shape[-2], 2), _patches(x.shape[-1], 2))
    return [CallShape(context.shape[1], grid, None)]


def _lumina_shapes(model: nn.Module, args: tuple, kwargs: dict) -> list[CallShape]:
    """Lumina 2 and Z-Image (backend/nn/lumina.py NextDiT.patchify_and_embed): caption, then the image, each padded
    with pad tokens to a multiple of `pad_tokens_multiple` (Z-Image); the noise refiner attends over the padded
    image alone. The context refiner (caption alone) is no site of ToDo's."""
    x, context = _input(args, kwargs, 0, "x"), _input(args, kwargs, 2, "context")
    patch = model.patch_size
    grid = (_patches(x.shape[-2], patch), _patches(x.shape[-1], patch))
    multiple = getattr(model, "pad_tokens_multiple", None) or 1
    caption = context.shape[1] + (-context.shape[1]) % multiple
    image_pad = (-math.prod(grid)) % multiple
    return [CallShape(caption, grid, image_pad, "pad"), CallShape(0, grid, image_pad, "pad")]


def _wan_shapes(model: nn.Module, args: tuple, kwargs: dict) -> list[CallShape]:
    """Wan (backend/nn/wan.py forward): self-attention over the video's (frames, height, width) patches alone,
    frames extended by `time_dim_concat`; its cross-attention has keys of another length and is not ToDo's."""
    x = _input(args, kwargs, 0, "x")
    frames_patch, height_patch, width_patch = model.patch_size
    frames = x.shape[2]
    extra = kwargs.get("time_dim_concat")
    if extra is not None:
        frames += extra.shape[2]
    grid = (_patches(frames, frames_patch), _patches(x.shape[-2], height_patch), _patches(x.shape[-1], width_patch))
    return [CallShape(0, grid, 0)]


def _mmdit_shapes(model: nn.Module, args: tuple, kwargs: dict) -> list[CallShape]:
    """SD3 and SD3.5 (A1111 modules/models/sd3/mmdit.py, Forge backend/nn/mmditx.py block_mixing): the context
    (register tokens and text), then the image at the patch embedder's patch size; SD3.5 Medium's second
    self-attention runs over the image alone. The patch embedder is a strided conv without padding, so an odd
    side loses its last row or column: side // patch tokens."""
    x = _input(args, kwargs, 0, "x")
    patch = model.x_embedder.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    grid = (x.shape[-2] // patch, x.shape[-1] // patch)
    return [CallShape(None, grid, 0)]


def _own_module(model: nn.Module) -> ModuleType:
    return sys.modules[type(model).__module__]


def _flux_module(model: nn.Module) -> ModuleType:
    """Chroma's blocks call the `attention` they import from flux.py, which calls flux.py's `attention_function`."""
    own = _own_module(model)
    attention = getattr(own, "attention", None)
    home = getattr(attention, "__module__", None)
    return sys.modules.get(home, own)


@dataclass(frozen=True)
class Family:
    """How one kind of diffusion transformer attends: its classes, the function name its attention goes through
    and where it lives, its attention blocks in the order they run, and the joint sequences of a model call."""

    name: str
    classes: tuple[str, ...]
    function: str
    home: Callable[[nn.Module], ModuleType]
    blocks: Callable[[nn.Module], list[nn.Module]]
    shapes: Callable[[nn.Module, tuple, dict], list[CallShape]]


FAMILIES = (
    Family("Flux", ("IntegratedFluxTransformer2DModel",), "attention_function", _flux_module,
           lambda model: [*model.double_blocks, *model.single_blocks], _text_then_image_shapes),
    Family("Chroma", ("IntegratedChromaTransformer2DModel",), "attention_function", _flux_module,
           lambda model: [*model.double_blocks, *model.single_blocks], _text_then_image_shapes),
    Family("Lumina 2 / Z-Image", ("NextDiT",), "attention_function", _own_module,
           lambda model: [*model.noise_refiner, *model.layers], _lumina_shapes),
    Family("Qwen-Image", ("QwenImageTransformer2DModel",), "attention_function", _own_module,
           lambda model: list(model.transformer_blocks), _text_then_image_shapes),
    Family("Wan", ("WanModel",), "optimized_attention", _own_module,
           lambda model: [block.self_attn for block in model.blocks], _wan_shapes),
    Family("SD3", ("MMDiT", "MMDiTX"), "attention", _own_module,
           lambda model: list(model.joint_blocks), _mmdit_shapes),
)


def family_of(model: nn.Module) -> Family | None:
    names = {cls.__name__ for cls in type(model).__mro__}
    return next((family for family in FAMILIES if names.intersection(family.classes)), None)


def depth_of_position(position: int, blocks: int) -> int:
    """The depth of an attention block on a DiT, counted from the middle of the stack outwards: the middle half of
    the blocks is depth 0, the next eighth on either side depth 1, then all but the first and last block depth 2,
    and those two depth 3, so that Max depth 3 covers every block."""
    if blocks <= 2:
        return 0
    if position in (0, blocks - 1):
        return MAX_DEPTH
    offset = abs((position + 0.5) / blocks - 0.5)
    return 0 if offset < 0.25 else 1 if offset < 0.375 else 2


class _DiTState(PassState):
    """PassState plus what a DiT call tells: its joint sequences and which attention block is running."""

    def __init__(self, model: nn.Module, config: ToDoConfig, warned: set[str], blocks: int):
        super().__init__(config, warned)
        self.model = model
        self.blocks = blocks
        self.running = False
        """Whether the attached model's forward is running: other callers of the function pass straight through."""
        self.position: int | None = None
        """The attention block running now, by its place in `Family.blocks`; None outside the blocks."""
        self.shapes: list[CallShape] = []

    def begin_model_call(self, shapes: list[CallShape]) -> None:
        self.shapes = shapes
        self.position = None

    def layout_for(self, tokens: int) -> JointLayout | None:
        return next((layout for shape in self.shapes if (layout := shape.layout_for(tokens)) is not None), None)


MASKLESS_FUNCTIONS = ("attention_flash",)
"""Host attention functions that take no mask: Neo's flash-attn path asserts there is none (and falls back to SDPA
after printing the error). ToDo hands them the kept keys and values without the proportional bias rather than
cost the user the kernel they chose."""


def _reduced_arguments(state: _DiTState, takes_mask: bool, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       args: tuple, kwargs: dict) -> tuple | None:
    """For one joint attention call: the kept text and downsampled image keys and values, and the call's mask
    with the proportional bias added (where the host's function takes a mask); None to leave the call exact.
    Every query stays."""
    sequence_dim = 2 if kwargs.get("skip_reshape") else 1
    if q.shape[sequence_dim] != k.shape[sequence_dim] or state.position is None:
        return None
    depth = depth_of_position(state.position, state.blocks)
    if depth > state.config.max_depth:
        return None
    state.record.calls += 1
    if state.sits_out():
        return None
    layout = state.layout_for(k.shape[sequence_dim])
    if layout is None:
        state.step_aside("grid")
        return None
    grid = layout.image
    factor = state.config.factor_at(depth, grid[-2] * grid[-1])
    state.record.acted(None, grid, reduced_grid(grid, factor), factor, kept=layout.kept)
    if factor == 1.0:
        return None
    plan = joint_plan(layout, factor, state.config.method, k.device)
    k, v = reduce_keys_values(k, v, plan, sequence_dim)
    if not takes_mask and _mask_of(args, kwargs) is None:
        return k, v, args, kwargs
    return (k, v, *_with_mask(args, kwargs, plan, q.dtype, q.shape[sequence_dim]))


def _mask_of(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return args[1] if len(args) > 1 else kwargs.get("mask")


def _with_mask(args: tuple, kwargs: dict, plan: Any, dtype: torch.dtype, queries: int) -> tuple[tuple, dict]:
    """The call's arguments with its mask (the argument after `heads`, or `mask=`) restricted to the kept keys and
    the proportional bias added. The mask is first brought to 4-D as the hosts' attention functions read it (2-D:
    (queries, keys); 3-D: (batch, queries, keys)), so that the bias, (1, 1, queries, keys), broadcasts over it
    rather than shifting its batch into the heads."""
    bias = proportional_bias(plan, dtype, queries)
    positional = len(args) > 1
    mask = _mask_of(args, kwargs)
    if mask is not None:
        mask = mask.index_select(-1, plan.index)
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, -torch.inf)
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        bias = mask + bias
    if positional:
        return (args[0], bias, *args[2:]), kwargs
    return args, {**kwargs, "mask": bias}


def _wrapper(state: _DiTState, previous: Callable) -> Callable:
    takes_mask = getattr(previous, "__name__", None) not in MASKLESS_FUNCTIONS

    def todo_attention(q, k, v, *args, **kwargs):
        if state.active and state.running and compiling():
            pass_through_traced()
        elif state.active and state.running:
            try:
                reduced = _reduced_arguments(state, takes_mask, q, k, v, args, kwargs)
            except Exception:
                state.fail_over()
                reduced = None
            if reduced is not None:
                k, v, args, kwargs = reduced
        return previous(q, k, v, *args, **kwargs)

    todo_attention.previous = previous
    todo_attention.state = state
    setattr(todo_attention, WRAPPER_FLAG, True)
    return todo_attention


class _FunctionSwap:
    """ToDo's wrapper in place of a module-level function, for one attach. `remove()` puts the previous function
    back where ToDo's is still the name's value, and with it any switched-off ToDo wrapper that was under it (an
    attach of another model of the family, removed first); where another extension wrapped it since, ToDo's wrapper
    stays in their chain, switched off (its state is inactive), and a later attach unlinks it."""

    def __init__(self, home: ModuleType, name: str, state: _DiTState):
        self.home, self.name = home, name
        _unlink_inactive(home, name)
        self.wrapper = _wrapper(state, getattr(home, name))
        setattr(home, name, self.wrapper)

    def remove(self) -> None:
        if getattr(self.home, self.name, None) is self.wrapper:
            setattr(self.home, self.name, self.wrapper.previous)
            _unlink_inactive(self.home, self.name)


def _unlink_inactive(home: ModuleType, name: str) -> None:
    """Drop switched-off ToDo wrappers from the top of a function's chain (left there by a removal under another
    extension's wrapper)."""
    function = getattr(home, name)
    while getattr(function, WRAPPER_FLAG, False) and not function.state.active:
        function = function.previous
    setattr(home, name, function)


def _running_hooks(model: nn.Module, blocks: list[nn.Module], state: _DiTState, family: Family,
                   read_window: Callable[[tuple, dict], bool | None]) -> list[Any]:
    """Hooks on the instances that tell the wrapper when the attached model runs (and the joint sequences of its
    call, from its input) and which of its attention blocks is running."""

    def model_starts(module: nn.Module, args: tuple, kwargs: dict) -> None:
        state.running = True
        try:
            state.begin_call(kwargs.get("transformer_options"), lambda: read_window(args, kwargs))
            state.begin_model_call(family.shapes(module, args, kwargs))
        except Exception:
            state.begin_model_call([])
            state.fail_call()

    def model_ends(*_args: Any) -> None:
        state.running = False

    def block_starts(position: int) -> ToDoHook:
        return ToDoHook(lambda *_args: setattr(state, "position", position))

    hooks = [model.register_forward_pre_hook(ToDoHook(model_starts), with_kwargs=True),
             model.register_forward_hook(ToDoHook(model_ends), always_call=True)]
    for position, block in enumerate(blocks):
        hooks.append(block.register_forward_pre_hook(block_starts(position)))
        hooks.append(block.register_forward_hook(ToDoHook(lambda *_args: setattr(state, "position", None)),
                                                 always_call=True))
    return hooks


def _no_window(_args: tuple, _kwargs: dict) -> None:
    """DiTs take their timestep on each host's own scale: outside a WebUI the caller decides the step window per
    step (`handle.begin_step`), else it is ignored, with a warning."""
    return None


def apply_dit(model: nn.Module, config: ToDoConfig, warned: set[str],
              read_window: Callable[[tuple, dict], bool | None] | None = None) -> ToDoHandle:
    """Attach ToDo to a diffusion transformer; raises UnsupportedModelError where it is none ToDo knows."""
    family = family_of(model)
    classes = {cls.__name__ for cls in type(model).__mro__}
    if family is None and (type(model).__name__.startswith("SVDQ") or "NunchakuModelMixin" in classes):
        raise UnsupportedModelError(f"ToDo: {type(model).__name__} is a Nunchaku model, which attends inside its "
                                    "own kernels")
    if family is None:
        raise UnsupportedModelError(f"ToDo: {type(model).__name__} is neither an ldm/sgm U-Net nor a diffusion "
                                    "transformer ToDo knows")
    refuse_compiled(model)
    remove_dit(model)
    remove_hooks(model)
    blocks = family.blocks(model)
    home = family.home(model)
    if not callable(getattr(home, family.function, None)):
        raise UnsupportedModelError(f"ToDo: {home.__name__}.{family.function} is not there to attach to")
    state = _DiTState(model, config, warned, len(blocks))
    hooks = _running_hooks(model, blocks, state, family, read_window or _no_window)
    return ToDoHandle(model, config, state, [*hooks, _FunctionSwap(home, family.function, state)])


def remove_dit(model: nn.Module) -> None:
    """Switch off every ToDo wrapper of this model in its attention function's chain, whoever attached it (a copy
    of ToDo loaded before a UI reload included), and unlink those on top."""
    family = family_of(model)
    home = family.home(model) if family is not None else None
    function = getattr(home, family.function, None) if home is not None else None
    if function is None:
        return
    while getattr(function, WRAPPER_FLAG, False):
        if function.state.model is model:
            function.state.active = False
        function = function.previous
    _unlink_inactive(home, family.function)
