"""Shared taxonomy: a tree of nodes whose identity is the full path from the root."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

SEP = " > "


def path_str(path) -> str:
    return SEP.join(path)


def parse_path(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in str(text).split(">") if p.strip())


@dataclass
class Taxonomy:
    name: str
    version: int
    levels: list[str]
    nodes: list[tuple[str, ...]]  # every node, parents before children
    shallow: list[tuple[str, ...]] = field(default_factory=list)
    source: str = ""

    def __post_init__(self):
        self._nodes = set(self.nodes)
        self._children: dict[tuple, list[tuple]] = {(): []}
        for n in self.nodes:
            self._children.setdefault(n, [])
            self._children[n[:-1]].append(n)

    @property
    def depth(self) -> int:
        return len(self.levels)

    def children(self, node=()) -> list[tuple[str, ...]]:
        return self._children.get(tuple(node), [])

    def is_leaf(self, node) -> bool:
        return not self._children.get(tuple(node))

    def leaves(self) -> list[tuple[str, ...]]:
        return [n for n in self.nodes if self.is_leaf(n)]

    def level_nodes(self, level: int) -> list[tuple[str, ...]]:
        """Nodes at depth level+1 (level 0 = departments)."""
        return [n for n in self.nodes if len(n) == level + 1]

    def is_valid_path(self, path) -> bool:
        """A non-empty path from the root (it need not end at a leaf)."""
        path = tuple(path)
        return 0 < len(path) <= self.depth and path in self._nodes

    def __contains__(self, path) -> bool:
        return tuple(path) in self._nodes

    def size_per_level(self) -> dict[str, int]:
        return {lvl: len(self.level_nodes(i)) for i, lvl in enumerate(self.levels)} | {"leaves": len(self.leaves())}

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "levels": self.levels,
                "nodes": [list(n) for n in self.nodes], "shallow": [list(s) for s in self.shallow]}


def _walk(tree, prefix=()):
    if isinstance(tree, dict):
        for name, sub in tree.items():
            node = prefix + (str(name),)
            yield node
            yield from _walk(sub, node)
    elif isinstance(tree, list):
        for item in tree:
            if isinstance(item, dict):
                yield from _walk(item, prefix)
            else:
                yield prefix + (str(item),)


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    from pipelines.settings import TAXONOMY_PATH

    path = Path(path or TAXONOMY_PATH)
    doc = yaml.safe_load(path.read_text())
    nodes = list(_walk(doc["tree"]))
    if len(set(nodes)) != len(nodes):
        dup = sorted({path_str(n) for n in nodes if nodes.count(n) > 1})
        raise ValueError(f"{path}: duplicate taxonomy nodes {dup}")
    levels = list(doc["levels"])
    too_deep = [path_str(n) for n in nodes if len(n) > len(levels)]
    if too_deep:
        raise ValueError(f"{path}: nodes deeper than {len(levels)} levels: {too_deep[:5]}")
    shallow = [tuple(s) for s in doc.get("shallow", [])]
    for s in shallow:
        if s not in set(nodes):
            raise ValueError(f"{path}: shallow node {path_str(s)} is not in the tree")
    return Taxonomy(name=doc.get("name", path.stem), version=int(doc.get("version", 1)), levels=levels,
                    nodes=nodes, shallow=shallow, source=str(path))
