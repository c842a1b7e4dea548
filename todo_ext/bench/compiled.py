"""`python -m todo_ext.bench.compiled`: ToDo and torch.compile on the real ldm U-Net, seconds per step.

Rows, each one U-Net call (batch 1) under torch.no_grad, timed round-robin after a warm-up call (which compiles):

- `eager`: the U-Net as the WebUI runs it (SDPA attention);
- `eager ToDo`: `todo_ext.apply` at the given ratio;
- `compiled`: `torch.compile(unet)`, which is also what a user who compiles gets with ToDo attached (ToDo passes
  through while dynamo traces; tests/test_compile.py shows the output is the plain model's);
- `compiled ToDo-in-graph`: attn1 pre-hooks that do nothing but ToDo's downsampling with this size's plan (no
  record, no step window, no checks), compiled: the most that letting ToDo act inside compiled graphs could give.

dynamo's guards on module hooks are switched on here: by default (torch 2.1 to 2.13) dynamo does not guard module
hooks, and the hookless U-Net's graph would run for the hooked one. The CPU default (SD1.5 layout at 768 px,
inductor) compiles two graphs, minutes each on two cores.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from todo_ext import ToDoConfig, apply
from todo_ext.bench.models import FULL_WIDTH, LATENT_SCALE, build_unet, sdpa_attention, unet_inputs
from todo_ext.downsample import downsample_tokens
from todo_ext.patch import plan_kv_tokens, self_attention_sites, touched_sites


def traced_todo_hooks(unet: nn.Module, config: ToDoConfig, latent: int) -> list:
    """attn1 pre-hooks that hand each touched layer ToDo's downsampled K/V source for a square latent of side
    `latent`, planned once here: the work ToDo adds to a U-Net step, and nothing else."""
    sites = self_attention_sites(unet)
    levels = tuple(sorted({site.level for site in sites}))
    plans = {plan.level: plan for plan in plan_kv_tokens(config, latent, latent, levels)}

    def hook_for(level: int) -> Callable:
        plan = plans[level]

        def reduce(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return args, {**kwargs, "context": downsample_tokens(args[0], plan.grid, plan.factor, config.method)}

        return reduce

    return [site.block.attn1.register_forward_pre_hook(hook_for(site.level), with_kwargs=True)
            for site in touched_sites(sites, levels, config)]


def _timed(call: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--width", type=int, default=FULL_WIDTH, help="model_channels (320 = SD1.5)")
    parser.add_argument("--ratio", type=float, default=0.75)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args()
    torch._dynamo.config.skip_nnmodule_hook_guards = False  # see the module docstring

    config = ToDoConfig(ratio=args.ratio)
    latent = args.size // LATENT_SCALE
    eager_unet = build_unet("sd15", args.width)
    todo_unet = build_unet("sd15", args.width)
    apply(todo_unet, config)
    graph_unet = build_unet("sd15", args.width)
    traced_unet = build_unet("sd15", args.width)
    traced_todo_hooks(traced_unet, config, latent)
    inputs = unet_inputs(eager_unet, 1, latent, latent)
    rows = {
        "eager": eager_unet,
        "eager ToDo": todo_unet,
        "compiled": torch.compile(graph_unet, backend=args.backend),
        "compiled ToDo-in-graph": torch.compile(traced_unet, backend=args.backend),
    }
    times: dict[str, list[float]] = {name: [] for name in rows}
    with sdpa_attention(), torch.no_grad():
        outputs = {}
        for name, model in rows.items():
            warm = _timed(lambda model=model, name=name: outputs.__setitem__(name, model(*inputs)))
            print(f"{name}: first call (warm-up, compiles) {warm:.1f} s", flush=True)
        for _ in range(args.rounds):
            for name, model in rows.items():
                times[name].append(_timed(lambda model=model: model(*inputs)))
    error = (outputs["compiled ToDo-in-graph"] - outputs["eager ToDo"]).abs().max().item()
    print(f"\nSD1.5 layout, width {args.width}, {args.size} px, ToDo {args.ratio}, backend {args.backend}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; median of {args.rounds} rounds")
    eager, compiled = (statistics.median(times[name]) for name in ("eager", "compiled"))
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {median:.2f} s | {eager / median:.2f}x | {compiled / median:.2f}x |")
    print(f"largest difference, ToDo-in-graph vs eager ToDo output: {error:.2e}")


if __name__ == "__main__":
    main()
