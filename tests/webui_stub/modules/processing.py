"""Stand-in of modules/processing.py: a txt2img job object and the order in which a job calls scripts."""

import json
import types

import torch
from modules import script_callbacks, scripts, sd_models, shared
from modules.infotext_utils import quote


class StableDiffusionProcessingTxt2Img:
    """Mirrors the fields of processing.StableDiffusionProcessingTxt2Img that scripts read: `sd_model` is the
    property that returns shared.sd_model (its setter ignores the constructor's argument), `hr_upscale_to_x/y`
    as set by its init() for `hr_scale`; `scripts` is None for jobs that run no scripts."""

    def __init__(self, sd_model, scripts, script_args, *, width=64, height=64, enable_hr=False, hr_scale=2.0,
                 n_iter=1, seed=0, firstpass_image=None, hr_checkpoint_info=None):
        self.sd_model = sd_model
        self.scripts = scripts
        self.script_args = list(script_args)
        self.width = width
        self.height = height
        self.enable_hr = enable_hr
        self.hr_upscale_to_x = int(width * hr_scale)
        self.hr_upscale_to_y = int(height * hr_scale)
        self.n_iter = n_iter
        self.seed = seed
        self.firstpass_image = firstpass_image
        self.hr_checkpoint_info = hr_checkpoint_info
        self.is_hr_pass = False
        self.extra_generation_params = {}
        self.is_api = False

    sd_model = property(lambda self: shared.sd_model, lambda self, value: None,
                        doc="The WebUI's loaded model; setting it is ignored, as in the WebUI.")


class Processed:
    """Mirrors processing.Processed: the job's outputs and one infotext per image."""

    def __init__(self, p, images, infotexts):
        self.images, self.infotexts, self.extra_generation_params = images, infotexts, p.extra_generation_params
        self.info = infotexts[0] if infotexts else ""

    def js(self):
        """Mirrors Processed.js: the API's `info`, with the job's own extra_generation_params dict (read after
        postprocess) and anything JSON cannot hold, callables included, as null."""
        return json.dumps({"infotexts": self.infotexts, "extra_generation_params": self.extra_generation_params},
                          default=lambda unserialisable: None)


def create_infotext(p):
    """Mirrors the parameter line of processing.create_infotext: callables get the locals, None is dropped,
    values with `,` `:` or newlines are quoted."""
    params = {"Steps": 1, "Seed": p.seed, **p.extra_generation_params}
    params = {key: value(p=p, generation_params=params) if callable(value) else value for key, value in params.items()}
    return ", ".join(key if key == value else f"{key}: {quote(value)}" for key, value in params.items()
                     if value is not None)


def _latent(p, width, height):
    """The pass's noise at the latent size the WebUI uses: pixels // 8 (processing.py `opt_f`), truncated."""
    generator = torch.Generator().manual_seed(p.seed)
    return torch.randn(1, 4, height // 8, width // 8, generator=generator)


class Sampler:
    """Mirrors the sampler that sd_samplers.create_sampler makes for each pass (sd_samplers_kdiffusion.py
    KDiffusionSampler): StableDiffusionProcessingTxt2Img.sample and sample_hr_pass set it as `p.sampler` before the
    scripts' process_before_every_sampling and call its `sample` (first pass) or `sample_img2img` (hires pass)
    right after; nothing around that call catches what it raises. `sample(p, x)` stands for its sampling loop, which
    CFGDenoiser.forward (modules/sd_samplers_cfg_denoiser.py) enters through the cfg_denoiser callbacks before the
    U-Net call of every job, with or without scripts."""

    def __init__(self, sample):
        self._sample = sample

    def sample(self, p, x):
        return self._run(p, x)

    def sample_img2img(self, p, x):
        return self._run(p, x)

    def _run(self, p, x):
        denoiser = types.SimpleNamespace(p=p)
        script_callbacks.cfg_denoiser_callback(
            script_callbacks.CFGDenoiserParams(x, None, None, 0, 1, None, None, denoiser=denoiser))
        return self._sample(p, x)


def process_images(p, sample):
    """Mirrors the script calls of processing.process_images / process_images_inner and of
    StableDiffusionProcessingTxt2Img.sample / sample_hr_pass (before_process_batch once per batch), with
    `sample(p, x)` standing in for the sampling loop of each pass's `p.sampler`.

    Like the WebUI: scripts run only when `p.scripts` is set; the selected checkpoint is (re)loaded after
    `before_process`, and the hires checkpoint before the hires pass; with a `firstpass_image` and hires fix the
    first pass is not sampled; `postprocess_image` runs per image before its infotext is written; `postprocess`
    runs only when the job finishes, and an exception in sampling propagates past every script hook (process_images
    keeps only the settings restore in its `finally`) and leaves `is_hr_pass` as it was."""
    if p.scripts is not None:
        p.scripts.before_process(p)
    sd_models.reload_model_weights()
    images, infotexts = [], []
    for batch_number in range(p.n_iter):
        if p.scripts is not None:
            p.scripts.before_process_batch(p, batch_number=batch_number)
        samples = None
        if p.firstpass_image is None or not p.enable_hr:
            p.sampler = Sampler(sample)
            x = _latent(p, p.width, p.height)
            if p.scripts is not None:
                p.scripts.process_before_every_sampling(p, x=x, noise=x, c=None, uc=None)
            samples = p.sampler.sample(p, x)
        if p.enable_hr:
            sd_models.reload_model_weights(info=p.hr_checkpoint_info)
            p.is_hr_pass = True
            p.sampler = Sampler(sample)
            x = _latent(p, p.hr_upscale_to_x, p.hr_upscale_to_y)
            if p.scripts is not None:
                p.scripts.process_before_every_sampling(p, x=x, noise=x, c=None, uc=None)
            samples = p.sampler.sample_img2img(p, x)
            p.is_hr_pass = False
        if p.scripts is not None:
            postprocessed = scripts.PostprocessImageArgs(samples)
            p.scripts.postprocess_image(p, postprocessed)
            samples = postprocessed.image
        images.append(samples)
        infotexts.append(create_infotext(p))
    processed = Processed(p, images, infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
    return processed
