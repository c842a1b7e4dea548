"""What every host adapter hands the glue: one `Attachment`, the same on every host."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..passes import ToDoHandle
from ..record import PassRecord


class Attachment:
    """One attach of ToDo to the model a host samples with, so the glue never asks which host it runs on.

    `record` is what the engine did; `begin_step(sigma, denoiser)` decides the step window for the coming step from
    the values the host's sampler hands its denoiser callback (once per step, before the U-Net runs);
    `attached(sd_model)` tells whether the model sampling uses now still runs this attach (False after a model
    switch); `remove()` takes it off.
    """

    def __init__(self, handle: ToDoHandle, in_window: Callable[[Any, Any], bool | None],
                 runs_on: Callable[[Any], bool]):
        self.handle = handle
        self._in_window = in_window
        self._runs_on = runs_on

    @property
    def record(self) -> PassRecord:
        return self.handle.record

    def begin_step(self, sigma: Any, denoiser: Any) -> None:
        """A sigma the host's schedule cannot place leaves the window unknown: ignored, with one warning."""
        if not self.handle.config.has_step_window:
            self.handle.begin_step(True)
            return
        try:
            in_window = None if sigma is None else self._in_window(sigma, denoiser)
        except Exception:
            in_window = None
        self.handle.begin_step(in_window)

    def attached(self, sd_model: Any) -> bool:
        return self.handle.active and self._runs_on(sd_model)

    def remove(self) -> None:
        self.handle.remove()
