"""Benchmark output: a Markdown table, a JSON file and two PNG plots (speedup vs size; achieved vs bound).

`python -m todo_ext.bench.report OUT RESULTS.json...` merges the results of several runs (e.g. the quick default
and a separate large-size run) into one table and one pair of plots.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from todo_ext.bench.runner import Measurement, Sample

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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def measurements_from_json(data: dict[str, Any]) -> list[Measurement]:
    """Rebuild the measurements of a results.json written by write_json."""
    derived_keys = set(data["results"][0]) - {"model", "size", "config", "label", "samples_s", "other_cpu_share",
                                              "peak_bytes"} if data["results"] else set()
    return [
        Measurement(
            r["model"], r["size"], r["config"], r["label"],
            samples=[
                Sample(s, {}, other_cpu_share=o) for s, o in zip(r["samples_s"], r["other_cpu_share"], strict=True)
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
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m todo_ext.bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("results", type=Path, nargs="+", help="results.json files of earlier runs")
    args = parser.parse_args(argv)
    print(combine(args.out, args.results))


if __name__ == "__main__":
    main()
