"""The DiT rows of the benchmark and the joint-attention proxy, end to end on narrow mirrors of the same models: the
files the README reads, ToDo's record in each row, and the bound computed from the attention calls of the run.

No timing assertions: these run on shared CI machines.
"""

from __future__ import annotations

import json

import pytest

from todo_ext.bench import __main__ as bench_cli
from todo_ext.bench import dit_bench, dit_fidelity
from todo_ext.bench.dit_stub import neo_flux, neo_lumina


def narrow_flux():
    return neo_flux.IntegratedFluxTransformer2DModel(
        in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=64, hidden_size=64, num_heads=2,
        depth=1, depth_single_blocks=1, axes_dim=(8, 12, 12), guidance_embed=True)


def narrow_zimage():
    return neo_lumina.NextDiT(patch_size=2, in_channels=16, dim=64, n_layers=1, n_refiner_layers=1, n_heads=2,
                              cap_feat_dim=32, axes_dims=(8, 12, 12), z_image_modulation=True, pad_tokens_multiple=32)


@pytest.fixture(scope="module")
def dit_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("dit-bench")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(dit_bench.MODELS, "flux", dit_bench.DiTModel("flux", narrow_flux, neo_flux, "attention_function",
                                                                   16, 64, dit_bench._flux_call))
        patch.setitem(dit_bench.MODELS, "zimage", dit_bench.DiTModel("zimage", narrow_zimage, neo_lumina,
                                                                     "attention_function", 8, 32,
                                                                     dit_bench._zimage_call))
        patch.setattr(bench_cli, "DIT_FIDELITY_GRIDS", (8,))
        bench_cli.main(["--no-unet", "--dit-models", "flux,zimage", "--dit-sizes", "128,256", "--dit-configs",
                        "todo-0.75,todo-auto", "--repeats", "2", "--threads", "1", "--quiet-wait", "0",
                        "--out", str(out)])
    return out


def test_a_dit_row_per_model_size_and_configuration(dit_output):
    rows = json.loads((dit_output / "dit-results.json").read_text())
    assert {(row["model"], row["size"], row["config"]) for row in rows} == {
        (model, size, config) for model in ("flux", "zimage") for size in (128, 256)
        for config in ("baseline", "todo-0.75", "todo-auto")}
    table = (dit_output / "dit-results.md").read_text()
    assert table.count("| flux |") == table.count("| zimage |") == 6


def test_todo_rows_record_what_the_engine_did_and_stand_beside_their_bound(dit_output):
    rows = {(row["model"], row["size"], row["config"]): row for row in
            json.loads((dit_output / "dit-results.json").read_text())}
    flux = rows[("flux", 256, "todo-0.75")]
    assert flux["record"] == "img 16x16->8x8 (2x) + 16 text kept in 2 calls; bias as mask in 2 calls", (
        "one double and one single block, on CPU SDPA")
    assert flux["derived"]["kv_fraction"] == pytest.approx((16 + 64) / (16 + 256))
    assert flux["derived"]["bound"] > 1.0 and flux["derived"]["of_bound"] > 0
    zimage = rows[("zimage", 256, "todo-0.75")]
    assert zimage["record"] == ("img 16x16->8x8 (2x) + 32 text kept in 1 call; img 16x16->8x8 (2x) in 1 call; "
                                "bias as mask in 2 calls"), (
        "the layer over the caption (8 tokens padded to Z-Image's multiple of 32) and the image; the noise refiner "
        "over the image alone")
    auto = rows[("flux", 128, "todo-auto")]
    assert auto["record"] == "img 8x8 + 16 text kept in 2 calls" and auto["derived"]["of_bound"] is None
    assert rows[("flux", 256, "baseline")]["record"] is None


def test_the_bias_cost_table_times_the_three_ways_on_the_reduced_call(dit_output):
    table = (dit_output / "dit-results.md").read_text()
    assert "| 128px | 576 | 528 |" in table and "| 256px | 768 | 576 |" in table, "512 text + the image at 2x"


def test_the_bias_cost_table_signs_each_difference_once():
    row = {"size": 1536, "queries": 9728, "keys": 2816, "no bias": 1.0, "mask": 0.97, "extra channel": 1.08}
    assert "| 0.970 (-3%) | 1.080 (+8%) |" in dit_bench.bias_cost_table([row])


def test_the_bound_comes_from_each_attention_calls_kept_keys():
    """Two calls of 1 s in a 4 s baseline step; ToDo keeps a quarter of the first call's keys and all of the
    second's: the bound is 4 / (4 - 2 + 0.25 + 1)."""
    base = dit_bench.DiTMeasurement("flux", 256, "baseline", [4.0], [[(1.0, 100), (1.0, 40)]])
    todo = dit_bench.DiTMeasurement("flux", 256, "todo-0.75", [3.5], [[(0.3, 25), (1.0, 40)]])
    dit_bench.summarise([base, todo])
    assert todo.derived["bound"] == pytest.approx(4 / 3.25)
    assert todo.derived["attention_share"] == pytest.approx(0.5)
    assert todo.derived["speedup"] == pytest.approx(4 / 3.5)
    assert todo.derived["kv_fraction"] == pytest.approx(65 / 140)


def test_the_joint_attention_proxy_files_hold_every_variant(dit_output):
    rows = json.loads((dit_output / "dit-fidelity.json").read_text())
    variants = {row["variant"] for row in rows}
    assert variants == {"plain", "proportional", "random drop", "random drop, proportional", "reference kept",
                        "reference downsampled"}
    assert all(row["mse"] >= 0 for row in rows) and "| 8x8 + 256 |" in (dit_output / "dit-fidelity.md").read_text()


def test_the_proportional_bias_lowers_the_error_where_the_text_draws_attention():
    """The proxy's diffuse regime: the image queries give the text a real share, which plain ToDo inflates."""
    rows = dit_fidelity.measure(grids=(16,), images=("astronaut",), factors=(2.0,), methods=("nearest",))
    error = {(row.regime, row.variant): row.mse for row in rows}
    assert error[("diffuse", "proportional")] < error[("diffuse", "plain")] / 2
