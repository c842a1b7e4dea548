"""Stand-in of modules/processing.py: a txt2img job object and the order in which a job calls scripts."""

import torch
from modules.infotext_utils import quote


class StableDiffusionProcessingTxt2Img:
    """Mirrors the fields of processing.StableDiffusionProcessingTxt2Img that scripts read; `hr_upscale_to_x/y`
    as set by its init() for `hr_scale`."""

    def __init__(self, sd_model, scripts, script_args, *, width=64, height=64, enable_hr=False, hr_scale=2.0,
                 n_iter=1, seed=0):
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
        self.is_hr_pass = False
        self.extra_generation_params = {}
        self.is_api = False


class Processed:
    """Mirrors processing.Processed: the job's outputs and one infotext per image."""

    def __init__(self, p, images, infotexts):
        self.images = images
        self.infotexts = infotexts
        self.info = infotexts[0] if infotexts else ""


def create_infotext(p):
    """Mirrors the parameter line of processing.create_infotext: callables get the locals, None is dropped,
    values with `,` `:` or newlines are quoted."""
    generation_params = {"Steps": 1, "Seed": p.seed, **p.extra_generation_params}
    for key, value in generation_params.items():
        if callable(value):
            generation_params[key] = value(**locals())
    return ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in generation_params.items() if v is not None)


def _latent(p, width, height):
    generator = torch.Generator().manual_seed(p.seed)
    return torch.randn(1, 4, -(-height // 8), -(-width // 8), generator=generator)


def process_images(p, sample):
    """Mirrors the script calls of processing.process_images / process_images_inner and of
    StableDiffusionProcessingTxt2Img.sample / sample_hr_pass, with `sample(p, x)` standing in for the sampler.

    Like the WebUI: `postprocess` runs only when the job finishes, and an exception in sampling propagates (and
    leaves `is_hr_pass` as it was)."""
    p.scripts.before_process(p)
    images, infotexts = [], []
    for _ in range(p.n_iter):
        x = _latent(p, p.width, p.height)
        p.scripts.process_before_every_sampling(p, x=x, noise=x, c=None, uc=None)
        samples = sample(p, x)
        if p.enable_hr:
            p.is_hr_pass = True
            x = _latent(p, p.hr_upscale_to_x, p.hr_upscale_to_y)
            p.scripts.process_before_every_sampling(p, x=x, noise=x, c=None, uc=None)
            samples = sample(p, x)
            p.is_hr_pass = False
        images.append(samples)
        infotexts.append(create_infotext(p))
    processed = Processed(p, images, infotexts)
    p.scripts.postprocess(p, processed)
    return processed
