"""Step-time benchmark of the real ldm U-Net: baseline (SDPA) vs ToDo vs ToMe, interleaved round-robin.

Every timed call is one U-Net step (batch 1, no CFG batch) under torch.inference_mode. Within each size the
configurations run in turn, round after round, so that machine drift hits them alike. Every configuration first
gets one warm-up call at every size, which also measures its peak memory (see memory.py); the timed calls run with
only the attn1 timing hooks attached. On a CPU shared with other work, each timed call waits for a quiet CPU and is
retried when other processes took more than 10% of the CPU during it; that share is recorded with every sample.
The U-Net is called positionally (x, timesteps, context) as the WebUI's DiffusionWrapper does: tomesd's size hook
reads the first positional argument.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from todo_ext.bench.memory import PeakMemory
from todo_ext.bench.models import (
    FULL_WIDTH,
    LATENT_SCALE,
    LatentDiffusionShell,
    build_unet,
    sdpa_attention,
    unet_inputs,
)
from todo_ext.config import ToDoConfig, ratio_to_factor

WEBUI_TOME_STRIDE = 2
"""The WebUI calls tomesd.apply_patch without sx/sy, so ToMe runs with tomesd's default 2x2 stride."""


@dataclass(frozen=True)
class BenchConfig:
    """One measured configuration: kind is "baseline", "todo" or "tome"."""

    name: str
    kind: str
    todo: ToDoConfig | None = None
    tome_ratio: float = 0.0
    tome_stride: int = WEBUI_TOME_STRIDE

    @property
    def label(self) -> str:
        if self.kind == "tome" and self.tome_stride != WEBUI_TOME_STRIDE:
            return f"{self.name} (sx=sy={self.tome_stride}, not reachable from the WebUI)"
        return self.name


def _tome_stride_for(ratio: float) -> int:
    """Smallest square tomesd stride whose dst set leaves room for `ratio`: tomesd removes at most 1 - 1/stride²."""
    return max(WEBUI_TOME_STRIDE, math.ceil(ratio_to_factor(ratio)))


TODO_RATIOS = (0.75, 0.89, 0.9375)
ALL_CONFIGS = (
    BenchConfig("baseline", "baseline"),
    BenchConfig("todo-0.5", "todo", todo=ToDoConfig(ratio=0.5)),
    *(BenchConfig(f"todo-{r:g}", "todo", todo=ToDoConfig(ratio=r)) for r in TODO_RATIOS),
    BenchConfig("todo-0.75-d1", "todo", todo=ToDoConfig(ratio=0.75, max_depth=1)),
    BenchConfig("todo-auto", "todo", todo=ToDoConfig(auto=True)),
    *(BenchConfig(f"tome-{r:g}", "tome", tome_ratio=r) for r in (0.3, 0.5)),
    *(BenchConfig(f"tome-{r:g}", "tome", tome_ratio=r, tome_stride=_tome_stride_for(r)) for r in TODO_RATIOS),
)
CONFIGS_BY_NAME = {config.name: config for config in ALL_CONFIGS}
EQUAL_QUALITY_CONFIGS = (
    "baseline", "todo-0.75", "todo-0.89", "todo-0.9375", "todo-0.75-d1", "tome-0.3", "tome-0.5", "tome-0.75",
)
"""The equal-quality sweep (`--equal-quality`): one list that both the step timing and the fidelity proxy run.
ToMe stays at the WebUI's 2x2 stride, whose ceiling is 0.75; todo-0.75-d1 also halves each side at depth 1.
ToDo 0.5 (a fractional factor, 1.41) is left out: its proxy error is above 0.75's, so it is never the better pick."""


class _Applied:
    """How to undo a configuration, and what the engine recorded (ToDo only) to prove it acted."""

    def __init__(self, remove: Callable[[], None], record: Callable[[], str | None] = lambda: None):
        self.remove = remove
        self.record = record


def apply_config(unet: nn.Module, config: BenchConfig) -> _Applied:
    """Patch the U-Net for one configuration; ToMe exactly as modules/sd_models.py apply_token_merging does."""
    if config.kind == "todo":
        import todo_ext

        handle = todo_ext.apply(unet, config.todo)
        return _Applied(handle.remove, lambda: handle.record.kv_text())
    if config.kind == "tome":
        import tomesd

        shell = LatentDiffusionShell(unet)
        tomesd.apply_patch(
            shell, ratio=config.tome_ratio, sx=config.tome_stride, sy=config.tome_stride, use_rand=False,
            merge_attn=True, merge_crossattn=False, merge_mlp=False,
        )
        return _Applied(lambda: tomesd.remove_patch(shell))
    return _Applied(lambda: None)


def self_attention_depths(unet: nn.Module) -> dict[str, int]:
    """Depth of every self-attention (attn1) module, by a small calibration pass: depth 0 = most tokens."""
    tokens: dict[str, int] = {}

    def recorder(name: str) -> Callable[..., None]:
        def hook(_module, args) -> None:
            tokens.setdefault(name, args[0].shape[1])

        return hook

    hooks = [
        module.attn1.register_forward_pre_hook(recorder(name))
        for name, module in unet.named_modules()
        if hasattr(module, "attn1")
    ]
    try:
        with torch.inference_mode():
            unet(*unet_inputs(unet, 1, 32, 32, context_tokens=8))
    finally:
        for hook in hooks:
            hook.remove()
    ordered = sorted(set(tokens.values()), reverse=True)
    return {name: ordered.index(count) for name, count in tokens.items()}


class LayerTimer:
    """Seconds spent inside each depth's attn1 modules during one call (synchronised on CUDA)."""

    def __init__(self, unet: nn.Module, depths: dict[str, int], device: torch.device):
        self.seconds_by_depth: dict[int, float] = {}
        self._sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        self._hooks = []
        for name, module in unet.named_modules():
            if name in depths:
                self._hooks.append(module.attn1.register_forward_pre_hook(self._start))
                self._hooks.append(module.attn1.register_forward_hook(self._stop(depths[name])))
        self._started = 0.0

    def _start(self, _module, _args) -> None:
        self._sync()
        self._started = time.perf_counter()

    def _stop(self, depth: int) -> Callable[..., None]:
        def hook(_module, _args, _output) -> None:
            self._sync()
            elapsed = time.perf_counter() - self._started
            self.seconds_by_depth[depth] = self.seconds_by_depth.get(depth, 0.0) + elapsed

        return hook

    def reset(self) -> None:
        self.seconds_by_depth = {}

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


class HookClock:
    """Wall time spent inside ToDo's own hooks during a call: all that ToDo costs at factor 1, and the K/V gather
    (its launch, on a GPU) when it downsamples."""

    def __init__(self):
        self.seconds = 0.0

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        from todo_ext import passes

        untimed = passes.ToDoHook.__call__

        def timed(hook, *args):
            started = time.perf_counter()
            try:
                return untimed(hook, *args)
            finally:
                self.seconds += time.perf_counter() - started

        passes.ToDoHook.__call__ = timed
        try:
            yield
        finally:
            passes.ToDoHook.__call__ = untimed


@dataclass
class Sample:
    seconds: float
    attn1_seconds_by_depth: dict[int, float]
    todo_hook_seconds: float = 0.0
    other_cpu_share: float | None = None
    """Fraction of the machine's CPU time that other processes used during the call (None where unknown)."""
    own_cpu_seconds: float | None = None
    """CPU seconds this process (all its threads) used during the call: less swayed than wall time by other
    processes taking the CPU, though not immune (shared caches, threads waiting on each other)."""


def _busy_cpu_seconds() -> tuple[float, float] | None:
    """(all processes' busy CPU seconds, this process's CPU seconds) from /proc/stat and os.times; None off Linux."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]
    own = os.times()
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), own.user + own.system


@dataclass
class Measurement:
    """Results of one configuration at one model and size; derived numbers are filled in by `summarise`."""

    model: str
    size: int
    config: str
    label: str
    samples: list[Sample] = field(default_factory=list)
    peak_bytes: int | None = None
    engine_record: str | None = None
    derived: dict[str, Any] = field(default_factory=dict)


QUIET_OTHER_CPU_SHARE = 0.10
"""A timed call counts as clean when other processes used at most this share of the machine's CPU during it."""
QUIET_WAIT_S = 120.0
RETRIES = 2


def _other_cpu_share_now(window_s: float = 0.5) -> float | None:
    """Share of the machine's CPU that other processes use over a short window while this one sleeps."""
    before = _busy_cpu_seconds()
    time.sleep(window_s)
    after = _busy_cpu_seconds()
    if not (before and after):
        return None
    return ((after[0] - before[0]) - (after[1] - before[1])) / (window_s * (os.cpu_count() or 1))


def _wait_for_quiet_cpu(max_wait_s: float) -> None:
    """Wait (up to max_wait_s) until other processes leave the CPU alone, so that they do not skew a timing."""
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        share = _other_cpu_share_now()
        if share is None or share <= QUIET_OTHER_CPU_SHARE:
            return


def _clean_timed_call(unet, inputs, device, timer: LayerTimer, quiet_wait_s: float, retries: int = RETRIES) -> Sample:
    """A timed call on a quiet CPU, retried when other processes took CPU during it; the least disturbed one wins."""
    samples = []
    for _ in range(1 + (retries if device.type == "cpu" else 0)):
        if device.type == "cpu":
            _wait_for_quiet_cpu(quiet_wait_s)
        samples.append(_timed_call(unet, inputs, device, timer))
        if (samples[-1].other_cpu_share or 0.0) <= QUIET_OTHER_CPU_SHARE:
            break
    return min(samples, key=lambda sample: sample.other_cpu_share or 0.0)


def _timed_call(unet, inputs, device, timer: LayerTimer) -> Sample:
    timer.reset()
    hooks = HookClock()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cpu_before = _busy_cpu_seconds()
    started = time.perf_counter()
    with hooks.attached():
        unet(*inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    cpu_after = _busy_cpu_seconds()
    other, own = None, None
    if cpu_before and cpu_after:
        own = cpu_after[1] - cpu_before[1]
        other_seconds = (cpu_after[0] - cpu_before[0]) - own
        other = min(1.0, max(0.0, other_seconds / (seconds * (os.cpu_count() or 1))))
    return Sample(seconds, dict(timer.seconds_by_depth), hooks.seconds, other, own)


def _memory_call(unet, inputs, device) -> int:
    memory = PeakMemory(device)
    with memory.measure():
        unet(*inputs)
    return memory.peak_bytes


def _schedule(size_plan: list[tuple[int, list[BenchConfig]]], repeats: int,
              warmup: bool = True) -> Iterator[tuple[int, BenchConfig, bool]]:
    """(size, config, timed) in run order: per size, one warm-up call per configuration, then `repeats` rounds."""
    for size, configs in size_plan:
        if warmup:
            yield from ((size, config, False) for config in configs)
        for _ in range(repeats):
            yield from ((size, config, True) for config in configs)


def run_model(layout: str, size_plan: list[tuple[int, list[BenchConfig]]], *, repeats: int, device: torch.device,
              dtype: torch.dtype, width: int = FULL_WIDTH, warmup: bool = True, quiet_wait_s: float = QUIET_WAIT_S,
              retries: int = RETRIES, progress=None) -> tuple[list[Measurement], dict]:
    """Measure the configurations of every (size, configs) entry on one U-Net layout; returns measurements and facts.

    warmup=False skips the warm-up calls, for sizes where one call takes minutes; peak memory is then not measured.
    """
    unet = build_unet(layout, width).to(device, dtype)
    by_key: dict[tuple[int, str], Measurement] = {}
    with sdpa_attention():
        depths = self_attention_depths(unet)
        timer = LayerTimer(unet, depths, device)
        inputs_size, inputs = None, None
        try:
            for size, config, timed in _schedule(size_plan, repeats, warmup):
                if size != inputs_size:
                    latent = size // LATENT_SCALE
                    inputs_size, inputs = size, unet_inputs(unet, 1, latent, latent)
                key = (size, config.name)
                measurement = by_key.setdefault(key, Measurement(layout, size, config.name, config.label))
                applied = apply_config(unet, config)
                try:
                    with torch.inference_mode():
                        if timed:
                            measurement.samples.append(
                                _clean_timed_call(unet, inputs, device, timer, quiet_wait_s, retries))
                        else:
                            measurement.peak_bytes = _memory_call(unet, inputs, device)
                    measurement.engine_record = applied.record()
                finally:
                    applied.remove()
                if progress is not None:
                    progress(layout, size, config.name, timed)
        finally:
            timer.remove()
    facts = {
        "parameters": sum(p.numel() for p in unet.parameters()),
        "width": width,
        "attention_levels": _attention_levels(unet),
    }
    return list(by_key.values()), facts


def _attention_levels(unet: nn.Module) -> list[int]:
    import todo_ext

    return list(todo_ext.attention_levels(unet))


def count_calls(size_plan: list[tuple[int, list[BenchConfig]]], repeats: int, warmup: bool = True) -> int:
    """Total U-Net calls of run_model, for the progress bar."""
    return sum(1 for _ in _schedule(size_plan, repeats, warmup))


def _kv_reduction_by_depth(config: BenchConfig, size: int, levels: list[int]) -> dict[int, tuple[int, int]]:
    """(tokens, kv_tokens) at each depth the configuration shortens. ToMe, with the WebUI's max_downsample=1, merges
    only at latent/1, so nothing on SDXL, whose first self-attention is at latent/2."""
    import todo_ext

    latent = size // LATENT_SCALE
    if config.kind == "todo":
        return {
            plan.depth: (plan.tokens, plan.kv_tokens)
            for plan in todo_ext.plan_kv_tokens(config.todo, latent, latent, levels)
            if plan.kv_tokens < plan.tokens
        }
    if config.kind == "tome":
        if levels[0] != 0:
            return {}
        tokens = latent * latent
        dst = (latent // config.tome_stride) ** 2
        removed = min(int(tokens * config.tome_ratio), tokens - dst)
        return {0: (tokens, tokens - removed)} if removed > 0 else {}
    return {}


def summarise(measurements: list[Measurement], levels_by_model: dict[str, list[int]]) -> None:
    """Fill in medians, speedup, attention share, Amdahl bound and fraction of bound for every measurement.

    share s_d: median fraction of a baseline step spent in the attn1 modules of depth d.
    bound: 1 / ((1 - Σ s_d) + Σ s_d · kv_d / n_d) over the depths the configuration shortens, i.e. the speedup if
    those layers cost exactly their K/V token fraction and nothing else changed. It is optimistic for ToDo (the
    Q and output projections do not shrink) and ToMe also shortens the queries, so ToMe may exceed it.
    """
    baselines = {(m.model, m.size): m for m in measurements if m.config == "baseline"}
    for m in measurements:
        base = baselines[(m.model, m.size)]
        median = statistics.median(s.seconds for s in m.samples)
        base_median = statistics.median(s.seconds for s in base.samples)
        shares = {
            depth: statistics.median(s.attn1_seconds_by_depth.get(depth, 0.0) / s.seconds for s in base.samples)
            for depth in base.samples[0].attn1_seconds_by_depth
        }
        reduced = _kv_reduction_by_depth(CONFIGS_BY_NAME[m.config], m.size, levels_by_model[m.model])
        affected_share = sum(shares.get(d, 0.0) for d in reduced)
        bound = 1.0 / ((1.0 - affected_share) + sum(shares.get(d, 0.0) * kv / n for d, (n, kv) in reduced.items()))
        layer_base = statistics.median(sum(s.attn1_seconds_by_depth.get(d, 0.0) for d in reduced) for s in base.samples)
        layer_here = statistics.median(sum(s.attn1_seconds_by_depth.get(d, 0.0) for d in reduced) for s in m.samples)
        speedup = base_median / median
        own_cpu, base_own_cpu = (
            [s.own_cpu_seconds for s in samples if s.own_cpu_seconds is not None]
            for samples in (m.samples, base.samples)
        )
        m.derived = {
            "median_s": median,
            "speedup": speedup,
            "cpu_time_speedup": statistics.median(base_own_cpu) / statistics.median(own_cpu)
            if own_cpu and base_own_cpu else None,
            "peak_mib": None if m.peak_bytes is None else m.peak_bytes / 2**20,
            "baseline_peak_mib": None if base.peak_bytes is None else base.peak_bytes / 2**20,
            "attn_share": affected_share,
            "attn_share_by_depth": shares,
            "kv_tokens_by_depth": {d: {"tokens": n, "kv_tokens": kv} for d, (n, kv) in reduced.items()},
            "bound": bound,
            "fraction_of_bound": speedup / bound if reduced else None,
            "layer_speedup": layer_base / layer_here if reduced and layer_here > 0 else None,
            "todo_hook_share": statistics.median(s.todo_hook_seconds / s.seconds for s in m.samples)
            if m.config.startswith("todo") else None,
            "repeats": len(m.samples),
            "engine_record": m.engine_record,
            "max_other_cpu_share": max((s.other_cpu_share or 0.0 for s in m.samples), default=0.0),
        }
