"""The DiT stand-ins (tests/dit_stub) as test cases, and ToDo's formula for a joint attention call written out
independently of the engine.

A case is a model with fixed inputs, the module and name its attention goes through, and what the test knows of
its joint sequences: the image grid, and the (before, after) token counts of each sequence its attention blocks
attend over (text or caption before the image; references or padding after it). Any other call of the function
(Lumina's context refiner, Wan's cross-attention) must stay exact.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType

import torch
from torch import nn

from todo_ext.bench.dit_stub import (
    a1111_mmdit,
    a1111_other_impls,
    forge_attention,
    forge_flux,
    forge_mmditx,
    neo226_anima,
    neo226_args,
    neo226_chroma,
    neo226_ernie,
    neo226_flux,
    neo226_krea,
    neo226_wan,
    neo_args,
    neo_attention,
    neo_chroma,
    neo_flux,
    neo_lumina,
    neo_qwen,
    neo_wan,
)

ATTENTION_NAMES = {
    neo_attention: "attention_function",
    forge_attention: "attention_function",
    forge_flux: "attention_function",
    neo_flux: "attention_function",
    neo_lumina: "attention_function",
    neo_qwen: "attention_function",
    neo_wan: "optimized_attention",
    neo226_flux: "attention_function",
    neo226_wan: "attention",
    neo226_krea: "attention_function",
    neo226_anima: "attention_function",
    neo226_ernie: "attention_function",
    forge_mmditx: "attention",
    a1111_other_impls: "attention",
    a1111_mmdit: "attention",
}
"""Every module-level attention name of the stand-ins: the test fixture puts them back after each test."""

TEXT = 8
LATENT = (7, 10)
"""An odd latent side, padded to patch 2: a 4x5 token grid whose last column's cells are smaller."""


def _patches(size: int, patch: int = 2) -> int:
    return -(-size // patch)


@dataclass
class Case:
    name: str
    model: nn.Module
    args: tuple
    kwargs: dict
    home: ModuleType
    function: str
    grid: tuple[int, ...]
    segments: tuple[tuple[int, int], ...]
    """(tokens before the image, tokens after it) of each joint sequence the attention blocks attend over."""
    kept: tuple[tuple[tuple[str, int], ...], ...]
    """What the K/V record names as kept in each of those sequences, in the same order."""
    references: list = field(default_factory=list)
    """Reference latents the host hands over in `dynamic_args["ref_latents"]` (Flux Kontext, Qwen-Image-Edit; on
    Neo 2.26 Flux.2 Klein and Anima)."""

    def run(self, model: nn.Module | None = None) -> torch.Tensor:
        with torch.no_grad(), references(self.references):
            return (self.model if model is None else model)(*self.args, **self.kwargs)

    def joint_layout(self, tokens: int) -> tuple[int, int] | None:
        """(before, after) of a joint sequence of `tokens` keys; None for a call that is no joint attention."""
        image = math.prod(self.grid)
        return next(((before, after) for before, after in self.segments if before + image + after == tokens), None)

    @property
    def attention(self) -> Callable:
        return getattr(self.home, self.function)


@contextlib.contextmanager
def references(latents: list) -> Iterator[None]:
    """`latents` as both Neo versions' `dynamic_args` reference latents for the run."""
    previous = neo_args.dynamic_args.get("ref_latents"), neo226_args.dynamic_args.ref_latents
    neo_args.dynamic_args["ref_latents"] = neo226_args.dynamic_args.ref_latents = latents
    try:
        yield
    finally:
        neo_args.dynamic_args["ref_latents"], neo226_args.dynamic_args.ref_latents = previous


def _seeded(seed: int = 0) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1)


def _text(batch: int, generator: torch.Generator, width: int = 16) -> torch.Tensor:
    return torch.randn(batch, TEXT, width, generator=generator)


def flux(batch: int = 2, latent=LATENT, kontext=None, seed: int = 0, host=neo_flux, **sizes) -> Case:
    """Neo's Flux (or Forge's: `host=forge_flux`); `kontext` the (height, width) of one reference latent (Flux
    Kontext, on Neo)."""
    generator = _seeded(seed)
    model = host.IntegratedFluxTransformer2DModel(**sizes).eval()
    refs = [] if kontext is None else [torch.randn(batch, 4, *kontext, generator=generator)]
    ref_tokens = sum(_patches(ref.shape[-2]) * _patches(ref.shape[-1]) for ref in refs)
    inputs = {"context": _text(batch, generator), "y": torch.randn(batch, 8, generator=generator)}
    kept = (("text", TEXT), ("ref", ref_tokens)) if refs else (("text", TEXT),)
    name = "flux-kontext" if refs else "flux" if host is neo_flux else "flux-forge"
    x = torch.randn(batch, 4, *latent, generator=generator)
    return Case(name, model, (x, torch.full((batch,), 0.5)), inputs, host, "attention_function",
                (_patches(latent[0]), _patches(latent[1])), ((TEXT, ref_tokens),), (kept,), refs)


def chroma(batch: int = 2, latent=LATENT, seed: int = 0) -> Case:
    generator = _seeded(seed)
    model = neo_chroma.IntegratedChromaTransformer2DModel().eval()
    return Case("chroma", model, (torch.randn(batch, 4, *latent, generator=generator), torch.full((batch,), 0.5),
                                  _text(batch, generator)), {}, neo_flux, "attention_function",
                (_patches(latent[0]), _patches(latent[1])), ((TEXT, 0),), ((("text", TEXT),),))


def lumina2(batch: int = 2, latent=LATENT, seed: int = 0) -> Case:
    """Lumina Image 2.0: grouped-query attention (1 key/value head for 2 query heads), no pad tokens."""
    generator = _seeded(seed)
    model = neo_lumina.NextDiT(n_heads=2, n_kv_heads=1, n_refiner_layers=1, n_layers=2).eval()
    return Case("lumina2", model, (torch.randn(batch, 4, *latent, generator=generator), torch.full((batch,), 0.3),
                                   _text(batch, generator)), {}, neo_lumina, "attention_function",
                (_patches(latent[0]), _patches(latent[1])), ((TEXT, 0), (0, 0)), ((("text", TEXT),), ()))


def zimage(batch: int = 2, latent=(12, 14), seed: int = 0) -> Case:
    """Z-Image: caption and image each padded to a multiple of 32 with pad tokens (8 -> 32, 6x7 = 42 -> 64)."""
    generator = _seeded(seed)
    model = neo_lumina.NextDiT(n_refiner_layers=1, n_layers=2, z_image_modulation=True, pad_tokens_multiple=32).eval()
    grid = (_patches(latent[0]), _patches(latent[1]))
    caption, image_pad = TEXT + (-TEXT) % 32, (-math.prod(grid)) % 32
    kept = ((("text", caption), ("pad", image_pad)), (("pad", image_pad),))
    return Case("zimage", model, (torch.randn(batch, 4, *latent, generator=generator), torch.full((batch,), 0.3),
                                  _text(batch, generator)), {}, neo_lumina, "attention_function", grid,
                ((caption, image_pad), (0, image_pad)), kept)


def qwen(batch: int = 2, latent=LATENT, edit=None, seed: int = 0, **sizes) -> Case:
    """Neo's Qwen-Image on a (batch, channels, 1, height, width) latent; `edit` the (height, width) of one
    Qwen-Image-Edit reference latent."""
    generator = _seeded(seed)
    model = neo_qwen.QwenImageTransformer2DModel(**sizes).eval()
    refs = [] if edit is None else [torch.randn(batch, 4, 1, *edit, generator=generator)]
    ref_tokens = sum(_patches(ref.shape[-2]) * _patches(ref.shape[-1]) for ref in refs)
    kept = (("text", TEXT), ("ref", ref_tokens)) if refs else (("text", TEXT),)
    return Case("qwen-edit" if refs else "qwen", model,
                (torch.randn(batch, 4, 1, *latent, generator=generator), torch.full((batch,), 0.5),
                 _text(batch, generator)), {}, neo_qwen, "attention_function",
                (_patches(latent[0]), _patches(latent[1])), ((TEXT, ref_tokens),), (kept,), refs)


def wan(batch: int = 2, frames: int = 3, latent=LATENT, concat_frames: int = 0, seed: int = 0) -> Case:
    """Neo's Wan on (batch, channels, frames, height, width); `concat_frames` more frames as `time_dim_concat`."""
    generator = _seeded(seed)
    model = neo_wan.WanModel().eval()
    kwargs = {}
    if concat_frames:
        kwargs["time_dim_concat"] = torch.randn(batch, 4, concat_frames, *latent, generator=generator)
    return Case("wan-concat" if concat_frames else "wan", model,
                (torch.randn(batch, 4, frames, *latent, generator=generator), torch.full((batch,), 500.0),
                 _text(batch, generator)), kwargs, neo_wan, "optimized_attention",
                (frames + concat_frames, _patches(latent[0]), _patches(latent[1])), ((0, 0),), ((),))


def sd35_forge(batch: int = 2, latent=(8, 10), seed: int = 0) -> Case:
    """Forge's MMDiTX as SD3.5 Medium: block 0 attends a second time over x alone."""
    generator = _seeded(seed)
    model = forge_mmditx.MMDiTX(depth=2, x_block_self_attn_layers=(0,)).eval()
    return Case("sd35-forge", model, (torch.randn(batch, 4, *latent, generator=generator), torch.full((batch,), 500.0)),
                {"y": torch.randn(batch, 8, generator=generator), "context": _text(batch, generator)}, forge_mmditx,
                "attention", (latent[0] // 2, latent[1] // 2), ((TEXT, 0), (0, 0)), ((("text", TEXT),), ()))


def sd3_a1111(batch: int = 2, latent=(8, 10), seed: int = 0) -> Case:
    """A1111's MMDiT with 2 register tokens before the text."""
    generator = _seeded(seed)
    model = a1111_mmdit.MMDiT(depth=2, register_length=2).eval()
    context = 2 + TEXT
    return Case("sd3-a1111", model, (torch.randn(batch, 4, *latent, generator=generator), torch.full((batch,), 500.0)),
                {"y": torch.randn(batch, 8, generator=generator), "context": _text(batch, generator)}, a1111_mmdit,
                "attention", (latent[0] // 2, latent[1] // 2), ((context, 0),), ((("text", context),),))


def flux226(batch: int = 2, latent=LATENT, kontext=None, seed: int = 0) -> Case:
    """Neo 2.26's Flux.1 with one Kontext reference latent of (height, width) `kontext` passed as `ref_latents=`."""
    generator = _seeded(seed)
    model = neo226_flux.IntegratedFluxTransformer2DModel().eval()
    kwargs = {"context": _text(batch, generator), "y": torch.randn(batch, 8, generator=generator)}
    refs = [] if kontext is None else [torch.randn(1, 4, *kontext, generator=generator)]
    if refs:
        kwargs["ref_latents"] = refs
    ref_tokens = sum(_patches(ref.shape[-2]) * _patches(ref.shape[-1]) for ref in refs)
    kept = (("text", TEXT), ("ref", ref_tokens)) if refs else (("text", TEXT),)
    return Case("kontext-226" if refs else "flux-226", model,
                (torch.randn(batch, 4, *latent, generator=generator), torch.full((batch,), 0.5)), kwargs,
                neo226_flux, "attention_function", (_patches(latent[0]), _patches(latent[1])), ((TEXT, ref_tokens),),
                (kept,))


def klein(batch: int = 2, latent=LATENT, reference=(4, 6), seed: int = 0) -> Case:
    """Neo 2.26's Flux.2 Klein: its latent arrives packed (8 channels here for 128) and is patched at 1, so the
    image grid is the latent's own; one reference latent in `dynamic_args` (as the Klein engine hands its img2img
    init latent), patched alike after the image."""
    generator = _seeded(seed)
    model = neo226_flux.IntegratedFluxTransformer2DModel(in_channels=8, out_channels=8, patch_size=1,
                                                         default_ref_method="index").eval()
    refs = [torch.randn(1, 8, *reference, generator=generator)]
    ref_tokens = math.prod(reference)
    return Case("klein", model, (torch.randn(batch, 8, *latent, generator=generator), torch.full((batch,), 0.5)),
                {"context": _text(batch, generator), "y": torch.randn(batch, 8, generator=generator)}, neo226_flux,
                "attention_function", latent, ((TEXT, ref_tokens),), ((("text", TEXT), ("ref", ref_tokens)),), refs)


def chroma226(batch: int = 2, latent=LATENT, seed: int = 0) -> Case:
    """Neo 2.26's Chroma: flux.py's blocks, so flux.py's `attention_function`."""
    generator = _seeded(seed)
    model = neo226_chroma.IntegratedChromaTransformer2DModel().eval()
    return Case("chroma-226", model, (torch.randn(batch, 4, *latent, generator=generator),
                                      torch.full((batch,), 0.5), _text(batch, generator)), {}, neo226_flux,
                "attention_function", (_patches(latent[0]), _patches(latent[1])), ((TEXT, 0),), ((("text", TEXT),),))


def wan226(batch: int = 2, frames: int = 3, latent=LATENT, num_layers: int = 2, seed: int = 0) -> Case:
    """Neo 2.26's Wan: the self-attention through the rebindable `attention`, the cross-attention past it."""
    generator = _seeded(seed)
    model = neo226_wan.WanModel(num_layers=num_layers).eval()
    return Case("wan-226", model, (torch.randn(batch, 4, frames, *latent, generator=generator),
                                   torch.full((batch,), 500.0), _text(batch, generator)), {}, neo226_wan, "attention",
                (frames, _patches(latent[0]), _patches(latent[1])), ((0, 0),), ((),))


def krea(batch: int = 2, latent=LATENT, reference=None, seed: int = 0) -> Case:
    """Neo 2.26's Krea 2: the context is (batch, text, 3 encoder layers x 16); `reference` the (height, width) of
    one `ref_latents` latent, after the image."""
    generator = _seeded(seed)
    model = neo226_krea.SingleStreamDiT().eval()
    kwargs = {}
    ref_tokens = 0
    if reference is not None:
        kwargs["ref_latents"] = [torch.randn(1, 4, *reference, generator=generator)]
        ref_tokens = _patches(reference[0]) * _patches(reference[1])
    kept = (("text", TEXT), ("ref", ref_tokens)) if ref_tokens else (("text", TEXT),)
    return Case("krea-ref" if ref_tokens else "krea", model,
                (torch.randn(batch, 4, *latent, generator=generator), torch.full((batch,), 0.5),
                 torch.randn(batch, TEXT, 3 * 16, generator=generator)), kwargs, neo226_krea, "attention_function",
                (_patches(latent[0]), _patches(latent[1])), ((TEXT, ref_tokens),), (kept,))


def anima(batch: int = 2, latent=LATENT, seed: int = 0) -> Case:
    """Neo 2.26's Anima on a one-frame (batch, channels, 1, height, width) latent: self-attention over the image
    alone, cross-attention to the text left exact."""
    generator = _seeded(seed)
    model = neo226_anima.Anima().eval()
    return Case("anima", model, (torch.randn(batch, 4, 1, *latent, generator=generator), torch.full((batch,), 0.5),
                                 _text(batch, generator)), {}, neo226_anima, "attention_function",
                (_patches(latent[0]), _patches(latent[1])), ((0, 0),), ((),))


def ernie(batch: int = 2, latent=LATENT, seed: int = 0) -> Case:
    """Neo 2.26's Ernie-Image: the image first (patch 1 on a packed latent), the text after it."""
    generator = _seeded(seed)
    model = neo226_ernie.ErnieImageModel().eval()
    return Case("ernie", model, (torch.randn(batch, 8, *latent, generator=generator), torch.full((batch,), 0.5),
                                 _text(batch, generator)), {}, neo226_ernie, "attention_function", latent,
                ((0, TEXT),), ((("text", TEXT),),))


BUILDERS = {
    "flux": flux,
    "flux-kontext": lambda **kw: flux(kontext=(6, 8), **kw),
    "flux-forge": lambda **kw: flux(host=forge_flux, **kw),
    "chroma": chroma,
    "lumina2": lumina2,
    "zimage": zimage,
    "qwen": qwen,
    "qwen-edit": lambda **kw: qwen(edit=(6, 6), **kw),
    "wan": wan,
    "wan-concat": lambda **kw: wan(concat_frames=2, **kw),
    "sd35-forge": sd35_forge,
    "sd3-a1111": sd3_a1111,
    "kontext-226": lambda **kw: flux226(kontext=(6, 8), **kw),
    "klein": klein,
    "chroma-226": chroma226,
    "wan-226": wan226,
    "krea": krea,
    "krea-ref": lambda **kw: krea(reference=(6, 6), **kw),
    "anima": anima,
    "ernie": ernie,
}


@dataclass
class Call:
    """One call of a module-level attention function as a wrapper saw it."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    args: tuple
    kwargs: dict
    out: torch.Tensor

    @property
    def sequence_dim(self) -> int:
        return 2 if self.kwargs.get("skip_reshape") else 1

    @property
    def heads(self) -> int:
        return self.args[0] if self.args else self.kwargs["heads"]

    @property
    def mask(self) -> torch.Tensor | None:
        return self.args[1] if len(self.args) > 1 else self.kwargs.get("mask")

    def heads_first(self, tensor: torch.Tensor) -> torch.Tensor:
        """(batch, heads, tokens, dim), whichever layout the host passed."""
        if self.kwargs.get("skip_reshape"):
            return tensor
        batch, tokens, inner = tensor.shape
        return tensor.view(batch, tokens, self.heads, inner // self.heads).transpose(1, 2)


class Recorder:
    """Another wrapper of a module-level attention function, as an extension would install one: it records every
    call it passes on (installed after ToDo it sees the full keys, installed before ToDo the reduced ones)."""

    def __init__(self, home: ModuleType, name: str):
        self.calls: list[Call] = []
        previous = getattr(home, name)

        def recording(q, k, v, *args, **kwargs):
            out = previous(q, k, v, *args, **kwargs)
            self.calls.append(Call(q, k, v, args, kwargs, out))
            return out

        recording.previous = previous
        self.function = recording
        setattr(home, name, recording)


def axis_cells(size: int, factor: int, method: str) -> list[tuple[int, int, int]]:
    """Along one axis, for an integer factor: (kept token, cell start, cell end) of each cell. The nearest methods
    cut the axis into runs of `factor` tokens (the last one shorter) and keep the first ("nearest") or middle
    ("nearest-exact") token of each; avg-pool's cells are adaptive average pooling's to ceil(size / factor)."""
    count = -(-size // factor)
    cells = []
    for i in range(count):
        if method == "avg-pool":
            start, end = i * size // count, -(-(i + 1) * size // count)
        else:
            start, end = i * factor, min((i + 1) * factor, size)
        kept = start if method == "nearest" else min(start + factor // 2, size - 1)
        cells.append((kept, start, end))
    return cells


def reduced_grid(grid: tuple[int, ...], factor: int) -> tuple[int, ...]:
    return (*grid[:-2], -(-grid[-2] // factor), -(-grid[-1] // factor))


def kept_positions(before: int, grid: tuple[int, ...], after: int, factor: int, method: str) -> list[int]:
    """Sequence positions of the keys the nearest methods keep: text, each frame's kept grid tokens, the rest."""
    rows, cols = grid[-2:]
    frames = math.prod(grid[:-2])
    image = [before + frame * rows * cols + row * cols + col
             for frame in range(frames)
             for row, _, _ in axis_cells(rows, factor, method)
             for col, _, _ in axis_cells(cols, factor, method)]
    start = before + frames * rows * cols
    return [*range(before), *image, *range(start, start + after)]


def reduced_keys_values(call: Call, before: int, grid: tuple[int, ...], after: int, factor: int,
                        method: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ToDo's [K_text; D(K_img); K_after], the same of V (heads first, float64), and each key's logit bias:
    log of its cell's token count for the image, 0 for the kept tokens."""
    rows, cols = grid[-2:]
    frames = math.prod(grid[:-2])
    row_cells, col_cells = axis_cells(rows, factor, method), axis_cells(cols, factor, method)
    bias = [0.0] * before
    for _frame in range(frames):
        bias += [math.log((r_end - r_start) * (c_end - c_start))
                 for _, r_start, r_end in row_cells for _, c_start, c_end in col_cells]
    bias += [0.0] * after

    def reduce(tensor: torch.Tensor) -> torch.Tensor:
        tensor = call.heads_first(tensor).double()
        image = tensor[:, :, before:before + frames * rows * cols].unflatten(2, (frames, rows, cols))
        if method == "avg-pool":
            cells = [image[:, :, :, r_start:r_end, c_start:c_end].mean(dim=(3, 4))
                     for _, r_start, r_end in row_cells for _, c_start, c_end in col_cells]
        else:
            cells = [image[:, :, :, row, col] for row, _, _ in row_cells for col, _, _ in col_cells]
        image = torch.stack(cells, dim=3).flatten(2, 3)
        return torch.cat([tensor[:, :, :before], image, tensor[:, :, before + frames * rows * cols:]], dim=2)

    return reduce(call.k), reduce(call.v), torch.tensor(bias, dtype=torch.float64)


def formula(call: Call, before: int, grid: tuple[int, ...], after: int, factor: int, method: str,
            with_bias: bool = True) -> torch.Tensor:
    """softmax(Q [K_text; D(K_img)]^T / sqrt(d) + bias) [V_text; D(V_img)], every query kept, as (batch, tokens,
    heads * dim); without the bias where `with_bias` is False (plain ToDo); a mask the host passed is taken at the
    kept keys (its 2-D form is (queries, keys), its 3-D form (batch, queries, keys))."""
    keys, values, bias = reduced_keys_values(call, before, grid, after, factor, method)
    queries = call.heads_first(call.q).double()
    logits = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
    if with_bias:
        logits = logits + bias
    mask = call.mask
    if mask is not None:
        positions = kept_positions(before, grid, after, factor, method)
        mask = mask[..., positions]
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, -math.inf)
        mask = mask.double()
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        logits = logits + mask
    out = logits.softmax(dim=-1) @ values
    return out.transpose(1, 2).flatten(2)


def assert_formula(call: Call, before: int, grid: tuple[int, ...], after: int, factor: int = 2,
                   method: str = "nearest", with_bias: bool = True) -> None:
    """The host's attention call returned ToDo's formula (computed in float64, so a float32 tolerance)."""
    torch.testing.assert_close(call.out.double(), formula(call, before, grid, after, factor, method, with_bias),
                               atol=2e-5, rtol=1e-4)


def todo_hooks(model: nn.Module) -> int:
    """ToDo's forward hooks (pre and post) on the model and its submodules."""
    return sum(getattr(hook, "is_todo_hook", False)
               for module in model.modules()
               for hooks in (module._forward_pre_hooks, module._forward_hooks)
               for hook in hooks.values())
