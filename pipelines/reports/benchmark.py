"""The main benchmark report: benchmark.json and the `benchmark` section of benchmark.md (every strategy and
baseline on the grouped test split, overall and per platform).

benchmark.md is shared: later assets add their own marked sections (cross-platform, two-stage). This writer owns
the file's head; rewriting it keeps the other writers' sections (and benchmark.json's other keys, such as
`cross_platform`), so re-running the benchmark alone does not lose them.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from pipelines.files import atomic_write_text
from pipelines.reports.sections import (SectionMarkerError, merge_section, report_sections)

SECTION = "benchmark"
COLUMNS = ["hP", "hR", "hF1", "strict_hF1", "acc_L1", "acc_L2", "acc_L3", "consistency", "ECE"]
OWN_JSON_KEYS = ("meta", "results")
log = logging.getLogger(__name__)


def _summary_table(rows: dict) -> list[str]:
    lines = ["| model | " + " | ".join(COLUMNS) + " | train s | infer ms/item |", "|---|" + "---|" * (len(COLUMNS) + 2)]
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["test"].get("hF1", 0)):
        t = r["test"]
        cells = [f"{100 * t[c]:.2f}" if c in t and c != "ECE" else (f"{t[c]:.4f}" if c in t else "-") for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['train_seconds']:.1f} | {r['infer_ms_per_item']:.3f} |")
    return lines


def _platform_table(rows: dict, platforms: list) -> list[str]:
    lines = ["## Per platform (test hF1 %)", "", "| model | " + " | ".join(platforms) + " |",
             "|---|" + "---|" * len(platforms)]
    for name, r in sorted(rows.items()):
        pp = r.get("per_platform", {})
        lines.append(f"| {name} | " + " | ".join(f"{100 * pp[p]['hF1']:.2f}" if p in pp and pp[p] else "-"
                                                   for p in platforms) + " |")
    return lines


def benchmark_markdown(rows: dict, meta: dict) -> str:
    """rows[name] = {'val':{...}, 'test':{...}, 'per_platform':{p:{...}}, 'train_seconds', 'infer_ms_per_item'}."""
    lines = [f"# prodcat benchmark ({meta.get('data', '')})", "",
             f"Test split (grouped), {meta.get('n_test', '?')} products; metrics in %. hP/hR/hF1 score a prediction "
             "at the depth the shop's label is known; strict_hF1 also counts levels below a coarse label as errors.",
             ""]
    return "\n".join(lines + _summary_table(rows) + [""] + _platform_table(rows, meta.get("platforms", []))) + "\n"


def _other_sections(md_path: Path) -> dict[str, str]:
    """The sections other writers added to an existing benchmark.md. A damaged file (from before section markers
    were checked) is rebuilt without them, with a warning: their assets run downstream and write them again."""
    if not md_path.exists():
        return {}
    try:
        found = report_sections(md_path.read_text(encoding="utf-8"))
    except SectionMarkerError as e:
        log.warning("%s: %s; rebuilding it with the benchmark section only", md_path, e)
        return {}
    return {name: body for name, body in found.items() if name != SECTION}


def _other_json_keys(json_path: Path) -> dict:
    if not json_path.exists():
        return {}
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        log.warning("%s: not JSON (%s); rebuilding it", json_path, e)
        return {}
    return {k: v for k, v in doc.items() if k not in OWN_JSON_KEYS} if isinstance(doc, dict) else {}


def write_benchmark_report(rows: dict, out_dir, meta: dict) -> tuple[Path, Path]:
    """benchmark.json ({meta, results} + keys other writers added) and benchmark.md (the `benchmark` section first,
    then the other writers' sections as they were). -> (json path, md path)."""
    out = Path(out_dir)
    js, md = out / "benchmark.json", out / "benchmark.md"
    doc = {"meta": meta, "results": rows} | _other_json_keys(js)
    text = merge_section("", SECTION, benchmark_markdown(rows, meta))
    for name, body in _other_sections(md).items():
        text = merge_section(text, name, body)
    atomic_write_text(js, json.dumps(doc, indent=2, default=float))
    atomic_write_text(md, text)
    return js, md
