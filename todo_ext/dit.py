"""Attaching ToDo to diffusion transformers: Flux (Kontext, Flux.2 Klein), Chroma, Lumina 2 / Z-Image, Qwen-Image,
Wan, Krea 2, Anima, Ernie-Image and SD3.

Their joint attention goes through a module-level function of the model's own module (`attention_function` in
Forge's and Neo's backend/nn/flux.py, lumina.py, qwen.py, and Neo 2.26's krea.py, anima.py and ernie.py;
`optimized_attention` in Neo 283cb2c4's wan.py, `attention` in Neo 2.26's; `attention` in Forge's mmditx.py and
A1111's modules/models/sd3/mmdit.py), called with the keys after RoPE; no patch channel of the hosts reaches it.
So ToDo replaces that one name for the job, chained to whatever was there, and acts only while the attached model
runs one of its attention blocks (instance hooks on the model and the blocks say when); any other caller goes
straight to the previous function. Host code that reassigns the name between model calls (Neo 2.26's
RadialAttention) finds ToDo's wrapper put back on top of its function at the next model call. The image grid of
each call comes from the model's input, read by a forward pre-hook on the model instance. `remove()` restores the
name, or, where another extension wrapped it since, leaves ToDo's wrapper in that chain switched off.
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

from . import bias
from .config import MAX_DEPTH, ToDoConfig
from .joint import JointLayout, Segment, joint_plan, proportional_bias, reduce_keys_values, reduced_grid
from .passes import (
    PassState,
    ToDoHandle,
    ToDoHook,
    UnknownWindow,
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
    named `after_name` (reference latents, padding, or the text of an image-first model); `before` None holds
    whatever the attention call has beyond the rest (SD3's context, of a length only the call shows). A call of
    any other token count is not this sequence."""

    before: int | None
    grid: tuple[int, ...]
    after: int = 0
    after_name: str = "ref"

    def layout_for(self, tokens: int) -> JointLayout | None:
        image = math.prod(self.grid)
        before = tokens - image - self.after if self.before is None else self.before
        if before < 0 or before + image + self.after != tokens:
            return None
        segments = [Segment.kept(before, "text")] if before else []
        segments.append(Segment.image(self.grid))
        if self.after:
            segments.append(Segment.kept(self.after, self.after_name))
        return JointLayout(tuple(segments))


def _patches(size: int, patch: int) -> int:
    """Tokens along one side after the model pads it to the patch size: ceil(size / patch)."""
    return -(-size // patch)


def _input(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _references(model: nn.Module, kwargs: dict) -> list:
    """The reference latents the model appends after the image: its `ref_latents` argument (Neo 2.26), else the
    host's `dynamic_args["ref_latents"]` as the model's own module sees it (Kontext, Qwen-Image-Edit, Klein)."""
    given = kwargs.get("ref_latents")
    if given:
        return list(given)
    host_args = getattr(_own_module(model), "dynamic_args", None)
    return list(host_args.get("ref_latents") or ()) if host_args is not None else []


def _grid_tokens(latent: torch.Tensor, patch: int) -> tuple[int, int]:
    return _patches(latent.shape[-2], patch), _patches(latent.shape[-1], patch)


def _text_then_image_shapes(model: nn.Module, args: tuple, kwargs: dict) -> list[CallShape]:
    """Flux, Kontext, Flux.2 Klein and Chroma (backend/nn/flux.py and chroma.py forward) and Qwen-Image
    (backend/nn/qwen.py forward, on a (batch, channels, frames, height, width) latent): text, then the image at the
    model's patch size, then the reference latents patched alike. Klein's latent arrives packed (128 channels at
    patch 1, not 32 at 2): the patch embedder (where its layer tells its width) must take exactly the channels of
    one patch of the input, else the grid read would be another than the model's, and no call is taken for a
    joint one."""
    x, context = _input(args, kwargs, 0, "x"), _input(args, kwargs, 2, "context")
    patch = model.patch_size
    embeds = getattr(model.img_in, "in_features", None)
    if embeds is not None and embeds != x.shape[1] * patch * patch:
        return []
    references = sum(math.prod(_grid_tokens(ref, patch)) for ref in _references(model, kwargs))
    return [CallShape(context.shape[1], _grid_tokens(x, patch), references)]


def _krea_shapes(model: nn.Module, args: tuple, kwargs: dict) -> list[CallShape]:
    """Krea 2 (Neo 2.26 backend/nn/krea.py SingleStreamDiT.forward and _forward_with_refs): the fused text (one
    token per context row), then the image at `model.patch`, then its `ref_latents`, each patched alike; a video
    latent's frames are separate samples."""
    x, context = _input(args, kwargs, 0, "x"), _input(args, kwargs, 2, "context")
    text = context.squeeze(1).shape[1]
    references = sum(math.prod(_grid_tokens(ref, model.patch)) for ref in kwargs.get("ref_latents") or ())
    return [CallShape(text, _grid_tokens(x, model.patch), references)]


def _anima_shapes(model: nn.Module, args: tuple, kwargs: dict) -> list[CallShape]:
    """Anima (Neo 2.26 backend/nn/anima.py Anima.forward): self-attention over the image alone, its reference
    latents appended as further frames before patching (1 frame x 2 x 2 patches); one frame is an image grid."""
    x = _input(args, kwargs, 0, "x")
    frames = x.shape[2] + sum(ref.shape[2] for ref in _references(model, kwargs))
    grid = (_patches(frames, model.patch_temporal), *_grid_tokens(x, model.patch_spatial))
    return [CallShape(0, grid[1:] if grid[0] == 1 else grid, 0)]


def _ernie_shapes(model: nn.Module, args: tuple, kwargs: dict) -> list[CallShape]:
    """Ernie-Image (Neo 2.26 backend/nn/ernie.py ErnieImageModel.forward): the image FIRST, patched by a strided
    conv without padding (side // patch), then the text."""
    x, context = _input(args, kwargs, 0, "x"), _input(args, kwargs, 2, "context")
    patch = model.patch_size
    return [CallShape(0, (x.shape[-2] // patch, x.shape[-1] // patch), context.shape[1], "text")]


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
    """Where the `attention` that Flux's and Chroma's blocks call lives (flux.py, whose `attention_function` it
    calls): Neo 283cb2c4's Chroma has its blocks in chroma.py, importing `attention` from flux.py; Neo 2.26's
    imports flux.py's blocks and has no `attention` of its own."""
    blocks_home = sys.modules[type(model.double_blocks[0]).__module__]
    home = getattr(getattr(blocks_home, "attention", None), "__module__", None)
    return sys.modules.get(home, blocks_home)


@dataclass(frozen=True)
class Family:
    """How one kind of diffusion transformer attends: its classes, the function name its attention goes through
    (the first of `functions` its module has: names differ between host versions) and where it lives, its
    attention blocks in the order they run, and the joint sequences of a model call."""

    name: str
    classes: tuple[str, ...]
    functions: tuple[str, ...]
    home: Callable[[nn.Module], ModuleType]
    blocks: Callable[[nn.Module], list[nn.Module]]
    shapes: Callable[[nn.Module, tuple, dict], list[CallShape]]

    def function_in(self, home: ModuleType) -> str:
        return next((name for name in self.functions if callable(getattr(home, name, None))), self.functions[0])


FAMILIES = (
    Family("Flux", ("IntegratedFluxTransformer2DModel",), ("attention_function",), _flux_module,
           lambda model: [*model.double_blocks, *model.single_blocks], _text_then_image_shapes),
    Family("Chroma", ("IntegratedChromaTransformer2DModel",), ("attention_function",), _flux_module,
           lambda model: [*model.double_blocks, *model.single_blocks], _text_then_image_shapes),
    Family("Lumina 2 / Z-Image", ("NextDiT",), ("attention_function",), _own_module,
           lambda model: [*model.noise_refiner, *model.layers], _lumina_shapes),
    Family("Qwen-Image", ("QwenImageTransformer2DModel",), ("attention_function",), _own_module,
           lambda model: list(model.transformer_blocks), _text_then_image_shapes),
    Family("Wan", ("WanModel",), ("attention", "optimized_attention"), _own_module,
           lambda model: [block.self_attn for block in model.blocks], _wan_shapes),
    Family("Krea 2", ("SingleStreamDiT",), ("attention_function",), _own_module,
           lambda model: [block.attn for block in model.blocks], _krea_shapes),
    Family("Anima", ("Anima",), ("attention_function",), _own_module,
           lambda model: [block.self_attn for block in model.blocks], _anima_shapes),
    Family("Ernie-Image", ("ErnieImageModel",), ("attention_function",), _own_module,
           lambda model: list(model.layers), _ernie_shapes),
    Family("SD3", ("MMDiT", "MMDiTX"), ("attention",), _own_module,
           lambda model: list(model.joint_blocks), _mmdit_shapes),
)
"""Krea's attention sites are its blocks' `attn` (with references it calls them past the blocks' forward), its text
fusion's blocks none; Wan's and Anima's their self-attention, their cross-attention none."""


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
        self.sparse_from: int | None = None
        """The first block another extension's sparse attention takes this model call (Radial), None if none."""

    def begin_model_call(self, shapes: list[CallShape], sparse_from: int | None = None) -> None:
        self.shapes = shapes
        self.sparse_from = sparse_from
        self.position = None

    def layout_for(self, tokens: int) -> JointLayout | None:
        return next((layout for shape in self.shapes if (layout := shape.layout_for(tokens)) is not None), None)


def _reduced_arguments(state: _DiTState, backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       args: tuple, kwargs: dict) -> tuple | None:
    """For one joint attention call: the queries, the kept text and downsampled image keys and values, the call's
    arguments and what turns the host's output back into the call's (None where nothing does), with the
    proportional bias carried as `bias.route` says for the host's backend; None to leave the call exact. Every
    query stays."""
    heads_first = bool(kwargs.get("skip_reshape"))
    sequence_dim = 2 if heads_first else 1
    if q.shape[sequence_dim] != k.shape[sequence_dim] or state.position is None:
        return None
    depth = depth_of_position(state.position, state.blocks)
    if depth > state.config.max_depth:
        return None
    state.record.calls += 1
    if state.sits_out():
        return None
    if state.sparse_from is not None and state.position >= state.sparse_from:
        state.step_aside("radial")
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
    heads = args[0] if args else kwargs["heads"]
    head_dim = q.shape[-1] if heads_first else q.shape[-1] // heads
    mode, padded = bias.route(backend, q.device.type, head_dim)
    if mode == bias.MASK or _mask_of(args, kwargs) is not None:
        args, kwargs = _with_mask(args, kwargs, plan, q.dtype, q.shape[sequence_dim], mode == bias.MASK)
    if mode != bias.CHANNEL:
        state.record.carried_bias(mode)
        return q, k, v, args, kwargs, None
    q, k, v = bias.with_channel(q, k, v, plan.log_counts, heads, heads_first, padded)
    state.record.carried_bias(mode)
    output_heads_first = bool(kwargs.get("skip_output_reshape"))
    return q, k, v, args, kwargs, lambda out: bias.without_channel(out, heads, head_dim, output_heads_first)


def _mask_of(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return args[1] if len(args) > 1 else kwargs.get("mask")


def _with_mask(args: tuple, kwargs: dict, plan: Any, dtype: torch.dtype, queries: int,
               add_bias: bool) -> tuple[tuple, dict]:
    """The call's arguments with its mask (the argument after `heads`, or `mask=`) restricted to the kept keys and,
    with `add_bias`, the proportional bias added (the mask then, where the call had none). The mask is first
    brought to 4-D as the hosts' attention functions read it (2-D: (queries, keys); 3-D: (batch, queries, keys)),
    so that the bias, (1, 1, queries, keys), broadcasts over it rather than shifting its batch into the heads."""
    positional = len(args) > 1
    mask = _mask_of(args, kwargs)
    if mask is not None:
        mask = mask.index_select(-1, plan.index)
    if add_bias:
        bias_mask = proportional_bias(plan, dtype, queries)
        if mask is not None:
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, -torch.inf)
            if mask.dim() == 2:
                mask = mask.unsqueeze(0)
            if mask.dim() == 3:
                mask = mask.unsqueeze(1)
            bias_mask = mask + bias_mask
        mask = bias_mask
    if positional:
        return (args[0], mask, *args[2:]), kwargs
    return args, {**kwargs, "mask": mask}


def _wrapper(state: _DiTState, previous: Callable) -> Callable:
    backend = bias.host_backend(previous)

    def todo_attention(q, k, v, *args, **kwargs):
        restore = None
        if state.active and state.running and not todo_attention.retired and compiling():
            pass_through_traced()
        elif state.active and state.running and not todo_attention.retired:
            try:
                reduced = _reduced_arguments(state, backend, q, k, v, args, kwargs)
            except Exception:
                state.fail_over()
                reduced = None
            if reduced is not None:
                q, k, v, args, kwargs, restore = reduced
        out = previous(q, k, v, *args, **kwargs)
        return out if restore is None else restore(out)

    todo_attention.previous = previous
    todo_attention.state = state
    todo_attention.retired = False
    """Set where the attach put a newer wrapper on top (`_FunctionSwap.reclaim`): this one passes through."""
    setattr(todo_attention, WRAPPER_FLAG, True)
    return todo_attention


class _FunctionSwap:
    """ToDo's wrapper in place of a module-level function, for one attach. `remove()` puts the previous function
    back where ToDo's is still the name's value, and with it any switched-off ToDo wrapper that was under it (an
    attach of another model of the family, removed first); where another extension wrapped it since, ToDo's wrapper
    stays in their chain, switched off (its state is inactive), and a later attach unlinks it."""

    def __init__(self, home: ModuleType, name: str, state: _DiTState):
        self.home, self.name, self.state = home, name, state
        _unlink_inactive(home, name)
        self.wrapper = _wrapper(state, getattr(home, name))
        setattr(home, name, self.wrapper)

    def reclaim(self) -> Callable:
        """At each model call: where host code set the name to another function since (Neo 2.26's RadialAttention
        sets `wan.attention` to its sparse function or back to the one it captured at import, every step), put a
        new ToDo wrapper on top of that function, unless ToDo's is still in its chain. Returns the function under
        ToDo's wrapper."""
        current = getattr(self.home, self.name)
        if not _reaches(current, self.wrapper):
            self.wrapper.retired = True
            self.wrapper = _wrapper(self.state, current)
            setattr(self.home, self.name, self.wrapper)
        return self.wrapper.previous

    def remove(self) -> None:
        if getattr(self.home, self.name, None) is self.wrapper:
            setattr(self.home, self.name, self.wrapper.previous)
            _unlink_inactive(self.home, self.name)


def _reaches(function: Callable, target: Callable) -> bool:
    """Whether `target` is `function` or under it, following the `previous` links of wrappers that keep one (ToDo's,
    and other extensions' like them) and the `__wrapped__` that functools.wraps leaves."""
    seen = set()
    while function is not None and id(function) not in seen:
        if function is target:
            return True
        seen.add(id(function))
        function = getattr(function, "previous", None) or getattr(function, "__wrapped__", None)
    return False


def _sparse_from(options: dict | None, under: Callable) -> int | None:
    """Neo 2.26's RadialAttention (extensions-builtin/sd_forge_radial) puts, for the steps it is on, a
    functools.wraps wrapper of the function it captured at import on `wan.attention`, which sends the blocks from
    `transformer_options["radial_attn"]["dense_block"]` on to its block-sparse kernel (it asserts full-length keys
    and no mask): ToDo leaves those blocks to it. None where Radial is off, or dense this step."""
    radial = (options or {}).get("radial_attn")
    if radial is None or getattr(under, "__wrapped__", None) is None:
        return None
    return radial.get("dense_block", 0)


def _unlink_inactive(home: ModuleType, name: str) -> None:
    """Drop switched-off ToDo wrappers from the top of a function's chain (left there by a removal under another
    extension's wrapper)."""
    function = getattr(home, name)
    while getattr(function, WRAPPER_FLAG, False) and not function.state.active:
        function = function.previous
    setattr(home, name, function)


def _running_hooks(model: nn.Module, blocks: list[nn.Module], state: _DiTState, family: Family, swap: _FunctionSwap,
                   read_window: Callable[[tuple, dict], bool]) -> list[Any]:
    """Hooks on the instances that tell the wrapper when the attached model runs (and the joint sequences of its
    call, from its input) and which of its attention blocks is running; each model call puts ToDo's wrapper back
    on top of the function name where host code reassigned it."""

    def model_starts(module: nn.Module, args: tuple, kwargs: dict) -> None:
        state.running = True
        try:
            options = kwargs.get("transformer_options")
            under = swap.reclaim()
            state.begin_call(options, lambda: read_window(args, kwargs))
            state.begin_model_call(family.shapes(module, args, kwargs), _sparse_from(options, under))
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


def _no_window(_args: tuple, _kwargs: dict) -> bool:
    """DiTs take their timestep on each host's own scale: outside a WebUI the caller decides the step window per
    step (`handle.begin_step`); where it does not, the window is not applied, and the record says why."""
    raise UnknownWindow("no host decided the step, and a DiT's own timestep has no common scale")


def apply_dit(model: nn.Module, config: ToDoConfig, warned: set[str],
              read_window: Callable[[tuple, dict], bool] | None = None) -> ToDoHandle:
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
    function = family.function_in(home)
    if not callable(getattr(home, function, None)):
        raise UnsupportedModelError(f"ToDo: {home.__name__}.{function} is not there to attach to")
    state = _DiTState(model, config, warned, len(blocks))
    swap = _FunctionSwap(home, function, state)
    hooks = _running_hooks(model, blocks, state, family, swap, read_window or _no_window)
    return ToDoHandle(model, config, state, [*hooks, swap])


def remove_dit(model: nn.Module) -> None:
    """Switch off every ToDo wrapper of this model in its attention function's chain, whoever attached it (a copy
    of ToDo loaded before a UI reload included), and unlink those on top."""
    family = family_of(model)
    home = family.home(model) if family is not None else None
    name = family.function_in(home) if home is not None else None
    function = getattr(home, name, None) if home is not None else None
    if function is None:
        return
    while getattr(function, WRAPPER_FLAG, False):
        if function.state.model is model:
            function.state.active = False
        function = function.previous
    _unlink_inactive(home, name)
