"""ToDo on the model families of Forge Neo 2.26 (the neo226_* stand-ins): Flux.2 Klein on its packed latent's own
grid with its references kept, Ernie-Image's image-first sequence, Anima's self-attention alone, Chroma through
flux.py, Wan beside RadialAttention's per-step reassignment of `wan.attention`, and the classes ToDo does not know.
The formula on every family's joint calls is in test_dit.py (its cases include these stand-ins)."""

import math

import pytest
import torch
from dit_cases import (
    BUILDERS,
    TEXT,
    Recorder,
    assert_formula,
    kept_positions,
    klein,
    reduced_grid,
    references,
    wan226,
)

import todo_ext
from todo_ext import dit
from todo_ext.bench.dit_stub import neo226_chroma, neo226_flux, neo226_radial, neo226_wan
from todo_ext.bench.models import build_unet, unet_inputs

pytestmark = pytest.mark.usefixtures("attention_functions")


def every_block(**settings) -> todo_ext.ToDoConfig:
    return todo_ext.ToDoConfig(max_depth=3, **settings)


def test_klein_acts_on_its_packed_latent_grid_and_keeps_its_references():
    """Klein's 7x10 latent arrives packed and is patched at 1: 70 image tokens, not a 4x5 grid at patch 2 with
    the other 50 taken for references; its 4x6 reference latent is kept after the image."""
    case = klein()
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    case.run()
    assert handle.record.kv_text() == "img 7x10->4x5 (2x) + 8 text + 24 ref kept in 2 calls; bias as mask in 2 calls"


def test_tokens_the_input_does_not_tell_are_never_counted_as_references():
    """A hook after ToDo's that hands Klein a reference latent ToDo's reading of the input cannot see: the calls'
    token count then fits no layout read from the input, and ToDo steps aside rather than call the rest references
    (or image tokens references): the output is the one without ToDo."""
    case = klein()
    hidden = torch.randn(1, 8, 3, 3)

    def add_reference(_module, args, kwargs):
        return args, {**kwargs, "ref_latents": [hidden]}

    adding = case.model.register_forward_pre_hook(add_reference, with_kwargs=True)
    plain = case.run()
    adding.remove()
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    case.model.register_forward_pre_hook(add_reference, with_kwargs=True)
    assert torch.equal(case.run(), plain)
    assert handle.record.aside == {"grid": 2} and handle.record.downsampled == 0


def test_klein_steps_aside_where_its_patch_embedder_takes_other_channels_than_its_input():
    """The grid is read at the model's patch size only where its patch embedder takes exactly the channels of one
    patch of the input (Klein: 128 = 128 x 1 x 1): a model fed otherwise is left exact, its grid unread."""
    case = klein()
    plain = case.run()
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    case.model.patch_size = 2
    assert dit.family_of(case.model).shapes(case.model, case.args, case.kwargs) == []
    case.model.patch_size = 1
    assert not torch.equal(case.run(), plain)
    handle.remove()
    assert torch.equal(case.run(), plain)


def test_an_image_first_sequence_is_never_read_text_first():
    """Ernie-Image attends over [image, text]: the text is kept at the end and the image grid downsampled at the
    start; the same token count read text-first would keep other keys."""
    case = BUILDERS["ernie"]()
    below = Recorder(case.home, case.function)
    handle = todo_ext.apply(case.model, every_block(ratio=0.75, method="nearest-exact"))
    above = Recorder(case.home, case.function)
    case.run()
    image_first = kept_positions(0, case.grid, TEXT, 2, "nearest-exact")
    assert image_first != kept_positions(TEXT, case.grid, 0, 2, "nearest-exact")
    assert len(above.calls) == handle.record.downsampled == len(case.model.layers)
    for full, reduced in zip(above.calls, below.calls, strict=True):
        assert torch.equal(reduced.k, full.k[:, image_first]) and torch.equal(reduced.v, full.v[:, image_first])
        assert_formula(full, 0, case.grid, TEXT, method="nearest-exact")
    assert handle.record.kv_text() == "img 7x10->4x5 (2x) + 8 text kept in 2 calls; bias as mask in 2 calls"


def test_anima_acts_on_its_self_attention_and_leaves_its_cross_attention_exact():
    """Anima's self-attention is over the image alone (reference latents are further frames of its grid); its
    cross-attention from the image to the text is no site of ToDo's."""
    case = BUILDERS["anima"]()
    original = case.attention
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    recorder = Recorder(case.home, case.function)
    with references([torch.randn(1, 4, 1, 7, 10)]):
        case.model(*case.args, **case.kwargs)
    self_calls = [call for call in recorder.calls if call.q.shape[2] == call.k.shape[2]]
    cross_calls = [call for call in recorder.calls if call.q.shape[2] != call.k.shape[2]]
    assert len(self_calls) == len(cross_calls) == len(case.model.blocks) == handle.record.downsampled
    for call in cross_calls:
        assert call.k.shape[2] == TEXT
        assert torch.equal(call.out, original(call.q, call.k, call.v, *call.args, **call.kwargs))
    for call in self_calls:
        assert_formula(call, 0, (2, 4, 5), 0)
    calls = len(self_calls)
    assert handle.record.kv_text() == f"img 2x4x5->2x2x3 (2x) in {calls} calls; bias as mask in {calls} calls"


def test_chroma_of_neo226_attaches_to_flux_py_where_its_blocks_attend():
    assert not hasattr(neo226_chroma, "attention_function") and not hasattr(neo226_chroma, "attention")
    case = BUILDERS["chroma-226"]()
    assert dit.family_of(case.model).home(case.model) is neo226_flux
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    case.run()
    assert handle.record.downsampled == 2 and not handle.record.aside


DENSE_BLOCK = 1


def radial_run(case, sparse_step: bool) -> torch.Tensor:
    with torch.no_grad():
        return neo226_radial.radial_model_call(case.model, DENSE_BLOCK, sparse_step, *case.args)


def test_todo_and_radial_attention_in_one_job_neither_undoes_the_other():
    """RadialAttention sets `wan.attention` before every model call: to its sparse wrapper on its sparse steps, to
    the function it captured at import on the others. ToDo puts its wrapper back on top at each model call: on a
    dense step it acts in every block; on a sparse step in the blocks Radial leaves dense, and it steps aside in
    the others, whose sparse kernel gets every key. Afterwards Radial's runs are bit-identical to a job without
    ToDo."""
    case = wan226(num_layers=3)
    radial_sparse, radial_dense = radial_run(case, True), radial_run(case, False)
    del neo226_radial.sparse_calls[:]
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    calls = Recorder(neo226_wan, "attention_function")
    radial_run(case, True)
    assert neo226_radial.sparse_calls == [1, 2]
    assert handle.record.downsampled == DENSE_BLOCK and dict(handle.record.aside) == {"radial": 2}
    dense_self = [call for call in calls.calls if call.q.shape[1] != call.k.shape[1] and call.k.shape[1] != TEXT]
    assert len(dense_self) == DENSE_BLOCK
    assert dense_self[0].k.shape[1] == math.prod(reduced_grid(case.grid, 2))
    radial_run(case, False)
    assert handle.record.downsampled == DENSE_BLOCK + 3 and dict(handle.record.aside) == {"radial": 2}
    handle.remove()
    assert not getattr(neo226_wan.attention, dit.WRAPPER_FLAG, False)
    assert torch.equal(radial_run(case, True), radial_sparse)
    assert torch.equal(radial_run(case, False), radial_dense)


def test_beside_radial_todo_gets_the_formula_in_dense_blocks_and_the_sparse_kernel_every_key():
    """A recorder put on top of `wan.attention` after ToDo's wrapper at the model call (a later pre-hook) sees the
    full keys: block 0 (dense) returns ToDo's formula, blocks 1 and 2 return Radial's sparse kernel on them."""
    case = wan226(num_layers=3)
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    above = []
    case.model.register_forward_pre_hook(lambda *_args: above.append(Recorder(neo226_wan, "attention")))
    radial_run(case, True)
    [recorder] = above
    dense, *sparse = recorder.calls
    assert_formula(dense, 0, case.grid, 0)
    assert len(sparse) == 2 and handle.record.downsampled == 1
    for call in sparse:
        assert torch.equal(call.out, neo226_radial.sparse_attention(call.q, call.k, call.v, call.heads))


def test_pixeldit_and_classes_todo_does_not_know_step_aside_naming_the_class():
    """Neo 2.26's PiD transformer (backend/nn/pixeldit/pid.py PidNet) is no family of ToDo's: it steps aside
    with the class named, never with a guessed layout."""

    class PidNet(torch.nn.Module):
        pass

    with pytest.raises(todo_ext.UnsupportedModelError, match="PidNet is neither"):
        todo_ext.apply(PidNet(), todo_ext.ToDoConfig())


def test_mugen_an_sdxl_u_net_on_a_32_channel_latent_acts_as_sdxl():
    """Neo 2.26's Mugen (model_list.Mugen) is SDXL's U-Net on the 32-channel Flux.2 VAE latent: ToDo's U-Net
    attach reads its grid from the latent's sides, whatever its channels."""
    unet = build_unet("sdxl", 32, in_channels=32)
    x, timesteps, context = unet_inputs(unet, 1, 16, 16)
    with torch.no_grad():
        plain = unet(x, timesteps, context)
        handle = todo_ext.apply(unet, todo_ext.ToDoConfig(ratio=0.75))
        assert not torch.allclose(unet(x, timesteps, context), plain, atol=1e-5)
    assert handle.record.downsampled > 0 and not handle.record.aside
    handle.remove()
    with torch.no_grad():
        assert torch.equal(unet(x, timesteps, context), plain)
