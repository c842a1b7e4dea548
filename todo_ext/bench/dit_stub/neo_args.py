"""Mirrors Forge Neo's backend/args.py `dynamic_args`: the process-wide dict through which Neo hands Flux Kontext and
Qwen-Image-Edit their reference latents (`ref_latents`, a list, empty by default)."""

dynamic_args: dict = {"ref_latents": []}
