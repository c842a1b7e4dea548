"""The benchmark and the fidelity proxy run end to end at tiny widths and sizes and produce what the README shows.

No timing assertions: these run on shared CI machines.
"""

from __future__ import annotations

import json

import pytest

from todo_ext.bench import __main__ as bench_cli
from todo_ext.bench import fidelity, runner
from todo_ext.bench.report import TABLE_COLUMNS

CONFIGS = ("baseline", "todo-0.75", "todo-auto", "tome-0.75")
SIZES = (128, 256)


@pytest.fixture(scope="module")
def bench_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    bench_cli.main([
        "--width", "32", "--sizes", ",".join(map(str, SIZES)), "--configs", ",".join(CONFIGS[1:]),
        "--repeats", "2", "--fidelity-grids", "16", "--threads", "1", "--quiet-wait", "0", "--no-dit",
        "--out", str(out),
    ])
    return out


def test_table_has_a_row_per_size_and_configuration(bench_output):
    rows = [line for line in (bench_output / "results.md").read_text().splitlines() if line.startswith("| sd15")]
    assert len(rows) == len(SIZES) * len(CONFIGS)
    assert all(len(row.split("|")) == len(TABLE_COLUMNS) + 2 for row in rows)


def test_json_has_every_measurement_with_derived_numbers(bench_output):
    data = json.loads((bench_output / "results.json").read_text())
    assert {"machine", "device", "dtype", "batch", "repeats", "models", "memory", "bound"} <= set(data["meta"])
    assert {(r["size"], r["config"]) for r in data["results"]} == {(s, c) for s in SIZES for c in CONFIGS}
    for result in data["results"]:
        assert len(result["samples_s"]) == 2
        assert result["median_s"] > 0 and result["speedup"] > 0 and result["peak_mib"] >= 0
        assert 0.0 <= result["attn_share"] < 1.0 and result["bound"] >= 1.0
        if result["config"] == "baseline":
            assert result["speedup"] == 1.0 and result["fraction_of_bound"] is None


def test_tome_runs_as_the_webui_applies_it_and_is_removed(bench_output):
    data = json.loads((bench_output / "results.json").read_text())
    tome = [r for r in data["results"] if r["config"] == "tome-0.75"]
    assert all(r["kv_tokens_by_depth"]["0"]["kv_tokens"] * 4 == r["kv_tokens_by_depth"]["0"]["tokens"] for r in tome)


def test_plots_and_fidelity_files_are_written(bench_output):
    for name in ("speedup.png", "bound.png", "fidelity.md", "fidelity.json"):
        assert (bench_output / name).stat().st_size > 0
    assert (bench_output / "speedup.png").read_bytes().startswith(b"\x89PNG")


def test_configurations_run_round_robin_after_warm_up():
    configs = [runner.CONFIGS_BY_NAME[name] for name in CONFIGS]
    order = list(runner._schedule([(512, configs)], repeats=2))
    assert [timed for _, _, timed in order] == [False] * 4 + [True] * 8
    assert [c.name for _, c, timed in order if timed] == list(CONFIGS) * 2


def test_tome_strides_cover_the_ratios_tomesd_can_reach():
    assert runner.CONFIGS_BY_NAME["tome-0.75"].tome_stride == runner.WEBUI_TOME_STRIDE == 2
    assert runner.CONFIGS_BY_NAME["tome-0.89"].tome_stride == 3
    assert runner.CONFIGS_BY_NAME["tome-0.9375"].tome_stride == 4


@pytest.fixture(scope="module")
def fidelity_rows():
    return fidelity.measure(grids=(32,), images=("astronaut", "coffee"), ratios=(0.0, 0.75, 0.89, 0.9375))


def _mse(rows, method, ratio):
    return next(r.mse for r in rows if r.method == method and r.ratio == ratio)


def test_fidelity_error_is_zero_without_downsampling(fidelity_rows):
    for method in ("todo nearest", "todo nearest-exact", "todo avg-pool", "tome"):
        assert _mse(fidelity_rows, method, 0.0) == 0.0


def test_fidelity_error_grows_with_ratio(fidelity_rows):
    errors = [_mse(fidelity_rows, "todo nearest", ratio) for ratio in (0.0, 0.75, 0.89, 0.9375)]
    assert errors == sorted(errors) and errors[-1] > 0


def test_fidelity_keeps_equal_kv_tokens_for_todo_and_tome(fidelity_rows):
    for ratio in (0.75, 0.89, 0.9375):
        todo_tokens = next(r.kv_tokens for r in fidelity_rows if r.method == "todo nearest" and r.ratio == ratio)
        tome_tokens = next(r.kv_tokens for r in fidelity_rows if r.method == "tome" and r.ratio == ratio)
        assert todo_tokens == tome_tokens


def test_fidelity_table_follows_table_1(fidelity_rows):
    table = fidelity.markdown_table(fidelity_rows)
    assert "| Grid | Method | Merge ratio | K/V tokens | MSE vs exact | HPF |" in table
    assert "Exact attention" in table and "ToMe (tomesd)" in table and "ToDo avg-pool" in table


def test_results_of_several_runs_combine_into_one_report(bench_output, tmp_path):
    from todo_ext.bench import report

    table = report.combine(tmp_path, [bench_output / "results.json", bench_output / "results.json"])
    assert table.count("| sd15 | 128px | todo-0.75 |") == 2
    assert (tmp_path / "speedup.png").stat().st_size > 0 and (tmp_path / "bound.png").stat().st_size > 0


def test_speed_at_a_given_error_follows_the_frontier_of_a_hand_made_curve():
    from todo_ext.bench.report import pareto_frontier, speedup_at_error

    curve = [(4e-4, 2.0), (1e-4, 1.5), (2e-4, 1.2)]
    assert pareto_frontier(curve) == [(1e-4, 1.5), (4e-4, 2.0)]
    assert speedup_at_error(curve, 5e-5) is None
    assert speedup_at_error(curve, 1e-4) == 1.5
    assert speedup_at_error(curve, 2.5e-4) == pytest.approx(1.75)
    assert speedup_at_error(curve, 4e-4) == 2.0
    assert speedup_at_error(curve, 1e-2) == 2.0
    assert speedup_at_error([], 1e-2) is None


@pytest.fixture(scope="module")
def equal_quality_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("equal-quality")
    bench_cli.main([
        "--equal-quality", "--width", "32", "--sizes", "128", "--repeats", "1", "--no-warmup", "--no-fidelity",
        "--threads", "1", "--quiet-wait", "0", "--no-dit", "--out", str(out),
    ])
    return out


def test_one_configuration_list_drives_timing_and_fidelity_proxy(equal_quality_output):
    results = json.loads((equal_quality_output / "results.json").read_text())["results"]
    assert [r["config"] for r in results] == list(runner.EQUAL_QUALITY_CONFIGS)
    errors = {r["config"]: r["proxy_mse"] for r in results}
    assert errors["baseline"] == 0.0
    assert all(error > 0.0 for name, error in errors.items() if name != "baseline")
    assert errors["todo-0.75-d1"] > errors["todo-0.75"]


def test_equal_quality_report_has_both_tables_and_the_plot(equal_quality_output, tmp_path):
    from todo_ext.bench import report

    quality = (equal_quality_output / "quality.md").read_text()
    assert "| Model | Size | Config | Step (s) | Speedup | CPU-time speedup | Others' CPU | Proxy MSE |" in quality
    assert "| Model | Size | Proxy MSE at most | ToDo speedup | ToMe speedup | ToDo over ToMe |" in quality
    assert all(f"| sd15 | 128px | {name} |" in quality for name in runner.EQUAL_QUALITY_CONFIGS)
    assert (equal_quality_output / "speed_vs_error.png").read_bytes().startswith(b"\x89PNG")
    combined = report.combine(tmp_path, [equal_quality_output / "results.json"])
    assert "| sd15 | 128px | tome-0.75 |" in (tmp_path / "results.md").read_text()
    assert quality in combined and (tmp_path / "speed_vs_error.png").stat().st_size > 0


def test_equal_quality_defaults_to_its_sizes_and_configurations():
    plan = bench_cli._plan(bench_cli._parse_args(["--equal-quality"]))
    assert plan == {"sd15": [(size, list(runner.EQUAL_QUALITY_CONFIGS)) for size in bench_cli.EQUAL_QUALITY_SIZES]}


def test_proxy_error_of_a_configuration_is_the_fidelity_table_error_at_its_grid():
    configs = [runner.CONFIGS_BY_NAME[name] for name in ("baseline", "todo-0.75", "tome-0.75", "todo-0.75-d1")]
    errors = fidelity.configuration_errors(configs, 32, (0, 1, 2, 3), images=("astronaut",))
    rows = fidelity.measure(grids=(32,), images=("astronaut",), ratios=(0.75,), methods=("nearest",))
    assert errors["baseline"] == 0.0
    assert errors["todo-0.75"] == pytest.approx(_mse(rows, "todo nearest", 0.75))
    assert errors["tome-0.75"] == pytest.approx(_mse(rows, "tome", 0.75))
    assert errors["todo-0.75-d1"] > errors["todo-0.75"]
