"""ToDo and torch.compile: no compiled graph ever keeps ToDo (one job's settings, or ToDo after it was removed).

A model compiled before ToDo attaches is refused with a clear error (its graph would never run ToDo's hooks). A
model compiled while ToDo is attached is traced with every ToDo hook, patch and wrapper passing through: the graph
is the model's own, its output that of the plain model, and the record shows no call but marks the pass as run
under torch.compile, which the job's note says; the same model run eagerly gets ToDo as always. The tests trace
with dynamo's "eager" backend: the tracing is what decides what a graph holds, and it skips the minutes inductor
takes to generate code on a CPU.
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
from todo_ext.record import JobRecord

pytestmark = pytest.mark.usefixtures("attention_functions")
REFUSED = re.escape("runs compiled by torch.compile, and ToDo does not act inside compiled graphs")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(module, **options):
    return torch.compile(module, backend="eager", **options)


def note_of(attachment):
    job = JobRecord()
    job.attachments["first"].append(attachment)
    return job.note()


COMPILED_NOTE = ("the model ran under torch.compile in the first pass, and ToDo does not act inside compiled "
                 "graphs: that pass ran without it")


def marks_what_it_compiled(module):
    """Whether this torch marks the module behind a compiled wrapper (2.13 does, 2.1 does not)."""
    return getattr(module, "_is_torch_compile", False)


def test_a_unet_compiled_before_attach_is_refused_clearly():
    """`model.compile()` and the wrapper `torch.compile` returns are refused on every torch the hosts ship (both
    checked on 2.1.2 and 2.13); the module behind a wrapper the host keeps elsewhere, where torch marks it."""
    unet = build_unet("sd15", width=32)
    with torch.no_grad():
        compiled(unet)(*unet_inputs(unet, 1, 8, 8))
    if marks_what_it_compiled(unet):
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
    is refused rather than left unrun (where torch marks the module it compiled)."""
    unet = build_unet("sd15", width=32)
    x, t, c = unet_inputs(unet, 1, 16, 16)
    with sdpa_attention(), torch.no_grad():
        plain = unet(x, t, c)
        handle = todo_ext.apply(unet, ToDoConfig(ratio=0.75, max_depth=1))
        graph = compiled(unet)
        for _ in range(2):
            assert torch.equal(graph(x, t, c), plain)
        assert handle.record.calls == 0, "the compiled calls ran no ToDo hook"
        assert handle.record.compiled and note_of(handle) == COMPILED_NOTE
        eager = unet(x, t, c)
        assert not torch.allclose(eager, plain, atol=1e-4) and handle.record.downsampled == 10
        assert note_of(handle).endswith("ToDo was called only in the 10 attention calls that ran eagerly")
        handle.remove()
        assert torch.equal(graph(x, t, c), plain)
        if marks_what_it_compiled(unet):
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
    assert attachment.record.compiled, "the U-Net's hooks, traced, marked the pass"
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
    assert handle.record.downsampled == acted and handle.record.compiled
    torch.testing.assert_close(after, plain, atol=1e-5, rtol=1e-4)


def _drop_transformer_options_guards(guard_entries):
    """Forge Neo's Torch Compile Integrated guard filter (extensions-builtin/sd_forge_compile/scripts/compile.py
    `skip_torch_compile_dict`): no guard on anything reached through `transformer_options`."""
    return [("transformer_options" not in entry.name) for entry in guard_entries]


def test_under_neos_guard_filter_a_graph_traced_with_todo_serves_later_jobs_without_it():
    """Neo's Torch Compile Integrated compiles `diffusion_model` inside every `apply_model` call with guards on
    transformer_options dropped, so a graph traced with ToDo's patch in the options runs again for a job without
    it: ToDo's traced patch stores nothing (a store would be replayed into options that no longer hold it), and
    the pass is marked as compiled by the U-Net's hooks instead."""
    unet = build_unet("sd15", width=32)
    sd_model = forge_host.ForgeDiffusionEngine(unet)
    plain_patcher = sd_model.forge_objects.unet
    x, _, context = unet_inputs(unet, 1, 16, 16)
    sigma = forge_host.sigma_at_timestep(sd_model, 500)
    with torch.no_grad():
        plain = forge_host.calc_cond_uncond_batch(plain_patcher, x, sigma, context)
        attachment = forge.attach(sd_model, ToDoConfig(ratio=0.75), set())
        neo_options = {"guard_filter_fn": _drop_transformer_options_guards}
        plain_patcher.model.diffusion_model = compiled(unet, options=neo_options)
        try:
            with_todo = forge_host.calc_cond_uncond_batch(sd_model.forge_objects.unet, x, sigma, context)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            pytest.skip(f"this torch takes no guard_filter_fn ({error})")
        attachment.remove()
        without_todo = forge_host.calc_cond_uncond_batch(plain_patcher, x, sigma, context)
    torch.testing.assert_close(with_todo, plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(without_todo, plain, atol=1e-5, rtol=1e-4)
    assert attachment.record.calls == 0 and attachment.record.compiled
