"""Benchmark output: a Markdown table, a JSON file and two PNG plots (speedup vs size; achieved vs bound); for the
equal-quality sweep also speed against the fidelity proxy's error (quality.md, speed_vs_error.png).

`python -m todo_ext.bench.report OUT RESULTS.json...` merges the results of several runs (e.g. the quick default
and a separate large-size run) into one table and one pair of plots.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

from todo_ext.bench.runner import CONFIGS_BY_NAME, Measurement, Sample

TABLE_COLUMNS = (
    "Model", "Size", "Config", "Step (s)", "Speedup", "Peak mem (MiB)", "Attn share", "Bound", "Of bound",
    "attn1 speedup", "ToDo hooks",
)


def _fmt(value: float | None, pattern: str) -> str:
    return "–" if value is None else format(value, pattern)


def markdown_table(measurements: list[Measurement]) -> str:
    """One row per model, size and configuration, in run order."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for m in measurements:
        d = m.derived
        baseline = m.config == "baseline"
        cells = (
            m.model, f"{m.size}px", m.label, f"{d['median_s']:.2f}", f"{d['speedup']:.2f}x", _fmt(d["peak_mib"], ".0f"),
            _fmt(None if baseline else d["attn_share"], ".1%"), _fmt(None if baseline else d["bound"], ".2f") + (
                "" if baseline else "x"), _fmt(d["fraction_of_bound"], ".0%"), _fmt(d["layer_speedup"], ".2f"),
            _fmt(d.get("todo_hook_share"), ".3%"),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def as_json(measurements: list[Measurement], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "meta": meta,
        "results": [
            {
                "model": m.model, "size": m.size, "config": m.config, "label": m.label,
                "samples_s": [s.seconds for s in m.samples],
                "other_cpu_share": [s.other_cpu_share for s in m.samples],
                "own_cpu_s": [s.own_cpu_seconds for s in m.samples],
                "peak_bytes": m.peak_bytes,
                **m.derived,
            }
            for m in measurements
        ],
    }


def write_json(path: Path, measurements: list[Measurement], meta: dict[str, Any]) -> None:
    path.write_text(json.dumps(as_json(measurements, meta), indent=2, default=str) + "\n")


def plot_speedup(path: Path, measurements: list[Measurement]) -> None:
    """Speedup over baseline against image size, one line per configuration, one panel per model."""
    plt = _pyplot()
    models = list(dict.fromkeys(m.model for m in measurements))
    figure, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        rows = [m for m in measurements if m.model == model]
        for config in dict.fromkeys(m.config for m in rows):
            points = sorted((m.size, m.derived["speedup"]) for m in rows if m.config == config)
            style = "--" if config.startswith("tome") else ("-" if config.startswith("todo") else ":")
            axis.plot(*zip(*points, strict=True), style, marker="o", label=config)
        axis.set(title=f"{model}: U-Net step speedup", xlabel="image size (px)", ylabel="speedup over baseline (x)")
        axis.set_xticks(sorted({m.size for m in rows}))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_bound(path: Path, measurements: list[Measurement]) -> None:
    """Measured speedup against the Amdahl bound of each configuration and size; the diagonal is 100 % of bound."""
    plt = _pyplot()
    rows = [m for m in measurements if m.derived.get("fraction_of_bound") is not None]
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    for config in dict.fromkeys(m.config for m in rows):
        mine = [m for m in rows if m.config == config]
        axis.scatter([m.derived["bound"] for m in mine], [m.derived["speedup"] for m in mine],
                     marker="s" if config.startswith("tome") else "o", label=config)
        for m in mine:
            axis.annotate(f"{m.model} {m.size}", (m.derived["bound"], m.derived["speedup"]), fontsize=6,
                          xytext=(3, 3), textcoords="offset points")
    top = max([1.0, *(max(m.derived["bound"], m.derived["speedup"]) for m in rows)]) * 1.05
    axis.plot([1, top], [1, top], "k:", label="100% of bound")
    axis.plot([1, top], [0.9, 0.9 * top], color="grey", lw=0.6, label="90% of bound")
    axis.set(xlabel="Amdahl bound (x)", ylabel="measured speedup (x)", title="Achieved vs bound")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


METHOD_NAMES = {"todo": "ToDo", "tome": "ToMe"}


def pareto_frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (error, speedup) points that no other point beats in both, by increasing error."""
    frontier: list[tuple[float, float]] = []
    for error, speedup in sorted(points):
        if not frontier or speedup > frontier[-1][1]:
            frontier.append((error, speedup))
    return frontier


def speedup_at_error(points: list[tuple[float, float]], error: float) -> float | None:
    """Speed-up a method reaches with a proxy error of at most `error`, from its measured (error, speedup) points.

    Points that another point beats in both error and speed are dropped (the Pareto frontier); between two frontier
    points the speed-up is interpolated linearly in error; beyond the last one it stays at the fastest measured;
    below the first (the smallest error measured) the method has no measured setting, so None.
    """
    frontier = pareto_frontier(points)
    if not frontier or error < frontier[0][0]:
        return None
    for (low_error, low_speed), (high_error, high_speed) in itertools.pairwise(frontier):
        if error < high_error:
            return low_speed + (high_speed - low_speed) * (error - low_error) / (high_error - low_error)
    return frontier[-1][1]


def _method_points(rows: list[Measurement]) -> dict[str, list[tuple[float, float]]]:
    points: dict[str, list[tuple[float, float]]] = {}
    for m in rows:
        kind = CONFIGS_BY_NAME[m.config].kind
        if kind in METHOD_NAMES:
            points.setdefault(kind, []).append((m.derived["proxy_mse"], m.derived["speedup"]))
    return points


def _quality_groups(measurements: list[Measurement]) -> dict[tuple[str, int], list[Measurement]]:
    groups: dict[tuple[str, int], list[Measurement]] = {}
    for m in measurements:
        if m.derived.get("proxy_mse") is not None:
            groups.setdefault((m.model, m.size), []).append(m)
    return groups


def quality_tables(measurements: list[Measurement]) -> str:
    """Markdown: per model and size, every configuration's step time, speed-up and proxy MSE; then the speed-up
    each method reaches at the proxy errors its frontier configurations measured, and ToDo's over ToMe's."""
    lines = ["| Model | Size | Config | Step (s) | Speedup | CPU-time speedup | Others' CPU | Proxy MSE |",
             "|---|---|---|---|---|---|---|---|"]
    groups = _quality_groups(measurements)
    for (model, size), rows in groups.items():
        for m in sorted(rows, key=lambda m: (CONFIGS_BY_NAME[m.config].kind != "baseline",
                                             CONFIGS_BY_NAME[m.config].kind, m.derived["proxy_mse"])):
            cpu_speedup = m.derived.get("cpu_time_speedup")
            lines.append(f"| {model} | {size}px | {m.label} | {m.derived['median_s']:.2f} | "
                         f"{m.derived['speedup']:.2f}x | {_fmt(cpu_speedup, '.2f')}{'x' if cpu_speedup else ''} | "
                         f"{m.derived['max_other_cpu_share']:.0%} | {m.derived['proxy_mse']:.2e} |")
    lines += ["", "| Model | Size | Proxy MSE at most | ToDo speedup | ToMe speedup | ToDo over ToMe |",
              "|---|---|---|---|---|---|"]
    for (model, size), rows in groups.items():
        points = _method_points(rows)
        for error in _error_levels(points):
            todo, tome = (speedup_at_error(points.get(kind, []), error) for kind in METHOD_NAMES)
            ratio = f"{todo / tome:.2f}x" if todo and tome else "–"
            lines.append(f"| {model} | {size}px | {error:.2e} | {_fmt(todo, '.2f')}{'x' if todo else ''} | "
                         f"{_fmt(tome, '.2f')}{'x' if tome else ''} | {ratio} |")
    return "\n".join(lines) + "\n"


def _error_levels(points: dict[str, list[tuple[float, float]]]) -> list[float]:
    """The errors of every method's frontier configurations: at each, one method is measured exactly."""
    return sorted({error for method_points in points.values() for error, _ in pareto_frontier(method_points)})


def plot_speed_vs_error(path: Path, measurements: list[Measurement]) -> None:
    """Speed-up against proxy MSE (log scale), one panel per model and size, one line per method."""
    plt = _pyplot()
    groups = _quality_groups(measurements)
    figure, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    for axis, ((model, size), rows) in zip(axes[0], groups.items(), strict=True):
        for kind, name in METHOD_NAMES.items():
            mine = sorted((m for m in rows if CONFIGS_BY_NAME[m.config].kind == kind),
                          key=lambda m: m.derived["proxy_mse"])
            if not mine:
                continue
            points = [(m.derived["proxy_mse"], m.derived["speedup"]) for m in mine]
            line, = axis.plot(*zip(*pareto_frontier(points), strict=True), "-" if kind == "todo" else "--",
                              label=name)
            axis.plot(*zip(*points, strict=True), "o" if kind == "todo" else "s", color=line.get_color())
            for m in mine:
                axis.annotate(m.config.split("-", 1)[1], (m.derived["proxy_mse"], m.derived["speedup"]),
                              fontsize=6, xytext=(3, 3), textcoords="offset points", color=line.get_color())
        axis.axhline(1.0, color="grey", lw=0.6, ls=":")
        axis.set_xscale("log")
        axis.margins(x=0.12, y=0.08)
        axis.xaxis.set_minor_formatter(plt.NullFormatter())
        axis.set(title=f"{model} {size}px", xlabel="fidelity proxy MSE (log)", ylabel="step speedup (x)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def write_quality(out: Path, measurements: list[Measurement]) -> str | None:
    """quality.md and speed_vs_error.png where the measurements carry proxy errors; returns the tables."""
    if not _quality_groups(measurements):
        return None
    tables = quality_tables(measurements)
    (out / "quality.md").write_text(tables)
    plot_speed_vs_error(out / "speed_vs_error.png", measurements)
    return tables


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def measurements_from_json(data: dict[str, Any]) -> list[Measurement]:
    """Rebuild the measurements of a results.json written by write_json."""
    derived_keys = set(data["results"][0]) - {"model", "size", "config", "label", "samples_s", "other_cpu_share",
                                              "own_cpu_s", "peak_bytes"} if data["results"] else set()
    return [
        Measurement(
            r["model"], r["size"], r["config"], r["label"],
            samples=[
                Sample(s, {}, other_cpu_share=o, own_cpu_seconds=c)
                for s, o, c in zip(r["samples_s"], r["other_cpu_share"],
                                   r.get("own_cpu_s", [None] * len(r["samples_s"])), strict=True)
            ],
            peak_bytes=r["peak_bytes"], derived={key: r[key] for key in derived_keys},
        )
        for r in data["results"]
    ]


def combine(out: Path, result_files: list[Path]) -> str:
    """Write results.md, results.json and both plots for the union of several runs' results; returns the table."""
    runs = [json.loads(path.read_text()) for path in result_files]
    measurements = [m for run in runs for m in measurements_from_json(run)]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", measurements, {"runs": [run["meta"] for run in runs]})
    plot_speedup(out / "speedup.png", measurements)
    plot_bound(out / "bound.png", measurements)
    table = markdown_table(measurements)
    (out / "results.md").write_text(table)
    quality = write_quality(out, measurements)
    return table if quality is None else table + "\n" + quality


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m todo_ext.bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("results", type=Path, nargs="+", help="results.json files of earlier runs")
    args = parser.parse_args(argv)
    print(combine(args.out, args.results))


if __name__ == "__main__":
    main()
