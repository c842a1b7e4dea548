"""The memory a Forge-family attach holds beside an IP-Adapter, measured on the Forge stand-in: README's figure (Hosts,
"Memory") comes from this script's table.

Forge's and reForge's `UnetPatcher.clone()` deep-copies `model_options`, and with it every module another
extension's patch holds: IP-Adapter's attn2 replacements hold its weights. ToDo's attach clones with empty options
and rebuilds the containers around the same patch objects (`todo_ext.hosts.forge._clone_sharing_patches`). Each row
clones a patcher that carries an IP-Adapter of ip-adapter_sd15's shapes (22.3 M parameters in fp16) and reports how
much the process's resident memory grew while the clone lives, over several repeats, and how many of the adapter's
parameters the clone holds a copy of.

    .venv/bin/python tests/forge_stub/clone_memory.py [--repeats N] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the repository and tests/ are not on the path yet
    sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

import torch
from torch import nn

from forge_stub import forge_host
from todo_ext import ToDoConfig
from todo_ext.bench.models import build_unet
from todo_ext.hosts import forge

SD15_CROSS_ATTENTION = [
    *((("input", block), width) for block, width in ((1, 320), (2, 320), (4, 640), (5, 640), (7, 1280), (8, 1280))),
    *((("output", block), width) for block, width in ((3, 1280), (4, 1280), (5, 1280), (6, 640), (7, 640), (8, 640),
                                                      (9, 320), (10, 320), (11, 320))),
    (("middle", 0), 1280),
]
"""SD1.5's cross-attention layers and their widths, in the order IPAdapterPlus numbers them (IPAdapter.apply)."""

ADAPTER_DTYPE = torch.float16
MIB = 2**20


class ImageProjModel(nn.Module):
    """Mirrors Forge's extensions-builtin/sd_forge_ipadapter/lib_ipadapter/IPAdapterPlus.py ImageProjModel with
    ip-adapter_sd15's shapes: CLIP image embeds (1024) to 4 tokens of the text encoder's width (768)."""

    def __init__(self, cross_attention_dim=768, clip_embeddings_dim=1024, clip_extra_context_tokens=4):
        super().__init__()
        self.proj = nn.Linear(clip_embeddings_dim, clip_extra_context_tokens * cross_attention_dim, dtype=ADAPTER_DTYPE)
        self.norm = nn.LayerNorm(cross_attention_dim, dtype=ADAPTER_DTYPE)


class IPAdapter(nn.Module):
    """Mirrors IPAdapterPlus.py IPAdapter for ip-adapter_sd15: `image_proj_model`, and `ip_layers.to_kvs` (To_KV) with
    a key and a value projection from the image tokens per cross-attention layer, named as To_KV names them."""

    def __init__(self):
        super().__init__()
        self.image_proj_model = ImageProjModel()
        self.ip_layers = nn.Module()
        self.ip_layers.to_kvs = nn.ModuleDict({
            f"{number * 2 + 1}_to_{kind}_ip": nn.Linear(768, width, bias=False, dtype=ADAPTER_DTYPE)
            for number, (_, width) in enumerate(SD15_CROSS_ATTENTION) for kind in ("k", "v")})


class CrossAttentionPatch:
    """Mirrors what IPAdapterPlus.py CrossAttentionPatch holds, one per cross-attention layer: the shared IPAdapter and
    the image's cond/uncond tokens. How it attends does not matter here, only what a clone copies."""

    def __init__(self, ipadapter, number, cond, uncond):
        self.number = number
        self.ipadapters, self.conds, self.unconds = [ipadapter], [cond], [uncond]


def forge_model_with_ip_adapter():
    """The stand-in's Forge model (an SD1.5-layout U-Net at a small width: no clone copies the U-Net) whose patcher
    carries an IP-Adapter's attn2 replacements as IPAdapterPlus.py set_model_patch_replace puts them; and the
    adapter."""
    sd_model = forge_host.ForgeDiffusionEngine(build_unet("sd15", width=32))
    adapter = IPAdapter()
    cond = torch.randn(1, 4, 768, dtype=ADAPTER_DTYPE)
    for number, (block, _) in enumerate(SD15_CROSS_ATTENTION):
        patch = CrossAttentionPatch(adapter, number, cond, torch.zeros_like(cond))
        sd_model.forge_objects.unet.set_model_attn2_replace(patch, *block)
    return sd_model, adapter


def attn2_replacements(patcher):
    return patcher.model_options["transformer_options"]["patches_replace"]["attn2"]


def copied_parameters(adapter, patcher):
    """How many of the adapter's parameters `patcher`'s attn2 replacements hold in storage of their own rather than
    the adapter's."""
    shared = {parameter.data_ptr() for parameter in adapter.parameters()}
    held = {id(parameter): parameter for patch in attn2_replacements(patcher).values()
            for ipadapter in patch.ipadapters for parameter in ipadapter.parameters()}
    return sum(parameter.numel() for parameter in held.values() if parameter.data_ptr() not in shared)


def host_clone(sd_model):
    return sd_model.forge_objects.unet.clone()


def todo_clone(sd_model):
    return forge._clone_sharing_patches(sd_model.forge_objects.unet)


def todo_attach(sd_model):
    original = sd_model.forge_objects.unet
    forge.attach(sd_model, ToDoConfig(), set())
    clone, sd_model.forge_objects.unet = sd_model.forge_objects.unet, original
    return clone


ROWS = {
    "host UnetPatcher.clone() (what ToDo's attach called before)": host_clone,
    "forge._clone_sharing_patches (what it calls now)": todo_clone,
    "forge.attach, end to end": todo_attach,
}

M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter (malloc.h)."""


def unmap_freed_storage():
    """Fix glibc's mmap threshold at 64 KiB, so that every tensor storage above it is a mapping of its own, returned
    to the OS when freed. Left dynamic, glibc raises the threshold at the first large free and serves later copies
    from heap pages it kept resident, and repeats after the first show too little growth. False where there is no
    glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 64 * 1024))


def resident_bytes():
    """The process's resident set size, as the kernel counts it (/proc/self/statm, in pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(repeats):
    """Per row: the resident growth while each clone lives, in bytes, one per repeat (the rows take turns), and the
    adapter's parameters the clone holds a copy of."""
    sd_model, adapter = forge_model_with_ip_adapter()
    growth = {name: [] for name in ROWS}
    copied = {}
    for _ in range(repeats):
        for name, clone_of in ROWS.items():
            gc.collect()
            before = resident_bytes()
            clone = clone_of(sd_model)
            growth[name].append(resident_bytes() - before)
            copied[name] = copied_parameters(adapter, clone)
            del clone
    parameters = sum(parameter.numel() for parameter in adapter.parameters())
    return {"adapter_parameters": parameters,
            "adapter_bytes": sum(p.numel() * p.element_size() for p in adapter.parameters()),
            "rows": [{"clone": name, "rss_growth_bytes": growth[name], "copied_parameters": copied[name]}
                     for name in ROWS]}


def table(result):
    runs = len(result["rows"][0]["rss_growth_bytes"])
    lines = [f"IP-Adapter attn2 replacement: {result['adapter_parameters'] / 1e6:.1f} M parameters, "
             f"{result['adapter_bytes'] / MIB:.1f} MiB in fp16",
             "",
             f"| clone | RSS held while it lives, median (min to max of {runs}) | adapter parameters copied |",
             "| --- | --- | --- |"]
    for row in result["rows"]:
        growth = [value / MIB for value in row["rss_growth_bytes"]]
        lines.append(f"| {row['clone']} | {statistics.median(growth):+.1f} MiB ({min(growth):+.1f} to "
                     f"{max(growth):+.1f}) | {row['copied_parameters']:,} of {result['adapter_parameters']:,} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="clones per row (default 5)")
    parser.add_argument("--json", action="store_true", help="print the measurements as JSON instead of a table")
    args = parser.parse_args(argv)
    if not unmap_freed_storage():
        print("no glibc mallopt: repeats after the first may show too little growth", file=sys.stderr)
    torch.set_grad_enabled(False)
    result = measure(args.repeats)
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
