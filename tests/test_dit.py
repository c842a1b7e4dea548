"""ToDo on the diffusion transformers (tests/dit_stub): every family's joint attention gets ToDo's formula (text and
padding kept, the image grid downsampled after RoPE, log(cell size) added to the kept image keys' logits), nothing
else changes, and the swapped module function passes every other caller through and comes off cleanly."""

import logging
import math

import pytest
import torch
from dit_cases import (
    BUILDERS,
    Recorder,
    assert_formula,
    kept_positions,
    lumina2,
    qwen,
    reduced_grid,
    todo_hooks,
    wan,
    zimage,
)

import todo_ext
from todo_ext import dit, joint
from todo_ext.bench.dit_stub import forge_attention, forge_flux

pytestmark = pytest.mark.usefixtures("attention_functions")

FAMILIES = sorted(BUILDERS)


@pytest.fixture(params=FAMILIES)
def case(request):
    return BUILDERS[request.param]()


def every_block(**settings) -> todo_ext.ToDoConfig:
    """A config that reaches every attention block (the stand-ins are 2-4 blocks deep: the outer ones are depth 3)."""
    return todo_ext.ToDoConfig(max_depth=3, **settings)


def test_the_family_is_found_by_its_class_and_its_function_in_its_module(case):
    family = dit.family_of(case.model)
    assert family is not None and family.home(case.model) is case.home
    assert family.function_in(case.home) == case.function


@pytest.mark.parametrize("config", [todo_ext.ToDoConfig(ratio=0.0, max_depth=3),
                                    every_block(auto=True, auto_target_tokens=1024)], ids=["ratio-0", "auto-small"])
def test_a_factor_of_one_leaves_the_output_bit_identical_and_is_recorded_as_kept(case, config):
    plain = case.run()
    original = case.attention
    handle = todo_ext.apply(case.model, config)
    assert case.attention is not original
    assert torch.equal(case.run(), plain)
    grids = {(grid, kv_grid, factor) for (_, grid, kv_grid, factor, _) in handle.record.kv}
    assert grids == {(case.grid, case.grid, 1.0)}
    assert {kept for (*_, kept) in handle.record.kv} == set(case.kept)
    assert handle.record.downsampled == 0 and not handle.record.aside
    handle.remove()
    assert case.attention is original
    assert torch.equal(case.run(), plain)


@pytest.mark.parametrize("method", ["nearest", "nearest-exact", "avg-pool"])
@pytest.mark.parametrize("factor", [2, 3])
def test_every_joint_call_gets_the_formula_on_its_grid_and_the_rest_stay_exact(case, method, factor):
    plain = case.run()
    original = case.attention
    handle = todo_ext.apply(case.model, every_block(ratio=1 - 1 / factor**2, method=method))
    recorder = Recorder(case.home, case.function)
    out = case.run()
    joint = 0
    for call in recorder.calls:
        layout = case.joint_layout(call.k.shape[call.sequence_dim])
        if layout is None or call.q.shape[call.sequence_dim] != call.k.shape[call.sequence_dim]:
            assert torch.equal(call.out, original(call.q, call.k, call.v, *call.args, **call.kwargs))
            continue
        joint += 1
        before, after = layout
        assert_formula(call, before, case.grid, after, factor, method)
    assert joint > 0 and handle.record.calls == joint and handle.record.downsampled == joint
    assert sum(handle.record.kv.values()) == joint and not handle.record.aside
    assert {(grid, kv_grid, factor) for (_, grid, kv_grid, factor, _) in handle.record.kv} == {
        (case.grid, reduced_grid(case.grid, factor), float(factor))}
    assert {kept for (*_, kept) in handle.record.kv} == set(case.kept)
    assert not torch.allclose(out, plain, atol=1e-4)
    handle.remove()
    assert case.attention is recorder.function and recorder.function.previous.state.active is False


def test_the_kept_keys_are_the_roped_keys_at_their_own_positions(case):
    """A recorder under ToDo sees the keys and values ToDo hands on, one on top the host's: every query stays, and
    each kept key is the host's key (RoPE already applied) at its true position in the sequence."""
    below = Recorder(case.home, case.function)
    handle = todo_ext.apply(case.model, every_block(ratio=0.75, method="nearest-exact"))
    above = Recorder(case.home, case.function)
    case.run()
    assert len(above.calls) == len(below.calls) and handle.record.downsampled > 0
    for full, reduced in zip(above.calls, below.calls, strict=True):
        assert reduced.q is full.q
        layout = case.joint_layout(full.k.shape[full.sequence_dim])
        if layout is None or full.q.shape[full.sequence_dim] != full.k.shape[full.sequence_dim]:
            assert reduced.k is full.k and reduced.v is full.v
            continue
        positions = torch.tensor(kept_positions(layout[0], case.grid, layout[1], 2, "nearest-exact"))
        assert torch.equal(reduced.k, full.k.index_select(full.sequence_dim, positions))
        assert torch.equal(reduced.v, full.v.index_select(full.sequence_dim, positions))


def test_the_kv_line_names_the_image_grid_the_text_kept_and_how_the_bias_travelled():
    """On CPU, Neo's SDPA reads the bias as a mask for free."""
    case = BUILDERS["flux"]()
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    case.run()
    case.run()
    assert handle.record.kv_text() == "img 4x5->2x3 (2x) + 8 text kept in 4 calls; bias as mask in 4 calls"


@pytest.mark.parametrize("name", ["flux-kontext", "qwen-edit"])
def test_kontext_and_edit_references_are_kept_after_the_image_and_recorded(name):
    case = BUILDERS[name]()
    (before, after), = case.segments
    below = Recorder(case.home, case.function)
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    above = Recorder(case.home, case.function)
    case.run()
    calls = len(above.calls)
    assert after > 0 and calls == handle.record.downsampled > 0
    for full, reduced in zip(above.calls, below.calls, strict=True):
        dim = full.sequence_dim
        assert reduced.k.shape[dim] == before + 2 * 3 + after
        for kept, whole in ((reduced.k, full.k), (reduced.v, full.v)):
            assert torch.equal(kept.narrow(dim, kept.shape[dim] - after, after),
                               whole.narrow(dim, whole.shape[dim] - after, after))
    assert handle.record.kv_text() == (f"img 4x5->2x3 (2x) + {before} text + {after} ref kept in {calls} calls; "
                                       f"bias as mask in {calls} calls")


def test_zimage_pad_tokens_are_kept_and_never_taken_for_image_tokens():
    """Z-Image pads caption and image with learned pad tokens: they stay as they are at the end of each sequence
    (the noise refiner's image-only one included), the image grid alone is downsampled, and the context refiner's
    caption-only attention is left exact."""
    case = zimage()
    below = Recorder(case.home, case.function)
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    above = Recorder(case.home, case.function)
    case.run()
    (caption, pad), (_, refiner_pad) = case.segments
    assert pad == refiner_pad == 22 and caption == 32
    lengths = [call.k.shape[2] for call in above.calls]
    assert lengths == [caption, pad + 42, caption + 42 + pad, caption + 42 + pad]
    kept_image = 3 * 4
    for full, reduced in zip(above.calls[1:], below.calls[1:], strict=True):
        tokens = full.k.shape[2]
        assert reduced.k.shape[2] == tokens - 42 + kept_image
        assert torch.equal(reduced.k[:, :, -pad:], full.k[:, :, -pad:])
        assert torch.equal(reduced.k[:, :, :tokens - 42 - pad], full.k[:, :, :tokens - 42 - pad])
    assert below.calls[0].k is above.calls[0].k
    assert dict(handle.record.kv) == {(None, (6, 7), (3, 4), 2.0, (("pad", pad),)): 1,
                                      (None, (6, 7), (3, 4), 2.0, (("text", caption), ("pad", pad))): 2}


def test_lumina2_grouped_query_attention_gets_the_formula_on_the_repeated_heads():
    case = lumina2()
    assert case.model.layers[0].attention.n_local_kv_heads < case.model.layers[0].attention.n_local_heads
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    recorder = Recorder(case.home, case.function)
    case.run()
    joint = [call for call in recorder.calls if case.joint_layout(call.k.shape[2]) is not None]
    assert len(joint) == 3 and handle.record.downsampled == 3
    for call in joint:
        assert call.k.shape[1] == call.q.shape[1] == case.model.layers[0].attention.n_local_heads
        before, after = case.joint_layout(call.k.shape[2])
        assert_formula(call, before, case.grid, after)


@pytest.mark.parametrize("concat_frames", [0, 2])
def test_wan_downsamples_each_frame_alone_and_leaves_cross_attention_uncounted(concat_frames):
    case = wan(frames=3, concat_frames=concat_frames)
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    original = case.attention
    recorder = Recorder(case.home, case.function)
    case.run()
    frames = 3 + concat_frames
    self_calls = [call for call in recorder.calls if call.q.shape[1] == call.k.shape[1]]
    cross_calls = [call for call in recorder.calls if call.q.shape[1] != call.k.shape[1]]
    assert len(self_calls) == len(cross_calls) == len(case.model.blocks)
    assert handle.record.calls == len(self_calls)
    assert dict(handle.record.kv) == {(None, (frames, 4, 5), (frames, 2, 3), 2.0, ()): len(self_calls)}
    for call in cross_calls:
        assert torch.equal(call.out, original(call.q, call.k, call.v, *call.args, **call.kwargs))
    for call in self_calls:
        assert_formula(call, 0, case.grid, 0)


def test_wan_cross_attention_over_as_many_text_tokens_as_video_tokens_stays_exact():
    """The cross-attention's keys can be as many as the video's tokens (Wan pads its text to 512): it runs outside
    every block ToDo watches (the hooks sit on self_attn), so it stays exact whatever its length."""
    case = wan(frames=1, latent=(4, 4))
    case.args = (*case.args[:2], torch.randn(2, 4, 16))
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    original = case.attention
    recorder = Recorder(case.home, case.function)
    case.run()
    cross_calls = recorder.calls[1::2]
    assert all(call.k.shape[1] == call.q.shape[1] == 4 for call in cross_calls)
    for call in cross_calls:
        assert torch.equal(call.out, original(call.q, call.k, call.v, *call.args, **call.kwargs))
    assert handle.record.calls == len(case.model.blocks)


def test_another_model_of_the_same_class_and_direct_calls_pass_through_uncounted():
    case = BUILDERS["flux"]()
    other = BUILDERS["flux"](seed=5)
    other_plain = other.run()
    original = case.attention
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    case.run()
    calls = handle.record.calls
    assert torch.equal(other.run(), other_plain)
    q, k, v = (torch.randn(1, 2, 28, 32) for _ in range(3))
    assert torch.equal(case.attention(q, k, v, 2, skip_reshape=True), original(q, k, v, 2, skip_reshape=True))
    assert handle.record.calls == calls


def test_a_wrapper_installed_after_todo_stays_when_todo_is_removed():
    case = BUILDERS["qwen"]()

    def halved_values(previous):
        def wrapper(q, k, v, *args, **kwargs):
            return previous(q, k, v * 0.5, *args, **kwargs)
        return wrapper

    original = case.attention
    setattr(case.home, case.function, halved_values(original))
    other_alone = case.run()
    setattr(case.home, case.function, original)
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    todo_alone = case.run()
    other = halved_values(case.attention)
    setattr(case.home, case.function, other)
    both = case.run()
    assert handle.record.downsampled == 2 * len(case.model.transformer_blocks)
    assert not torch.allclose(both, other_alone, atol=1e-5) and not torch.allclose(both, todo_alone, atol=1e-5)
    handle.remove()
    assert case.attention is other
    assert torch.equal(case.run(), other_alone)
    again = todo_ext.apply(case.model, every_block(ratio=0.75))
    assert torch.equal(case.run(), both)
    again.remove()
    assert torch.equal(case.run(), other_alone)


def test_a_wrapper_installed_before_todo_is_kept_underneath():
    case = BUILDERS["wan"]()
    below = Recorder(case.home, case.function)
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    assert case.attention.previous is below.function
    case.run()
    assert len(below.calls) == 2 * len(case.model.blocks) and handle.record.downsampled == len(case.model.blocks)
    handle.remove()
    assert case.attention is below.function


def test_a_block_raising_resets_the_running_flag_and_remove_takes_everything_off():
    case = BUILDERS["flux"]()
    plain = case.run()
    original = case.attention
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    hooks = todo_hooks(case.model)
    assert hooks == 2 + 2 * (len(case.model.double_blocks) + len(case.model.single_blocks))

    def fail(*_args):
        raise RuntimeError("a block fails")

    failing = case.model.single_blocks[0].register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="a block fails"):
        case.run()
    failing.remove()
    calls = handle.record.calls
    q, k, v = (torch.randn(2, 2, 28, 32) for _ in range(3))
    assert torch.equal(case.attention(q, k, v, 2, skip_reshape=True), original(q, k, v, 2, skip_reshape=True))
    assert handle.record.calls == calls
    handle.remove()
    assert case.attention is original and todo_hooks(case.model) == 0
    assert torch.equal(case.run(), plain)


def test_the_step_window_decided_per_step():
    case = BUILDERS["zimage"]()
    plain = case.run()
    handle = todo_ext.apply(case.model, every_block(ratio=0.75, start=0.2, end=0.8))
    handle.begin_step(False)
    assert torch.equal(case.run(), plain)
    assert handle.record.outside_window == 3 and handle.record.downsampled == 0
    handle.begin_step(True)
    assert not torch.allclose(case.run(), plain, atol=1e-4)
    assert handle.record.downsampled == 3


@pytest.mark.parametrize("broken", ["joint_plan", "reduce_keys_values"])
def test_a_failure_inside_todo_leaves_attention_exact_and_is_logged_once(case, broken, monkeypatch, caplog):
    def fail(*_args, **_kwargs):
        raise RuntimeError("broken")

    plain = case.run()
    monkeypatch.setattr(dit, broken, fail)
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    with caplog.at_level(logging.WARNING, logger="todo_ext"):
        assert torch.equal(case.run(), plain)
        assert torch.equal(case.run(), plain)
    assert handle.record.aside["error"] == handle.record.calls > 0
    assert sum("downsampling failed" in record.getMessage() for record in caplog.records) == 1


def test_nunchaku_and_unknown_models_are_unsupported_with_a_clear_message():
    class SVDQFluxTransformer2DModel(torch.nn.Module):
        pass

    class SomeOtherTransformer(torch.nn.Module):
        pass

    with pytest.raises(todo_ext.UnsupportedModelError, match="SVDQFluxTransformer2DModel is a Nunchaku model"):
        todo_ext.apply(SVDQFluxTransformer2DModel(), todo_ext.ToDoConfig())
    with pytest.raises(todo_ext.UnsupportedModelError, match="SomeOtherTransformer is neither"):
        todo_ext.apply(SomeOtherTransformer(), todo_ext.ToDoConfig())


@pytest.mark.parametrize("blocks", [1, 2, 3, 4, 8, 16, 57])
def test_depth_bands_count_outwards_from_the_middle_of_the_stack(blocks):
    depths = [dit.depth_of_position(position, blocks) for position in range(blocks)]
    assert depths == depths[::-1]
    if blocks <= 2:
        assert depths == [0] * blocks
        return
    assert depths[0] == depths[-1] == 3 and 3 not in depths[1:-1]
    middle = [position for position in range(blocks) if abs((position + 0.5) / blocks - 0.5) < 0.25]
    assert [position for position, depth in enumerate(depths) if depth == 0] == middle
    assert depths == sorted(depths[:blocks // 2], reverse=True) + sorted(depths[blocks // 2:])


def acted_positions(case, config) -> dict[int, int]:
    """Image keys each attention block kept, by the block's place in the stack (blocks not acting are left out)."""
    blocks = list(case.model.transformer_blocks)
    running = {}
    hooks = [block.register_forward_pre_hook(lambda _m, _a, position=position: running.update(now=position))
             for position, block in enumerate(blocks)]
    below = Recorder(case.home, case.function)
    handle = todo_ext.apply(case.model, config)
    kept = {}
    recorded = []

    def watch(_m, _a, _o):
        recorded.append(running["now"])

    watchers = [block.register_forward_hook(watch) for block in blocks]
    case.run()
    for position, call in zip(recorded, below.calls, strict=True):
        image = call.k.shape[1] - 8
        if image < math.prod(case.grid):
            kept[position] = image
    for hook in (*hooks, *watchers):
        hook.remove()
    handle.remove()
    return kept


@pytest.mark.parametrize("max_depth", [0, 1, 2, 3])
def test_max_depth_selects_the_blocks_of_its_bands(max_depth):
    case = qwen(num_layers=16)
    kept = acted_positions(case, todo_ext.ToDoConfig(ratio=0.75, max_depth=max_depth))
    assert sorted(kept) == [position for position in range(16) if dit.depth_of_position(position, 16) <= max_depth]
    assert set(kept.values()) == {2 * 3}


def test_a_deeper_ratio_applies_to_the_outer_bands():
    """Depth 0 at 2x, depth 1 at its own 3x, depth 2 at its own 4x, on an 8x8 grid: 4x4, 3x3 and 2x2 keys."""
    case = qwen(num_layers=16, latent=(16, 16))
    kept = acted_positions(case, todo_ext.ToDoConfig(ratio=0.75, max_depth=2, deeper_ratios=(0.89, 0.9375)))
    by_depth = {}
    for position, image in kept.items():
        by_depth.setdefault(dit.depth_of_position(position, 16), set()).add(image)
    assert by_depth == {0: {4 * 4}, 1: {3 * 3}, 2: {2 * 2}}


def assert_both_flux_calls_get_the_formula(case):
    """ToDo 0.75 on a Flux-family stand-in (8 text tokens, one double and one single block): both attention calls
    downsampled, each equal to ToDo's formula."""
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    recorder = Recorder(case.home, case.function)
    case.run()
    assert len(recorder.calls) == handle.record.downsampled == 2
    for call in recorder.calls:
        assert_formula(call, 8, case.grid, 0)


@pytest.mark.parametrize("form", ["queries-keys", "batch-queries-keys", "batch-heads-queries-keys", "bool"])
def test_a_mask_the_host_passes_is_taken_at_the_kept_keys_and_gets_the_bias(form):
    """Chroma's blocks pass their `attn_mask` on to flux.py's attention (ComfyUI's Chroma masks the text padding);
    Neo's attention functions read a 2-D mask as (queries, keys) and a 3-D one as (batch, queries, keys)."""
    case = BUILDERS["chroma"]()
    tokens = 8 + 20
    generator = torch.Generator().manual_seed(7)
    masks = {"queries-keys": torch.randn(tokens, tokens, generator=generator),
             "batch-queries-keys": torch.randn(2, tokens, tokens, generator=generator),
             "batch-heads-queries-keys": torch.randn(2, 1, tokens, tokens, generator=generator),
             "bool": torch.rand(2, tokens, tokens, generator=generator) > 0.2}
    for block in (*case.model.double_blocks, *case.model.single_blocks):
        block.register_forward_pre_hook(lambda _m, args, kwargs: (args, {**kwargs, "attn_mask": masks[form]}),
                                        with_kwargs=True)
    assert_both_flux_calls_get_the_formula(case)


@pytest.mark.parametrize("name", ["sd35-forge", "sd3-a1111"])
def test_sd3_on_an_odd_latent_side_reads_the_grid_its_patch_embedder_makes(name):
    """SD3's patch embedder is a strided conv without padding: a 9x11 latent gives a 4x5 grid, its last row and
    column dropped (the output comes back 8x10)."""
    case = BUILDERS[name](latent=(9, 11))
    assert case.grid == (4, 5)
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    recorder = Recorder(case.home, case.function)
    assert case.run().shape[-2:] == (8, 10)
    assert not handle.record.aside and handle.record.downsampled == len(recorder.calls)
    for call in recorder.calls:
        before, after = case.joint_layout(call.k.shape[1])
        assert_formula(call, before, case.grid, after)


def test_two_models_of_one_family_attached_at_once_each_act_in_their_own_runs_only():
    """Wan 2.2's two experts (or a model and its refiner) share the module function: each attach's wrapper acts
    while its own model runs, and removing one leaves the other acting."""
    high, low = wan(seed=0), wan(seed=1)
    original = high.attention
    low_plain = low.run()
    high_handle = todo_ext.apply(high.model, every_block(ratio=0.75))
    low_handle = todo_ext.apply(low.model, every_block(ratio=0.9375))
    high.run()
    assert high_handle.record.downsampled == 2 and low_handle.record.calls == 0
    low_out = low.run()
    assert low_handle.record.downsampled == 2 and high_handle.record.downsampled == 2
    assert {kv_grid for (_, _, kv_grid, _, _) in low_handle.record.kv} == {(3, 1, 2)}
    high_handle.remove()
    assert torch.equal(low.run(), low_out)
    low_handle.remove()
    assert high.attention is original
    assert torch.equal(low.run(), low_plain)


def test_the_bias_survives_an_attention_that_adds_the_mask_query_slice_by_query_slice(monkeypatch):
    """WebUI Forge with --attention-split (and its sub-quadratic attention, alike) cuts the queries into slices
    and adds a mask of more than 2 dims as mask[:, i:end]: the bias must carry the query dimension for that."""
    case = BUILDERS["flux-forge"]()
    plain = case.run()
    monkeypatch.setattr(forge_flux, "attention_function", forge_attention.attention_split)
    torch.testing.assert_close(case.run(), plain, atol=1e-5, rtol=1e-4)
    assert_both_flux_calls_get_the_formula(case)


@pytest.mark.parametrize("name", ["flux", "wan"])
def test_auto_sizes_the_factor_from_the_image_grid_of_one_frame(name):
    """Auto keeps about `auto_target_tokens` per image: a 16x16 grid at target 64 is 2x, on each of Wan's 3 frames
    too (not 3.5x, which all 768 video tokens would give)."""
    case = BUILDERS[name](latent=(32, 32))
    handle = todo_ext.apply(case.model, every_block(auto=True, auto_target_tokens=64))
    case.run()
    assert {(grid, kv_grid, factor) for (_, grid, kv_grid, factor, _) in handle.record.kv} == {
        (case.grid, (*case.grid[:-2], 8, 8), 2.0)}


def test_a_step_under_inference_mode_then_one_recording_gradients(monkeypatch):
    """The WebUI samples under inference mode; an extension that trains or needs gradients may then run the model
    with autograd on: the plans and bias ToDo cached under inference mode must serve both."""
    monkeypatch.setattr(joint, "_plan_cache", {})
    case = BUILDERS["qwen"]()
    handle = todo_ext.apply(case.model, every_block(ratio=0.75))
    with torch.inference_mode():
        sampled = case.model(*case.args, **case.kwargs)
    x = case.args[0].clone().requires_grad_(True)
    out = case.model(x, *case.args[1:], **case.kwargs)
    out.sum().backward()
    assert x.grad is not None and torch.allclose(out.detach(), sampled, atol=1e-6)
    assert handle.record.downsampled == 2 * len(case.model.transformer_blocks)
