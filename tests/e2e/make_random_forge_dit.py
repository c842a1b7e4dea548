"""Random-weight DiT checkpoints for a live WebUI Forge (lllyasviel/stable-diffusion-webui-forge dfdcbab6), for
tests/e2e/test_dit_e2e.py on CPU, offline; and the two patches of the host copy they need.

usage: <forge venv>/bin/python make_random_forge_dit.py FORGE_DIR OUT_DIR [--families flux,chroma,sd35]
           [--depth 1] [--single 1] [--t5-layers 2] [--seed 0] [--force]
FORGE_DIR is the host's tree (launch.py, backend/, repositories/huggingface_guess); OUT_DIR the folder its
--ckpt-dir names. Standard library, torch and safetensors only (random_weights.py beside this file). Each file
holds everything the host loads (bf16; Forge casts to its own dtypes), single-file layout:

  flux-dev-random.safetensors   (2.4 GiB) Flux.1-dev at full width, --depth double + --single single blocks:
      model.diffusion_model.*            backend/loader.py split_state_dict: huggingface_guess.guess() finds Flux by
                                         double_blocks.0.img_attn.norm.key_norm.scale, dev (not schnell) by
                                         guidance_in.in_layer.weight, and fixes the widths (3072, context 4096,
                                         vector 768); backend/nn/flux.py IntegratedFluxTransformer2DModel loads them
      text_encoders.clip_l.transformer.* model_list.Flux.clip_target -> text_encoder: IntegratedCLIP over
                                         CLIPTextModel, config backend/huggingface/black-forest-labs/FLUX.1-dev/
                                         text_encoder (CLIP-L, 12 layers)
      text_encoders.t5xxl.transformer.*  -> text_encoder_2: backend/nn/t5.py IntegratedT5, config .../FLUX.1-dev/
                                         text_encoder_2 (T5-XXL at --t5-layers blocks, see the patches)
      vae.*                              Flux.vae_key_prefix -> IntegratedAutoencoderKL, config .../FLUX.1-dev/vae
  chroma-random.safetensors     (2.3 GiB) Chroma: the same blocks without modulation layers, the
      distilled_guidance_layer that backend/loader.py's GuessChroma fixes (5 layers at 5120), no guidance_in (so
      the guess is FLUX.1-schnell, which forge_loader turns into Chroma by
      distilled_guidance_layer.layers.0.in_layer.bias), no vector_in; T5 (text_encoders.t5xxl.*, moved to
      text_encoder) and the VAE (vae.*); backend/nn/chroma.py IntegratedChromaTransformer2DModel.
  sd35-medium-random.safetensors (2.7 GiB) SD3.5 Medium layout: MMDiTX at 2 joint blocks, so 128 wide (the
      detection derives depth = x_embedder.proj.weight rows // 64 and the width from it), RMS qk-norm (ln_q), the
      image stream's second self-attention attn2 (backend/nn/mmditx.py gives every block below 13 one when
      pos_embed_max_size is 384, as pos_embed's 384x384 rows say); text_encoders.clip_l / clip_g (CLIP-G: 32
      layers, 1280) / t5xxl (--t5-layers) .transformer.* -> text_encoder, _2, _3
      (backend/diffusion_engine/sd35.py's clip_target), first_stage_model.* (SD3's VAE); model_list.SD3 ->
      StableDiffusion3. Its T5 only loads (forge_loader asserts a state dict for every text encoder): with the
      setting sd3_enable_t5 off (the default) the engine feeds zeros in its place. Loading it also loads SD3's
      tokenizer_3, whose tokenizer_config.json sets add_prefix_space, so transformers 4.46 rebuilds it from
      spiece.model through sentencepiece's protobuf module: sentencepiece 0.2.1 and later need protobuf 5, and
      Forge pins protobuf 3.20.0, so the load fails (ImportError: runtime_version) unless the host's python sees
      sentencepiece 0.2.0 (pip install sentencepiece==0.2.0 into its venv, or put it first on PYTHONPATH).
  FORGE_DIR/models/VAE-approx/vaeapprox-sd3.pt (with sd35; kept when present): a random VAEApprox for 16 latent
      channels. modules/sd_vae_approx.py loads it for the "Approx NN" live preview of SD3 models, which is on by
      default, and downloads it where it is missing: offline, every SD3 generation would fail (URLError).

Patches of the host copy (idempotent; each printed when made; undone by extracting the tree again):
  1. repositories/huggingface_guess/huggingface_guess/detection.py, detect_unet_config's Flux branch: `depth` 19
     and `depth_single_blocks` 38 become the counts of double_blocks.N / single_blocks.N in the state dict (as
     for the hosts' other DiTs). Forge builds the model from this config and leaves a weight missing from the file
     unloaded, so without the patch a reduced-depth Flux or Chroma fails at its first block, and a full-depth one
     (12 B parameters, 48 GB in fp32) does not fit a 24 GB machine.
  2. backend/huggingface/{black-forest-labs/FLUX.1-dev/text_encoder_2, black-forest-labs/FLUX.1-schnell/
     text_encoder_2, Chroma/text_encoder, stabilityai/stable-diffusion-3-medium-diffusers/text_encoder_3}/
     config.json: "num_layers" 24 -> --t5-layers. Forge builds T5-XXL from these configs (4.76 B parameters at
     24 layers) and Flux and Chroma encode every prompt with it (no setting turns it off); 2 blocks (518 M) keep
     its vocabulary and width, and forge_loader asserts more than 16 keys (one block has 13).
A real Flux, Chroma or SD3 file no longer loads on the patched copy; these files load only on it.
Each file records its layer counts in its metadata; a re-run keeps a file whose counts match (--force rewrites).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import random_weights as rw

T5_CONFIGS = ("black-forest-labs/FLUX.1-dev/text_encoder_2", "black-forest-labs/FLUX.1-schnell/text_encoder_2",
              "Chroma/text_encoder", "stabilityai/stable-diffusion-3-medium-diffusers/text_encoder_3")
DETECTION = "repositories/huggingface_guess/huggingface_guess/detection.py"
FIXED_DEPTHS = ('        dit_config["depth"] = 19\n', '        dit_config["depth_single_blocks"] = 38\n')
COUNTED_DEPTHS = (
    "        dit_config[\"depth\"] = count_blocks(state_dict_keys, '{}double_blocks.'.format(key_prefix) + '{}.')"
    "  # live-host patch: was 19\n",
    "        dit_config[\"depth_single_blocks\"] = count_blocks(state_dict_keys, '{}single_blocks.'.format(key_prefix)"
    " + '{}.')  # live-host patch: was 38\n",
)
NAMES = {"flux": "flux-dev-random.safetensors", "chroma": "chroma-random.safetensors",
         "sd35": "sd35-medium-random.safetensors"}
SD35_DEPTH = 2
SD35_POS_EMBED = 384
"""pos_embed_max_size 384 is what makes Forge's MMDiTX give blocks 0-12 attn2 (SD3.5 Medium)."""


def patch_detection(forge: str) -> None:
    path = os.path.join(forge, DETECTION)
    with open(path) as file:
        source = file.read()
    if all(line in source for line in COUNTED_DEPTHS):
        return
    assert all(source.count(line) == 1 for line in FIXED_DEPTHS), f"{path}: Flux's fixed depths not found"
    for fixed, counted in zip(FIXED_DEPTHS, COUNTED_DEPTHS, strict=True):
        source = source.replace(fixed, counted)
    with open(path, "w") as file:
        file.write(source)
    print(f"patched {DETECTION}: Flux depth and depth_single_blocks counted from the keys (were 19 and 38)")


def patch_t5_configs(forge: str, layers: int) -> None:
    for folder in T5_CONFIGS:
        path = os.path.join(forge, "backend", "huggingface", folder, "config.json")
        with open(path) as file:
            config = json.load(file)
        if config["num_layers"] != layers:
            print(f"patched backend/huggingface/{folder}/config.json: num_layers {config['num_layers']} -> {layers}")
            config["num_layers"] = layers
            with open(path, "w") as file:
                json.dump(config, file, indent=2)


def table_of(family: str, depth: int, single: int, t5_layers: int) -> rw.Shapes:
    t5 = rw.prefixed("text_encoders.t5xxl.", rw.t5_encoder(t5_layers))
    clip_l = rw.prefixed("text_encoders.clip_l.", rw.clip_text(768, 12, 3072))
    if family == "flux":
        return {**rw.prefixed("model.diffusion_model.", rw.flux(depth, single)), **clip_l, **t5,
                **rw.prefixed("vae.", rw.ldm_vae())}
    if family == "chroma":
        return {**rw.prefixed("model.diffusion_model.", rw.chroma(depth, single)), **t5,
                **rw.prefixed("vae.", rw.ldm_vae())}
    transformer = rw.mmdit(SD35_DEPTH, SD35_POS_EMBED, qk_norm=True, x_self_attention=tuple(range(13)))
    return {**rw.prefixed("model.diffusion_model.", transformer), **clip_l,
            **rw.prefixed("text_encoders.clip_g.", rw.clip_text(1280, 32, 5120)), **t5,
            **rw.prefixed("first_stage_model.", rw.ldm_vae())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("forge", help="the host's tree (with launch.py)")
    parser.add_argument("out", help="the folder the host's --ckpt-dir names")
    parser.add_argument("--families", default="flux,chroma,sd35")
    parser.add_argument("--depth", type=int, default=1, help="Flux/Chroma double blocks")
    parser.add_argument("--single", type=int, default=1, help="Flux/Chroma single blocks")
    parser.add_argument("--t5-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    families = [family for family in args.families.split(",") if family]
    assert set(families) <= set(NAMES), families
    assert args.depth >= 1 and args.single >= 0 and args.t5_layers >= 2
    forge = os.path.abspath(args.forge)
    assert os.path.isfile(os.path.join(forge, "launch.py")), f"no Forge tree at {forge}"

    if {"flux", "chroma"} & set(families):
        patch_detection(forge)
    patch_t5_configs(forge, args.t5_layers)

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    approx = os.path.join(forge, "models", "VAE-approx", "vaeapprox-sd3.pt")
    if "sd35" in families and not os.path.exists(approx):
        rw.write_torch_state_dict(approx, rw.vae_approx(16), args.seed)
        print(f"{approx}: random VAEApprox for 16 latent channels")
    for family in families:
        path = os.path.join(args.out, NAMES[family])
        wanted = {"family": family, "t5_layers": str(args.t5_layers)}
        wanted.update({"depth": str(SD35_DEPTH)} if family == "sd35" else
                      {"depth": str(args.depth), "single": str(args.single)})
        rw.write_checkpoint_unless_present(
            path, lambda family=family: table_of(family, args.depth, args.single, args.t5_layers), torch.bfloat16,
            args.seed, wanted, "random weights for ToDo's e2e tests on Forge dfdcbab6; not a model", args.force)


if __name__ == "__main__":
    main()
