"""The few lines a person reads after `prodcat run`: headline figures, checks that warned or failed, where the
reports are, and what to run next. Figures are read from the reports the run wrote, never restated here."""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.settings import Settings


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def headline_lines(report_dir: Path) -> list[str]:
    """Best in-distribution model and baseline (test hF1), cross-shop mean, two-stage routing."""
    lines = []
    results = _read_json(report_dir / "benchmark.json").get("results", {})
    scored = {name: r["test"]["hF1"] for name, r in results.items() if (r.get("test") or {}).get("hF1") is not None}
    models = {k: v for k, v in scored.items() if k.startswith("model_")}
    baselines = {k: v for k, v in scored.items() if k.startswith("baseline_")}
    if models:
        best = max(models, key=models.get)
        line = f"  best model (test hF1): {best.removeprefix('model_')} {100 * models[best]:.2f}%"
        if baselines:
            base = max(baselines, key=baselines.get)
            line += f"; best baseline {base.removeprefix('baseline_')} {100 * baselines[base]:.2f}%"
        lines.append(line)
    means = _read_json(report_dir / "holdout.json").get("mean", {})
    if means:
        best = max(means, key=lambda k: means[k] or 0)
        lines.append(f"  unseen shop (leave-one-platform-out, mean test hF1): {best} {100 * means[best]:.2f}%")
    test = _read_json(report_dir / "tradeoff.json").get("test", {})
    if test.get("routed_share") is not None:
        lines.append(f"  two-stage: {100 * test['routed_share']:.1f}% of products routed to stage 2, "
                     f"routed hF1 {100 * test['hF1_routed']:.2f}% (stage 2 alone {100 * test['hF1_stage2']:.2f}%)")
    return lines


def adaptation_lines(work_dir: Path) -> list[str]:
    """Per shop, the test hF1 of the classifier adapted to it as if new (the shop_adaptation asset's tables)."""
    import pandas as pd

    scores = {}
    for table in sorted((Path(work_dir) / "assets" / "shop_adaptation").glob("*.parquet")):
        row = pd.read_parquet(table).iloc[0]
        scores[row["shop"]] = _json_or_empty(row.get("test")).get("hF1")
    scored = {shop: v for shop, v in scores.items() if v is not None}
    if not scores:
        return []
    figures = ", ".join(f"{shop} {100 * v:.2f}%" for shop, v in scored.items()) or "no shop with a hand mapping"
    return [f"  zero-label adaptation (each shop as new, test hF1): {figures}; models in {Path(work_dir) / 'adapt'}"]


def _json_or_empty(text) -> dict:
    try:
        return json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}


def check_lines(checks: list) -> list[str]:
    """Blocking checks that failed are errors (the run stopped); non-blocking ones are warnings with their figures."""
    lines = []
    for name, key, passed, severity, metadata in checks:
        if passed:
            continue
        figures = ", ".join(f"{k}={v}" for k, v in metadata.items() if isinstance(v, (int, float, str)))
        label = "warning" if severity == "WARN" else "FAILED"
        lines.append(f"  {label}: {name}[{key or '-'}] {figures}")
    return lines


def print_summary(summary: dict, settings: Settings, log=print) -> None:
    report = settings.work_dir / "report"
    checks = summary.get("__checks__", [])
    log("")
    log(f"done: {len(summary) - 1} materialisations, {len(checks)} checks "
        f"({sum(not c[2] for c in checks)} not passed)")
    for line in headline_lines(report) + adaptation_lines(settings.work_dir) + check_lines(checks):
        log(line)
    log("reports:")
    for path in (report / "benchmark.md", settings.work_dir / "recategorisation" / "index.html"):
        if path.exists():
            log(f"  {path}")
    log("next:")
    log("  make ui                                   # Dagster UI :3000 (lineage, runs) + MLflow UI :5000")
    log("  .venv/bin/prodcat classify --shop hm --input data/sample/hm --out /tmp/hm.csv")
    log("  .venv/bin/prodcat serve                   # HTTP API on :8000, OpenAPI at /docs")
