"""The Forge-family adapter (todo_ext.hosts.forge) on diffusion transformers: Neo's Flux and Qwen-Image stand-ins
(tests/dit_stub) inside the Forge stand-in's ForgeDiffusionEngine and KModel (tests/forge_stub), called as Neo's
sampler calls them. No attn1 patch channel reaches a DiT's joint attention, so the adapter attaches through
`apply_dit`, with the step window from the model's own flow schedule."""

import pytest
import torch
from dit_cases import BUILDERS, todo_hooks
from forge_stub import forge_host

import todo_ext
from todo_ext.hosts import forge

pytestmark = pytest.mark.usefixtures("attention_functions")

EVERY_BLOCK = todo_ext.ToDoConfig(ratio=0.75, max_depth=3)


def engine(case, predictor):
    return forge_host.ForgeDiffusionEngine(case.model, model_class=lambda model: forge_host.KModel(model, predictor))


def sample(sd_model, case, sigma: float) -> torch.Tensor:
    """One model call as Neo's sampling_function makes it: the patcher's options plus the batch's sigmas, context and
    the other conditions as keywords, the model's timestep from the schedule."""
    x = case.args[0]
    context = case.kwargs.get("context", case.args[2] if len(case.args) > 2 else None)
    extra = {name: value for name, value in case.kwargs.items() if name != "context"}
    with torch.no_grad():
        return forge_host.calc_cond_uncond_batch(sd_model.forge_objects.unet, x, torch.full((x.shape[0],), sigma),
                                                 context, **extra)


def test_a_dit_attaches_through_its_attention_function_with_no_attn1_patch():
    case = BUILDERS["flux"]()
    sd_model = engine(case, forge_host.PredictionFlux())
    patcher = sd_model.forge_objects.unet
    original = case.attention
    plain = sample(sd_model, case, 0.5)
    assert torch.equal(plain, case.run())
    attachment = forge.attach(sd_model, EVERY_BLOCK, set())
    assert sd_model.forge_objects.unet is patcher and patcher.model_options == {"transformer_options": {}}
    assert case.attention is not original and case.attention.previous is original
    on_forge = sample(sd_model, case, 0.5)
    assert attachment.record.downsampled == 2 and not attachment.record.aside
    assert not torch.allclose(on_forge, plain, atol=1e-4)
    attachment.remove()
    direct = todo_ext.apply(case.model, EVERY_BLOCK)
    assert torch.equal(case.run(), on_forge)
    direct.remove()


@pytest.mark.parametrize(("name", "predictor", "start", "outside", "inside"), [
    ("flux", forge_host.PredictionFlux(), 0.3, 0.8, 0.6),
    ("qwen", forge_host.PredictionDiscreteFlow(shift=3.0), 0.5, 0.8, 0.7),
], ids=["flux-schedule", "shifted-flow-schedule"])
def test_the_step_window_follows_the_models_own_schedule(name, predictor, start, outside, inside):
    """Start 0.3 on Flux's schedule is sigma 0.7; start 0.5 on a flow schedule shifted by 3 is sigma 0.75, so sigma
    0.7 is already inside there (progress 1 - 0.7 = 0.3 would not be)."""
    case = BUILDERS[name]()
    sd_model = engine(case, predictor)
    plain_outside, plain_inside = sample(sd_model, case, outside), sample(sd_model, case, inside)
    config = todo_ext.ToDoConfig(ratio=0.75, max_depth=3, start=start)
    attachment = forge.attach(sd_model, config, set())
    assert torch.equal(sample(sd_model, case, outside), plain_outside)
    assert attachment.record.outside_window > 0 and attachment.record.downsampled == 0
    assert not torch.allclose(sample(sd_model, case, inside), plain_inside, atol=1e-4)
    acted = attachment.record.downsampled
    assert acted > 0
    attachment.begin_step(torch.tensor([outside]), None)
    assert torch.equal(sample(sd_model, case, inside), plain_inside)
    attachment.begin_step(torch.tensor([inside]), None)
    assert not torch.equal(sample(sd_model, case, outside), plain_outside)
    assert attachment.record.downsampled == 2 * acted


def test_attached_and_remove():
    case = BUILDERS["flux"]()
    sd_model = engine(case, forge_host.PredictionFlux())
    plain = sample(sd_model, case, 0.5)
    original = case.attention
    attachment = forge.attach(sd_model, EVERY_BLOCK, set())
    other_engine = engine(BUILDERS["flux"](seed=3), forge_host.PredictionFlux())
    assert attachment.attached(sd_model) and not attachment.attached(other_engine)
    assert todo_hooks(case.model) > 0
    attachment.remove()
    assert not attachment.attached(sd_model)
    assert case.attention is original and todo_hooks(case.model) == 0
    assert torch.equal(sample(sd_model, case, 0.5), plain)


def test_a_second_attach_in_the_same_pass_replaces_the_first():
    """Forge runs process_before_every_sampling twice in the hires pass: the second attach's settings apply, and the
    first attach's wrapper no longer acts."""
    case = BUILDERS["flux"]()
    sd_model = engine(case, forge_host.PredictionFlux())
    original = case.attention
    first = forge.attach(sd_model, EVERY_BLOCK, set())
    second = forge.attach(sd_model, todo_ext.ToDoConfig(ratio=0.9375, max_depth=3), set())
    assert case.attention.previous is original
    sample(sd_model, case, 0.5)
    assert first.record.calls == 0 and second.record.downsampled == 2
    assert {kv_grid for (_, _, kv_grid, _, _) in second.record.kv} == {(1, 2)}
    first.remove()
    sample(sd_model, case, 0.5)
    assert second.record.downsampled == 4
