"""Report writers share benchmark.md through marked sections (issue 16 defect 1).

The benchmark, cross-platform and two-stage writers each replace exactly their own block. Cutting the cross-platform
section at the next `## ` heading swallowed the two-stage start marker, and the two-stage writer then appended a
second copy; the committed full-benchmark report still shows the damage (an end marker without its start)."""
import json

import pandas as pd
import pytest

from pipelines.reports.benchmark import write_benchmark_report
from pipelines.reports.holdout import write_cross_platform_report
from pipelines.files import atomic_write_text
from pipelines.reports.sections import SectionMarkerError, merge_section, merge_section_file, report_sections
from pipelines.settings import ROOT

COMMITTED = ROOT / "reports" / "benchmark"
TWO_STAGE = ("## Two-stage inference (stage 1 lexical, stage 2 champion)\n\n| threshold | routed % | hF1 % |\n"
             "|---|---|---|\n| 0.4154 | 1.0 | 98.79 |\n\n![trade-off](tradeoff.png)")


@pytest.fixture(scope="module")
def committed():
    """The figures of the committed full-benchmark report: its result rows and its cross-platform cells."""
    bench = json.loads((COMMITTED / "benchmark.json").read_text())
    holdout = json.loads((COMMITTED / "holdout.json").read_text())
    curves = {h: pd.DataFrame(c["curve"][1:]).assign(strategy=c["strategy"]) for h, c in holdout["fewshot"].items()}
    return {"rows": bench["results"], "meta": bench["meta"], "cells": holdout["cells"],
            "in_dist": holdout["in_distribution"], "curves": curves}


def _counts(text: str) -> dict:
    return {h: text.count(h) for h in ("# prodcat benchmark", "## Per platform", "## Cross-platform",
                                       "## Two-stage inference")}


def test_every_writer_in_turn_keeps_one_copy_of_each_section(committed, tmp_path):
    write_benchmark_report(committed["rows"], tmp_path, committed["meta"])
    write_cross_platform_report(committed["cells"], committed["in_dist"], committed["curves"], tmp_path)
    merge_section_file(tmp_path / "benchmark.md", "two-stage", TWO_STAGE)  # what the routing asset does
    write_cross_platform_report(committed["cells"], committed["in_dist"], committed["curves"], tmp_path)
    text = (tmp_path / "benchmark.md").read_text()
    assert list(report_sections(text)) == ["benchmark", "cross-platform", "two-stage"]
    for name in ("benchmark", "cross-platform", "two-stage"):
        assert text.count(f"<!-- {name}:start -->") == 1 and text.count(f"<!-- {name}:end -->") == 1, name
    assert set(_counts(text).values()) == {1}
    # the benchmark again (a new training run): its tables are replaced, the other writers' sections kept
    rows = dict(committed["rows"])
    rows["model_early"] = json.loads(json.dumps(rows["model_early"]))
    rows["model_early"]["test"]["hF1"] = 0.5
    write_benchmark_report(rows, tmp_path, committed["meta"])
    again = (tmp_path / "benchmark.md").read_text()
    assert list(report_sections(again)) == ["benchmark", "cross-platform", "two-stage"]
    assert set(_counts(again).values()) == {1} and "| model_early | 98.88 | 98.87 | 50.00 |" in again
    assert report_sections(again)["two-stage"] == TWO_STAGE
    doc = json.loads((tmp_path / "benchmark.json").read_text())
    assert doc["results"]["model_early"]["test"]["hF1"] == 0.5  # new results, the cross-platform key kept
    assert doc["cross_platform"]["matrix_test"] == json.loads((COMMITTED / "benchmark.json").read_text())[
        "cross_platform"]["matrix_test"]


def test_the_cross_platform_section_no_longer_swallows_the_next_start_marker(committed, tmp_path):
    md = tmp_path / "benchmark.md"
    write_benchmark_report(committed["rows"], tmp_path, committed["meta"])
    write_cross_platform_report(committed["cells"], committed["in_dist"], committed["curves"], tmp_path)
    merge_section_file(md, "two-stage", TWO_STAGE)
    before = md.read_text()
    write_cross_platform_report(committed["cells"], committed["in_dist"], committed["curves"], tmp_path)
    assert md.read_text() == before  # the same figures: byte for byte the same file
    merge_section_file(md, "two-stage", TWO_STAGE)
    assert md.read_text() == before


def test_merge_replaces_only_its_block():
    text = "# title\n\nintro\n\n<!-- a:start -->\nold a\n<!-- a:end -->\n\nbetween\n\n<!-- b:start -->\nb\n" \
           "<!-- b:end -->\ntrailing prose\n"
    merged = merge_section(text, "a", "## A\nnew a\n")
    assert merged == text.replace("old a", "## A\nnew a")
    assert merge_section(merged, "a", "## A\nnew a\n") == merged  # idempotent
    added = merge_section(merged, "c", "c body")
    assert added.startswith(merged.rstrip("\n")) and report_sections(added)["c"] == "c body"
    assert list(report_sections(merge_section(text, "z", "first", first=True))) == ["z", "a", "b"]


def test_the_committed_reports_damage_is_named_not_guessed(tmp_path):
    """The committed benchmark.md was left with a two-stage end marker without its start (reproduced here even
    once it is regenerated): merging into it refuses, naming the line, and leaves the file as it was; the benchmark
    writer (the file's owner) rebuilds it."""
    damaged = (COMMITTED / "benchmark.md").read_text().replace("<!-- two-stage:start -->\n", "")
    assert "<!-- two-stage:end -->" in damaged
    md = tmp_path / "benchmark.md"
    md.write_text(damaged)
    line = damaged[:damaged.index("<!-- two-stage:end -->")].count("\n") + 1
    with pytest.raises(SectionMarkerError, match=f"line {line}: '<!-- two-stage:end -->' without its start"):
        merge_section_file(md, "two-stage", TWO_STAGE)
    assert md.read_text() == damaged
    bench = json.loads((COMMITTED / "benchmark.json").read_text())
    write_benchmark_report(bench["results"], tmp_path, bench["meta"])
    rebuilt = md.read_text()
    assert list(report_sections(rebuilt)) == ["benchmark"] and rebuilt.count("## Two-stage") == 0


@pytest.mark.parametrize("text, message", [
    ("<!-- a:start -->\nx\n", "section 'a' has no end marker"),
    ("<!-- a:start -->\n<!-- b:start -->\n<!-- b:end -->\n<!-- a:end -->\n", "starts inside 'a'"),
    ("<!-- a:start -->\n<!-- a:end -->\n<!-- a:start -->\n<!-- a:end -->\n", "appears a second time"),
])
def test_damaged_markers_raise(text, message):
    with pytest.raises(SectionMarkerError, match=message):
        merge_section(text, "a", "body")


def test_a_body_cannot_carry_markers_and_names_are_checked():
    with pytest.raises(SectionMarkerError, match="cannot contain another"):
        merge_section("", "a", "x\n<!-- b:end -->")
    with pytest.raises(ValueError, match="section name"):
        merge_section("", "Two Stage", "x")


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "r.md"
    path.parent.mkdir()
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["r.md"]
