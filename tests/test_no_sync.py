"""No host-device sync inside the U-Net's forward: on a GPU a read of a device value (`.item()`, `float()`,
`torch.equal`, `bool()`) stalls the launch queue on every call. ToDo decides from shapes inside the forward, and the
step window once per step, before the U-Net runs. A dispatch mode records every aten op that reads a value back."""

from __future__ import annotations

import pytest
import torch
from dit_cases import BUILDERS
from forge_stub import forge_host
from test_beside_extensions import hijack_reference, set_reference_mode
from torch.utils._python_dispatch import TorchDispatchMode

import todo_ext
from todo_ext import ToDoConfig
from todo_ext.bench.models import build_unet, sdpa_attention, unet_inputs
from todo_ext.hosts import forge

VALUE_READS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.item.default,
    torch.ops.aten.equal.default,
    torch.ops.aten.is_nonzero.default,
}


class ValueReads(TorchDispatchMode):
    """Records every aten op run inside it that hands a tensor's value back to Python."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in VALUE_READS:
            self.reads.append(func)
        return func(*args, **(kwargs or {}))


def value_reads(run):
    with ValueReads() as mode:
        run()
    return mode.reads


def test_the_recorder_sees_the_reads_it_looks_for():
    tensor = torch.ones(2)
    assert len(value_reads(lambda: (float(tensor[0]), torch.equal(tensor, tensor), bool(tensor[0])))) == 3


@pytest.fixture
def unet():
    return build_unet("sd15", width=32)


WINDOW = ToDoConfig(ratio=0.75, start=0.2, end=0.8)


@pytest.mark.parametrize("config", [ToDoConfig(ratio=0.75, max_depth=3), WINDOW], ids=["no-window", "window"])
def test_the_hooks_read_no_value_when_the_host_decides_the_step(unet, config):
    x, t, c = unet_inputs(unet, 2, 16, 24)
    with sdpa_attention():
        assert value_reads(lambda: unet(x, t, c)) == [], "the plain U-Net reads no value"
        handle = todo_ext.apply(unet, config)
        handle.begin_step(True)
        assert value_reads(lambda: unet(x, t, c)) == []
    assert handle.record.downsampled > 0


def test_reference_mode_contexts_are_checked_by_shape_only(unet):
    hijack_reference(unet)
    x, t, c = unet_inputs(unet, 1, 16, 16)
    handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75))
    unet(x, t, c)
    set_reference_mode(unet, "read")
    assert value_reads(lambda: unet(x, t, c)) == []
    assert handle.record.downsampled == 2 * 5 and not handle.record.aside


def test_without_a_host_the_window_is_read_once_per_unet_call_not_per_attention_call(unet):
    x, t, c = unet_inputs(unet, 1, 16, 16)
    handle = todo_ext.apply(unet, WINDOW)
    assert len(value_reads(lambda: (unet(x, t, c), unet(x, t, c)))) == 2
    assert handle.record.downsampled == 2 * 5


@pytest.mark.parametrize("config", [ToDoConfig(ratio=0.75, max_depth=3), WINDOW], ids=["no-window", "window"])
def test_the_forge_patch_reads_no_value_inside_the_step(unet, config):
    sd_model = forge_host.ForgeDiffusionEngine(unet)
    attachment = forge.attach(sd_model, config, set())
    x, _, context = unet_inputs(unet, 1, 16, 16)
    sigma = forge_host.sigma_at_timestep(sd_model, 500)
    attachment.begin_step(sigma, None)
    with sdpa_attention():
        assert value_reads(lambda: forge_host.calc_cond_uncond_batch(sd_model.forge_objects.unet, x, sigma,
                                                                     context)) == []
    assert attachment.record.downsampled > 0 and not attachment.record.aside


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_the_dit_wrapper_reads_no_value_beyond_what_the_model_reads(family):
    case = BUILDERS[family]()
    model_reads = value_reads(case.run)
    handle = todo_ext.apply(case.model, ToDoConfig(ratio=0.75, max_depth=3, start=0.2, end=0.8))
    handle.begin_step(True)
    assert value_reads(case.run) == model_reads
    handle.remove()
    assert handle.record.downsampled > 0
