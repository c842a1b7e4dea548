"""A random-weight SD3.5 Medium checkpoint that an unmodified WebUI Forge (lllyasviel/stable-diffusion-webui-forge
dfdcbab6) loads, for tests/e2e/test_dit_e2e.py on CPU, offline. It writes checkpoints only: nothing of the host is
read or written.

usage: <forge venv>/bin/python make_random_forge_dit.py OUT_DIR --vae-approx FILE [--seed 0] [--force]
OUT_DIR is a folder the host lists checkpoints from (its --ckpt-dir, or its models/Stable-diffusion); FILE the
VAEApprox file to write (see below). Standard library, torch and safetensors only (random_weights.py beside this
file).

  sd35-medium-random.safetensors (about 8 GiB: 3.5 GiB of bf16, 4.4 GiB of fp8) SD3.5 Medium's layout:
      model.diffusion_model.*            MMDiTX at 2 joint blocks, so 128 wide: Forge's detection derives depth
                                         from x_embedder.proj.weight (rows // 64) and the width from the depth, and
                                         the position table's side from pos_embed (384 x 384 rows, which gives
                                         every block below 13 the image stream's second self-attention attn2, as
                                         SD3.5 Medium has); RMS qk-norm (ln_q, ln_k)
      text_encoders.clip_l.transformer.* CLIP-L (12 layers at 768) and CLIP-G (32 at 1280), at their full size:
      text_encoders.clip_g.transformer.* Forge builds them from the fixed configs it bundles
      text_encoders.t5xxl.transformer.*  T5-XXL at its full 24 blocks (4.76 B parameters), stored in fp8 (e4m3fn)
                                         as the widely shared t5xxl_fp8_e4m3fn file is: Forge builds T5 from its
                                         fixed 24-block config and keeps an fp8 state dict's dtype in memory (4.4
                                         GiB, where the bf16 file would become 9 GiB of fp16); its loader asserts a
                                         T5 state dict for SD3. With the setting sd3_enable_t5 off (the default) the
                                         engine never runs it and feeds zeros in its place
      first_stage_model.*                SD3's 16-channel VAE
  FILE (--vae-approx; kept when present): a random VAEApprox for 16 latent channels. Forge's "Approx NN" live
      preview of SD3 models (on by default) loads models/VAE-approx/vaeapprox-sd3.pt and downloads it where it is
      missing, so an offline host fails every SD3 generation without it: pass that path of the host you test.

Forge's SD3 tokenizer_3 (add_prefix_space) is rebuilt from spiece.model through sentencepiece's protobuf module
by transformers 4.46; sentencepiece 0.2.1 and later need protobuf 5 where Forge pins 3.20.0, so the model loads only
where the host's python has sentencepiece 0.2.0 or older (ImportError: runtime_version otherwise).

Flux and Chroma have no fixture here: Forge fixes their depth at 19 double and 38 single blocks, and a random Flux
at that depth (12 B parameters) does not fit a CPU test machine; test_dit_e2e.py says so where Forge lists none.
The file records its layout in its metadata; a re-run keeps a file whose layout matches (--force rewrites).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import random_weights as rw

NAME = "sd35-medium-random.safetensors"
DEPTH = 2
POS_EMBED_MAX_SIZE = 384
"""pos_embed_max_size 384 is what makes Forge's MMDiTX give blocks 0-12 attn2 (SD3.5 Medium)."""
T5_LAYERS = 24
"""T5-XXL's depth in the config Forge builds it from."""
T5_PREFIX = "text_encoders.t5xxl."


def sd35_medium() -> rw.Shapes:
    transformer = rw.mmdit(DEPTH, POS_EMBED_MAX_SIZE, qk_norm=True, x_self_attention=tuple(range(13)))
    return {**rw.prefixed("model.diffusion_model.", transformer),
            **rw.prefixed("text_encoders.clip_l.", rw.clip_text(768, 12, 3072)),
            **rw.prefixed("text_encoders.clip_g.", rw.clip_text(1280, 32, 5120)),
            **rw.prefixed(T5_PREFIX, rw.t5_encoder(T5_LAYERS)),
            **rw.prefixed("first_stage_model.", rw.ldm_vae())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="a folder the host lists checkpoints from")
    parser.add_argument("--vae-approx", required=True, help="the VAEApprox file to write (vaeapprox-sd3.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if not os.path.exists(args.vae_approx):
        rw.write_torch_state_dict(args.vae_approx, rw.vae_approx(16), args.seed)
        print(f"{args.vae_approx}: random VAEApprox for 16 latent channels")
    wanted = {"family": "sd35", "depth": str(DEPTH), "t5_layers": str(T5_LAYERS), "t5_dtype": "float8_e4m3fn"}
    rw.write_checkpoint_unless_present(
        os.path.join(args.out, NAME), sd35_medium, torch.bfloat16, args.seed, wanted,
        "random weights for ToDo's e2e tests on Forge dfdcbab6; not a model", args.force,
        dtype_by_prefix={T5_PREFIX: torch.float8_e4m3fn})


if __name__ == "__main__":
    main()
