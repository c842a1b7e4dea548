"""Random-weight DiT checkpoints and full-size random text encoders for a live Forge Neo 2.26 (upstream 2.26, as in
exo101/sd-webui-forge-neo-v3 5692d2d1, folder webui/), for tests/e2e/test_dit_e2e.py on CPU, offline; the host is
used as its users have it (nothing of it is patched or copied).

usage: <host venv>/bin/python make_random_neo_dit.py CKPT_DIR TEXT_ENCODER_DIR
           [--families flux,chroma,zimage,klein,krea2[,anima]] [--depth 1] [--single 1] [--te-dtype fp8|bf16]
           [--seed 0] [--force]
CKPT_DIR is the folder of the host's checkpoints (its models/Stable-diffusion), TEXT_ENCODER_DIR the folder of its
separate text encoders (models/text_encoder, listed under "VAE / Text Encoder"). Standard library, torch and
safetensors only (random_weights.py beside this file); files are written only into these two folders, tensor by
tensor, so memory stays low however large a file is.

What 2.26 reads (backend/loader.py, and the detection and model_list modules of its bundled huggingface_guess):
- The transformer under `model.diffusion_model.`, the VAE under `vae.`, text encoders under `text_encoders.`.
  2.26 counts the blocks of Flux, Chroma, Flux.2, Z-Image and Krea 2 from the file's keys and takes their widths
  from the embedders' shapes, so the transformers here are full width with few blocks.
- Text encoders are built from fixed configs, and a weight the file lacks is left uninitialised (no error; black
  or NaN images): they are written at full size. A separate file in TEXT_ENCODER_DIR is recognised by its keys and
  merged into the checkpoint's state dict when it is selected (UI "VAE / Text Encoder"; API
  `override_settings: {"forge_additional_modules": [file name]}`); without it, loading stops at an assert
  ("You do not have T5 state dict!" and the like). One T5 file serves Flux and Chroma, one Qwen3-4B file Z-Image
  and Klein.
- fp8 text encoders (the default) are stored as fp8 by the host and cast per layer, which halves their memory
  (T5-XXL 4.8 GB instead of 9.5 GB); --te-dtype bf16 writes them at 16 bits.

CKPT_DIR:
  flux-dev-random.safetensors      Flux.1-dev: --depth double and --single single blocks at 3072 (guidance_in:
                                   dev), CLIP-L (text_encoders.clip_l.transformer.*, 12 layers), the Flux VAE.
                                   Needs t5xxl-random.safetensors.
  chroma-random.safetensors        Chroma: the same blocks without modulations, the 5-layer approximator at 5120
                                   (distilled_guidance_layer.*), the Flux VAE. Needs t5xxl-random.safetensors.
  zimage-random.safetensors        Z-Image: NextDiT at 3840 (30 heads), --depth main layers, its 2 noise and 2
                                   context refiners, pad tokens (so pad_tokens_multiple 32), the Flux VAE.
                                   Needs qwen3-4b-random.safetensors.
  flux2-klein-4b-random.safetensors  Flux.2 Klein 4B: 3072 wide (24 heads), --depth double and --single single
                                   blocks, 128 latent channels at patch 1, context 7680 (three Qwen3-4B layers); the
                                   Flux.2 VAE (32 channels, quant convs, batch-norm statistics).
                                   Needs qwen3-4b-random.safetensors.
  krea2-random.safetensors         Krea 2: 12 heads of 128 (1536 wide; 3 key/value heads), 2 blocks (--depth + 1),
                                   its text fusion at Qwen3-VL's 2560 over 12 layers, the 2-D Qwen-Image VAE
                                   (post_quant_conv present). Needs qwen3-vl-4b-random.safetensors.
  anima-random.safetensors         Anima (only with --families ...,anima): the full 28 blocks of 2048 that 2.26
                                   fixes (2.1 B parameters, 4.2 GB), its LLM adapter (llm_adapter.*, which the host
                                   moves to the text encoder), the 2-D Qwen-Image VAE.
                                   Needs qwen3-0.6b-random.safetensors.
TEXT_ENCODER_DIR (full size):
  t5xxl-random.safetensors         T5-XXL encoder (24 blocks of 4096, 4.76 B parameters), as its own checkpoints
                                   name it (encoder.*, shared.weight).
  qwen3-4b-random.safetensors      Qwen3-4B (36 layers of 2560, 4.02 B), model.*.
  qwen3-vl-4b-random.safetensors   Qwen3-VL 4B: the same language model under model.language_model.* and its
                                   vision tower under model.visual.* (which the host recognises the file by).
  qwen3-0.6b-random.safetensors    Qwen3-0.6B (28 layers of 1024), model.*, for Anima.
Each file records what it holds in its metadata; a rerun keeps a file whose metadata matches (--force rewrites).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import random_weights as rw

FAMILIES = ("flux", "chroma", "zimage", "klein", "krea2", "anima")
DEFAULT_FAMILIES = FAMILIES[:-1]
CHECKPOINTS = {"flux": "flux-dev-random.safetensors", "chroma": "chroma-random.safetensors",
               "zimage": "zimage-random.safetensors", "klein": "flux2-klein-4b-random.safetensors",
               "krea2": "krea2-random.safetensors",
               "anima": "anima-random.safetensors"}
TEXT_ENCODERS = {"t5xxl": "t5xxl-random.safetensors", "qwen3_4b": "qwen3-4b-random.safetensors",
                 "qwen3_vl_4b": "qwen3-vl-4b-random.safetensors", "qwen3_06b": "qwen3-0.6b-random.safetensors"}
NEEDS = {"flux": "t5xxl", "chroma": "t5xxl", "zimage": "qwen3_4b", "klein": "qwen3_4b", "krea2": "qwen3_vl_4b",
         "anima": "qwen3_06b"}
VERSION = "1"
TE_DTYPES = {"fp8": torch.float8_e4m3fn, "bf16": torch.bfloat16}


def _checkpoint(family: str, depth: int, single: int) -> rw.Shapes:
    unet = "model.diffusion_model."
    if family == "flux":
        return {**rw.prefixed(unet, rw.flux(depth, single)),
                **rw.prefixed("text_encoders.clip_l.", rw.clip_text(768, 12, 3072)),
                **rw.prefixed("vae.", rw.ldm_vae())}
    if family == "chroma":
        return {**rw.prefixed(unet, rw.chroma(depth, single)), **rw.prefixed("vae.", rw.ldm_vae())}
    if family == "zimage":
        return {**rw.prefixed(unet, rw.z_image(depth)), **rw.prefixed("vae.", rw.ldm_vae())}
    if family == "klein":
        return {**rw.prefixed(unet, rw.flux2(depth, single)), **rw.prefixed("vae.", rw.flux_vae_parts())}
    if family == "krea2":
        return {**rw.prefixed(unet, rw.krea2(depth + 1, heads=12, kv_heads=3)),
                **rw.prefixed("vae.", rw.qwen_image_vae_2d())}
    if family == "anima":
        return {**rw.prefixed(unet, rw.anima()), **rw.prefixed("vae.", rw.qwen_image_vae_2d())}
    raise ValueError(family)


def _text_encoder(name: str) -> rw.Shapes:
    if name == "t5xxl":
        table = rw.t5_encoder(24)
        return {key.removeprefix("transformer."): shape for key, shape in table.items() if key != "logit_scale"}
    if name == "qwen3_4b":
        return rw.qwen3()
    if name == "qwen3_vl_4b":
        return {**rw.qwen3(prefix="model.language_model."), **rw.qwen3_vl_vision()}
    if name == "qwen3_06b":
        return rw.qwen3(28, 1024, 16, 8, 3072)
    raise ValueError(name)


# Norm weights random_tensor cannot tell by name: Z-Image's caption RMSNorm (cap_embedder.0) is 1; Krea 2's RMS
# norms keep `scale`, added to 1 in the forward pass, so 0 gives the unit norm torch would start from; the Flux.2
# VAE's batch-norm statistics are mean 0, variance 1.
FILLS = {"zimage": rw.fill_with_overrides(ones=("cap_embedder.0.weight",)), "klein": rw.fill_with_overrides(),
         "krea2": rw.fill_with_overrides(zeros=(".scale",))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint_dir")
    parser.add_argument("text_encoder_dir")
    parser.add_argument("--families", default=",".join(DEFAULT_FAMILIES))
    parser.add_argument("--depth", type=int, default=1, help="double blocks (Flux family), main layers (Z-Image)")
    parser.add_argument("--single", type=int, default=1, help="single blocks (Flux family)")
    parser.add_argument("--te-dtype", choices=sorted(TE_DTYPES), default="fp8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    families = [family for family in args.families.split(",") if family]
    unknown = set(families) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; known: {', '.join(FAMILIES)}")

    for name in dict.fromkeys(NEEDS[family] for family in families):
        path = os.path.join(args.text_encoder_dir, TEXT_ENCODERS[name])
        wanted = {"todo_random": name, "todo_random_version": VERSION, "dtype": args.te_dtype}
        rw.write_checkpoint_unless_present(path, lambda name=name: _text_encoder(name), TE_DTYPES[args.te_dtype],
                                           args.seed, wanted, f"random {name} at full size for Forge Neo 2.26",
                                           args.force, fill=rw.random_tensor)
    for family in families:
        path = os.path.join(args.checkpoint_dir, CHECKPOINTS[family])
        wanted = {"todo_random": family, "todo_random_version": VERSION, "depth": str(args.depth),
                  "single": str(args.single)}
        note = f"random {family} for Forge Neo 2.26; select {TEXT_ENCODERS[NEEDS[family]]} as its text encoder"
        rw.write_checkpoint_unless_present(path, lambda family=family: _checkpoint(family, args.depth, args.single),
                                           torch.bfloat16, args.seed, wanted, note, args.force,
                                           fill=FILLS.get(family, rw.random_tensor))


if __name__ == "__main__":
    main()
