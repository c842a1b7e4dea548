"""Write a random-weight ControlLLLite model for the Forge family's built-in ControlNet (sd_forge_controlllite), so
that tests/e2e/test_extensions_e2e.py can run LLLite on a host that has no real model (never commit its output).

    python tests/e2e/make_random_controllllite.py CHECKPOINT OUT_DIR [--name NAME]

The model goes to OUT_DIR/NAME.safetensors: give the ControlNet models folder of the host you test (the Forge
family's default is its models/ControlNet, modules_forge/shared.py `controlnet_dir`). CHECKPOINT is the SD1.x
.safetensors checkpoint the host runs (its header gives the layer width). The host lists ControlNet models when it
starts, so write the model before starting the host. Standard library only (any Python): the file is written in the
safetensors format by hand.

What the loader reads (extensions-builtin/sd_forge_controlllite/lib_controllllite/lib_controllllite.py, the same on
Forge dfdcbab6, reForge 3b56b268, Neo 283cb2c4 and Classic c813972d): ControlLLLitePatcher takes a state dict in which
some key contains "lllite"; load_control_net_lllite_patch splits each key at its first "." into a module name and a
weight name. A module name is `lllite_unet_{input_blocks_N|middle_block|output_blocks_N}_1_transformer_blocks_I_
{attn1|attn2}_{to_q|to_k|to_v}`, matched against extra_options_to_module_prefix() of the block the patch runs in.
Each module is an LLLiteModule: conditioning1 (Conv2d 3->emb/2, kernel 4 stride 4; ReLU; Conv2d emb/2->emb, kernel 2
stride 2: depth 1, chosen because conditioning1.2.weight's last side is not 4 and there is no conditioning1.4), so a
256 px control image becomes a 32x32 embedding, the depth-0 grid of a 256 px SD1.5 image; down (Linear in->mlp, ReLU),
mid (Linear mlp+emb->mlp, ReLU), up (Linear mlp->in). `is_conv2d` is down.0.weight's ndim == 4 (here 2: Linear),
in_dim its second side, cond_emb_dim conditioning1.0.weight's first side times 2, mlp_dim down.0.weight's first side.

The model written here has modules for attn1's to_q, to_k and to_v of input_blocks[1] (SD1.5's first depth-0
self-attention layer, the layer the A1111 extensions host's LLLite model acts on too), with weights drawn from
N(0, 0.02) (seed 0) and zero biases: the patch then changes q, k and v of that layer by different amounts.
"""

import argparse
import json
import random
import struct
import sys
from array import array
from pathlib import Path

LAYER = "input_blocks_1_1_transformer_blocks_0_attn1"
WIDTH_KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight"
EMB, MLP, STD = 32, 64, 0.02


def safetensors_header(path):
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        return json.loads(file.read(length))


def layer_width(checkpoint):
    """The channel count of input_blocks[1]'s attn1 (to_k's input side) from the checkpoint's header."""
    header = safetensors_header(checkpoint)
    if WIDTH_KEY not in header:
        sys.exit(f"{checkpoint}: no {WIDTH_KEY} (not an SD1.x/SD2.x ldm checkpoint?)")
    return header[WIDTH_KEY]["shape"][1]


def tensors(channels, seed=0):
    """{key: (shape, float32 values)} of the three LLLite modules."""
    rng = random.Random(seed)

    def weight(*shape):
        count = 1
        for side in shape:
            count *= side
        return shape, [rng.gauss(0.0, STD) for _ in range(count)]

    def zeros(size):
        return (size,), [0.0] * size

    out = {}
    for projection in ("to_q", "to_k", "to_v"):
        name = f"lllite_unet_{LAYER}_{projection}"
        out.update({
            f"{name}.conditioning1.0.weight": weight(EMB // 2, 3, 4, 4),
            f"{name}.conditioning1.0.bias": zeros(EMB // 2),
            f"{name}.conditioning1.2.weight": weight(EMB, EMB // 2, 2, 2),
            f"{name}.conditioning1.2.bias": zeros(EMB),
            f"{name}.down.0.weight": weight(MLP, channels), f"{name}.down.0.bias": zeros(MLP),
            f"{name}.mid.0.weight": weight(MLP, MLP + EMB), f"{name}.mid.0.bias": zeros(MLP),
            f"{name}.up.0.weight": weight(channels, MLP), f"{name}.up.0.bias": zeros(channels),
        })
    return out


def write_safetensors(path, named):
    """The safetensors layout: 8-byte little-endian header size, a JSON header of dtype/shape/data_offsets per
    tensor, then the tensors' little-endian bytes."""
    header, blobs, offset = {}, [], 0
    for key in sorted(named):
        shape, values = named[key]
        blob = array("f", values)
        if sys.byteorder != "little":
            blob.byteswap()
        data = blob.tobytes()
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt", "note": "random weights for tests/e2e; not a trained model"}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="the SD1.x checkpoint (.safetensors) the host runs")
    parser.add_argument("out", type=Path, help="the folder to write the model to (the host's ControlNet models)")
    parser.add_argument("--name", default="sd15_lllite_random")
    args = parser.parse_args(argv)
    checkpoint = args.checkpoint
    args.out.mkdir(parents=True, exist_ok=True)
    channels = layer_width(checkpoint)
    path = args.out / f"{args.name}.safetensors"
    write_safetensors(path, tensors(channels))
    print(f"wrote {path} ({channels} channels, from {checkpoint.name})")


if __name__ == "__main__":
    main()
