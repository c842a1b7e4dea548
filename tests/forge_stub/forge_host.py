"""Stand-in of the WebUI Forge pieces that ToDo's glue and attn1 patch rely on, driving a real ldm UNetModel.

CI cannot install Forge, so each piece below names the Forge file and function it mirrors (Forge main `dfdcbab6`).
reForge (`3b56b268`) has the same patch channel (modules_forge/unet_patcher.py,
ldm_patched/modules/model_patcher.py) and runs attn1 patches the same way (ldm_patched/ldm/modules/attention.py
BasicTransformerBlock.forward), with the same local names.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import torch
from torch import nn


class Prediction(nn.Module):
    """Mirrors backend/modules/k_prediction.py Prediction (eps, linear schedule 0.00085..0.012, 1000 steps):
    the sigma <-> timestep conversion that KModel.apply_model and Kohya's hrfix use."""

    def __init__(self, linear_start=0.00085, linear_end=0.012, timesteps=1000):
        super().__init__()
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
        signal = torch.cumprod(1.0 - betas, dim=0)
        noise_to_signal = (1.0 - signal) / signal
        self.register_buffer("sigmas", noise_to_signal.sqrt().float())
        self.register_buffer("log_sigmas", (0.5 * noise_to_signal.log()).float())

    def timestep(self, sigma):
        """Mirrors Prediction.timestep: the index of the nearest log-sigma."""
        distance = (sigma.log().reshape(1, -1) - self.log_sigmas.reshape(-1, 1)).abs()
        return torch.argmin(distance, dim=0).reshape(sigma.shape)

    def sigma(self, timestep):
        """Mirrors Prediction.sigma: log-linear interpolation between schedule entries."""
        t = torch.clamp(timestep.float(), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def percent_to_sigma(self, percent):
        """Mirrors Prediction.percent_to_sigma."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


class PredictionContinuousEDM(nn.Module):
    """Mirrors backend/modules/k_prediction.py PredictionContinuousEDM (reForge: ldm_patched/modules/
    model_sampling.py ModelSamplingContinuousEDM), the schedule of EDM models such as Playground v2.5 and CosXL: a
    log-linear sigma range, and a U-Net timestep of 0.25 * log(sigma) instead of 0..999."""

    def __init__(self, sigma_min=0.002, sigma_max=120.0):
        super().__init__()
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.register_buffer("sigmas", torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp())

    def timestep(self, sigma):
        return 0.25 * sigma.log()

    def percent_to_sigma(self, percent):
        if not 0.0 < percent < 1.0:
            return 999999999.9 if percent <= 0.0 else 0.0
        low, high = math.log(self.sigma_min), math.log(self.sigma_max)
        return math.exp(low + (high - low) * (1.0 - percent))


def time_snr_shift(alpha, t):
    """Mirrors Neo's backend/modules/k_prediction.py time_snr_shift."""
    return t if alpha == 1.0 else alpha * t / (1 + (alpha - 1) * t)


class PredictionFlux(nn.Module):
    """Mirrors Neo's backend/modules/k_prediction.py PredictionFlux (Flux, Chroma): sigma in (0, 1] is the model's
    timestep, the sigmas an exponential time shift by `mu`, and `percent_to_sigma(p)` = 1 - p."""

    def __init__(self, mu=1.15, pseudo_timestep_range=10000):
        super().__init__()
        t = torch.arange(1, pseudo_timestep_range + 1, dtype=torch.float64) / pseudo_timestep_range
        self.register_buffer("sigmas", (math.exp(mu) / (math.exp(mu) + (1 / t - 1))).float())

    def timestep(self, sigma):
        return sigma

    sigma = timestep  # the identity both ways

    def percent_to_sigma(self, percent):
        return 1.0 - min(max(percent, 0.0), 1.0)


class PredictionDiscreteFlow(nn.Module):
    """Mirrors Neo's backend/modules/k_prediction.py PredictionDiscreteFlow (Lumina 2, Z-Image, Qwen-Image, Wan):
    timestep = 1000 * sigma, and the schedule's progress shifted by `shift` (`percent_to_sigma(p)` =
    time_snr_shift(shift, 1 - p), so sigma 0.75 is halfway at shift 3)."""

    def __init__(self, shift=3.0, multiplier=1000, timesteps=1000):
        super().__init__()
        self.shift, self.multiplier = shift, multiplier
        self.register_buffer("sigmas", self.sigma(torch.arange(1, timesteps + 1) / timesteps * multiplier))

    def timestep(self, sigma):
        return self.multiplier * sigma

    def sigma(self, timestep):
        fraction = timestep / self.multiplier
        return time_snr_shift(self.shift, fraction)

    def percent_to_sigma(self, percent):
        remaining = 1.0 - min(max(percent, 0.0), 1.0)
        return time_snr_shift(self.shift, remaining)


class KModel(nn.Module):
    """Mirrors backend/modules/k_model.py KModel: `diffusion_model`, `predictor`, and `apply_model`, which hands
    the model `predictor.timestep(sigma)` and the other conditions (Flux's `y`, ...) as keywords (the input/output
    scaling is left out: ToDo never sees it)."""

    def __init__(self, diffusion_model, predictor=None):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.predictor = predictor or Prediction()

    def apply_model(self, x, sigma, context, transformer_options, **extra_conds):
        return forge_unet_call(self.diffusion_model, x, self.predictor.timestep(sigma).float(), context,
                               transformer_options, **extra_conds)


class BaseModel(nn.Module):
    """Mirrors reForge's ldm_patched/modules/model_base.py BaseModel: as KModel, with the schedule kept as
    `model_sampling` (ldm_patched/modules/model_sampling.py ModelSamplingDiscrete: the same `timestep(sigma)`)."""

    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.model_sampling = Prediction()

    def apply_model(self, x, sigma, context, transformer_options):
        return forge_unet_call(self.diffusion_model, x, self.model_sampling.timestep(sigma).float(), context,
                               transformer_options)


def set_model_options_patch_replace(model_options, patch, name, block_name, number, transformer_index=None):
    """Mirrors backend/patcher/base.py set_model_options_patch_replace (copies transformer_options first)."""
    options = dict(model_options["transformer_options"])
    replaced = {kind: dict(blocks) for kind, blocks in options.get("patches_replace", {}).items()}
    where = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
    replaced.setdefault(name, {})[where] = patch
    model_options.update(transformer_options={**options, "patches_replace": replaced})
    return model_options


class UnetPatcher:
    """Mirrors backend/patcher/unet.py UnetPatcher (with backend/patcher/base.py ModelPatcher): the patch channel."""

    def __init__(self, model):
        self.model = model
        self.model_options = dict(transformer_options={})

    def clone(self):
        """Mirrors UnetPatcher.clone: same model, deep-copied model_options."""
        clone = UnetPatcher(self.model)
        clone.model_options = copy.deepcopy(self.model_options)
        return clone

    def set_model_patch(self, patch, name):
        """Mirrors ModelPatcher.set_model_patch: appends to transformer_options["patches"][name]."""
        patches = self.model_options["transformer_options"].setdefault("patches", {})
        patches[name] = [*patches.get(name, []), patch]

    def set_model_attn1_patch(self, patch):
        """Mirrors ModelPatcher.set_model_attn1_patch."""
        self.set_model_patch(patch, name="attn1_patch")

    def set_model_attn1_output_patch(self, patch):
        """Mirrors ModelPatcher.set_model_attn1_output_patch."""
        self.set_model_patch(patch, name="attn1_output_patch")

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        """Mirrors ModelPatcher.set_model_attn2_replace (IP-Adapter keeps its modules in such a patch)."""
        set_model_options_patch_replace(self.model_options, patch, "attn2", block_name, number, transformer_index)

    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None):
        """Mirrors ModelPatcher.set_model_attn1_replace."""
        self.model_options = set_model_options_patch_replace(self.model_options, patch, "attn1", block_name, number,
                                                             transformer_index)


class ReforgeUnetPatcher(UnetPatcher):
    """Mirrors reForge's ldm_patched/modules/model_patcher.py object patches: `add_object_patch` (its advanced model
    sampling puts an EDM or CosXL schedule there) and `get_model_object`, which sees them before the patcher is
    loaded, while `model.model_sampling` still holds the checkpoint's own schedule."""

    def __init__(self, model):
        super().__init__(model)
        self.object_patches = {}

    def clone(self):
        clone = ReforgeUnetPatcher(self.model)
        clone.model_options = copy.deepcopy(self.model_options)
        clone.object_patches = self.object_patches.copy()
        return clone

    def add_object_patch(self, name, obj):
        self.object_patches.update({name: obj})

    def get_model_object(self, name):
        """An object patch wins over the model's own attribute."""
        return self.object_patches[name] if name in self.object_patches else getattr(self.model, name)


class ForgeObjects:
    """Mirrors backend/diffusion_engine/base.py ForgeObjects (the U-Net part)."""

    def __init__(self, unet):
        self.unet = unet

    def shallow_copy(self):
        """Mirrors ForgeObjects.shallow_copy."""
        return ForgeObjects(self.unet)


class ForgeDiffusionEngine:
    """Mirrors backend/diffusion_engine/base.py ForgeDiffusionEngine as scripts see it: `forge_objects` and the
    copy the host resets it from before every pass; no `.model`."""

    def __init__(self, diffusion_model, model_class=KModel):
        self.forge_objects = ForgeObjects(UnetPatcher(model_class(diffusion_model)))
        for kept in ("forge_objects_original", "forge_objects_after_applying_lora"):
            setattr(self, kept, self.forge_objects.shallow_copy())


def _attention(q, k, v, heads):
    """Mirrors backend/attention.py attention_function (heads split, softmax attention, heads merged)."""
    batch, _, inner = q.shape
    q, k, v = (t.view(batch, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(batch, -1, inner)


def _transformer_block_forward(self, x, context=None, transformer_options=None):
    """Mirrors backend/nn/unet.py BasicTransformerBlock._forward on an ldm BasicTransformerBlock's modules: the
    attn1 patches get `extra_options`, which leaves out `patches` and `patches_replace`; each patch maps (hidden,
    keys' source, values' source) to new ones; an attn1 replacement is looked up by (block, index) first, then by
    block; the output patches run on attn1's projected output."""
    options = dict(transformer_options or {})
    patches = options.pop("patches", {})
    replacements = options.pop("patches_replace", {}).get("attn1", {})
    extra_options = {**options, "n_heads": self.attn1.heads}
    hidden = self.norm1(x)
    keys_from = values_from = hidden
    for patch in patches.get("attn1_patch", []):
        hidden, keys_from, values_from = patch(hidden, keys_from, values_from, extra_options)
    q, k, v = self.attn1.to_q(hidden), self.attn1.to_k(keys_from), self.attn1.to_v(values_from)
    where = options.get("block")
    if where is not None and (*where, options.get("block_index", 0)) in replacements:
        where = (*where, options.get("block_index", 0))
    replacement = replacements.get(where)
    out = _attention(q, k, v, self.attn1.heads) if replacement is None else replacement(q, k, v, extra_options)
    out = self.attn1.to_out(out)
    for patch in patches.get("attn1_output_patch", []):
        out = patch(out, extra_options)
    x = x + out
    x = self.attn2(self.norm2(x), context=context) + x
    return self.ff(self.norm3(x)) + x


_options_of_call: list[dict] = []


@contextlib.contextmanager
def _forge_layout(unet: nn.Module) -> Iterator[None]:
    """Makes a real ldm UNetModel keep transformer_options as Forge's IntegratedUNet2DConditionModel.forward does
    (backend/nn/unet.py): `original_shape` per call, `block` per input/middle/output block, `block_index` per
    transformer block (SpatialTransformer.forward), and runs each BasicTransformerBlock as Forge's."""
    handles = []
    named = [*((("input", i), b) for i, b in enumerate(unet.input_blocks)), (("middle", 0), unet.middle_block),
             *((("output", i), b) for i, b in enumerate(unet.output_blocks))]
    for key, block in named:
        handles.append(block.register_forward_pre_hook(
            lambda _m, _a, key=key: _options_of_call[-1].__setitem__("block", key)))
    originals = []
    for module in unet.modules():
        if type(module).__name__ == "SpatialTransformer":
            for index, transformer in enumerate(module.transformer_blocks):
                def forward(x, context=None, transformer=transformer, index=index):
                    options = _options_of_call[-1]
                    options["block_index"] = index
                    return _transformer_block_forward(transformer, x, context, options)
                originals.append(transformer)
                transformer.forward = forward
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for transformer in originals:
            del transformer.forward


def forge_unet_call(unet, x, timestep, context, transformer_options, **extra_conds):
    """One U-Net call with Forge's transformer_options bookkeeping (IntegratedUNet2DConditionModel.forward); a
    diffusion transformer (Flux, SD3, ...) runs its own forward, called as KModel.apply_model calls it: context,
    transformer_options and the other conditions as keywords."""
    transformer_options.update(original_shape=list(x.shape), transformer_index=0)
    if not hasattr(unet, "input_blocks"):
        return unet(x, timestep, context=context, transformer_options=transformer_options, **extra_conds)
    _options_of_call.append(transformer_options)
    try:
        with _forge_layout(unet):
            return unet(x, timestep, context, transformer_options=transformer_options)
    finally:
        _options_of_call.pop()


def calc_cond_uncond_batch(patcher, x, sigma, context, cond_or_uncond=(0,), model_options=None, **extra_conds):
    """Mirrors backend/sampling/sampling_function.py calc_cond_uncond_batch's transformer_options: a copy of the
    patcher's, plus `cond_or_uncond` and `sigmas` (the k-diffusion sigma of each batch entry); a
    `model_function_wrapper` gets apply_model and the call's arguments, as there. `extra_conds` are the model's
    other conditions (Flux's `y`)."""
    model_options = patcher.model_options if model_options is None else model_options
    transformer_options = {**model_options["transformer_options"], "cond_or_uncond": list(cond_or_uncond),
                           "sigmas": sigma}
    if "model_function_wrapper" in model_options:  # Neo's Spectrum (set_model_unet_function_wrapper)
        return model_options["model_function_wrapper"](
            lambda input_x, timestep_, **c: patcher.model.apply_model(input_x, timestep_, **c),
            {"input": x, "timestep": sigma,
             "c": {"context": context, "transformer_options": transformer_options, **extra_conds},
             "cond_or_uncond": list(cond_or_uncond)})
    return patcher.model.apply_model(x, sigma, context, transformer_options, **extra_conds)


def sigma_at_timestep(sd_model, timestep):
    """The sigma whose U-Net timestep is `timestep`, for a batch of one."""
    model = sd_model.forge_objects.unet.model
    schedule = model.predictor if hasattr(model, "predictor") else model.model_sampling
    return schedule.sigmas[int(timestep)].reshape(1)


class TomePatcher:
    """Mirrors backend/misc/tomesd.py TomePatcher (and reForge's ldm_patched/contrib/nodes_tomesd.py): an attn1
    patch that merges the queries only (K/V stay the full tokens) and an output patch that unmerges."""

    def __init__(self):
        self.unmerge = None

    def patch(self, model, ratio):
        from tomesd.merge import bipartite_soft_matching_random2d

        def merge_queries(q, k, v, extra_options):
            _, _, height, width = extra_options["original_shape"]
            if math.ceil(math.sqrt(height * width // q.shape[1])) > 1:
                self.unmerge = lambda y: y
                return q, k, v
            merge, self.unmerge = bipartite_soft_matching_random2d(q, width, height, 2, 2, int(q.shape[1] * ratio),
                                                                   no_rand=True)
            return merge(q), k, v

        def unmerge_output(out, extra_options):
            return self.unmerge(out)

        patched = model.clone()
        patched.set_model_attn1_patch(merge_queries)
        patched.set_model_attn1_output_patch(unmerge_output)
        return patched


def apply_token_merging(sd_model, ratio):
    """Mirrors modules/sd_models.py apply_token_merging (Forge and reForge)."""
    if ratio > 0:
        sd_model.forge_objects.unet = TomePatcher().patch(sd_model.forge_objects.unet, ratio)


def hypertile_patch(patcher, tiles_per_side=2):
    """Mirrors reForge's ldm_patched/contrib/nodes_hypertile.py HyperTile.patch at depth 0 with a fixed tiling: the
    queries are split into tiles (the batch grows), K/V are left as they were."""
    state = {}

    def tile_queries(q, k, v, extra_options):
        _, _, height, width = extra_options["original_shape"]
        if q.shape[1] != height * width:
            return q, k, v
        t = tiles_per_side
        b, _, c = q.shape
        q = q.view(b, t, height // t, t, width // t, c).permute(0, 1, 3, 2, 4, 5).reshape(b * t * t, -1, c)
        state["tiled"] = (b, height, width)
        return q, k, v

    def untile_output(out, extra_options):
        if "tiled" not in state:
            return out
        b, height, width = state.pop("tiled")
        t = tiles_per_side
        out = out.view(b, t, t, height // t, width // t, out.shape[-1]).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(b, height * width, -1)

    patched = patcher.clone()
    patched.set_model_attn1_patch(tile_queries)
    patched.set_model_attn1_output_patch(untile_output)
    return patched


def pag_attention(q, k, v, extra_options):
    """Mirrors extensions-builtin/sd_forge_perturbed_attention attn_proc: the identity attention, returns V."""
    return v


class SamplerLoop:
    """Mirrors the pass's sampler (modules/sd_samplers_kdiffusion.py KDiffusionSampler) as processing calls it:
    `sample` and `sample_img2img` run the sampling loop, here `sample(p, x)`, which calls the denoiser callbacks
    itself."""

    def __init__(self, sample):
        self._sample = sample

    def sample(self, p, x):
        return self._sample(p, x)

    def sample_img2img(self, p, x):
        return self._sample(p, x)


def _reset_forge_objects(sd_model):
    """What the host does before every pass: start again from the objects it kept after applying LoRAs."""
    kept = sd_model.forge_objects_after_applying_lora
    sd_model.forge_objects = kept.shallow_copy()


def process_images(p, sample, *, token_merging_ratio=0.0):
    """Mirrors the Forge order in modules/processing.py (StableDiffusionProcessingTxt2Img.sample and
    sample_hr_pass): each pass makes its sampler (`p.sampler`, sd_samplers.create_sampler), then `forge_objects` is
    reset from `forge_objects_after_applying_lora`, Token merging is applied, scripts' `process_before_every_sampling`
    run, and the sampler's `sample` (first pass) or `sample_img2img` (hires pass) is called; the hires pass runs
    process_before_every_sampling once more *before* that reset (on the first pass's objects). An exception in
    sampling propagates past every script hook (process_images keeps only the settings restore in its `finally`).
    `sample(p, x)` stands in for the sampling loop."""
    from modules import processing  # the WebUI stand-in's (tests/webui_stub), for the infotext

    p.scripts.before_process(p)
    images, infotexts = [], []
    generator = torch.Generator().manual_seed(p.seed)
    for batch_number in range(p.n_iter):
        p.scripts.before_process_batch(p, batch_number=batch_number)
        p.sampler = SamplerLoop(sample)
        x = torch.randn(1, 4, -(-p.height // 8), -(-p.width // 8), generator=generator)
        _reset_forge_objects(p.sd_model)
        apply_token_merging(p.sd_model, token_merging_ratio)
        p.scripts.process_before_every_sampling(p, x=x, noise=x, c=None, uc=None)
        samples = p.sampler.sample(p, x)
        if p.enable_hr:
            p.is_hr_pass = True
            p.sampler = SamplerLoop(sample)
            x = torch.randn(1, 4, -(-p.hr_upscale_to_y // 8), -(-p.hr_upscale_to_x // 8), generator=generator)
            p.scripts.process_before_every_sampling(p, x=x, noise=x, c=None, uc=None)
            _reset_forge_objects(p.sd_model)
            apply_token_merging(p.sd_model, token_merging_ratio)
            p.scripts.process_before_every_sampling(p, x=x, noise=x, c=None, uc=None)
            samples = p.sampler.sample_img2img(p, x)
            p.is_hr_pass = False
        images.append(samples)
        infotexts.append(processing.create_infotext(p))
    processed = processing.Processed(p, images, infotexts)
    p.scripts.postprocess(p, processed)
    return processed


class BarePatcher(UnetPatcher):
    """A patcher whose clone() keeps no model_options, as Neo's NunchakuPatcher.clone (backend/patcher/unet.py)
    does and a rewritten backend may: ToDo must not rely on clone() carrying the other patches over."""

    def clone(self):
        return BarePatcher(self.model)
