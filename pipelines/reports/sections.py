"""Named sections of a markdown report, and atomic writes, shared by every report writer.

Several assets write into one benchmark.md (the benchmark tables, the cross-platform section, the two-stage
trade-off). Each owns one section between `<!-- name:start -->` and `<!-- name:end -->` and replaces exactly that
block, so a re-run never stacks a second copy and never cuts into a neighbour. (Cutting at the next `## ` heading
did: it swallowed the next section's start marker, and the next writer then appended a duplicate.)

    text = merge_section(text, "cross-platform", markdown)   # replace the marked block, or append it
    merge_section_file(path, "two-stage", markdown)          # the same on a file, written atomically
    report_sections(text)                                    # {name: body} of every marked block, in order
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from pipelines.files import atomic_write_text

NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


def pct(share) -> str:
    """A share as a percentage with two decimals for a report table; 'n/a' when it could not be measured."""
    return "n/a" if share is None else f"{100 * share:.2f}"


def met_word(met) -> str:
    """How a report says a target was met, missed (bold) or could not be measured."""
    return {True: "met", False: "**not met**", None: "n/a"}[met]
MARKER = re.compile(r"<!-- ([a-z0-9][a-z0-9-]*):(start|end) -->")


class SectionMarkerError(ValueError):
    """A report's section markers are damaged (a start without its end, a section twice, nested sections)."""


def markers(name: str) -> tuple[str, str]:
    if not NAME.fullmatch(name):
        raise ValueError(f"section name {name!r}: use lower-case letters, digits and '-'")
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def _block(name: str, body: str) -> str:
    start, end = markers(name)
    found = {m.group(1) for m in MARKER.finditer(body)}
    if found:
        raise SectionMarkerError(f"section {name!r}: its body holds section markers of {sorted(found)}; "
                                 "a section cannot contain another")
    return f"{start}\n{body.strip(chr(10))}\n{end}\n"


def report_sections(md_text: str) -> dict[str, str]:
    """{name: body} of every marked section, in file order. Raises SectionMarkerError, naming the line, when a
    marker has no partner, a section appears twice or sections nest: merging into such a file would guess."""
    found, open_name, open_at, open_line = {}, None, 0, 0
    for m in MARKER.finditer(md_text):
        name, kind = m.groups()
        line = md_text.count("\n", 0, m.start()) + 1
        if kind == "start":
            if open_name is not None:
                raise SectionMarkerError(f"line {line}: section {name!r} starts inside {open_name!r} "
                                         f"(started at line {open_line}, never ended)")
            if name in found:
                raise SectionMarkerError(f"line {line}: section {name!r} appears a second time")
            open_name, open_at, open_line = name, m.end(), line
        elif open_name != name:
            inside = f" (inside {open_name!r}, started at line {open_line})" if open_name else ""
            raise SectionMarkerError(f"line {line}: '<!-- {name}:end -->' without its start marker{inside}")
        else:
            found[name] = md_text[open_at:m.start()].strip("\n")
            open_name = None
    if open_name is not None:
        raise SectionMarkerError(f"line {open_line}: section {open_name!r} has no end marker")
    return found


def merge_section(md_text: str, name: str, body: str, first: bool = False) -> str:
    """`md_text` with section `name` set to `body`: the marked block replaced in place (everything outside it kept
    byte for byte), or added at the end (at the start with `first=True`) when the text has none."""
    sections = report_sections(md_text)  # validates every marker before anything is changed
    block = _block(name, body)
    start, end = markers(name)
    if name in sections:
        head, rest = md_text.split(start, 1)
        tail = rest.split(end, 1)[1]
        return head + block.rstrip("\n") + tail
    text = md_text.strip("\n")
    if not text:
        return block
    return block + "\n" + text + "\n" if first else text + "\n\n" + block


def merge_section_file(path, name: str, body: str, first: bool = False) -> Path:
    """merge_section on a file (a missing file counts as empty), written atomically. A damaged file raises
    SectionMarkerError naming it, and is left as it was."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        merged = merge_section(text, name, body, first=first)
    except SectionMarkerError as e:
        raise SectionMarkerError(f"{path}: {e}; rebuild it from its first section's writer "
                                 "(the benchmark_report asset rewrites benchmark.md)") from None
    return atomic_write_text(path, merged)


def merge_json_keys(path, updates: dict) -> Path:
    """Set top-level keys of a JSON report (a missing file counts as {}), keeping the others, written atomically."""
    path = Path(path)
    doc = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(doc).__name__}")
    return atomic_write_text(path, json.dumps(doc | updates, indent=2, default=float))


def publish_measurement(name: str, report: dict, body: str, out_dir, benchmark_md, figures: dict) -> dict:
    """A measurement's report written where people look for it: <out_dir>/<name>.json (the whole report) and
    <name>.md (`body`), the `name` section of `benchmark_md`, and - when the benchmark's figures file is beside
    it - its `name` key (`figures`). -> {"json", "md", "benchmark_md"} paths."""
    out, md_path = Path(out_dir), Path(benchmark_md)
    atomic_write_text(out / f"{name}.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(out / f"{name}.md", body + "\n")
    merge_section_file(md_path, name, body)
    if md_path.with_suffix(".json").exists():
        merge_json_keys(md_path.with_suffix(".json"), {name: figures})
    return {"json": str(out / f"{name}.json"), "md": str(out / f"{name}.md"), "benchmark_md": str(md_path)}
