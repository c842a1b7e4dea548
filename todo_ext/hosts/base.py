"""What every host adapter hands the glue: one `Attachment`, the same on every host."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..passes import ToDoHandle, UnknownWindow
from ..record import PassRecord


class Attachment:
    """One attach of ToDo to the model a host samples with, so the glue never asks which host it runs on.

    `record` is what the engine did; `begin_step(sigma, denoiser)` decides the step window for the coming step from
    the values the host's sampler hands its denoiser callback (once per step, before the U-Net runs);
    `attached(sd_model)` tells whether the model sampling uses now still runs this attach (False after a model
    switch); `remove()` takes it off.
    """

    def __init__(self, handle: ToDoHandle, in_window: Callable[[Any, Any], bool], runs_on: Callable[[Any], bool]):
        self.handle = handle
        self._in_window = in_window
        self._runs_on = runs_on

    @property
    def record(self) -> PassRecord:
        return self.handle.record

    def begin_step(self, sigma: Any, denoiser: Any, step: int | None = None) -> None:
        """A step the host's schedule cannot place (no sigma, no schedule, the schedule raised) is not kept out of
        the window: its calls are counted with the cause, which the note states, and one warning is logged. `step`
        is the sampler's step index (the callback's `sampling_step`), which tells a new step from a second model
        evaluation of the same one."""
        if not self.handle.config.has_step_window:
            self.handle.begin_step(True, step=step)
            return
        if sigma is None:
            self.handle.begin_step(None, "the sampler told no sigma", step)
            return
        try:
            self.handle.begin_step(self._in_window(sigma, denoiser), step=step)
        except UnknownWindow as unknown:
            self.handle.begin_step(None, str(unknown), step)
        except Exception as error:
            self.handle.begin_step(None, f"the sampler's schedule raised {type(error).__name__}", step)

    def attached(self, sd_model: Any) -> bool:
        return self.handle.active and self._runs_on(sd_model)

    def remove(self) -> None:
        self.handle.remove()
