"""How the proportional bias reaches each host backend (todo_ext/bias.py), on CPU stand-ins that mirror the hosts'
mask handling: Forge's SDPA, xformers and split attention, Neo's SDPA, xformers, SageAttention and flash-attn paths.
Where the bias travels the call is ToDo's formula with it, where it is dropped the formula without it; the bias
never makes ToDo or the host allocate a tensor of queries x keys elements; the record says which way it went."""

from __future__ import annotations

import functools
import logging
import math

import pytest
import torch
from dit_cases import BUILDERS, Recorder, assert_formula, flux, qwen, wan
from test_no_sync import syncs
from torch.profiler import ProfilerActivity, profile

import todo_ext
from todo_ext import bias
from todo_ext.bench.dit_stub import (
    a1111_other_impls,
    forge_attention,
    forge_flux,
    kernels,
    neo_attention,
    neo_flux,
    neo_qwen,
)

pytestmark = pytest.mark.usefixtures("attention_functions")

BACKENDS = {
    "forge-sdpa": (forge_flux, forge_attention.attention_pytorch, "mask"),
    "forge-xformers": (forge_flux, forge_attention.attention_xformers, "channel"),
    "forge-split": (forge_flux, forge_attention.attention_split, "channel"),
    "neo-sdpa": (neo_flux, neo_attention.attention_pytorch, "mask"),
    "neo-xformers": (neo_flux, neo_attention.attention_xformers, "channel"),
    "neo-sage": (neo_flux, neo_attention.attention_sage, "channel"),
    "neo-flash": (neo_flux, neo_attention.attention_flash, "channel"),
}
"""Per host backend: the Flux module whose `attention_function` it becomes, the function, how the bias travels on
CPU (the stand-in's head dimension, 32, is under every limit)."""


def every_block(**settings) -> todo_ext.ToDoConfig:
    return todo_ext.ToDoConfig(max_depth=3, ratio=0.75, **settings)


def flux_on(name: str, **sizes):
    home, function, _ = BACKENDS[name]
    home.attention_function = function
    return flux(host=home, **sizes)


def run_with_todo(case, **settings):
    """ToDo on every block, a recorder above it (full keys in, the call's output out); the handle and the calls."""
    handle = todo_ext.apply(case.model, every_block(**settings))
    above = Recorder(case.home, case.function)
    case.run()
    return handle, above.calls


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_gets_the_formula_with_the_bias_and_the_record_says_how(name):
    case = flux_on(name)
    handle, calls = run_with_todo(case)
    assert len(calls) == handle.record.downsampled == 2
    for call in calls:
        assert_formula(call, 8, case.grid, 0)
    mode = BACKENDS[name][2]
    assert handle.record.kv_text() == f"img 4x5->2x3 (2x) + 8 text kept in 2 calls; bias as {mode} in 2 calls"
    assert handle.record.bias_text() is None


def test_sdpa_off_the_cpu_takes_the_channel_and_stays_exact(monkeypatch):
    """On CUDA a float mask moves SDPA off its flash kernel: there the bias travels as the channel (the device
    check emulated on CPU)."""
    monkeypatch.setattr(bias, "MASK_FREE_DEVICES", ())
    case = flux_on("neo-sdpa")
    handle, calls = run_with_todo(case)
    for call in calls:
        assert_formula(call, 8, case.grid, 0)
    assert handle.record.bias == {"channel": 2}


@pytest.mark.parametrize("function", [neo_attention.attention_xformers, neo_attention.attention_flash],
                         ids=["xformers", "flash"])
@pytest.mark.parametrize("builder", [qwen, wan], ids=["qwen", "wan"])
def test_the_channel_in_the_tokens_by_heads_layout(builder, function):
    """Qwen-Image passes (batch, tokens, heads * dim) with heads positional, Wan with `heads=`: the channel goes into
    each head and comes out of it again (Wan's cross-attention calls pass through)."""
    case = builder()
    setattr(case.home, case.function, function)
    handle, calls = run_with_todo(case)
    joint = [(call, case.joint_layout(call.k.shape[1])) for call in calls]
    joint = [(call, layout) for call, layout in joint if layout is not None]
    assert handle.record.bias["channel"] == handle.record.downsampled == len(joint) > 0
    for call, (before, after) in joint:
        assert_formula(call, before, case.grid, after)


@pytest.mark.parametrize(("function", "form"), [(neo_attention.attention_xformers, "float"),
                                              (neo_attention.attention_pytorch, "bool")], ids=["xformers", "sdpa"])
def test_a_mask_the_host_passes_keeps_working_beside_the_channel(function, form, monkeypatch):
    """Chroma's text-padding mask on Neo's xformers path (which copies a mask into a float buffer: a float one) and
    on SDPA off the CPU (a bool one): the mask is taken at the kept keys, the bias travels in the channel, and the
    call is the formula with both."""
    monkeypatch.setattr(bias, "MASK_FREE_DEVICES", ())
    case = BUILDERS["chroma"]()
    neo_flux.attention_function = function
    generator = torch.Generator().manual_seed(7)
    tokens = 8 + 20
    mask = (torch.randn(2, tokens, tokens, generator=generator) if form == "float"
            else torch.rand(2, tokens, tokens, generator=generator) > 0.2)
    for block in (*case.model.double_blocks, *case.model.single_blocks):
        block.register_forward_pre_hook(lambda _m, args, kwargs: (args, {**kwargs, "attn_mask": mask}),
                                        with_kwargs=True)
    handle, calls = run_with_todo(case)
    assert handle.record.bias == {"channel": 2}
    for call in calls:
        assert_formula(call, 8, case.grid, 0)


def test_flash_gets_no_mask_and_a_head_padded_to_a_multiple_of_8(caplog):
    case = flux_on("neo-flash")
    below = Recorder(case.home, case.function)
    with caplog.at_level(logging.ERROR, logger="attention"):
        handle, calls = run_with_todo(case)
    assert not caplog.records, "no call fell back from flash-attn to SDPA"
    assert handle.record.bias == {"channel": 2}
    for call in below.calls:
        assert call.mask is None and call.q.shape[-1] == call.k.shape[-1] == 40
    for call in calls:
        assert_formula(call, 8, case.grid, 0)


class SageCalls:
    """The head dimensions `sageattn` was called with: a call that fell back to SDPA never reaches it."""

    def __init__(self, monkeypatch):
        self.heads: list[int] = []
        sageattn = kernels.sageattn

        def counting(q, k, v, **kwargs):
            self.heads.append(q.shape[-1])
            return sageattn(q, k, v, **kwargs)

        monkeypatch.setattr(kernels, "sageattn", counting)


@pytest.mark.parametrize("sage_1", [False, True], ids=["sage-2", "sage-1"])
def test_under_128_the_channel_keeps_the_call_on_sage(monkeypatch, sage_1):
    """A head of 32 padded to 64, a size both Sage versions run: every call reaches sageattn, with the bias."""
    monkeypatch.setattr(neo_attention, "IS_SAGE_1", sage_1)
    sage = SageCalls(monkeypatch)
    case = flux_on("neo-sage")
    handle, calls = run_with_todo(case)
    assert sage.heads == [64, 64] and handle.record.bias == {"channel": 2}
    for call in calls:
        assert_formula(call, 8, case.grid, 0)


def test_at_128_the_bias_is_dropped_rather_than_the_call_leaving_sage(monkeypatch):
    """Flux's head is 128: a channel would take it to 136, which Neo sends to another backend. ToDo drops the bias
    (plain ToDo) and the note says so."""
    sage = SageCalls(monkeypatch)
    case = flux_on("neo-sage", hidden_size=256, axes_dim=(32, 48, 48))
    handle, calls = run_with_todo(case)
    assert sage.heads == [128, 128]
    for call in calls:
        assert_formula(call, 8, case.grid, 0, with_bias=False)
    assert handle.record.kv_text() == "img 4x5->2x3 (2x) + 8 text kept in 2 calls"
    assert handle.record.bias_text() == ("bias dropped in 2 calls where SageAttention ignores masks and a bias "
                                         "channel would take the head dimension off Sage")


def test_flash_past_248_drops_the_bias():
    assert bias.route(bias.FLASH, "cuda", 248) == (bias.CHANNEL, 256)
    assert bias.route(bias.FLASH, "cuda", 256) == ("flash-head", None)


def test_the_route_per_backend_and_device():
    assert bias.route(bias.SDPA, "cpu", 128) == (bias.MASK, None)
    assert bias.route(bias.SDPA, "cuda", 128) == (bias.CHANNEL, 136)
    assert bias.route(bias.XFORMERS, "cuda", 64) == (bias.CHANNEL, 72)
    assert bias.route(bias.SLICED, "cpu", 64) == (bias.CHANNEL, 72)
    assert bias.route(bias.SAGE, "cuda", 96) == (bias.CHANNEL, 128)
    assert bias.route(bias.SAGE, "cuda", 64) == (bias.CHANNEL, 96)
    assert bias.route(bias.SAGE, "cuda", 128) == ("sage-head", None)
    assert bias.route(bias.UNKNOWN, "cuda", 128) == (bias.MASK, None)


def test_the_backend_is_read_under_other_wrappers():
    """Another extension's functools.wraps wrapper and ToDo's own (switched-off) wrappers are looked through; a
    function ToDo cannot place gets the mask."""

    @functools.wraps(neo_attention.attention_flash)
    def logged(*args, **kwargs):
        return neo_attention.attention_flash(*args, **kwargs)

    def chained(*args, **kwargs):
        return logged(*args, **kwargs)

    chained.previous = logged
    assert bias.host_backend(chained) == bias.FLASH
    assert bias.host_backend(forge_attention.attention_split) == bias.SLICED
    assert bias.host_backend(a1111_other_impls.attention) == bias.SDPA
    assert bias.host_backend(neo_qwen.attention_function) == bias.SDPA
    assert bias.host_backend(lambda q, k, v, heads, mask=None: q) == bias.UNKNOWN


@pytest.mark.parametrize(("heads_first", "output_heads_first"), [(True, False), (True, True), (False, False)])
@pytest.mark.parametrize("padded", [40, 64])
def test_the_channel_is_the_bias_for_the_kernels_default_scale(heads_first, output_heads_first, padded):
    """softmax(q'.k'/sqrt(D)) v' on the padded head, cut back, equals softmax(q.k/sqrt(d) + bias) v (float64)."""
    generator = torch.Generator().manual_seed(3)
    batch, heads, queries, keys, dim = 2, 3, 12, 7, 32
    q, k, v = (torch.randn(batch, heads, n, dim, generator=generator, dtype=torch.float64)
               for n in (queries, keys, keys))
    log_counts = torch.rand(keys, generator=generator, dtype=torch.float64) * 3
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim) + log_counts, dim=-1) @ v

    def tokens_by_heads(tensor):
        return tensor.transpose(1, 2).flatten(2)

    inputs = (q, k, v) if heads_first else tuple(tokens_by_heads(t) for t in (q, k, v))
    q2, k2, v2 = bias.with_channel(*inputs, log_counts, heads, heads_first, padded)
    if not heads_first:
        q2, k2, v2 = (t.unflatten(-1, (heads, padded)).transpose(1, 2) for t in (q2, k2, v2))
    assert q2.shape[-1] == padded
    out = torch.nn.functional.scaled_dot_product_attention(q2, k2, v2)
    out = out if output_heads_first else tokens_by_heads(out)
    restored = bias.without_channel(out, heads, dim, output_heads_first)
    torch.testing.assert_close(restored, expected if output_heads_first else tokens_by_heads(expected))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_in_half_precision_the_channel_is_the_bias_up_to_rounding(dtype):
    """Flux's head of 128 padded to 136 in bf16 and fp16: the channel's result is as close to the float64 formula as
    the same call with the bias as a mask is (both round q, k, v and the logits to the half type)."""
    generator = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 4, n, 128, generator=generator, dtype=torch.float64) for n in (300, 120, 120))
    log_counts = torch.log(torch.randint(1, 10, (120,), generator=generator).double())
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(128) + log_counts, dim=-1) @ v
    half = [t.to(dtype) for t in (q, k, v)]
    masked = torch.nn.functional.scaled_dot_product_attention(*half, attn_mask=log_counts.to(dtype).view(1, 1, 1, -1))
    channel = bias.without_channel(torch.nn.functional.scaled_dot_product_attention(
        *bias.with_channel(*half, log_counts.float(), 4, True, 136)), 4, 128, True)
    mask_error = (masked.double() - expected).abs().max()
    channel_error = (channel.double() - expected).abs().max()
    assert channel_error < 2 * mask_error


def allocations(run) -> list[int]:
    """The bytes of every allocation made while `run` runs, inside kernels too (the profiler's memory events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        run()
    return sorted(event.nbytes() for event in profiler.profiler.kineto_results.events()
                  if event.name() == "[memory]" and event.nbytes() > 0)


def large_allocations(name: str, monkeypatch, route=None) -> tuple[list[int], int]:
    """A Flux stand-in on the backend, batch 1, 2 heads, a 24x24 grid (584 queries, 152 kept keys; a head of 32, 40
    or 64 with the channel, so that q, k, v and the output stay under queries x kept keys elements): the
    allocations of at least queries x kept keys float32 elements in one ToDo run, with `route` in place of
    bias.route where given, and that size."""
    case = flux_on(name, batch=1, latent=(48, 48))
    if route is not None:
        monkeypatch.setattr(bias, "route", route)
    handle = todo_ext.apply(case.model, every_block())
    case.run()
    threshold = (8 + 576) * (8 + 144) * 4
    large = [size for size in allocations(case.run) if size >= threshold]
    handle.remove()
    return large, threshold


def without_bias(*_args):
    return "flash-head", None


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_the_bias_allocates_nothing_of_queries_by_keys_on_any_backend(name, monkeypatch):
    """Every large allocation of a ToDo run is one the same run without the bias makes too (the model's own MLP,
    the split attention's own logits); the bias adds none, wherever it travels."""
    with_bias, _ = large_allocations(name, monkeypatch)
    plain, _ = large_allocations(name, monkeypatch, route=without_bias)
    assert with_bias == plain


@pytest.mark.parametrize("name", ["forge-xformers", "neo-xformers", "forge-split"])
def test_the_measure_sees_the_masks_these_hosts_would_allocate(name, monkeypatch):
    """The same runs with the bias forced through the mask: Forge's xformers path copies it into (batch * heads,
    queries, queries + pad), Neo's into (1, 1, queries, keys + pad), the split attention expands it per head."""
    masked, threshold = large_allocations(name, monkeypatch, route=lambda *_args: (bias.MASK, None))
    plain, _ = large_allocations(name, monkeypatch, route=without_bias)
    assert len(masked) > len(plain) and max(masked) >= threshold


@pytest.mark.parametrize("name", ["forge-xformers", "neo-sage", "forge-split"])
def test_the_channel_reads_no_value_beyond_what_the_model_reads(name):
    case = flux_on(name)
    model_first, model_later = syncs(case.run, first_step=True), syncs(case.run)
    handle = todo_ext.apply(case.model, every_block())
    assert syncs(case.run, first_step=True) == model_first
    assert syncs(case.run) == model_later
    assert handle.record.bias == {"channel": 4}, "two runs of one double and one single block"
