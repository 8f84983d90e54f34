"""The cross-platform report: the leave-one-platform-out cells (pipelines/classify/holdout.py) as an hF1 matrix with
generalisation gaps, a heatmap and few-shot curves; holdout.json/.md/.png, and the `cross-platform` section of
benchmark.md / the `cross_platform` key of benchmark.json.

    holdout_matrix(cells, in_distribution)                        -> matrix, per-level accuracy, mean, gap
    write_cross_platform_report(cells, in_distribution, curves, dir) -> (report, markdown, heatmap png)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipelines.files import atomic_write_text
from pipelines.reports.sections import merge_json_keys, merge_section_file, pct

SECTION = "cross-platform"
HEADING = "## Cross-platform (leave-one-platform-out)"
JSON_KEYS = ("matrix_test", "matrix_all", "levels_test", "mean", "gap")


def holdout_matrix(cells: list[dict], in_distribution: dict) -> dict:
    """cells: evaluate_holdout results; in_distribution[strategy][platform] = test hF1 of the model trained on all
    shops. -> {matrix_test / matrix_all: {strategy: {holdout: hF1}}, levels_test, mean, gap (mean in-dist - mean
    unseen), ...}."""
    strategies = sorted({c["strategy"] for c in cells})
    holdouts = sorted({c["holdout"] for c in cells})
    get = {(c["strategy"], c["holdout"]): c for c in cells}
    cell = lambda s, h, part, key: get[(s, h)][part].get(key) if (s, h) in get else None
    matrix = {s: {h: cell(s, h, "test", "hF1") for h in holdouts} for s in strategies}
    matrix_all = {s: {h: cell(s, h, "all", "hF1") for h in holdouts} for s in strategies}
    levels = {s: {h: [cell(s, h, "test", f"acc_L{i}") for i in (1, 2, 3)] if (s, h) in get else None
                  for h in holdouts} for s in strategies}
    mean, gap = {}, {}
    for s in strategies:
        vals = [v for v in matrix[s].values() if v is not None]
        mean[s] = float(np.mean(vals)) if vals else None
        ind = [v for v in (in_distribution.get(s, {}).get(h) for h in holdouts) if v is not None]
        gap[s] = float(np.mean(ind)) - mean[s] if ind and mean[s] is not None else None
    return {"holdouts": holdouts, "strategies": strategies, "matrix_test": matrix, "matrix_all": matrix_all,
            "levels_test": levels, "mean": mean, "gap": gap, "in_distribution": in_distribution}


def heatmap(report: dict, out_png) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, h = report["strategies"], report["holdouts"]
    grid = np.array([[np.nan if report["matrix_test"][a][b] is None else 100 * report["matrix_test"][a][b]
                      for b in h] for a in s])
    fig, ax = plt.subplots(figsize=(1.4 * len(h) + 3.5, 0.45 * len(s) + 2.0))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=max(0, np.nanmin(grid) - 5) if np.isfinite(grid).any() else 0, vmax=100,
                   aspect="auto")
    ax.set_xticks(range(len(h)), h)
    ax.set_xlabel("unseen shop (trained on the others)")
    ax.set_yticks(range(len(s)), s)
    for i in range(len(s)):
        for j in range(len(h)):
            ax.text(j, i, "n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=9)
    fig.colorbar(im, ax=ax, label="test hF1 % on the unseen shop")
    ax.set_title("Leave-one-platform-out hF1")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _matrix_lines(report: dict) -> list[str]:
    h, s = report["holdouts"], report["strategies"]
    lines = ["| strategy | " + " | ".join(f"unseen {x}" for x in h) + " | mean unseen | mean in-dist | gap |",
             "|---|" + "---|" * (len(h) + 3)]
    for a in sorted(s, key=lambda a: -(report["mean"][a] or 0)):
        ind = [v for v in (report["in_distribution"].get(a, {}).get(x) for x in h) if v is not None]
        lines.append(f"| {a} | " + " | ".join(pct(report["matrix_test"][a][x]) for x in h)
                     + f" | {pct(report['mean'][a])} | {pct(float(np.mean(ind)) if ind else None)} | "
                     + f"{pct(report['gap'][a])} |")
    return lines


def _level_and_all_lines(report: dict) -> list[str]:
    h, s = report["holdouts"], report["strategies"]
    lines = ["", "Per-level accuracy on the unseen shop's test split (L1 / L2 / L3 %):", "",
             "| strategy | " + " | ".join(h) + " |", "|---|" + "---|" * len(h)]
    for a in s:
        lines.append(f"| {a} | " + " | ".join("n/a" if report["levels_test"][a][x] is None else
                                               " / ".join(pct(v) for v in report["levels_test"][a][x])
                                               for x in h) + " |")
    lines += ["", "hF1 % on *all* mapped products of the unseen shop (train + val + test splits):", "",
              "| strategy | " + " | ".join(h) + " |", "|---|" + "---|" * len(h)]
    for a in s:
        lines.append(f"| {a} | " + " | ".join(pct(report["matrix_all"][a][x]) for x in h) + " |")
    return lines


def _fewshot_lines(curves: dict) -> list[str]:
    if not curves:
        return []
    first = next(iter(curves.values()))["curve"]
    lines = ["", "Few-shot adaptation (test hF1 % on the unseen shop after adding a share of its labelled "
             "product groups to training):", "",
             "| holdout | strategy | " + " | ".join(f"{100 * c['fraction']:g}% (labelled products)" for c in first)
             + " |", "|---|---|" + "---|" * len(first)]
    for hold, c in sorted(curves.items()):
        lines.append(f"| {hold} | {c['strategy']} | " + " | ".join(f"{pct(p['test_hF1'])} ({p['labelled_products']})"
                                                              for p in c["curve"]) + " |")
    return lines


def _fusion_verdict(report: dict) -> list[str]:
    """Whether our figures support the paper's claim that early fusion generalises better to an unseen shop."""
    if not {"early", "late"} <= set(report["strategies"]):
        return []
    e, l_ = report["gap"]["early"], report["gap"]["late"]
    me, ml = report["mean"]["early"], report["mean"]["late"]
    if None in (e, l_, me, ml):
        return []
    verdict = "supports" if me > ml else "does not support"
    return ["", f"Early vs late fusion on unseen shops: mean unseen hF1 early {pct(me)} vs late {pct(ml)}, "
                f"gap early {pct(e)} vs late {pct(l_)} points: our data {verdict} the paper's claim that "
                "early fusion generalises better to an unseen shop."]


def cross_platform_markdown(report: dict, curves: dict, png_name: str = "holdout_heatmap.png") -> str:
    """The section's markdown: matrix with gaps, per-level accuracy, all-products hF1, few-shot curves, verdict."""
    lines = [HEADING, "",
             "Each model is trained on every other shop and tested on the unseen shop's grouped test split "
             "(hF1 %, labels read at their known depth); `in-dist` is the same strategy trained on all shops, "
             "tested on that shop's test split; gap = mean in-dist - mean unseen.", ""]
    lines += _matrix_lines(report) + _level_and_all_lines(report) + _fewshot_lines(curves) + _fusion_verdict(report)
    lines += ["", f"![leave-one-platform-out heatmap]({png_name})", ""]
    return "\n".join(lines)


def fewshot_rows(curves: dict, matrix_test: dict) -> dict:
    """curves[holdout] = DataFrame(fraction, labelled_products, test_hF1, strategy) -> {holdout: {strategy, curve}}
    with the 0% point (the matrix cell itself) first."""
    out = {}
    for hold, df in curves.items():
        strategy = df["strategy"].iloc[0]
        zero = matrix_test.get(strategy, {}).get(hold)
        out[hold] = {"strategy": strategy, "curve": [{"fraction": 0.0, "labelled_products": 0, "test_hF1": zero}]
                     + df.to_dict("records")}
    return out


def write_cross_platform_report(cells: list[dict], in_distribution: dict, curves: dict, report_dir) -> tuple:
    """holdout.json/.md/.png in report_dir, and the cross-platform section of benchmark.md / key of benchmark.json
    when the benchmark report is there (replaced on a re-run, never added twice). -> (report, markdown, png)."""
    report_dir = Path(report_dir)
    report = holdout_matrix(cells, in_distribution)
    png = heatmap(report, report_dir / "holdout_heatmap.png")
    curve_rows = fewshot_rows(curves, report["matrix_test"])
    md = cross_platform_markdown(report, curve_rows, png.name)
    atomic_write_text(report_dir / "holdout.md", md)
    atomic_write_text(report_dir / "holdout.json", json.dumps({**report, "fewshot": curve_rows, "cells": cells},
                                                              indent=1, default=float))
    if (report_dir / "benchmark.md").exists():
        merge_section_file(report_dir / "benchmark.md", SECTION, md)
    if (report_dir / "benchmark.json").exists():
        merge_json_keys(report_dir / "benchmark.json",
                        {"cross_platform": {k: report[k] for k in JSON_KEYS} | {"fewshot": curve_rows}})
    return report, md, png
