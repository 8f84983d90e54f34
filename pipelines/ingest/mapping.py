"""Mapping tables: native category path prefix (with `*` wildcards) -> shared taxonomy path or unmapped reason.

File `data/mappings/<platform>.csv`, columns `native_path,category_path,unmapped_reason`.
A rule matches a native path when each of its levels equals the native level (case-insensitive)
or is `*`. The most specific matching rule wins: more levels first, then fewer wildcards.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from pipelines.taxonomy.tree import Taxonomy, parse_path, path_str


@dataclass(frozen=True)
class Rule:
    pattern: tuple[str, ...]
    category_path: tuple[str, ...]
    unmapped_reason: str
    line: int

    def matches(self, native: tuple[str, ...]) -> bool:
        if len(self.pattern) > len(native):
            return False
        return all(p == "*" or p.casefold() == n.casefold() for p, n in zip(self.pattern, native))

    @property
    def specificity(self) -> tuple[int, int]:
        return (len(self.pattern), -self.pattern.count("*"))


class MappingTable:
    def __init__(self, rules: list[Rule], source: str = ""):
        self.rules = sorted(rules, key=lambda r: r.specificity, reverse=True)
        self.source = source
        self._cache: dict[tuple, Rule | None] = {}

    def lookup(self, native_path) -> Rule | None:
        native = tuple(str(x).strip() for x in native_path)
        if native not in self._cache:
            self._cache[native] = next((r for r in self.rules if r.matches(native)), None)
        return self._cache[native]


def load_mapping(path: str | Path, taxonomy: Taxonomy) -> MappingTable:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mapping table {path} does not exist: add one for this platform (see README)")
    rules, errors, seen = [], [], set()
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"native_path", "category_path", "unmapped_reason"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        for i, row in enumerate(reader, start=2):
            pattern = parse_path(row["native_path"])
            target = parse_path(row["category_path"] or "")
            reason = (row["unmapped_reason"] or "").strip()
            if not pattern:
                errors.append(f"line {i}: empty native_path")
            elif bool(target) == bool(reason):
                errors.append(f"line {i}: give exactly one of category_path or unmapped_reason")
            elif target and not taxonomy.is_valid_path(target):
                errors.append(f"line {i}: {path_str(target)!r} is not a path of taxonomy {taxonomy.name} v{taxonomy.version}")
            elif pattern in seen:
                errors.append(f"line {i}: duplicate rule {path_str(pattern)!r}")
            else:
                seen.add(pattern)
                rules.append(Rule(pattern, target, reason, i))
    if errors:
        raise ValueError(f"{path}: invalid mapping table:\n  " + "\n  ".join(errors[:20]))
    return MappingTable(rules, source=str(path))
