"""Small stand-ins of the diffusion transformers ToDo attaches to, one module per host file, so that each keeps its
attention function under the module-level name its host module uses (ToDo swaps that name for the job).

Neo (Forge Neo `283cb2c4`): neo_attention (backend/attention.py), neo_args (backend/args.py), neo_utils
(backend/utils.py), neo_flux, neo_chroma, neo_lumina, neo_qwen, neo_wan (backend/nn/*.py). WebUI Forge (`dfdcbab6`):
forge_mmditx (backend/nn/mmditx.py). AUTOMATIC1111 (`82a973c0`): a1111_other_impls, a1111_mmdit
(modules/models/sd3/). Widths, heads and block counts are tiny; the math is real: RoPE as each host applies it,
softmax attention through torch's SDPA, the hosts' token order, padding and patching.
"""
