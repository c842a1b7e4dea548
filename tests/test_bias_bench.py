"""The GPU benchmark of the bias transport (todo_ext/bench/bias_bench.py) in its dry mode: narrow models on CPU with
the kernels' stand-ins, every backend and every way of carrying the bias, to the end and into its files. No timing
assertions: the dry mode's times say nothing."""

from __future__ import annotations

import json

import pytest

from todo_ext.bench import bias_bench


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bias-bench")
    bias_bench.main(["--dry", "--sizes", "128", "--out", str(out)])
    return json.loads((out / "bias-results.json").read_text()), (out / "bias-results.md").read_text()


def test_a_row_per_model_backend_and_way_of_carrying_the_bias(dry_run):
    results, table = dry_run
    assert {(row["model"], row["backend"], row["mode"]) for row in results["rows"]} == {
        (model, backend, mode) for model in ("flux", "zimage") for backend in bias_bench.BACKENDS
        for mode in bias_bench.MODES}
    assert "dry mode" in results["machine"] and table.count("| flux | 128px |") == 25


def test_each_row_records_what_todo_did(dry_run):
    """ToDo's own choice on CPU: the mask on SDPA, the channel on every other backend (the narrow models' head of
    32 is under Sage's and flash-attn's limits); the forced rows record the way they were forced. A warm-up and a
    timed call per row: 2 x 2 joint attention calls on either model."""
    rows = {(row["model"], row["backend"], row["mode"]): row["record"] for row in dry_run[0]["rows"]}
    assert rows[("flux", "sdpa", "auto")].endswith("; bias as mask in 4 calls")
    for backend in ("xformers-forge", "xformers-neo", "sage", "flash"):
        assert rows[("flux", backend, "auto")].endswith("; bias as channel in 4 calls"), backend
    assert rows[("zimage", "sdpa", "channel")].endswith("; bias as channel in 4 calls")
    assert "bias" not in rows[("flux", "sage", "none")] and rows[("flux", "sage", "off")] is None


def test_the_single_calls_show_what_forges_xformers_path_allocates_for_a_mask(dry_run):
    """One Flux attention call at 128 px (576 queries, 512 + 16 kept keys, 24 heads of 128) per backend and mode;
    the peak memory is the profiler's, exact on CPU. Forge's xformers path copies a mask into (24 heads, 576
    queries, 584) float32 elements; the channel's copies (q, k, v and the output, padded) are linear in the tokens:
    already a third of that at this size, and ever less as the image grows."""
    calls = {(row["backend"], row["mode"]): row["peak_bytes"] for row in dry_run[0]["calls"]}
    assert set(calls) == {(backend, mode) for backend in bias_bench.BACKENDS for mode in bias_bench.CALL_MODES}
    mask_extra = calls[("xformers-forge", "mask")] - calls[("xformers-forge", "none")]
    channel_extra = calls[("xformers-forge", "channel")] - calls[("xformers-forge", "none")]
    assert mask_extra >= 24 * 576 * 584 * 4 > 3 * channel_extra


def test_the_sage_proxy_compares_the_channel_with_sages_own_error(dry_run):
    proxy = dry_run[0]["sage_proxy"]
    assert {(row["head_dim"], row["padded"], row["factor"]) for row in proxy} == {
        (64, 96, 2), (64, 96, 4), (96, 128, 2), (96, 128, 4)}
    for row in proxy:
        assert 0 < row["channel_error"] < 2 * row["plain_error"] < row["bias_effect"]
