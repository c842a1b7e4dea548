"""What every ToDo attach shares, whatever the model: the pass state its hooks fill and its attention sites read,
the hook type `remove_hooks` recognises, the handle that undoes an attach, and how ToDo keeps out of torch.compile.
`patch` builds the U-Net's sites on it, `dit` the diffusion transformers'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .config import ToDoConfig
from .record import ASIDE_CAUSES, PassRecord

log = logging.getLogger("todo_ext")


class UnsupportedModelError(ValueError):
    """ToDo cannot act on the model: neither an ldm/sgm U-Net with self-attention nor a diffusion transformer it
    knows (a Nunchaku model attends inside its own kernels)."""


def compiling() -> bool:
    """Whether torch.compile is tracing this code into a graph. ToDo stays out of compiled graphs: a graph that kept
    ToDo's Python decisions would freeze one job's settings (or ToDo itself, after removal) into every later call,
    and its per-call record would not run. So under tracing every hook, patch and wrapper passes through, the graph
    is the model's own, and the pass records no call of ToDo's, which the job's note then says."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling is not None and is_compiling())


def refuse_compiled(model: nn.Module) -> None:
    """Raise UnsupportedModelError for a model that torch.compile has compiled (`torch.compile(model)`, which marks
    the module and returns an OptimizedModule, or `model.compile()`): its graph would never run ToDo's hooks."""
    if (type(model).__name__ == "OptimizedModule" or getattr(model, "_compiled_call_impl", None) is not None
            or getattr(model, "_is_torch_compile", False)):
        raise UnsupportedModelError(f"ToDo: {type(model).__name__} runs compiled by torch.compile, and ToDo does not "
                                    "act inside compiled graphs")


class ToDoHook:
    """A hook callable that `remove` recognises by its `is_todo_hook` flag, even across module reloads; it does
    nothing while torch.compile traces it (see `compiling`)."""

    is_todo_hook = True

    def __init__(self, function: Callable[..., Any]):
        self.function = function

    def __call__(self, *args: Any) -> Any:
        if compiling():
            return None
        return self.function(*args)


class UnknownWindow(Exception):
    """Raised by a step-window reader that cannot place the step in the schedule; its message says why, in the words
    of the infotext's note ("the host tells no schedule")."""


WindowReader = Callable[[tuple, dict], bool]
"""Reads from a U-Net call's (args, kwargs) whether sampling is inside the step window; raises UnknownWindow where
it cannot."""

NO_SCHEDULE_POSITION = "the host told no position in the schedule"


class PassState:
    """What the current step and model call tell ToDo's attention sites (whether the step window is open, whether
    the call's input could be read, the host's options for the call) and what ToDo did in the pass (`record`).

    Host- and model-neutral: hooks on the model fill it from its inputs, the host glue decides the step window once
    per step (`begin_step`); the U-Net's sites (`patch.UNetPassState`) and the DiTs' (`dit`) extend it.
    """

    def __init__(self, config: ToDoConfig, warned: set[str]):
        self.config = config
        self.active = True
        """False once the attach is removed: anything of it the host still calls passes through."""
        self.in_window = True
        self.window_unknown: str | None = None
        """Why the step window of this step could not be decided (its calls then act as if inside it), or None."""
        self.unreadable_call = False
        """The U-Net's input of this call could not be read: its attention calls are counted as errors."""
        self.call_options: dict | None = None
        """The `transformer_options` the host passed to this U-Net call (Forge family), None where it passes none."""
        self.record = PassRecord()
        self._window_from_host = False
        self._warned = warned

    def begin_step(self, in_window: bool | None, why_unknown: str = NO_SCHEDULE_POSITION) -> None:
        """The host's step-window decision for the coming step's U-Net calls, made once per step before the U-Net
        runs. None where it could not be decided (`why_unknown` says why): the step's calls then act as if inside
        the window, and the record counts them with that cause."""
        self._window_from_host = True
        self._set_window(in_window, why_unknown)

    def begin_call(self, options: Any, read_window: Callable[[], bool]) -> None:
        """Start a U-Net call. Where no host decided the step window (`begin_step`), `read_window` reads it from
        the call's input (raising UnknownWindow where it cannot): one device read per U-Net call, for callers
        outside a WebUI."""
        self.unreadable_call = False
        self.call_options = options if isinstance(options, dict) else None
        if self.config.has_step_window and not self._window_from_host:
            try:
                self._set_window(read_window(), NO_SCHEDULE_POSITION)
            except UnknownWindow as unknown:
                self._set_window(None, str(unknown))

    def fail_call(self) -> None:
        """The U-Net's input could not be read: this call's attention runs exact and is counted as an error."""
        self.unreadable_call = True
        self.warn_once("unet-error", "could not read the U-Net input; attention runs unchanged", error=True)

    def _set_window(self, in_window: bool | None, why_unknown: str) -> None:
        self.window_unknown = why_unknown if in_window is None and self.config.has_step_window else None
        if self.window_unknown is not None:
            self.warn_once(f"window: {why_unknown}", f"step window not applied: {why_unknown}; ToDo acts on the "
                                                     "step as if it were inside the window")
        self.in_window = in_window is not False

    def sits_out(self) -> bool:
        """Whether this attention call stays exact for a reason of its whole U-Net call (the input unreadable, the
        step outside the window), counted as such; a call of a step whose window could not be decided goes on and
        is counted with that cause."""
        if self.unreadable_call:
            self.step_aside("error")
            return True
        if not self.in_window:
            self.record.outside_window += 1
            return True
        if self.window_unknown is not None:
            self.record.window_unknown[self.window_unknown] += 1
        return False

    def step_aside(self, cause: str) -> None:
        self.record.stepped_aside(cause)
        if cause != "error":
            self.warn_once(cause, f"stepped aside: {ASIDE_CAUSES[cause]}; ToDo leaves those calls exact")

    def fail_over(self) -> None:
        """An error inside ToDo during one attention call: counted, logged once, and that call runs exact."""
        self.step_aside("error")
        self.warn_once("attn-error", "downsampling failed; attention runs unchanged", error=True)

    def warn_once(self, kind: str, message: str, *, error: bool = False) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("ToDo: %s", message, exc_info=error)


class ToDoHandle:
    """What one attach added to a model; `remove()` takes exactly that off again."""

    def __init__(self, model: nn.Module, config: ToDoConfig, state: PassState, parts: list[Any]):
        self.model = model
        self.config = config
        self._state = state
        self._parts = parts
        """The hooks `remove()` takes off again."""

    @property
    def record(self) -> PassRecord:
        """What ToDo did since it was attached: grids received, calls downsampled, calls stepped aside and why."""
        return self._state.record

    @property
    def active(self) -> bool:
        return self._state.active

    def begin_step(self, in_window: bool | None, why_unknown: str = NO_SCHEDULE_POSITION) -> None:
        """The step window for the coming step, decided by the host once per step (see PassState.begin_step)."""
        self._state.begin_step(in_window, why_unknown)

    def remove(self) -> None:
        self._state.active = False
        for part in self._parts:
            part.remove()
        self._parts = []


def remove_hooks(model: nn.Module) -> int:
    """Remove every ToDo hook (pre and post) from `model` and its submodules, whoever added them (a copy of ToDo
    loaded before a UI reload included); returns how many."""
    removed = 0
    for module in model.modules():
        for hooks, extras in ((module._forward_pre_hooks, (module._forward_pre_hooks_with_kwargs,)),
                              (module._forward_hooks, (module._forward_hooks_with_kwargs,
                                                       module._forward_hooks_always_called))):
            for hook_id, hook in list(hooks.items()):
                if getattr(hook, "is_todo_hook", False):
                    del hooks[hook_id]
                    for extra in extras:
                        extra.pop(hook_id, None)
                    removed += 1
    return removed
