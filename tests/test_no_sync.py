"""No host-device sync inside the U-Net's forward: on a GPU a read of a device value (`.item()`, `float()`,
`torch.equal`, `bool()`, `.tolist()`, `.cpu()`), an op whose output size depends on values (`nonzero`,
`masked_select`, indexing with a boolean mask) or a copy between host and device stalls the launch queue on every
call. ToDo decides from shapes inside the forward, and the step window once per step, before the U-Net runs.

On CPU no copy crosses devices and `.cpu()` / `.tolist()` reach no aten op, so two modes record what would sync on
a GPU: a dispatch mode (value reads, value-sized outputs, boolean masks, copies whose devices differ, tensors built
from Python values) and a function mode (`tolist`, `cpu`, `numpy`, `__array__`). A first step may build ToDo's
caches (index tensors from Python ranges, moved to the device once); every later step must add nothing."""

from __future__ import annotations

import pytest
import torch
from dit_cases import BUILDERS
from forge_stub import forge_host
from test_beside_extensions import hijack_reference, set_reference_mode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import todo_ext
from todo_ext import ToDoConfig
from todo_ext.bench.models import build_unet, sdpa_attention, unet_inputs
from todo_ext.hosts import forge

aten = torch.ops.aten

VALUE_READS = {aten._local_scalar_dense.default, aten.item.default, aten.equal.default, aten.is_nonzero.default}
VALUE_SIZED = {aten.nonzero.default, aten.masked_select.default}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
FROM_PYTHON = {aten.lift_fresh.default, aten.scalar_tensor.default}
"""torch.tensor(...) and torch.as_tensor(<number>) reach aten as lift_fresh; torch.scalar_tensor as itself."""
HOST_READS = {torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__array__}


def _copy_devices(func, args, kwargs) -> tuple[torch.device, torch.device] | None:
    """(source, destination) of a copy op, None for any other op."""
    if func == aten._to_copy.default:
        return args[0].device, kwargs.get("device") or args[0].device
    if func == aten.copy_.default:
        return args[1].device, args[0].device
    return None


def _sync(func, args, kwargs, first_step: bool) -> str | None:
    """Why `func` would sync on a GPU, or None. At the first step, tensors built from Python values and copies to
    the device are allowed (a cache built once); reads back to the host never are."""
    if func in VALUE_READS or func in VALUE_SIZED:
        return str(func)
    if func in INDEXING and any(isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)
                                for index in args[1]):
        return f"{func} with a boolean mask"
    devices = _copy_devices(func, args, kwargs)
    if devices is not None and devices[0] != devices[1] and (devices[1].type == "cpu" or not first_step):
        return f"{func} {devices[0]} -> {devices[1]}"
    if func in FROM_PYTHON and not first_step:
        return f"{func} (a tensor from Python values)"
    return None


class DispatchSyncs(TorchDispatchMode):
    def __init__(self, first_step: bool):
        super().__init__()
        self.first_step = first_step
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = _sync(func, args, kwargs, self.first_step)
        if why is not None:
            self.found.append(why)
        return func(*args, **kwargs)


class HostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.found.append(f"Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))


def syncs(run, *, first_step: bool = False) -> list[str]:
    """What `run()` does that would sync on a GPU, as a later step (or, with `first_step`, as the first one)."""
    dispatch, host_reads = DispatchSyncs(first_step), HostReads()
    with host_reads, dispatch:
        run()
    return host_reads.found + dispatch.found


SYNCING = {
    "float()": (lambda x: float(x[0, 0, 0]), True),
    "torch.equal": (lambda x: torch.equal(x, x), True),
    "bool()": (lambda x: bool(x[0, 0, 0] > 0), True),
    ".tolist()": (lambda x: x[0, 0].tolist(), True),
    ".cpu()": (lambda x: x.cpu(), True),
    ".numpy()": (lambda x: x.detach().numpy(), True),
    "nonzero": (lambda x: (x > 0).nonzero(), True),
    "torch.where(mask)": (lambda x: torch.where(x > 0), True),
    "masked_select": (lambda x: x.masked_select(x > 0), True),
    "boolean mask index": (lambda x: x[x > 0], True),
    "boolean mask assignment": (lambda x: x.clone().__setitem__(x > 0, 0.0), True),
    "copy to another device": (lambda x: x.to("meta"), False),
    "copy_ across devices": (lambda x: torch.empty_like(x, device="meta").copy_(x), False),
    "torch.tensor": (lambda x: x + torch.tensor(1.0), False),
    "torch.as_tensor(number)": (lambda x: x * torch.as_tensor(0.5), False),
    "torch.scalar_tensor": (lambda x: x * torch.scalar_tensor(0.5), False),
}
"""Ways of syncing a hook could take, and whether a first step may (building a cache) do it."""


def test_the_recorder_sees_the_reads_it_looks_for():
    tensor = torch.ones(2)
    assert len(syncs(lambda: (float(tensor[0]), torch.equal(tensor, tensor), bool(tensor[0])))) == 3


@pytest.fixture
def unet():
    return build_unet("sd15", width=32)


@pytest.mark.parametrize("name", sorted(SYNCING))
def test_a_syncing_hook_is_caught(name):
    """The test can fail: a forward pre-hook that syncs in one of these ways is recorded in a later step, and in the
    first step too unless it only builds a tensor or copies one to the device."""
    sync, at_first_step = SYNCING[name]
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(1, 4, 8)
    assert syncs(lambda: layer(x)) == [], "the plain layer"

    def syncing_hook(_module, args):
        sync(args[0])

    layer.register_forward_pre_hook(syncing_hook)
    assert syncs(lambda: layer(x)), name
    assert bool(syncs(lambda: layer(x), first_step=True)) is at_first_step, name


WINDOW = ToDoConfig(ratio=0.75, start=0.2, end=0.8)


@pytest.mark.parametrize("config", [ToDoConfig(ratio=0.75, max_depth=3), WINDOW], ids=["no-window", "window"])
def test_the_hooks_sync_in_no_step_when_the_host_decides_the_step(unet, config):
    x, t, c = unet_inputs(unet, 2, 16, 24)
    with sdpa_attention():
        assert syncs(lambda: unet(x, t, c)) == [], "the plain U-Net"
        handle = todo_ext.apply(unet, config)
        handle.begin_step(True)
        assert syncs(lambda: unet(x, t, c), first_step=True) == []
        handle.begin_step(True)
        assert syncs(lambda: unet(x, t, c)) == []
    assert handle.record.downsampled > 0


def test_reference_mode_contexts_are_checked_by_shape_only(unet):
    hijack_reference(unet)
    x, t, c = unet_inputs(unet, 1, 16, 16)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    unet(x, t, c)
    set_reference_mode(unet, "read")
    assert syncs(lambda: unet(x, t, c)) == []
    assert handle.record.downsampled == 2 * 5 and not handle.record.aside


def test_without_a_host_the_window_is_read_once_per_unet_call_not_per_attention_call(unet):
    x, t, c = unet_inputs(unet, 1, 16, 16)
    handle = todo_ext.apply(unet, WINDOW)
    assert syncs(lambda: (unet(x, t, c), unet(x, t, c))) == [str(aten._local_scalar_dense.default)] * 2
    assert handle.record.downsampled == 2 * 5


@pytest.mark.parametrize("config", [ToDoConfig(ratio=0.75, max_depth=3), WINDOW], ids=["no-window", "window"])
def test_the_forge_patch_syncs_in_no_step(unet, config):
    sd_model = forge_host.ForgeDiffusionEngine(unet)
    x, _, context = unet_inputs(unet, 1, 16, 16)
    sigma = forge_host.sigma_at_timestep(sd_model, 500)

    def step():
        return forge_host.calc_cond_uncond_batch(sd_model.forge_objects.unet, x, sigma, context)

    with sdpa_attention():
        model_syncs = syncs(step)
        attachment = forge.attach(sd_model, config, set())
        attachment.begin_step(sigma, None)
        assert syncs(step, first_step=True) == model_syncs
        attachment.begin_step(sigma, None)
        assert syncs(step) == model_syncs
    assert attachment.record.downsampled > 0 and not attachment.record.aside


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_the_dit_wrapper_syncs_in_no_step_beyond_what_the_model_does(family):
    case = BUILDERS[family]()
    model_first, model_later = syncs(case.run, first_step=True), syncs(case.run)
    handle = todo_ext.apply(case.model, ToDoConfig(ratio=0.75, max_depth=3, start=0.2, end=0.8))
    handle.begin_step(True)
    assert syncs(case.run, first_step=True) == model_first
    handle.begin_step(True)
    assert syncs(case.run) == model_later
    handle.remove()
    assert handle.record.downsampled > 0
