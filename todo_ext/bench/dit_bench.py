"""DiT step benchmark: ToDo on full-width diffusion-transformer blocks, with the time inside the attention function
measured in the same run, so each speedup stands beside its Amdahl bound.

The models are the hosts' mirrors in `dit_stub` at their real widths (Flux: 3072 wide, 24 heads of 128, MLP x4;
Z-Image: 3840 wide, 30 heads of 128, padded caption and image) with a few blocks, random weights; ToDo attaches
through `todo_ext.apply` as on a host (the module function swap), at Max depth 3 so that every block acts. A block's
cost is the same at every depth of a real model, so a few blocks give the per-block speedup of a deep one.

Bound: 1 / ((1 - s) + sum_i s_i * kv_i/n_i), s_i being the share of a baseline call spent in its i-th attention
call (s their sum) and kv_i/n_i the keys that call kept under ToDo (text + downsampled image, and the image alone in
Z-Image's noise refiner) over its keys without: the speedup if every attention call cost exactly its key fraction
and nothing else changed. Both are read in the same run, by a clock under ToDo's wrapper on the host's function.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import todo_ext
from todo_ext.bench.dit_stub import neo_flux, neo_lumina
from todo_ext.bench.memory import PeakMemory
from todo_ext.bench.runner import QUIET_WAIT_S, _busy_cpu_seconds, _wait_for_quiet_cpu
from todo_ext.config import ToDoConfig

LATENT_CHANNELS = 16
PIXELS_PER_LATENT = 8
PATCH = 2


@dataclass(frozen=True)
class DiTModel:
    """A full-width DiT mirror: how to build it, the module function its attention goes through, its text tokens,
    and how one sampling call is made."""

    name: str
    build: Callable[[], nn.Module]
    home: ModuleType
    function: str
    text_tokens: int
    context_dim: int
    call: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _flux() -> nn.Module:
    return neo_flux.IntegratedFluxTransformer2DModel(
        in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, vec_in_dim=768, context_in_dim=4096,
        hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=1, depth_single_blocks=2, axes_dim=(16, 56, 56),
        theta=10000, qkv_bias=True, guidance_embed=True)


def _flux_call(model: nn.Module, latent: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    batch = latent.shape[0]
    timestep = torch.full((batch,), 0.5, dtype=latent.dtype, device=latent.device)
    y = torch.zeros(batch, 768, dtype=latent.dtype, device=latent.device)
    return model(latent, timestep, context, y, guidance=timestep.new_full((batch,), 3.5))


def _zimage() -> nn.Module:
    return neo_lumina.NextDiT(
        patch_size=PATCH, in_channels=LATENT_CHANNELS, dim=3840, n_layers=2, n_refiner_layers=1, n_heads=30,
        n_kv_heads=30, cap_feat_dim=2560, axes_dims=(32, 48, 48), z_image_modulation=True, pad_tokens_multiple=32)


def _zimage_call(model: nn.Module, latent: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    return model(latent, torch.full((latent.shape[0],), 0.5, dtype=latent.dtype, device=latent.device), context)


MODELS = {
    "flux": DiTModel("flux", _flux, neo_flux, "attention_function", 512, 4096, _flux_call),
    "zimage": DiTModel("zimage", _zimage, neo_lumina, "attention_function", 256, 2560, _zimage_call),
}
CONFIGS: dict[str, ToDoConfig | None] = {
    "baseline": None,
    "todo-0.75": ToDoConfig(ratio=0.75, max_depth=3),
    "todo-0.89": ToDoConfig(ratio=0.89, max_depth=3),
    "todo-auto": ToDoConfig(auto=True, max_depth=3),
}
"""Auto keeps about 4096 image K/V tokens: a 1024 px Flux image's own count, so it acts from 1536 px up."""


@dataclass
class DiTMeasurement:
    model: str
    size: int
    config: str
    seconds: list[float] = field(default_factory=list)
    attention_calls: list[list[tuple[float, int]]] = field(default_factory=list)
    """Per timed call: (seconds, keys) of every attention call, as the host's function got them."""
    other_cpu_share: float = 0.0
    peak_bytes: int | None = None
    record: str | None = None
    derived: dict[str, Any] = field(default_factory=dict)


class AttentionClock:
    """Seconds and keys of every call of the host's attention function (synchronised on CUDA); installed before
    ToDo attaches, so ToDo's wrapper calls it with the keys it kept."""

    def __init__(self, home: ModuleType, name: str, device: torch.device):
        self.home, self.name = home, name
        self.calls: list[tuple[float, int]] = []
        self._sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        inner = getattr(self.home, self.name)

        def timed(q, k, v, *args, **kwargs):
            self._sync()
            started = time.perf_counter()
            try:
                return inner(q, k, v, *args, **kwargs)
            finally:
                self._sync()
                self.calls.append((time.perf_counter() - started, k.shape[2 if kwargs.get("skip_reshape") else 1]))

        setattr(self.home, self.name, timed)
        try:
            yield
        finally:
            setattr(self.home, self.name, inner)


def _inputs(spec: DiTModel, size: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    side = size // PIXELS_PER_LATENT
    latent = torch.randn(1, LATENT_CHANNELS, side, side, generator=generator)
    context = torch.randn(1, spec.text_tokens, spec.context_dim, generator=generator)
    return latent.to(device, dtype), context.to(device, dtype)


def run(models: tuple[str, ...], sizes: tuple[int, ...], configs: tuple[str, ...], *, repeats: int,
        device: torch.device, dtype: torch.dtype, warmup: bool = True, quiet_wait_s: float = QUIET_WAIT_S,
        progress: Callable[[str, int, str, bool], None] | None = None) -> list[DiTMeasurement]:
    """Per model and size, a warm-up call per configuration (peak memory), then `repeats` round-robin rounds."""
    measurements = []
    for name in models:
        spec = MODELS[name]
        torch.manual_seed(0)
        model = spec.build().to(device, dtype).eval()
        for size in sizes:
            inputs = _inputs(spec, size, device, dtype)
            rows = {config: DiTMeasurement(name, size, config) for config in configs}
            rounds = ([False] if warmup else []) + [True] * repeats
            for timed in rounds:
                for config in configs:
                    _measure_call(spec, model, inputs, rows[config], CONFIGS[config], device, timed, quiet_wait_s)
                    if progress is not None:
                        progress(name, size, config, timed)
            measurements.extend(rows.values())
        del model
    summarise(measurements)
    return measurements


def _measure_call(spec: DiTModel, model: nn.Module, inputs: tuple, row: DiTMeasurement, config: ToDoConfig | None,
                  device: torch.device, timed: bool, quiet_wait_s: float) -> None:
    clock = AttentionClock(spec.home, spec.function, device)
    with clock.installed():
        handle = todo_ext.apply(model, config) if config is not None else None
        try:
            with torch.inference_mode():
                if not timed:
                    memory = PeakMemory(device)
                    with memory.measure():
                        spec.call(model, *inputs)
                    row.peak_bytes = memory.peak_bytes
                    return
                if device.type == "cpu":
                    _wait_for_quiet_cpu(quiet_wait_s)
                cpu_before = _busy_cpu_seconds()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
                spec.call(model, *inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds = time.perf_counter() - started
                cpu_after = _busy_cpu_seconds()
            row.seconds.append(seconds)
            row.attention_calls.append(clock.calls)
            if cpu_before and cpu_after:
                other = (cpu_after[0] - cpu_before[0]) - (cpu_after[1] - cpu_before[1])
                row.other_cpu_share = max(row.other_cpu_share, other / (seconds * torch.get_num_threads()))
            row.record = handle.record.kv_text() if handle is not None else None
        finally:
            if handle is not None:
                handle.remove()


def summarise(measurements: list[DiTMeasurement]) -> None:
    """Speedup, attention share and bound of every configuration against its model and size's baseline."""
    baselines = {(m.model, m.size): m for m in measurements if m.config == "baseline"}
    for m in measurements:
        base = baselines.get((m.model, m.size))
        if base is None or not m.seconds or not base.seconds:
            continue
        step, base_step = statistics.median(m.seconds), statistics.median(base.seconds)
        per_call = zip(*([seconds for seconds, _ in calls] for calls in base.attention_calls), strict=True)
        base_calls = [statistics.median(times) for times in per_call]
        full_keys = [keys for _, keys in base.attention_calls[0]]
        kept_keys = [keys for _, keys in m.attention_calls[0]]
        reduced = sum(t * kept / full for t, kept, full in zip(base_calls, kept_keys, full_keys, strict=True))
        bound = base_step / (base_step - sum(base_calls) + reduced)
        attention = statistics.median(sum(seconds for seconds, _ in calls) for calls in m.attention_calls)
        speedup = base_step / step
        m.derived = {
            "step_s": step, "speedup": speedup, "attention_share": sum(base_calls) / base_step,
            "kv_fraction": sum(kept_keys) / sum(full_keys), "bound": bound,
            "of_bound": speedup / bound if kept_keys != full_keys else None,
            "attention_speedup": sum(base_calls) / attention,
        }


def markdown_table(measurements: list[DiTMeasurement]) -> str:
    lines = ["| Model | Size | Config | Step (s) | Speedup | Peak mem (MiB) | Attn share | K/V kept | Bound | Of bound "
             "| Attention speedup | ToDo recorded |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in measurements:
        d = m.derived
        if not d:
            continue
        memory = "–" if m.peak_bytes is None else f"{m.peak_bytes / 2**20:.0f}"
        of_bound = "–" if d["of_bound"] is None else f"{d['of_bound']:.0%}"
        lines.append(f"| {m.model} | {m.size}px | {m.config} | {d['step_s']:.2f} | {d['speedup']:.2f}x | {memory} | "
                     f"{d['attention_share']:.1%} | {d['kv_fraction']:.1%} | {d['bound']:.2f}x | {of_bound} | "
                     f"{d['attention_speedup']:.2f}x | {m.record or '–'} |")
    return "\n".join(lines) + "\n"


def bias_costs(sizes: tuple[int, ...], device: torch.device, dtype: torch.dtype,
               repeats: int = 3) -> list[dict[str, float]]:
    """What carrying the proportional bias costs one reduced Flux attention call (24 heads of 128, 512 text tokens,
    the image at 2x), against the same call without it: as the additive mask ToDo passes, and as the alternative,
    a constant extra channel in Q and K (the head padded to 136 so kernels keep their alignment)."""
    heads, head_dim, text, pad = 24, 128, 512, 8
    rows = []
    for size in sizes:
        side = -(-(size // PIXELS_PER_LATENT) // PATCH)
        queries, keys = text + side * side, text + (-(-side // 2)) ** 2
        generator = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, heads, n, head_dim, generator=generator).to(device, dtype)
                   for n in (queries, keys, keys))
        bias = torch.zeros(1, 1, 1, keys, device=device, dtype=dtype)
        bias[..., text:] = 1.386
        extra_q = torch.cat([q, torch.ones_like(q[..., :1]), torch.zeros_like(q[..., : pad - 1])], dim=-1)
        extra_k = torch.cat([k, (bias * head_dim**0.5).transpose(-1, -2).expand(1, heads, keys, 1),
                             torch.zeros_like(k[..., : pad - 1])], dim=-1)
        extra_v = torch.cat([v, torch.zeros_like(v[..., :pad])], dim=-1)
        seconds = {
            "no bias": _sdpa_seconds(device, repeats, q, k, v),
            "mask": _sdpa_seconds(device, repeats, q, k, v, attn_mask=bias.expand(1, 1, queries, keys)),
            "extra channel": _sdpa_seconds(device, repeats, extra_q, extra_k, extra_v, scale=head_dim**-0.5),
        }
        rows.append({"size": size, "queries": queries, "keys": keys, **seconds})
    return rows


def _sdpa_seconds(device: torch.device, repeats: int, *args: torch.Tensor, **kwargs: Any) -> float:
    """Median seconds of one scaled_dot_product_attention call after a warm-up (synchronised on CUDA)."""
    times = []
    with torch.inference_mode():
        for index in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            F.scaled_dot_product_attention(*args, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if index:
                times.append(time.perf_counter() - started)
    return statistics.median(times)


def bias_cost_table(rows: list[dict[str, float]]) -> str:
    lines = ["| Size | Queries | Kept keys | No bias (s) | Mask (s) | Extra channel (s) |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['size']}px | {row['queries']} | {row['keys']} | {row['no bias']:.3f} | "
                     f"{row['mask']:.3f} ({row['mask'] / row['no bias'] - 1:+.0%}) | {row['extra channel']:.3f} "
                     f"({row['extra channel'] / row['no bias'] - 1:+.0%}) |")
    return "\n".join(lines) + "\n"
