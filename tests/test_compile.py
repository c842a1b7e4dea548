"""ToDo and torch.compile: no compiled graph ever keeps ToDo (one job's settings, or ToDo after it was removed).

A model compiled before ToDo attaches is refused with a clear error (its graph would never run ToDo's hooks). A
model compiled while ToDo is attached is traced with every ToDo hook, patch and wrapper passing through: the graph
is the model's own, its output that of the plain model, and the record shows no call, which the job's note then
says; the same model run eagerly gets ToDo as always. The tests trace with dynamo's "eager" backend: the tracing
is what decides what a graph holds, and it skips the minutes inductor takes to generate code on a CPU.
"""

from __future__ import annotations

import re

import pytest
import torch
from dit_cases import BUILDERS
from forge_stub import forge_host

import todo_ext
from todo_ext import ToDoConfig
from todo_ext.bench.models import build_unet, sdpa_attention, unet_inputs
from todo_ext.hosts import forge

pytestmark = pytest.mark.usefixtures("attention_functions")
REFUSED = re.escape("runs compiled by torch.compile, and ToDo does not act inside compiled graphs")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(module):
    return torch.compile(module, backend="eager")


def test_a_unet_compiled_before_attach_is_refused_clearly():
    unet = build_unet("sd15", width=32)
    with torch.no_grad():
        compiled(unet)(*unet_inputs(unet, 1, 8, 8))
    with pytest.raises(todo_ext.UnsupportedModelError, match=REFUSED):
        todo_ext.apply(unet, ToDoConfig())
    other = build_unet("sd15", width=32)
    other.compile(backend="eager")
    with pytest.raises(todo_ext.UnsupportedModelError, match=REFUSED):
        todo_ext.apply(other, ToDoConfig())
    with pytest.raises(todo_ext.UnsupportedModelError, match=REFUSED):
        todo_ext.apply(compiled(build_unet("sd15", width=32)), ToDoConfig())


def test_hooks_traced_into_a_graph_pass_through_and_no_graph_keeps_todo():
    """A U-Net compiled while ToDo is attached: the compiled calls give the plain output and record nothing, the
    same U-Net called eagerly is downsampled, after remove() the graph is still the plain one, and a later attach
    is refused rather than left unrun."""
    unet = build_unet("sd15", width=32)
    x, t, c = unet_inputs(unet, 1, 16, 16)
    with sdpa_attention(), torch.no_grad():
        plain = unet(x, t, c)
        handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75, max_depth=1))
        graph = compiled(unet)
        for _ in range(2):
            assert torch.equal(graph(x, t, c), plain)
        assert handle.record.calls == 0, "the compiled calls ran no ToDo hook"
        eager = unet(x, t, c)
        assert not torch.allclose(eager, plain, atol=1e-4) and handle.record.downsampled == 10
        handle.remove()
        assert torch.equal(graph(x, t, c), plain)
        with pytest.raises(todo_ext.UnsupportedModelError, match=REFUSED):
            todo_ext.apply(unet, ToDoConfig(ratio=0.9375))
        assert torch.equal(graph(x, t, c), plain)


def test_the_forge_patch_traced_into_a_graph_passes_through():
    """A host that compiles the diffusion model after ToDo patched the U-Net patcher (as Forge Neo's later
    Torch Compile Integrated does): the traced attn1 patch passes through; the record shows no call."""
    unet = build_unet("sd15", width=32)
    sd_model = forge_host.ForgeDiffusionEngine(unet)
    x, _, context = unet_inputs(unet, 1, 16, 16)
    sigma = forge_host.sigma_at_timestep(sd_model, 500)
    with torch.no_grad():
        plain = forge_host.calc_cond_uncond_batch(sd_model.forge_objects.unet, x, sigma, context)
        attachment = forge.attach(sd_model, ToDoConfig(ratio=0.75), set())
        eager = forge_host.calc_cond_uncond_batch(sd_model.forge_objects.unet, x, sigma, context)
        acted = attachment.record.downsampled
        sd_model.forge_objects.unet.model.diffusion_model = compiled(unet)
        traced = forge_host.calc_cond_uncond_batch(sd_model.forge_objects.unet, x, sigma, context)
    assert acted == 5 and not torch.allclose(eager, plain, atol=1e-4)
    torch.testing.assert_close(traced, plain, atol=1e-5, rtol=1e-4)
    assert attachment.record.downsampled == acted, "nothing counted during the compiled call"
    with pytest.raises(todo_ext.UnsupportedModelError, match=REFUSED):
        forge.attach(sd_model, ToDoConfig(ratio=0.75), set())


@pytest.mark.parametrize("name", ["flux", "zimage", "wan"])
def test_a_dit_compiled_while_attached_runs_its_own_attention_and_records_nothing(name):
    case = BUILDERS[name]()
    with torch.no_grad():
        plain = case.run()
        handle = todo_ext.apply(case.model, ToDoConfig(ratio=0.75, max_depth=3))
        eager = case.run()
        acted = handle.record.downsampled
        traced = case.run(compiled(case.model))
        handle.remove()
        after = case.run(compiled(case.model))
    assert acted > 0 and not torch.allclose(eager, plain, atol=1e-4)
    torch.testing.assert_close(traced, plain, atol=1e-5, rtol=1e-4)
    assert handle.record.downsampled == acted
    torch.testing.assert_close(after, plain, atol=1e-5, rtol=1e-4)
