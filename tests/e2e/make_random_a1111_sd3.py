"""A random-weight SD3 checkpoint for a live AUTOMATIC1111 WebUI v1.10.1, for tests/e2e/test_dit_e2e.py on CPU,
offline, and the two small files its SD3 path fetches from the internet on first use. It writes only to the paths
given on its command line: nothing of the host is read or written.

usage: <webui venv>/bin/python make_random_a1111_sd3.py OUT_DIR --vae-approx FILE [--depth 2] [--hf-home DIR]
           [--t5-tokenizer DIR] [--seed 0] [--force]
OUT_DIR is a folder the host lists checkpoints from (its --ckpt-dir, or its models/Stable-diffusion). Standard
library, torch and safetensors only (random_weights.py beside this file).

  sd3-medium-random.safetensors (1.7 GiB, fp16) SD3 Medium's layout at --depth joint blocks:
      model.diffusion_model.*            modules/sd_models_config.py picks configs/sd3-inference.yaml by
                                         x_embedder.proj.weight (and sd_models.set_model_type marks it SD3);
                                         modules/models/sd3/sd3_impls.py BaseModel reads patch size and depth
                                         (= x_embedder.proj.weight rows // 64) from that key, the position table's
                                         side from pos_embed (192 x 192 patches), adm_in_channels from
                                         y_embedder.mlp.0.weight and the context width from context_embedder.weight;
                                         mmdit.py's MMDiT is then 64 * depth wide with depth heads (128 and 2 here)
      text_encoders.clip_l.transformer.* modules/models/sd3/sd3_cond.py SD3Cond builds CLIP-L and CLIP-G
      text_encoders.clip_g.transformer.* (other_impls.py) from fixed configs (12 layers at 768, 32 at 1280), so
                                         they are full size; before_load_weights downloads either one whose
                                         embeddings.position_embedding.weight is missing from the file
      first_stage_model.*                sd3_impls.py SDVAE (the 16-channel VAE)
      No T5: SD3Cond builds T5-XXL only with the setting sd3_enable_t5 (off by default, and its help says it
      needs a model reload), else Sd3T5 hands the model zeros of T5's width for the T5 half of the context.
      sd_models.load_model creates the model on the meta device and loads the file into it, so every other key
      the model has must be in the file (a missing one stays on meta, and moving the model to the CPU fails).
  HF_HOME/hub/models--google--t5-v1_1-xxl (kept when present): Sd3T5 and other_impls.py's T5XXLTokenizer call
      T5TokenizerFast.from_pretrained("google/t5-v1_1-xxl") whether or not T5 is enabled; offline that needs the
      tokenizer in the HF cache. --t5-tokenizer names a folder with tokenizer.json, tokenizer_config.json and
      special_tokens_map.json of T5 v1.1 (e.g. the tokenizer_2 folder of FLUX.1-dev's diffusers layout); those are
      copied into a snapshot of the cache, as make_hf_clip_cache.py does for CLIP. --hf-home is the HF_HOME the
      host runs with (default $HF_HOME).
  FILE (--vae-approx; kept when present): a random VAEApprox for 16 latent channels. modules/sd_vae_approx.py loads
      models/VAE-approx/vaeapprox-sd3.pt for the "Approx NN" live preview of SD3 (on by default) and downloads it
      where it is missing: offline, every SD3 generation would fail (URLError). Pass that path of the host you test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import random_weights as rw

NAME = "sd3-medium-random.safetensors"
POS_EMBED_MAX_SIZE = 192
T5_REPO = "models--google--t5-v1_1-xxl"
T5_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SNAPSHOT = "0" * 40
"""A made-up snapshot id: the cache is read offline and never compared with the hub."""


def table_of(depth: int) -> rw.Shapes:
    return {**rw.prefixed("model.diffusion_model.", rw.mmdit(depth, POS_EMBED_MAX_SIZE)),
            **rw.prefixed("text_encoders.clip_l.", rw.clip_text(768, 12, 3072)),
            **rw.prefixed("text_encoders.clip_g.", rw.clip_text(1280, 32, 5120)),
            **rw.prefixed("first_stage_model.", rw.ldm_vae())}


def write_t5_tokenizer(hf_home: str, source: str | None) -> None:
    repo = os.path.join(hf_home, "hub", T5_REPO)
    snapshot = os.path.join(repo, "snapshots", SNAPSHOT)
    if all(os.path.exists(os.path.join(snapshot, name)) for name in T5_FILES):
        print(f"{repo}: present, kept")
        return
    if source is None:
        sys.exit(f"{repo} is missing: pass --t5-tokenizer DIR (a folder with {', '.join(T5_FILES)} of T5 v1.1)")
    os.makedirs(snapshot, exist_ok=True)
    for name in T5_FILES:
        shutil.copyfile(os.path.join(source, name), os.path.join(snapshot, name))
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as file:
        file.write(SNAPSHOT)
    print(f"{repo}: T5 v1.1 tokenizer from {source}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="a folder the host lists checkpoints from")
    parser.add_argument("--depth", type=int, default=2, help="joint blocks (the width is 64 per block)")
    parser.add_argument("--vae-approx", required=True, help="the VAEApprox file to write (vaeapprox-sd3.pt)")
    parser.add_argument("--hf-home", default=os.environ.get("HF_HOME"))
    parser.add_argument("--t5-tokenizer", help="a folder with T5 v1.1's tokenizer files, when the cache lacks them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    assert args.depth >= 2, "the last block's context stream is pre-only: keep one full block before it"
    assert args.hf_home, "set --hf-home (or HF_HOME) to the HF_HOME the host runs with"

    write_t5_tokenizer(args.hf_home, args.t5_tokenizer)
    if not os.path.exists(args.vae_approx):
        rw.write_torch_state_dict(args.vae_approx, rw.vae_approx(16), args.seed)
        print(f"{args.vae_approx}: random VAEApprox for 16 latent channels")

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    path = os.path.join(args.out, NAME)
    rw.write_checkpoint_unless_present(path, lambda: table_of(args.depth), torch.float16, args.seed,
                                       {"family": "sd3", "depth": str(args.depth)},
                                       "random weights for ToDo's e2e tests on A1111 v1.10.1; not a model", args.force)


if __name__ == "__main__":
    main()
