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
    since dynamo does not guard module hooks by default and Forge Neo's Torch Compile Integrated drops every guard
    on `transformer_options`, where ToDo's attn1 patch sits; and its per-call record would not run. So under
    tracing every hook, patch and wrapper passes through, and the pass records that the model ran compiled.
    Newer torch tells it through `torch.compiler.is_compiling`; torch 2.1 (A1111 v1.10.1 pins 2.1.2) has not got
    that yet and tells it only through `torch._dynamo.is_compiling`."""
    is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
    return bool(is_compiling())


def refuse_compiled(model: nn.Module) -> None:
    """Raise UnsupportedModelError for a model that torch.compile has compiled: its graph would never run ToDo's
    hooks. torch has no public query for it; what torch sets is checked: the OptimizedModule that
    `torch.compile(model)` returns, `_compiled_call_impl` that `model.compile()` sets (torch 2.1 on), and the
    `_is_torch_compile` mark that newer torch (2.13 here, not 2.1) also puts on the module `torch.compile` wrapped.
    On torch 2.1 a module whose compiled wrapper the host keeps elsewhere is not recognised; its traced hooks pass
    through (`compiling`) and the pass records that it ran compiled, or, for a graph traced before ToDo attached,
    that ToDo was never called."""
    if (type(model).__name__ == "OptimizedModule" or getattr(model, "_compiled_call_impl", None) is not None
            or getattr(model, "_is_torch_compile", False)):
        raise UnsupportedModelError(f"ToDo: {type(model).__name__} runs compiled by torch.compile, and ToDo does not "
                                    "act inside compiled graphs")


class _TracedThrough:
    """Whether ToDo's code ran inside a compiled graph (passing through) since a pass last read it."""

    ran = False


TRACED_THROUGH = _TracedThrough()


def pass_through_traced() -> None:
    """Called where ToDo's code is reached while torch.compile traces: ToDo passes through there. dynamo replays
    this store after every run of the graph (a constant stored into a module global, nothing read: no guard, no
    recompile), so a pass that runs a cached graph is marked too. It goes to a global, not to the pass's state,
    because the graph would reach the state through the hook that holds it: on torch 2.1 a graph traced with the
    hook still runs after `remove()` took the hook off and then fails (KeyError) looking for it."""
    TRACED_THROUGH.ran = True


class ToDoHook:
    """A hook callable that `remove` recognises by its `is_todo_hook` flag, even across module reloads; while
    torch.compile traces it, it does nothing but mark that (see `compiling`)."""

    is_todo_hook = True

    def __init__(self, function: Callable[..., Any]):
        self.function = function

    def __call__(self, *args: Any) -> Any:
        if compiling():
            pass_through_traced()
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
        self._model_ran_in_step = False
        self._step: int | None = None
        self._warned = warned
        TRACED_THROUGH.ran = False

    def begin_step(self, in_window: bool | None, why_unknown: str = NO_SCHEDULE_POSITION,
                   step: int | None = None) -> None:
        """The host's step-window decision for the coming step's U-Net calls, made once per step before the U-Net
        runs. None where it could not be decided (`why_unknown` says why): the step's calls then act as if inside
        the window, and the record counts them with that cause. `step`, the sampler's step index where the host
        tells it: a second call for the same index (a second-order sampler's second model evaluation) is no new
        step."""
        self._window_from_host = True
        if step is None or step != self._step:
            self._step = step
            self._model_ran_in_step = False
            self.record.steps += 1
        self._set_window(in_window, why_unknown)

    def begin_call(self, options: Any, read_window: Callable[[], bool]) -> None:
        """Start a U-Net call. Where no host decided the step window (`begin_step`), `read_window` reads it from
        the call's input (raising UnknownWindow where it cannot): one device read per U-Net call, for callers
        outside a WebUI."""
        self.unreadable_call = False
        self.call_options = options if isinstance(options, dict) else None
        if self._window_from_host and not self._model_ran_in_step:
            self._model_ran_in_step = True
            self.record.steps_run += 1
        if self.config.has_step_window and not self._window_from_host:
            try:
                self._set_window(read_window(), NO_SCHEDULE_POSITION)
            except UnknownWindow as unknown:
                self._set_window(None, str(unknown))

    def take_traced(self) -> None:
        """Moves the mark of graphs that ran ToDo's code traced through into this pass's record: the WebUIs run
        one pass at a time, and the pass running now is the one that reads it."""
        if TRACED_THROUGH.ran:
            self.record.compiled = True
            TRACED_THROUGH.ran = False

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
        """What ToDo did since it was attached: grids received, calls downsampled, calls stepped aside and why,
        whether the model ran compiled."""
        if self._state.active:
            self._state.take_traced()
        return self._state.record

    @property
    def active(self) -> bool:
        return self._state.active

    def begin_step(self, in_window: bool | None, why_unknown: str = NO_SCHEDULE_POSITION,
                   step: int | None = None) -> None:
        """The step window for the coming step, decided by the host once per step (see PassState.begin_step)."""
        self._state.begin_step(in_window, why_unknown, step)

    def remove(self) -> None:
        if self._state.active:
            self._state.take_traced()
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
