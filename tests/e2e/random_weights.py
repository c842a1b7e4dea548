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

import itertools
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


def flux_vae_parts(latent_channels: int = 32, packed: int = 4) -> Shapes:
    """Flux.2's VAE: the ldm AutoencoderKL at 32 latent channels with its 1x1 quant convs, and the batch-norm
    statistics (running mean and variance over the 2x2-packed 128 channels, no affine) that normalise its latent."""
    table = ldm_vae(latent_channels)
    _conv(table, "quant_conv", 2 * latent_channels, 2 * latent_channels, 1)
    _conv(table, "post_quant_conv", latent_channels, latent_channels, 1)
    table["bn.running_mean"] = (packed * latent_channels,)
    table["bn.running_var"] = (packed * latent_channels,)
    table["bn.num_batches_tracked"] = ()
    return table


def flux2(depth: int, single: int, width: int = 3072, context: int = 7680, channels: int = 128,
          mlp_ratio: float = 3.0) -> Shapes:
    """Flux.2 (Klein 4B: 3072 wide, 24 heads of 128, context 7680 = three Qwen3-4B layers of 2560, 128 latent
    channels at patch 1) with `depth` double and `single` single blocks: no bias anywhere, SwiGLU MLPs (a first
    linear of twice the hidden width), and three shared modulations in place of the per-block ones."""
    head = 128
    hidden = int(width * mlp_ratio)
    table: Shapes = {}
    _linear(table, "img_in", width, channels, bias=False)
    _linear(table, "time_in.in_layer", width, 256, bias=False)
    _linear(table, "time_in.out_layer", width, width, bias=False)
    _linear(table, "txt_in", width, context, bias=False)
    for index in range(depth):
        block = f"double_blocks.{index}"
        for stream in ("img", "txt"):
            _linear(table, f"{block}.{stream}_attn.qkv", 3 * width, width, bias=False)
            _norm(table, f"{block}.{stream}_attn.norm.query_norm", head, bias=False, key="scale")
            _norm(table, f"{block}.{stream}_attn.norm.key_norm", head, bias=False, key="scale")
            _linear(table, f"{block}.{stream}_attn.proj", width, width, bias=False)
            _linear(table, f"{block}.{stream}_mlp.0", 2 * hidden, width, bias=False)
            _linear(table, f"{block}.{stream}_mlp.2", width, hidden, bias=False)
    for index in range(single):
        block = f"single_blocks.{index}"
        _linear(table, f"{block}.linear1", 3 * width + 2 * hidden, width, bias=False)
        _linear(table, f"{block}.linear2", width, width + hidden, bias=False)
        _norm(table, f"{block}.norm.query_norm", head, bias=False, key="scale")
        _norm(table, f"{block}.norm.key_norm", head, bias=False, key="scale")
    _linear(table, "final_layer.linear", channels, width, bias=False)
    _linear(table, "final_layer.adaLN_modulation.1", 2 * width, width, bias=False)
    _linear(table, "double_stream_modulation_img.lin", 6 * width, width, bias=False)
    _linear(table, "double_stream_modulation_txt.lin", 6 * width, width, bias=False)
    _linear(table, "single_stream_modulation.lin", 3 * width, width, bias=False)
    return table


def z_image(layers: int, width: int = 3840, caption: int = 2560, ffn: int = 10240, refiners: int = 2,
            patch: int = 2, channels: int = 16) -> Shapes:
    """Z-Image's NextDiT at full width (3840, 30 heads of 128 for queries and keys alike, Qwen3-4B captions of 2560)
    with `layers` main layers and its two noise and two context refiners; pad tokens for caption and image. The
    adaLN inputs are the 256-wide time embedding; the context refiners have none."""
    head = 128
    table: Shapes = {}
    _linear(table, "x_embedder", width, patch * patch * channels)

    def block(name: str, modulation: bool) -> None:
        _linear(table, f"{name}.attention.qkv", 3 * width, width, bias=False)
        _linear(table, f"{name}.attention.out", width, width, bias=False)
        _norm(table, f"{name}.attention.q_norm", head, bias=False)
        _norm(table, f"{name}.attention.k_norm", head, bias=False)
        _linear(table, f"{name}.feed_forward.w1", ffn, width, bias=False)
        _linear(table, f"{name}.feed_forward.w2", width, ffn, bias=False)
        _linear(table, f"{name}.feed_forward.w3", ffn, width, bias=False)
        for norm in ("attention_norm1", "ffn_norm1", "attention_norm2", "ffn_norm2"):
            _norm(table, f"{name}.{norm}", width, bias=False)
        if modulation:
            _linear(table, f"{name}.adaLN_modulation.0", 4 * width, 256)

    for index in range(refiners):
        block(f"noise_refiner.{index}", modulation=True)
    for index in range(refiners):
        block(f"context_refiner.{index}", modulation=False)
    _linear(table, "t_embedder.mlp.0", 1024, 256)
    _linear(table, "t_embedder.mlp.2", 256, 1024)
    _norm(table, "cap_embedder.0", caption, bias=False)
    _linear(table, "cap_embedder.1", width, caption)
    for index in range(layers):
        block(f"layers.{index}", modulation=True)
    _linear(table, "final_layer.linear", patch * patch * channels, width)
    _linear(table, "final_layer.adaLN_modulation.1", width, 256)
    table["x_pad_token"] = (1, width)
    table["cap_pad_token"] = (1, width)
    return table


def qwen3(layers: int = 36, width: int = 2560, heads: int = 32, kv_heads: int = 8, ffn: int = 9728,
          vocab: int = 151936, prefix: str = "model.") -> Shapes:
    """A Qwen3 decoder (Qwen3-4B's sizes by default: 36 layers of 2560, 32 query and 8 key/value heads of 128, RMS
    q/k norms, SwiGLU of 9728), as its own checkpoints name it under `prefix`; no lm_head (the hosts skip it)."""
    head = 128
    table: Shapes = {f"{prefix}embed_tokens.weight": (vocab, width)}
    for layer in range(layers):
        block = f"{prefix}layers.{layer}"
        _linear(table, f"{block}.self_attn.q_proj", heads * head, width, bias=False)
        _linear(table, f"{block}.self_attn.k_proj", kv_heads * head, width, bias=False)
        _linear(table, f"{block}.self_attn.v_proj", kv_heads * head, width, bias=False)
        _linear(table, f"{block}.self_attn.o_proj", width, heads * head, bias=False)
        _norm(table, f"{block}.self_attn.q_norm", head, bias=False)
        _norm(table, f"{block}.self_attn.k_norm", head, bias=False)
        _linear(table, f"{block}.mlp.gate_proj", ffn, width, bias=False)
        _linear(table, f"{block}.mlp.up_proj", ffn, width, bias=False)
        _linear(table, f"{block}.mlp.down_proj", width, ffn, bias=False)
        _norm(table, f"{block}.input_layernorm", width, bias=False)
        _norm(table, f"{block}.post_attention_layernorm", width, bias=False)
    _norm(table, f"{prefix}norm", width, bias=False)
    return table


def qwen3_vl_vision(width: int = 1024, depth: int = 24, ffn: int = 4096, out: int = 2560, patch: int = 16,
                    frames: int = 2, positions: int = 2304, merge: int = 2, deepstack: int = 3,
                    prefix: str = "model.visual.") -> Shapes:
    """Qwen3-VL 4B's vision tower (24 blocks of 1024, 16 heads; patches of 2x16x16, a 2x2 merger into the language
    model's 2560, three deepstack mergers), as Qwen3-VL's own checkpoints name it under `prefix`. Text-to-image
    never runs it; the hosts build it with the text encoder and recognise a separate Qwen3-VL file by it."""
    merged = width * merge * merge
    table: Shapes = {f"{prefix}patch_embed.proj.weight": (width, 3, frames, patch, patch),
                     f"{prefix}patch_embed.proj.bias": (width,),
                     f"{prefix}pos_embed.weight": (positions, width)}
    for index in range(depth):
        block = f"{prefix}blocks.{index}"
        _norm(table, f"{block}.norm1", width)
        _norm(table, f"{block}.norm2", width)
        _linear(table, f"{block}.attn.qkv", 3 * width, width)
        _linear(table, f"{block}.attn.proj", width, width)
        _linear(table, f"{block}.mlp.linear_fc1", ffn, width)
        _linear(table, f"{block}.mlp.linear_fc2", width, ffn)
    _norm(table, f"{prefix}merger.norm", width)
    _linear(table, f"{prefix}merger.linear_fc1", merged, merged)
    _linear(table, f"{prefix}merger.linear_fc2", out, merged)
    for index in range(deepstack):
        _norm(table, f"{prefix}deepstack_merger_list.{index}.norm", merged)
        _linear(table, f"{prefix}deepstack_merger_list.{index}.linear_fc1", merged, merged)
        _linear(table, f"{prefix}deepstack_merger_list.{index}.linear_fc2", out, merged)
    return table


def krea2(layers: int, heads: int, kv_heads: int, text_layers: int = 12, text_width: int = 2560,
          text_heads: int = 20, channels: int = 16, patch: int = 2, multiplier: int = 4) -> Shapes:
    """Krea 2's single-stream DiT at `heads` x 128 wide (the real one: 48 heads, 12 key/value heads, 28 layers) with
    `layers` blocks; its text fusion over `text_layers` Qwen3-VL hidden states of `text_width` (two blocks across
    the layers of each token, a learned mix of the layers, two blocks across the tokens). RMS norms keep a `scale`
    that is added to 1; gated attention; SwiGLU rounded up to a multiple of 128; no biases but in the embedders and
    the last linear."""
    head = 128
    width = heads * head

    def swiglu_width(features: int) -> int:
        hidden = int(2 * features / 3) * multiplier
        return 128 * -(-hidden // 128)

    def attention_block(table: Shapes, name: str, features: int, query_heads: int, key_heads: int) -> None:
        table[f"{name}.prenorm.scale"] = (features,)
        table[f"{name}.postnorm.scale"] = (features,)
        _linear(table, f"{name}.attn.wq", query_heads * head, features, bias=False)
        _linear(table, f"{name}.attn.wk", key_heads * head, features, bias=False)
        _linear(table, f"{name}.attn.wv", key_heads * head, features, bias=False)
        _linear(table, f"{name}.attn.gate", features, features, bias=False)
        table[f"{name}.attn.qknorm.qnorm.scale"] = (head,)
        table[f"{name}.attn.qknorm.knorm.scale"] = (head,)
        _linear(table, f"{name}.attn.wo", features, features, bias=False)
        hidden = swiglu_width(features)
        _linear(table, f"{name}.mlp.gate", hidden, features, bias=False)
        _linear(table, f"{name}.mlp.up", hidden, features, bias=False)
        _linear(table, f"{name}.mlp.down", features, hidden, bias=False)

    table: Shapes = {}
    _linear(table, "first", width, channels * patch * patch)
    for index in range(layers):
        table[f"blocks.{index}.mod.lin"] = (6 * width,)
        attention_block(table, f"blocks.{index}", width, heads, kv_heads)
    _linear(table, "tmlp.0", width, 256)
    _linear(table, "tmlp.2", width, width)
    for index in range(2):
        attention_block(table, f"txtfusion.layerwise_blocks.{index}", text_width, text_heads, text_heads)
    table["txtfusion.projector.weight"] = (1, text_layers)
    for index in range(2):
        attention_block(table, f"txtfusion.refiner_blocks.{index}", text_width, text_heads, text_heads)
    table["txtmlp.0.scale"] = (text_width,)
    _linear(table, "txtmlp.1", width, text_width)
    _linear(table, "txtmlp.3", width, width)
    table["last.norm.scale"] = (width,)
    _linear(table, "last.linear", patch * patch * channels, width)
    table["last.modulation.lin"] = (2, width)
    _linear(table, "tproj.1", 6 * width, width)
    return table


def qwen_image_vae_2d(base: int = 96, latent_channels: int = 16, multipliers: tuple[int, ...] = (1, 2, 4, 4),
                      blocks: int = 2) -> Shapes:
    """Qwen-Image's VAE in its 2-D form (the Wan 2.1 VAE without the time axis): RMS norms with a `gamma` of shape
    (channels, 1, 1), residual blocks with 1x1 shortcuts where the width changes, one attention block in each middle
    block, stride-2 convs down and nearest upsampling with a conv that halves the width up; 1x1 quant convs."""
    table: Shapes = {}

    def norm(name: str, width: int) -> None:
        table[f"{name}.gamma"] = (width, 1, 1)

    def residual(name: str, in_width: int, out_width: int) -> None:
        norm(f"{name}.norm1", in_width)
        _conv(table, f"{name}.conv1", out_width, in_width, 3)
        norm(f"{name}.norm2", out_width)
        _conv(table, f"{name}.conv2", out_width, out_width, 3)
        if in_width != out_width:
            _conv(table, f"{name}.conv_shortcut", out_width, in_width, 1)

    def middle(name: str, width: int) -> None:
        residual(f"{name}.resnets.0", width, width)
        norm(f"{name}.attentions.0.norm", width)
        _conv(table, f"{name}.attentions.0.to_qkv", 3 * width, width, 1)
        _conv(table, f"{name}.attentions.0.proj", width, width, 1)
        residual(f"{name}.resnets.1", width, width)

    widths = [base * multiplier for multiplier in (1, *multipliers)]
    _conv(table, "encoder.conv_in", widths[0], 3, 3)
    index = 0
    for level, (in_width, out_width) in enumerate(itertools.pairwise(widths)):
        for _ in range(blocks):
            residual(f"encoder.down_blocks.{index}", in_width, out_width)
            in_width = out_width
            index += 1
        if level != len(multipliers) - 1:
            _conv(table, f"encoder.down_blocks.{index}.resample.1", out_width, out_width, 3)
            index += 1
    middle("encoder.mid_block", widths[-1])
    norm("encoder.norm_out", widths[-1])
    _conv(table, "encoder.conv_out", 2 * latent_channels, widths[-1], 3)
    _conv(table, "quant_conv", 2 * latent_channels, 2 * latent_channels, 1)
    _conv(table, "post_quant_conv", latent_channels, latent_channels, 1)

    widths = [base * multiplier for multiplier in (multipliers[-1], *reversed(multipliers))]
    _conv(table, "decoder.conv_in", widths[0], latent_channels, 3)
    middle("decoder.mid_block", widths[0])
    for level, (in_width, out_width) in enumerate(itertools.pairwise(widths)):
        if level > 0:
            in_width //= 2
        for block in range(blocks + 1):
            residual(f"decoder.up_blocks.{level}.resnets.{block}", in_width, out_width)
            in_width = out_width
        if level != len(multipliers) - 1:
            _conv(table, f"decoder.up_blocks.{level}.upsamplers.0.resample.1", out_width // 2, out_width, 3)
    norm("decoder.norm_out", widths[-1])
    _conv(table, "decoder.conv_out", 3, widths[-1], 3)
    return table


def anima(blocks: int = 28, width: int = 2048, heads: int = 16, context: int = 1024, lora: int = 256,
          channels: int = 16, patch: int = 2) -> Shapes:
    """Anima's Cosmos-style DiT at the size the hosts fix (28 blocks of 2048, 16 heads of 128; 2.1 B parameters):
    per block an image-only self-attention, a cross-attention to the 1024-wide text, a GELU MLP, each with an
    adaLN-LoRA modulation (width -> 256 -> 3 x width); the patch embedder takes the latent plus a padding-mask
    channel. No biases. Then its LLM adapter (6 blocks of 1024 from Qwen3-0.6B's hidden states to the T5 vocabulary's
    embedding), which the hosts move into the text encoder."""
    head = width // heads
    table: Shapes = {}
    _linear(table, "x_embedder.proj.1", width, (channels + 1) * patch * patch, bias=False)
    _linear(table, "t_embedder.1.linear_1", width, width, bias=False)
    _linear(table, "t_embedder.1.linear_2", 3 * width, width, bias=False)
    _norm(table, "t_embedding_norm", width, bias=False)

    def attention(name: str, keys_from: int) -> None:
        _linear(table, f"{name}.q_proj", width, width, bias=False)
        _norm(table, f"{name}.q_norm", head, bias=False)
        _linear(table, f"{name}.k_proj", width, keys_from, bias=False)
        _norm(table, f"{name}.k_norm", head, bias=False)
        _linear(table, f"{name}.v_proj", width, keys_from, bias=False)
        _linear(table, f"{name}.output_proj", width, width, bias=False)

    def modulation(name: str, chunks: int) -> None:
        _linear(table, f"{name}.1", lora, width, bias=False)
        _linear(table, f"{name}.2", chunks * width, lora, bias=False)

    for index in range(blocks):
        block = f"blocks.{index}"
        attention(f"{block}.self_attn", width)
        attention(f"{block}.cross_attn", context)
        _linear(table, f"{block}.mlp.layer1", 4 * width, width, bias=False)
        _linear(table, f"{block}.mlp.layer2", width, 4 * width, bias=False)
        for part in ("self_attn", "cross_attn", "mlp"):
            modulation(f"{block}.adaln_modulation_{part}", 3)
    _linear(table, "final_layer.linear", patch * patch * channels, width, bias=False)
    modulation("final_layer.adaln_modulation", 2)

    adapter, model_width, adapter_head = "llm_adapter", 1024, 64
    table[f"{adapter}.embed.weight"] = (32128, model_width)
    for index in range(6):
        block = f"{adapter}.blocks.{index}"
        for part in ("self_attn", "cross_attn"):
            _norm(table, f"{block}.norm_{part}", model_width, bias=False)
            for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
                _linear(table, f"{block}.{part}.{projection}", model_width, model_width, bias=False)
            _norm(table, f"{block}.{part}.q_norm", adapter_head, bias=False)
            _norm(table, f"{block}.{part}.k_norm", adapter_head, bias=False)
        _norm(table, f"{block}.norm_mlp", model_width, bias=False)
        _linear(table, f"{block}.mlp.0", 4 * model_width, model_width)
        _linear(table, f"{block}.mlp.2", model_width, 4 * model_width)
    _linear(table, f"{adapter}.out_proj", model_width, model_width)
    _norm(table, f"{adapter}.norm", model_width, bias=False)
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
                      torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64"}
Fill = Callable[[str, tuple[int, ...], Shapes], torch.Tensor]


def fill_with_overrides(ones: tuple[str, ...] = (), zeros: tuple[str, ...] = ()) -> Fill:
    """random_tensor, except that keys ending with one of `ones` are 1 and with one of `zeros` 0 (norm weights that
    random_tensor cannot tell by name, and norms whose weight is stored as an offset from 1). Batch-norm statistics
    are mean 0, variance 1, no batches tracked."""

    def fill(key: str, shape: tuple[int, ...], table: Shapes) -> torch.Tensor:
        if key.endswith("num_batches_tracked"):
            return torch.zeros(shape, dtype=torch.int64)
        if key.endswith(("running_var", *ones)):
            return torch.ones(shape)
        if key.endswith(("running_mean", *zeros)):
            return torch.zeros(shape)
        return random_tensor(key, shape, table)

    return fill


def write_checkpoint(path: str, table: Shapes, dtype: torch.dtype, seed: int, metadata: dict[str, str],
                     dtype_by_prefix: dict[str, torch.dtype] | None = None, fill: Fill = random_tensor) -> None:
    """Fill `table` with `fill` (random weights by default; torch.manual_seed(seed), keys in order) as `dtype` (or
    the dtype of the first `dtype_by_prefix` prefix a key starts with; batch-norm counters as int64) and write it to
    `path` in the safetensors format one tensor at a time, so that a full-size text encoder never sits in memory
    whole; through a temporary file, so that a host never lists a half-written checkpoint."""
    prefixes = dtype_by_prefix or {}
    dtypes = {key: torch.int64 if key.endswith("num_batches_tracked")
              else next((kind for prefix, kind in prefixes.items() if key.startswith(prefix)), dtype)
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
            values = fill(key, shape, table)
            assert tuple(values.shape) == tuple(shape) and torch.isfinite(values.float()).all(), key
            file.write(values.to(dtypes[key]).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            del values
    os.replace(temporary, path)


def write_checkpoint_unless_present(path: str, make_table: Callable[[], Shapes], dtype: torch.dtype, seed: int,
                                    wanted: dict[str, str], note: str, force: bool = False,
                                    dtype_by_prefix: dict[str, torch.dtype] | None = None,
                                    fill: Fill = random_tensor) -> None:
    """Write the checkpoint `make_table` describes, unless `path` already holds one whose metadata has every
    `wanted` value (a rerun of a maker keeps it; `force` writes it anew). Prints what it did."""
    if not force and os.path.exists(path) and all(metadata_of(path).get(key) == value for key, value in wanted.items()):
        print(f"{path}: present with the same {', '.join(wanted)}, kept")
        return
    started = time.time()
    table = make_table()
    write_checkpoint(path, table, dtype, seed, {**wanted, "note": note}, dtype_by_prefix, fill)
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
