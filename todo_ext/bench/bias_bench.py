"""What carrying the proportional bias costs on each host backend: full-width Flux and Z-Image blocks (dit_bench's
models) through the hosts' attention functions (the dit_stub mirrors of Forge's and Neo's backend/attention.py,
calling the real xformers, SageAttention and flash-attn kernels where they are installed), with ToDo off, ToDo's
own choice (`auto`, todo_ext/bias.py) and each way forced: the bias as a mask, as a channel, or dropped. Time per
model call and peak memory side by side.

On a GPU: `python -m todo_ext.bench.bias_bench` (bf16 and fp16, 1024/1536/2048 px, every backend installed).
`--dry` runs the same code to the end on CPU at tiny sizes with narrow models and the CPU stand-ins of the kernels
(dit_stub/kernels.py), so that CI keeps it working; its times say nothing.

`sage_proxy` reproduces SageAttention's int8 quantization of q and k on CPU, to show what the channel's values do to
Sage's accuracy at the head sizes where ToDo uses the channel on Sage (under 128).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import itertools
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

import todo_ext
from todo_ext import bias, joint
from todo_ext.bench import dit_bench
from todo_ext.bench.dit_stub import forge_attention, kernels, neo_attention, neo_flux, neo_lumina
from todo_ext.bench.memory import PeakMemory


def _under_neo_calls(function: Callable) -> Callable:
    """A Forge attention function as Neo's models call it: they pass `transformer_options`, which Forge's functions
    do not take (functools.wraps keeps the host function visible to bias.host_backend)."""

    @functools.wraps(function)
    def forge_function(q, k, v, heads, mask=None, transformer_options=None, **kwargs):
        return function(q, k, v, heads, mask, **kwargs)

    return forge_function


BACKENDS: dict[str, tuple[Callable, str | None]] = {
    "sdpa": (neo_attention.attention_pytorch, None),
    "xformers-forge": (_under_neo_calls(forge_attention.attention_xformers), "xformers.ops"),
    "xformers-neo": (neo_attention.attention_xformers, "xformers.ops"),
    "sage": (neo_attention.attention_sage, "sageattention"),
    "flash": (neo_attention.attention_flash, "flash_attn"),
}
"""Each host backend: its attention function (a mirror of the host's) and the package of the kernel it needs on a
GPU (SDPA's is torch)."""

KERNELS = {
    "xformers.ops": "memory_efficient_attention",
    "sageattention": "sageattn",
    "flash_attn": "flash_attn_func",
}
"""Per kernel package: the function that dit_stub/kernels.py stands in for, under the same name."""

MODES = ("off", "auto", "mask", "channel", "none")
"""ToDo off; ToDo with the bias as bias.route decides; forced as a mask, as a channel, dropped."""

GPU_PLAN = (("flux", "zimage"), (1024, 1536, 2048), ("bfloat16", "float16"))
DRY_PLAN = (("flux", "zimage"), (128, 256), ("float32",))
CPU_PLAN = (("flux",), (1024,), ("bfloat16",))
CALL_MODES = ("off", "mask", "channel", "none")
CONFIG = todo_ext.ToDoConfig(ratio=0.75, max_depth=3)


def _narrow_flux() -> nn.Module:
    return neo_flux.IntegratedFluxTransformer2DModel(
        in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=64, hidden_size=64, num_heads=2,
        depth=1, depth_single_blocks=1, axes_dim=(8, 12, 12), guidance_embed=True)


def _narrow_zimage() -> nn.Module:
    return neo_lumina.NextDiT(patch_size=2, in_channels=16, dim=64, n_layers=1, n_refiner_layers=1, n_heads=2,
                              cap_feat_dim=32, axes_dims=(8, 12, 12), z_image_modulation=True, pad_tokens_multiple=32)


DRY_MODELS = {
    "flux": dit_bench.DiTModel("flux", _narrow_flux, neo_flux, "attention_function", 16, 64, dit_bench._flux_call),
    "zimage": dit_bench.DiTModel("zimage", _narrow_zimage, neo_lumina, "attention_function", 8, 32,
                                 dit_bench._zimage_call),
}


@dataclass
class BiasRow:
    model: str
    size: int
    dtype: str
    backend: str
    mode: str
    seconds: float
    peak_bytes: int
    record: str | None


def installed_backends(device: torch.device) -> list[str]:
    """SDPA always; the others where their kernel package imports (on CPU the stand-ins stand for them)."""
    if device.type != "cuda":
        return list(BACKENDS)
    return [name for name, (_, package) in BACKENDS.items()
            if package is None or importlib.util.find_spec(package.split(".")[0]) is not None]


@contextlib.contextmanager
def real_kernels(device: torch.device) -> Iterator[None]:
    """On a GPU, the kernel packages' own functions in place of the CPU stand-ins, for the duration."""
    saved = {name: getattr(kernels, name) for name in KERNELS.values()}
    if device.type == "cuda":
        for package, name in KERNELS.items():
            with contextlib.suppress(ImportError):
                setattr(kernels, name, getattr(importlib.import_module(package), name))
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(kernels, name, function)


@contextlib.contextmanager
def forced_route(mode: str) -> Iterator[None]:
    """bias.route as ToDo's own (`auto`) or forced to one way for every call."""
    decide = bias.route

    def route(backend: str, device_type: str, head_dim: int) -> tuple[str, int | None]:
        if mode == "mask":
            return bias.MASK, None
        if mode == "none":
            return bias.DROPPED[bias.FLASH], None
        chosen, padded = decide(backend, device_type, head_dim)
        if mode == "channel" and chosen != bias.CHANNEL:
            return bias.CHANNEL, -(-(head_dim + 1) // bias.ALIGNMENT) * bias.ALIGNMENT
        return chosen, padded

    bias.route = route
    try:
        yield
    finally:
        bias.route = decide


def _timed(call: Callable[[], None], device: torch.device, repeats: int) -> tuple[float, int]:
    """Median seconds of `repeats` calls after a warm-up call that measures the peak memory."""
    memory = PeakMemory(device)
    with torch.inference_mode():
        with memory.measure():
            call()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - started)
    return statistics.median(times), memory.peak_bytes


def run(models: dict[str, dit_bench.DiTModel], sizes: tuple[int, ...], dtypes: tuple[str, ...],
        backends: list[str], device: torch.device, repeats: int,
        progress: Callable[[str], None] = lambda _line: None) -> list[BiasRow]:
    rows = []
    with real_kernels(device):
        for name, spec in models.items():
            for dtype_name in dtypes:
                dtype = getattr(torch, dtype_name)
                torch.manual_seed(0)
                model = spec.build().to(device, dtype).eval()
                for size in sizes:
                    inputs = dit_bench._inputs(spec, size, device, dtype)
                    for backend in backends:
                        for mode in MODES:
                            rows.append(_measure(spec, model, inputs, backend, mode, device, repeats, size,
                                                 dtype_name))
                            progress(f"{name} {size}px {dtype_name} {backend} {mode}")
                del model
    return rows


def _measure(spec: dit_bench.DiTModel, model: nn.Module, inputs: tuple, backend: str, mode: str,
             device: torch.device, repeats: int, size: int, dtype_name: str) -> BiasRow:
    previous = getattr(spec.home, spec.function)
    setattr(spec.home, spec.function, BACKENDS[backend][0])
    handle = todo_ext.apply(model, CONFIG) if mode != "off" else None
    try:
        with forced_route(mode):
            seconds, peak = _timed(lambda: spec.call(model, *inputs), device, repeats)
    finally:
        if handle is not None:
            handle.remove()
        setattr(spec.home, spec.function, previous)
    record = None
    if handle is not None:
        texts = (handle.record.kv_text(), handle.record.bias_text() if mode == "auto" else None)
        record = "; ".join(text for text in texts if text)
    return BiasRow(spec.name, size, dtype_name, backend, mode, seconds, peak, record)


def markdown_table(rows: list[BiasRow]) -> str:
    """Per model, size, dtype and backend: each mode's time, its ratio to ToDo off, and its peak memory."""
    off = {(r.model, r.size, r.dtype, r.backend): r for r in rows if r.mode == "off"}
    lines = ["| Model | Size | dtype | Backend | Bias | Call (ms) | vs off | Peak mem (MiB) | ToDo recorded |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = off[(r.model, r.size, r.dtype, r.backend)]
        mode = "ToDo off" if r.mode == "off" else r.mode
        lines.append(f"| {r.model} | {r.size}px | {r.dtype} | {r.backend} | {mode} | {r.seconds * 1000:.1f} | "
                     f"{base.seconds / r.seconds:.2f}x | {r.peak_bytes / 2**20:.0f} | {r.record or '–'} |")
    return "\n".join(lines) + "\n"


FLUX_HEADS, FLUX_HEAD_DIM, FLUX_TEXT = 24, 128, 512


def attention_call(backend: str, mode: str, size: int, dtype: torch.dtype, device: torch.device,
                   repeats: int) -> BiasRow:
    """One Flux joint attention call (24 heads of 128, 512 text tokens, the image at `size` px) through the host
    backend's function, with what ToDo 0.75 hands it in each mode (the kept keys and values from joint.py; the bias
    from joint.proportional_bias or bias.with_channel): peak memory over the inputs, and the time of the same call
    after it. Without the model around it, so that the mask's cost on each backend shows at full size on a CPU."""
    side = -(-(size // dit_bench.PIXELS_PER_LATENT) // dit_bench.PATCH)
    layout = joint.JointLayout((joint.Segment.kept(FLUX_TEXT), joint.Segment.image((side, side))))
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, FLUX_HEADS, layout.tokens, FLUX_HEAD_DIM, generator=generator).to(device, dtype)
               for _ in range(3))
    function = BACKENDS[backend][0]
    plan = joint.joint_plan(layout, CONFIG.factor_at(0, side * side), CONFIG.method, device)

    def call() -> None:
        keys, values, mask, query = k, v, None, q
        if mode != "off":
            keys, values = joint.reduce_keys_values(k, v, plan, 2)
        if mode == "mask":
            mask = joint.proportional_bias(plan, dtype, layout.tokens)
        if mode == "channel":
            padded = -(-(FLUX_HEAD_DIM + 1) // bias.ALIGNMENT) * bias.ALIGNMENT
            query, keys, values = bias.with_channel(q, keys, values, plan.log_counts, FLUX_HEADS, True, padded)
        out = function(query, keys, values, FLUX_HEADS, mask=mask, skip_reshape=True)
        if mode == "channel":
            bias.without_channel(out, FLUX_HEADS, FLUX_HEAD_DIM, False)

    seconds, peak = _timed(call, device, repeats)
    return BiasRow("flux-attention", size, str(dtype).removeprefix("torch."), backend, mode, seconds, peak, None)


def _int8_blocks(tensor: torch.Tensor, block: int) -> torch.Tensor:
    """Sage's per-block int8 quantization along the tokens (dim -2): each block of `block` tokens of one head shares
    one scale, max |x| / 127; returned dequantized."""
    tokens = tensor.shape[-2]
    padded = torch.nn.functional.pad(tensor, (0, 0, 0, -tokens % block))
    blocks = padded.unflatten(-2, (-1, block))
    scale = blocks.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-8) / 127
    return ((blocks / scale).round().clamp(-127, 127) * scale).flatten(-3, -2)[..., :tokens, :]


def sage_int8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SageAttention's scheme on (batch, heads, tokens, dim), float64 on CPU: k smoothed (its mean over the tokens
    subtracted, which shifts each query's logits by a constant), q quantized per block of 128 queries and k per
    block of 64 keys to int8, softmax at 1/sqrt(dim) in float, P.V in fp16."""
    k = k - k.mean(dim=-2, keepdim=True)
    logits = _int8_blocks(q, 128) @ _int8_blocks(k, 64).transpose(-1, -2) / math.sqrt(q.shape[-1])
    weights = logits.softmax(dim=-1)
    return (weights.half().float() @ v.half().float()).double()


def sage_proxy(head_dims: tuple[int, ...] = (64, 96), factors: tuple[int, ...] = (2, 4), queries: int = 1024,
               text: int = 128, grid: int = 30, outlier_scale: float = 10.0, seed: int = 0) -> list[dict]:
    """Relative error of Sage's int8 scheme against float attention, for a ToDo call whose bias travels in the
    channel (the padded q, k, v through Sage, cut back) and for the same call without the bias (its own float
    result as reference): if the channel's values hurt Sage's quantization, the first is the larger. q and k are
    RMS-normed per head as the DiTs make them, k with a few channels `outlier_scale` times larger (the outliers
    Sage smooths), the image a `grid` x `grid` grid downsampled 2x and 4x, `text` tokens kept. The blocks are Sage
    1's (128 queries); Sage 2 quantizes q in smaller groups, which can only lower its error."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for head_dim, factor in ((head_dim, factor) for head_dim in head_dims for factor in factors):
        kept = text + math.ceil(grid / factor) ** 2
        counts = torch.cat([torch.ones(text), torch.full((kept - text,), float(factor * factor))]).double()
        log_counts = counts.log()
        q, k, v = (torch.randn(1, 4, n, head_dim, generator=generator, dtype=torch.float64)
                   for n in (queries, kept, kept))
        k[..., :4] *= outlier_scale
        q, k = (t / t.pow(2).mean(-1, keepdim=True).sqrt() for t in (q, k))
        exact = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + log_counts, dim=-1) @ v
        plain = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1) @ v
        _, padded = bias.route(bias.SAGE, "cuda", head_dim)
        q2, k2, v2 = bias.with_channel(q, k, v, log_counts, 4, True, padded)
        channel = bias.without_channel(sage_int8_attention(q2, k2, v2), 4, head_dim, True)
        without = sage_int8_attention(q, k, v)
        rows.append({
            "head_dim": head_dim, "padded": padded, "factor": factor,
            "channel_error": ((channel - exact).norm() / exact.norm()).item(),
            "plain_error": ((without - plain).norm() / plain.norm()).item(),
            "bias_effect": ((exact - plain).norm() / exact.norm()).item(),
        })
    return rows


def sage_proxy_table(rows: list[dict]) -> str:
    lines = ["| Head | Padded | ToDo | Sage error, bias in the channel | Sage error, no bias | What the bias changes |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['head_dim']} | {row['padded']} | {row['factor']}x | {row['channel_error']:.2e} | "
                     f"{row['plain_error']:.2e} | {row['bias_effect']:.2e} |")
    return "\n".join(lines) + "\n"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                        help="auto: CUDA if present, else the dry mode; cpu: full size on CPU, kernel stand-ins")
    parser.add_argument("--calls-only", action="store_true",
                        help="only the single attention calls, not the models (full size within a CPU's reach)")
    parser.add_argument("--dry", action="store_true",
                        help="tiny narrow models on CPU with the kernel stand-ins: runs to the end, times nothing")
    parser.add_argument("--models", help="comma-separated: flux, zimage")
    parser.add_argument("--sizes", help="comma-separated image sizes in px")
    parser.add_argument("--dtypes", help="comma-separated torch dtypes (bfloat16, float16, float32)")
    parser.add_argument("--backends", help="comma-separated: " + ", ".join(BACKENDS))
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row (median)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    wanted = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "dry"
    dry = args.dry or wanted == "dry"
    if args.device == "auto" and dry and not args.dry:
        print("No CUDA device: running the dry mode (--dry), tiny sizes on CPU stand-ins; its times say nothing")
    device = torch.device("cuda" if wanted == "cuda" and not dry else "cpu")
    names, sizes, dtypes = DRY_PLAN if dry else GPU_PLAN if device.type == "cuda" else CPU_PLAN
    models = DRY_MODELS if dry else dit_bench.MODELS
    names = tuple(args.models.split(",")) if args.models else names
    sizes = tuple(int(size) for size in args.sizes.split(",")) if args.sizes else sizes
    dtypes = tuple(args.dtypes.split(",")) if args.dtypes else dtypes
    backends = args.backends.split(",") if args.backends else installed_backends(device)
    repeats = 1 if dry else args.repeats
    rows = [] if args.calls_only else run({name: models[name] for name in names}, sizes, dtypes, backends, device,
                                          repeats, progress=print)
    calls = []
    with real_kernels(device):
        for size, dtype, backend, mode in itertools.product(sizes, dtypes, backends, CALL_MODES):
            calls.append(attention_call(backend, mode, size, getattr(torch, dtype), device, repeats))
            print(f"flux attention call {size}px {dtype} {backend} {mode}")
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if dry:
        machine += ", dry mode (narrow models, stand-in kernels; times say nothing)"
    proxy = sage_proxy()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bias-results.md").write_text(
        f"Machine: {machine}; torch {torch.__version__}; ToDo 0.75 on every block\n\n"
        + (markdown_table(rows) + "\n" if rows else "")
        + "One Flux joint attention call (24 heads of 128, 512 text tokens) through each backend:\n\n"
        + markdown_table(calls)
        + "\nSageAttention's int8 scheme on CPU (relative error against float attention):\n\n"
        + sage_proxy_table(proxy))
    (args.out / "bias-results.json").write_text(json.dumps(
        {"machine": machine, "rows": [asdict(row) for row in rows], "calls": [asdict(call) for call in calls],
         "sage_proxy": proxy}, indent=1))
    print(f"wrote {args.out / 'bias-results.md'}")


if __name__ == "__main__":
    main()
