"""Stand-in of modules/script_callbacks.py: the registrations the script makes and the calls that run them."""

callback_map = {
    "callbacks_app_started": [],
    "callbacks_ui_settings": [],
    "callbacks_before_ui": [],
    "callbacks_script_unloaded": [],
    "callbacks_cfg_denoiser": [],
    "callbacks_infotext_pasted": [],
}


class CFGDenoiserParams:
    """Mirrors script_callbacks.CFGDenoiserParams; `denoiser` is the CFGDenoiser, whose `p` is the job."""

    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond,
                 denoiser=None):
        self.__dict__.update(x=x, image_cond=image_cond, sigma=sigma, sampling_step=sampling_step,
                             total_sampling_steps=total_sampling_steps, text_cond=text_cond, text_uncond=text_uncond,
                             denoiser=denoiser)


def clear_callbacks():
    """Mirrors script_callbacks.clear_callbacks (run before scripts are reloaded)."""
    for registered in callback_map.values():
        registered.clear()


def on_app_started(callback, *, name=None):
    """Mirrors script_callbacks.on_app_started: callback(demo, app) once the FastAPI app exists."""
    callback_map["callbacks_app_started"].append(callback)


def on_ui_settings(callback, *, name=None):
    """Mirrors script_callbacks.on_ui_settings."""
    callback_map["callbacks_ui_settings"].append(callback)


def on_before_ui(callback, *, name=None):
    """Mirrors script_callbacks.on_before_ui."""
    callback_map["callbacks_before_ui"].append(callback)


def on_script_unloaded(callback, *, name=None):
    """Mirrors script_callbacks.on_script_unloaded."""
    callback_map["callbacks_script_unloaded"].append(callback)


def on_cfg_denoiser(callback, *, name=None):
    """Mirrors script_callbacks.on_cfg_denoiser: callback(params) in CFGDenoiser.forward before every U-Net call
    (after sd_samplers_common.apply_refiner may have loaded the refiner)."""
    callback_map["callbacks_cfg_denoiser"].append(callback)


def on_infotext_pasted(callback, *, name=None):
    """Mirrors script_callbacks.on_infotext_pasted: callback(infotext, params) may change the parsed params."""
    callback_map["callbacks_infotext_pasted"].append(callback)


def infotext_pasted_callback(infotext, params):
    """Mirrors script_callbacks.infotext_pasted_callback."""
    for callback in callback_map["callbacks_infotext_pasted"]:
        callback(infotext, params)


def cfg_denoiser_callback(params):
    """Mirrors script_callbacks.cfg_denoiser_callback."""
    for callback in callback_map["callbacks_cfg_denoiser"]:
        callback(params)


def app_started_callback(demo, app):
    """Mirrors script_callbacks.app_started_callback."""
    for callback in callback_map["callbacks_app_started"]:
        callback(demo, app)


def ui_settings_callback():
    """Mirrors script_callbacks.ui_settings_callback."""
    for callback in callback_map["callbacks_ui_settings"]:
        callback()


def before_ui_callback():
    """Mirrors script_callbacks.before_ui_callback: the callbacks in reverse order of registration."""
    for callback in reversed(callback_map["callbacks_before_ui"]):
        callback()


def script_unloaded_callback():
    """Mirrors script_callbacks.script_unloaded_callback: the callbacks in reverse order of registration."""
    for callback in reversed(callback_map["callbacks_script_unloaded"]):
        callback()
