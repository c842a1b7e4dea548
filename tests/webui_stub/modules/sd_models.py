"""Stand-in of modules/sd_models.py: loading another checkpoint replaces shared.sd_model."""

from modules import shared


def reload_model_weights(sd_model=None, info=None):
    """Mirrors sd_models.reload_model_weights: `info` here is the model to load (None keeps the loaded one)."""
    if info is not None:
        shared.sd_model = info
    return shared.sd_model


class SdModelData:
    """Mirrors sd_models.SdModelData: `sd_model` is the model loaded now, read without loading one."""

    @property
    def sd_model(self):
        return shared.sd_model


model_data = SdModelData()
