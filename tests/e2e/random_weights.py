"""Random weights for the live-host fixture makers (make_random_forge_dit.py, make_random_a1111_sd3.py): the key ->
shape tables of the parts a host builds from fixed configs, filled the way torch initialises those layers, and
saved as one safetensors file. Standard library, torch and safetensors only: run with the host's venv python.

The tables follow the hosts' own classes (checked against them, instantiated on the meta device, in Forge
dfdcbab6 and A1111 v1.10.1): the ldm-layout VAE (Forge backend/nn/vae.py IntegratedAutoencoderKL, A1111
modules/models/sd3/sd3_impls.py SDVAE), the HF-layout CLIP text models (Forge IntegratedCLIP over transformers'
CLIPTextModel, A1111 other_impls.py CLIPTextModel), T5's encoder (Forge backend/nn/t5.py IntegratedT5), Flux and
Chroma (Forge backend/nn/flux.py, chroma.py) and MMDiT (Forge backend/nn/mmditx.py MMDiTX, A1111
modules/models/sd3/mmdit.py MMDiT). Random weights: the images are noise, which is all an end-to-end test of ToDo
needs (compare pixels and infotexts).
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
from collections.abc import Callable

import torch

Shapes = dict[str, tuple[int, ...]]


def _linear(table: Shapes, name: str, out_features: int, in_features: int, bias: bool = True) -> None:
    table[f"{name}.weight"] = (out_features, in_features)
    if bias:
        table[f"{name}.bias"] = (out_features,)


def _conv(table: Shapes, name: str, out_channels: int, in_channels: int, kernel: int) -> None:
    table[f"{name}.weight"] = (out_channels, in_channels, kernel, kernel)
    table[f"{name}.bias"] = (out_channels,)


def _norm(table: Shapes, name: str, width: int, bias: bool = True, key: str = "weight") -> None:
    table[f"{name}.{key}"] = (width,)
    if bias:
        table[f"{name}.bias"] = (width,)


def prefixed(prefix: str, table: Shapes) -> Shapes:
    return {prefix + key: shape for key, shape in table.items()}


def clip_text(width: int, layers: int, ffn: int, vocab: int = 49408, positions: int = 77) -> Shapes:
    """An HF CLIPTextModel under `transformer.` with a `text_projection` and the wrapper's `logit_scale` (CLIP-L:
    768, 12 layers, 3072; CLIP-G: 1280, 32 layers, 5120)."""
    table: Shapes = {"logit_scale": ()}
    text = "transformer.text_model"
    table[f"{text}.embeddings.token_embedding.weight"] = (vocab, width)
    table[f"{text}.embeddings.position_embedding.weight"] = (positions, width)
    for layer in range(layers):
        block = f"{text}.encoder.layers.{layer}"
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(table, f"{block}.self_attn.{projection}", width, width)
        _norm(table, f"{block}.layer_norm1", width)
        _linear(table, f"{block}.mlp.fc1", ffn, width)
        _linear(table, f"{block}.mlp.fc2", width, ffn)
        _norm(table, f"{block}.layer_norm2", width)
    _norm(table, f"{text}.final_layer_norm", width)
    _linear(table, "transformer.text_projection", width, width, bias=False)
    return table


def t5_encoder(layers: int, width: int = 4096, ffn: int = 10240, heads: int = 64, vocab: int = 32128,
               buckets: int = 32) -> Shapes:
    """T5 v1.1's encoder (gated GELU, relative attention bias in the first block), as T5-XXL at `layers` blocks."""
    table: Shapes = {"logit_scale": (), "transformer.shared.weight": (vocab, width)}
    for layer in range(layers):
        block = f"transformer.encoder.block.{layer}.layer"
        for projection in "qkvo":
            _linear(table, f"{block}.0.SelfAttention.{projection}", width, width, bias=False)
        if layer == 0:
            table[f"{block}.0.SelfAttention.relative_attention_bias.weight"] = (buckets, heads)
        _norm(table, f"{block}.0.layer_norm", width, bias=False)
        _linear(table, f"{block}.1.DenseReluDense.wi_0", ffn, width, bias=False)
        _linear(table, f"{block}.1.DenseReluDense.wi_1", ffn, width, bias=False)
        _linear(table, f"{block}.1.DenseReluDense.wo", width, ffn, bias=False)
        _norm(table, f"{block}.1.layer_norm", width, bias=False)
    _norm(table, "transformer.encoder.final_layer_norm", width, bias=False)
    return table


def ldm_vae(latent_channels: int = 16, channels: tuple[int, ...] = (128, 256, 512, 512), blocks: int = 2) -> Shapes:
    """The ldm AutoencoderKL without quant convs (SD3's and Flux's VAE: 16 latent channels)."""
    table: Shapes = {}

    def resnet(name: str, in_channels: int, out_channels: int) -> None:
        _norm(table, f"{name}.norm1", in_channels)
        _conv(table, f"{name}.conv1", out_channels, in_channels, 3)
        _norm(table, f"{name}.norm2", out_channels)
        _conv(table, f"{name}.conv2", out_channels, out_channels, 3)
        if in_channels != out_channels:
            _conv(table, f"{name}.nin_shortcut", out_channels, in_channels, 1)

    def middle(name: str, width: int) -> None:
        resnet(f"{name}.mid.block_1", width, width)
        _norm(table, f"{name}.mid.attn_1.norm", width)
        for projection in ("q", "k", "v", "proj_out"):
            _conv(table, f"{name}.mid.attn_1.{projection}", width, width, 1)
        resnet(f"{name}.mid.block_2", width, width)

    _conv(table, "encoder.conv_in", channels[0], 3, 3)
    width = channels[0]
    for level, out_width in enumerate(channels):
        for block in range(blocks):
            resnet(f"encoder.down.{level}.block.{block}", width, out_width)
            width = out_width
        if level < len(channels) - 1:
            _conv(table, f"encoder.down.{level}.downsample.conv", width, width, 3)
    middle("encoder", width)
    _norm(table, "encoder.norm_out", width)
    _conv(table, "encoder.conv_out", 2 * latent_channels, width, 3)

    _conv(table, "decoder.conv_in", channels[-1], latent_channels, 3)
    middle("decoder", channels[-1])
    width = channels[-1]
    for level in reversed(range(len(channels))):
        for block in range(blocks + 1):
            resnet(f"decoder.up.{level}.block.{block}", width, channels[level])
            width = channels[level]
        if level > 0:
            _conv(table, f"decoder.up.{level}.upsample.conv", width, width, 3)
    _norm(table, "decoder.norm_out", width)
    _conv(table, "decoder.conv_out", 3, width, 3)
    return table


def _flux_blocks(table: Shapes, depth: int, single: int, width: int, modulation: bool) -> None:
    head = 128
    for index in range(depth):
        block = f"double_blocks.{index}"
        for stream in ("img", "txt"):
            if modulation:
                _linear(table, f"{block}.{stream}_mod.lin", 6 * width, width)
            _linear(table, f"{block}.{stream}_attn.qkv", 3 * width, width)
            _norm(table, f"{block}.{stream}_attn.norm.query_norm", head, bias=False, key="scale")
            _norm(table, f"{block}.{stream}_attn.norm.key_norm", head, bias=False, key="scale")
            _linear(table, f"{block}.{stream}_attn.proj", width, width)
            _linear(table, f"{block}.{stream}_mlp.0", 4 * width, width)
            _linear(table, f"{block}.{stream}_mlp.2", width, 4 * width)
    for index in range(single):
        block = f"single_blocks.{index}"
        _linear(table, f"{block}.linear1", 3 * width + 4 * width, width)
        _linear(table, f"{block}.linear2", width, width + 4 * width)
        _norm(table, f"{block}.norm.query_norm", head, bias=False, key="scale")
        _norm(table, f"{block}.norm.key_norm", head, bias=False, key="scale")
        if modulation:
            _linear(table, f"{block}.modulation.lin", 3 * width, width)


def flux(depth: int, single: int, guidance: bool = True, width: int = 3072) -> Shapes:
    """Flux.1 at full width (3072, 24 heads of 128, T5 context 4096, CLIP-L vector 768) with `depth` double and
    `single` single blocks; `guidance` adds guidance_in (Flux.1-dev; without it the detection says schnell)."""
    table: Shapes = {}
    _linear(table, "img_in", width, 64)
    for embedder, in_features in (("time_in", 256), ("vector_in", 768), *((("guidance_in", 256),) if guidance else ())):
        _linear(table, f"{embedder}.in_layer", width, in_features)
        _linear(table, f"{embedder}.out_layer", width, width)
    _linear(table, "txt_in", width, 4096)
    _flux_blocks(table, depth, single, width, modulation=True)
    _linear(table, "final_layer.linear", 64, width)
    _linear(table, "final_layer.adaLN_modulation.1", 2 * width, width)
    return table


def chroma(depth: int, single: int, width: int = 3072, hidden: int = 5120, layers: int = 5) -> Shapes:
    """Chroma: Flux's blocks without their modulation layers, which the distilled_guidance_layer (an approximator
    of `layers` residual MLPs at `hidden`) computes for every block at once; no vector_in, no guidance_in."""
    table: Shapes = {}
    _linear(table, "img_in", width, 64)
    approximator = "distilled_guidance_layer"
    _linear(table, f"{approximator}.in_proj", hidden, 64)
    for layer in range(layers):
        _linear(table, f"{approximator}.layers.{layer}.in_layer", hidden, hidden)
        _linear(table, f"{approximator}.layers.{layer}.out_layer", hidden, hidden)
    for layer in range(layers):
        _norm(table, f"{approximator}.norms.{layer}", hidden, bias=False, key="scale")
    _linear(table, f"{approximator}.out_proj", width, hidden)
    _linear(table, "txt_in", width, 4096)
    _flux_blocks(table, depth, single, width, modulation=False)
    _linear(table, "final_layer.linear", 64, width)
    return table


def mmdit(depth: int, pos_embed_max_size: int, qk_norm: bool = False, x_self_attention: tuple[int, ...] = (),
          adm: int = 2048, context: int = 4096, patch: int = 2, channels: int = 16) -> Shapes:
    """SD3's MMDiT at `depth` joint blocks: the hosts derive the width from the patch embedder (64 * depth, `depth`
    heads of 64). The last block's context stream is pre-only (attention in, nothing out). `qk_norm` adds RMS
    ln_q/ln_k (SD3.5); `x_self_attention` lists the blocks whose image stream also runs its own self-attention
    attn2 (SD3.5 Medium)."""
    width = 64 * depth
    table: Shapes = {"pos_embed": (1, pos_embed_max_size**2, width)}
    _conv(table, "x_embedder.proj", width, channels, patch)
    _linear(table, "t_embedder.mlp.0", width, 256)
    _linear(table, "t_embedder.mlp.2", width, width)
    _linear(table, "y_embedder.mlp.0", width, adm)
    _linear(table, "y_embedder.mlp.2", width, width)
    _linear(table, "context_embedder", width, context)

    def attention(name: str, projection: bool = True) -> None:
        _linear(table, f"{name}.qkv", 3 * width, width)
        if projection:
            _linear(table, f"{name}.proj", width, width)
        if qk_norm:
            _norm(table, f"{name}.ln_q", 64, bias=False)
            _norm(table, f"{name}.ln_k", 64, bias=False)

    for index in range(depth):
        pre_only = index == depth - 1
        for stream in ("context_block", "x_block"):
            block = f"joint_blocks.{index}.{stream}"
            context_pre_only = pre_only and stream == "context_block"
            attention(f"{block}.attn", projection=not context_pre_only)
            if stream == "x_block" and index in x_self_attention:
                attention(f"{block}.attn2")
            if not context_pre_only:
                _linear(table, f"{block}.mlp.fc1", 4 * width, width)
                _linear(table, f"{block}.mlp.fc2", width, 4 * width)
            modulations = 2 if context_pre_only else 9 if stream == "x_block" and index in x_self_attention else 6
            _linear(table, f"{block}.adaLN_modulation.1", modulations * width, width)
    _linear(table, "final_layer.linear", patch * patch * channels, width)
    _linear(table, "final_layer.adaLN_modulation.1", 2 * width, width)
    return table


def vae_approx(latent_channels: int = 16) -> Shapes:
    """modules/sd_vae_approx.py's VAEApprox (the "Approx NN" live preview; A1111 and Forge download
    vaeapprox-sd3.pt on SD3's first generation with live previews on, which an offline host cannot)."""
    table: Shapes = {}
    widths = (latent_channels, 8, 16, 32, 64, 32, 16, 8, 3)
    kernels = (7, 5, 3, 3, 3, 3, 3, 3)
    for index, kernel in enumerate(kernels):
        _conv(table, f"conv{index + 1}", widths[index + 1], widths[index], kernel)
    return table


def _is_norm(key: str) -> bool:
    parts = key.split(".")[-3:-1]
    return any("norm" in part or part.startswith("ln_") for part in parts)


def _sincos_2d(side: int, width: int) -> torch.Tensor:
    """MMDiT's fixed 2-D sin-cos position table for a side x side grid (half the width per axis)."""
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, columns = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64),
                                   indexing="ij")

    def axis(position: torch.Tensor) -> torch.Tensor:
        angles = position.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([axis(columns), axis(rows)], dim=1).unsqueeze(0).float()


def random_tensor(key: str, shape: tuple[int, ...], table: Shapes) -> torch.Tensor:
    """What torch's own initialisation gives the layer: Linear and Conv weights and biases U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), embedding tables N(0, 1), norms 1 and 0; CLIP's logit_scale ln(100); MMDiT's position table
    its fixed sin-cos."""
    name = key.rsplit(".", 1)[-1]
    if name == "logit_scale":
        return torch.tensor(math.log(100.0))
    if name == "pos_embed":
        return _sincos_2d(math.isqrt(shape[1]), shape[2])
    if _is_norm(key):
        return torch.zeros(shape) if name == "bias" else torch.ones(shape)
    if key.endswith(("embedding.weight", "shared.weight", "relative_attention_bias.weight")):
        return torch.randn(shape)
    weight_shape = table.get(key[: -len("bias")] + "weight", shape) if name == "bias" else shape
    fan_in = math.prod(weight_shape[1:]) if len(weight_shape) > 1 else weight_shape[0]
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound)


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.float8_e4m3fn: "F8_E4M3"}


def write_checkpoint(path: str, table: Shapes, dtype: torch.dtype, seed: int, metadata: dict[str, str],
                     dtype_by_prefix: dict[str, torch.dtype] | None = None) -> None:
    """Fill `table` with random weights (torch.manual_seed(seed), keys in order) as `dtype` (or the dtype of the
    first `dtype_by_prefix` prefix a key starts with) and write it to `path` in the safetensors format one tensor at
    a time, so that a full-size text encoder never sits in memory whole; through a temporary file, so that a host
    never lists a half-written checkpoint."""
    dtypes = {key: next((kind for prefix, kind in (dtype_by_prefix or {}).items() if key.startswith(prefix)), dtype)
              for key in table}
    header: dict[str, object] = {"__metadata__": {"format": "pt", **metadata}}
    offset = 0
    for key, shape in table.items():
        size = math.prod(shape) * dtypes[key].itemsize
        header[key] = {"dtype": SAFETENSORS_DTYPES[dtypes[key]], "shape": list(shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    torch.manual_seed(seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded)
        for key, shape in table.items():
            values = random_tensor(key, shape, table)
            assert torch.isfinite(values).all(), key
            file.write(values.to(dtypes[key]).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            del values
    os.replace(temporary, path)


def write_checkpoint_unless_present(path: str, make_table: Callable[[], Shapes], dtype: torch.dtype, seed: int,
                                    wanted: dict[str, str], note: str, force: bool = False,
                                    dtype_by_prefix: dict[str, torch.dtype] | None = None) -> None:
    """Write the checkpoint `make_table` describes, unless `path` already holds one whose metadata has every
    `wanted` value (a rerun of a maker keeps it; `force` writes it anew). Prints what it did."""
    if not force and os.path.exists(path) and all(metadata_of(path).get(key) == value for key, value in wanted.items()):
        print(f"{path}: present with the same {', '.join(wanted)}, kept")
        return
    started = time.time()
    table = make_table()
    write_checkpoint(path, table, dtype, seed, {**wanted, "note": note}, dtype_by_prefix)
    print(f"{path}: {len(table)} keys, {parameters(table) / 1e6:.0f} M parameters, "
          f"{os.path.getsize(path) / 2**20:.0f} MiB, {time.time() - started:.0f} s")


def write_torch_state_dict(path: str, table: Shapes, seed: int) -> None:
    """`table` with random fp32 weights as a torch.save'd state dict (what torch.load reads back, weights only), in
    torch's legacy (non-zip) format: A1111 v1.10.1's modules/safe.py refuses a zip holding names that newer torch
    writes (.format_version, .storage_alignment), and reads the legacy format with its restricted unpickler."""
    torch.manual_seed(seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = path + ".tmp"
    torch.save({key: random_tensor(key, shape, table) for key, shape in table.items()}, temporary,
               _use_new_zipfile_serialization=False)
    os.replace(temporary, path)


def parameters(table: Shapes) -> int:
    return sum(math.prod(shape) for shape in table.values())


def metadata_of(path: str) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(path, "pt") as file:
        return file.metadata() or {}
