"""Stand-in of modules/sd_unet.py."""

current_unet = None
"""Mirrors sd_unet.current_unet: the active alternative U-Net (TensorRT, ...), which bypasses the torch modules."""
