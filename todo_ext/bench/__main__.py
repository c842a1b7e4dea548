"""`python -m todo_ext.bench`: U-Net and DiT step benchmarks (baseline vs ToDo, and ToMe on U-Nets) and the attention
fidelity proxies.

The quick default (SD1.5 at 512 and 1024 px, a subset of configurations, 2 rounds) takes about five minutes on two
CPU cores; --full runs every configuration on SD1.5 and SDXL at 512 to 2048 px, which is meant for a GPU (on a CPU
an SD1.5 step at 2048 px alone takes minutes). --equal-quality times several ratios of ToDo and ToMe on SD1.5 at
1024 and 1536 px and gives each the fidelity proxy's error at that size, for speed at equal quality. The DiT rows
(full-width Flux blocks at 1024 px in the quick default; Flux and Z-Image at 1024, 1536 and 2048 px with --full or
--dit-sizes) come with the attention share and bound of each, and the joint-attention proxy with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from todo_ext.bench import dit_bench, dit_fidelity, fidelity, report, runner
from todo_ext.bench.models import FULL_WIDTH, LATENT_SCALE

QUICK_PLAN = (
    ("sd15", 512, ("baseline", "todo-0.75", "todo-auto", "tome-0.75")),
    ("sd15", 1024, ("baseline", "todo-0.75", "tome-0.75")),
)
"""At 512 px Auto keeps every token, so its row is ToDo's cost at factor 1; at 1024 px Auto equals todo-0.75."""
FULL_SIZES = (512, 1024, 1536, 2048)
EQUAL_QUALITY_SIZES = (1024, 1536)
FULL_MODELS = ("sd15", "sdxl")
QUICK_FIDELITY_GRIDS = (64, 128, 192)
FULL_FIDELITY_GRIDS = (64, 128, 192, 256)
QUICK_DIT_PLAN = (("flux",), (1024,), ("baseline", "todo-0.75"))
FULL_DIT_PLAN = (("flux", "zimage"), (1024, 1536, 2048), tuple(dit_bench.CONFIGS))
DIT_FIDELITY_GRIDS = (32, 64)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m todo_ext.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="all configurations, SD1.5 and SDXL, 512-2048 px")
    parser.add_argument("--equal-quality", action="store_true",
                        help="the ratio sweep of ToDo and ToMe on SD1.5 at 1024 and 1536 px, each configuration timed "
                             "and given its fidelity proxy error (quality.md, speed_vs_error.png)")
    parser.add_argument("--device", default="auto", help="auto (CUDA fp16 if present, else CPU fp32), cpu, cuda")
    parser.add_argument("--models", help="comma-separated layouts: sd15, sd21, sdxl")
    parser.add_argument("--sizes", help="comma-separated image sizes in px (multiples of 64)")
    parser.add_argument("--configs", help="comma-separated configurations: " + ", ".join(runner.CONFIGS_BY_NAME))
    parser.add_argument("--repeats", type=int, help="timed rounds per size (default 2 quick, 3 full)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the warm-up calls (for sizes where a call takes minutes); memory is not measured")
    parser.add_argument("--quiet-wait", type=float, default=runner.QUIET_WAIT_S,
                        help="seconds a timed call may wait for other processes to leave the CPU (0 = never wait)")
    parser.add_argument("--retries", type=int, default=runner.RETRIES,
                        help="CPU: extra tries of a timed call that other processes disturbed (the least disturbed "
                             "counts)")
    parser.add_argument("--width", type=int, default=FULL_WIDTH, help="U-Net model_channels (320 = real SD)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--fidelity-grids", help="comma-separated token grid sides for the fidelity proxy")
    parser.add_argument("--no-fidelity", action="store_true", help="skip the fidelity proxies")
    parser.add_argument("--dit-models", help="comma-separated DiTs: " + ", ".join(dit_bench.MODELS))
    parser.add_argument("--dit-sizes", help="comma-separated DiT image sizes in px")
    parser.add_argument("--dit-configs", help="comma-separated DiT configurations: " + ", ".join(dit_bench.CONFIGS))
    parser.add_argument("--no-dit", action="store_true", help="skip the DiT rows and the joint-attention proxy")
    parser.add_argument("--no-unet", action="store_true", help="skip the U-Net rows and the U-Net proxy")
    parser.add_argument("--no-timing", action="store_true", help="skip the step benchmark")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    return parser.parse_args(argv)


def _csv(text: str, cast=str) -> tuple:
    return tuple(cast(item.strip()) for item in text.split(",") if item.strip())


def _plan(args: argparse.Namespace) -> dict[str, list[tuple[int, list[str]]]]:
    """Per model, the (size, configurations) to run; explicit options override the quick or full defaults."""
    if not (args.full or args.equal_quality or args.models or args.sizes or args.configs):
        plan: dict[str, list[tuple[int, list[str]]]] = {}
        for model, size, configs in QUICK_PLAN:
            plan.setdefault(model, []).append((size, list(configs)))
        return plan
    models = _csv(args.models) if args.models else (FULL_MODELS if args.full else ("sd15",))
    default_sizes = FULL_SIZES if args.full else (EQUAL_QUALITY_SIZES if args.equal_quality else (512, 1024))
    sizes = _csv(args.sizes, int) if args.sizes else default_sizes
    default_configs = runner.EQUAL_QUALITY_CONFIGS if args.equal_quality else tuple(runner.CONFIGS_BY_NAME)
    configs = _csv(args.configs) if args.configs else default_configs
    unknown = sorted(set(configs) - set(runner.CONFIGS_BY_NAME))
    if unknown:
        raise SystemExit(f"unknown configuration {unknown[0]!r}; known: {', '.join(runner.CONFIGS_BY_NAME)}")
    if "baseline" not in configs:
        configs = ("baseline", *configs)
    return {model: [(size, list(configs)) for size in sizes] for model in models}


def _device(name: str) -> tuple[torch.device, torch.dtype]:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    return device, torch.float16 if device.type == "cuda" else torch.float32


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} logical CPUs"


def _progress_bar(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="call", file=sys.stderr, dynamic_ncols=True)


def run_timing(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    repeats = args.repeats or (3 if args.full else 2)
    plan = {
        model: [(size, [runner.CONFIGS_BY_NAME[name] for name in names]) for size, names in size_plan]
        for model, size_plan in _plan(args).items()
    }
    warmup = not args.no_warmup
    total = sum(runner.count_calls(size_plan, repeats, warmup) for size_plan in plan.values())
    measurements, facts_by_model = [], {}
    with _progress_bar(total, "U-Net steps") as bar:
        def progress(model, size, config, timed):
            bar.set_postfix_str(f"{model} {size}px {config}{'' if timed else ' (warm-up)'}")
            bar.update()

        for model, size_plan in plan.items():
            results, facts_by_model[model] = runner.run_model(
                model, size_plan, repeats=repeats, device=device, dtype=dtype, width=args.width, warmup=warmup,
                quiet_wait_s=args.quiet_wait, retries=args.retries, progress=progress)
            measurements.extend(results)
    runner.summarise(measurements, {m: f["attention_levels"] for m, f in facts_by_model.items()})
    if args.equal_quality:
        add_proxy_errors(measurements, plan, facts_by_model)
    meta = {
        "machine": _machine(device), "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": 1, "repeats": repeats,
        "models": facts_by_model, "memory": _memory_note(device),
        "bound": "1 / ((1 - s) + s * kv/n): the speedup if the shortened attn1 layers cost their K/V token fraction",
    }
    table = report.markdown_table(measurements)
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / "results.json", measurements, meta)
    report.plot_speedup(args.out / "speedup.png", measurements)
    report.plot_bound(args.out / "bound.png", measurements)
    other = max(m.derived["max_other_cpu_share"] for m in measurements)
    header = (f"Machine: {meta['machine']}; {meta['device']} {meta['dtype']}, torch {meta['torch']}, "
              f"{meta['threads']} threads, batch 1, median of {repeats} rounds. Other processes used up to "
              f"{other:.0%} of the CPU during a timed call.\n\n")
    (args.out / "results.md").write_text(header + table)
    print(header + table)
    quality = report.write_quality(args.out, measurements)
    if quality is not None:
        print(quality)
    return meta


def add_proxy_errors(measurements: list[runner.Measurement], plan: dict[str, list[tuple[int, list]]],
                     facts_by_model: dict[str, dict]) -> None:
    """Give every timed measurement the fidelity proxy's error of its configuration at its size: the plan's
    configuration lists, which drove the timing, drive the proxy too."""
    by_key = {(m.model, m.size, m.config): m for m in measurements}
    total = sum(len(size_plan) for size_plan in plan.values()) * len(fidelity.IMAGES)
    with _progress_bar(total, "fidelity proxy") as bar:
        for model, size_plan in plan.items():
            levels = facts_by_model[model]["attention_levels"]
            for size, configs in size_plan:
                errors = fidelity.configuration_errors(configs, size // LATENT_SCALE, levels,
                                                       progress=lambda latent, image: bar.update())
                for config in configs:
                    by_key[(model, size, config.name)].derived["proxy_mse"] = errors[config.name]


def _memory_note(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated during the step, minus what was allocated before it"
    return "peak of the running sum of CPU tensor allocations during the step (torch profiler, profile_memory)"


def run_fidelity(args: argparse.Namespace) -> None:
    grids = _csv(args.fidelity_grids, int) if args.fidelity_grids else (
        FULL_FIDELITY_GRIDS if args.full else QUICK_FIDELITY_GRIDS)
    with _progress_bar(len(grids) * len(fidelity.IMAGES), "fidelity") as bar:
        rows = fidelity.measure(grids, progress=lambda grid, image: bar.update())
    table = fidelity.markdown_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fidelity.md").write_text(table)
    (args.out / "fidelity.json").write_text(json.dumps([row.__dict__ for row in rows], indent=2) + "\n")
    print(table)


def run_dit(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    """The DiT rows and the joint-attention proxy (dit-results.md/.json, dit-fidelity.md/.json)."""
    models, sizes, configs = FULL_DIT_PLAN if args.full else QUICK_DIT_PLAN
    models = _csv(args.dit_models) if args.dit_models else models
    sizes = _csv(args.dit_sizes, int) if args.dit_sizes else sizes
    configs = _csv(args.dit_configs) if args.dit_configs else configs
    unknown = sorted((set(models) - set(dit_bench.MODELS)) | (set(configs) - set(dit_bench.CONFIGS)))
    if unknown:
        raise SystemExit(f"unknown DiT model or configuration {unknown[0]!r}")
    configs = configs if "baseline" in configs else ("baseline", *configs)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_timing:
        repeats = args.repeats or (3 if args.full else 2)
        warmup = not args.no_warmup
        total = len(models) * len(sizes) * len(configs) * (repeats + warmup)
        with _progress_bar(total, "DiT steps") as bar:
            def progress(model, size, config, timed):
                bar.set_postfix_str(f"{model} {size}px {config}{'' if timed else ' (warm-up)'}")
                bar.update()

            measurements = dit_bench.run(models, sizes, configs, repeats=repeats, device=device, dtype=dtype,
                                         warmup=warmup, quiet_wait_s=args.quiet_wait, progress=progress)
        other = max(m.other_cpu_share for m in measurements)
        header = (f"Machine: {_machine(device)}; {device} {str(dtype).removeprefix('torch.')}, torch "
                  f"{torch.__version__}, {torch.get_num_threads()} threads, batch 1, median of {repeats} rounds. "
                  f"Other processes used up to {other:.0%} of the CPU during a timed call.\n\n")
        costs = dit_bench.bias_costs(sizes, device, dtype)
        table = (header + dit_bench.markdown_table(measurements) + "\nThe proportional bias in one reduced Flux "
                 "attention call:\n\n" + dit_bench.bias_cost_table(costs))
        (args.out / "dit-results.md").write_text(table)
        (args.out / "dit-results.json").write_text(json.dumps(
            [{**m.__dict__, "attention_calls": None} for m in measurements], indent=2) + "\n")
        print(table)
    if not args.no_fidelity:
        rows = dit_fidelity.measure(DIT_FIDELITY_GRIDS)
        table = dit_fidelity.markdown_table(rows)
        (args.out / "dit-fidelity.md").write_text(table)
        (args.out / "dit-fidelity.json").write_text(json.dumps([row.__dict__ for row in rows], indent=2) + "\n")
        print(table)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    device, dtype = _device(args.device)
    started = time.perf_counter()
    if not args.no_unet:
        if not args.no_timing:
            run_timing(args, device, dtype)
        if not args.no_fidelity:
            run_fidelity(args)
    if not args.no_dit:
        run_dit(args, device, dtype)
    print(f"Done in {time.perf_counter() - started:.0f} s; results in {args.out}/")


if __name__ == "__main__":
    main()
