"""Small stand-ins of the diffusion transformers ToDo attaches to, one module per host file, so that each keeps its
attention function under the module-level name its host module uses (ToDo swaps that name for the job).

Neo (Forge Neo `283cb2c4`): neo_attention (backend/attention.py), neo_args (backend/args.py), neo_utils
(backend/utils.py), neo_flux, neo_chroma, neo_lumina, neo_qwen, neo_wan (backend/nn/*.py). Neo release 2.26
(exo101/sd-webui-forge-neo-v3 `5692d2d1`, folder webui/): neo226_args (backend/args.py), neo226_flux (Flux.1, Kontext,
Flux.2 Klein), neo226_chroma, neo226_wan, neo226_krea, neo226_anima, neo226_ernie (backend/nn/*.py), neo226_radial
(extensions-builtin/sd_forge_radial); its attention.py, lumina.py and qwen.py keep the contract of neo_attention,
neo_lumina and neo_qwen. WebUI Forge (`dfdcbab6`):
forge_mmditx (backend/nn/mmditx.py). AUTOMATIC1111 (`82a973c0`): a1111_other_impls, a1111_mmdit
(modules/models/sd3/). Widths, heads and block counts are tiny; the math is real: RoPE as each host applies it,
softmax attention through torch's SDPA, the hosts' token order, padding and patching.
"""
