"""Accepting recategorisation proposals: a new taxonomy version, and products re-labelled under the new nodes.

A taxonomy file is never edited in place: accepted proposals go into `<stem>.v<version+1>.yaml`, so mappings and
models made against the old version stay valid and the old file remains the record of what they meant.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from pipelines.taxonomy import load_taxonomy, parse_path, path_str


def _node(node) -> tuple[str, ...]:
    return parse_path(node) if isinstance(node, str) else tuple(node)


def _subtree(tree, node: tuple, path: str):
    """The YAML value under `node` (a dict or a list of leaf names)."""
    value = tree
    for i, name in enumerate(node):
        if isinstance(value, dict) and name in value:
            value = value[name]
            continue
        raise ValueError(f"{path}: node {path_str(node[:i + 1])} not found in the tree")
    return value


def accept_proposals(taxonomy_path: str | Path, node, proposals: list[dict], out_dir: str | Path,
                     overwrite: bool = False) -> Path:
    """Write `<stem>.v<N+1>.yaml` in out_dir where `node` gains the accepted children; the input stays untouched.

    proposals: [{"cluster_id": 3, "name": "Sports Shoes"}, ...]; several clusters may share a name (they merge
    into one child). The node stops being listed as shallow. Returns the new file's path."""
    src = Path(taxonomy_path)
    taxonomy = load_taxonomy(src)  # validates the source first
    node = _node(node)
    if node not in taxonomy:
        raise ValueError(f"{src}: node {path_str(node)} is not in the taxonomy")
    if len(node) >= taxonomy.depth:
        raise ValueError(f"{path_str(node)} is at the deepest level ({taxonomy.levels[-1]}): it cannot gain children")
    if not proposals:
        raise ValueError("no proposals to accept")
    names = []
    for p in proposals:
        if "cluster_id" not in p or not str(p.get("name", "")).strip():
            raise ValueError(f"each proposal needs a cluster_id and a non-empty name, got {p}")
        name = " ".join(str(p["name"]).split())
        if ">" in name:
            raise ValueError(f"proposal name {name!r} contains '>' (the path separator)")
        if name not in names:
            names.append(name)
    existing = {c[-1] for c in taxonomy.children(node)}
    clash = sorted(set(names) & existing)
    if clash:
        raise ValueError(f"{path_str(node)} already has children named {clash}")

    doc = yaml.safe_load(src.read_text())
    version = int(doc.get("version", 1)) + 1
    parent = _subtree(doc["tree"], node[:-1], str(src))
    children = parent[node[-1]] or []
    if isinstance(children, dict):
        children.update({n: [] for n in names})  # `name: []` = a node without children
    else:
        children = list(children) + names
    parent[node[-1]] = children
    doc["version"] = version
    doc["shallow"] = [s for s in doc.get("shallow", []) if tuple(s) != node]
    doc.setdefault("history", []).append({
        "version": version, "derived_from": f"{src.name} (version {version - 1})", "node": list(node),
        "added": names, "clusters": {str(p["cluster_id"]): " ".join(str(p["name"]).split()) for p in proposals}})

    out = Path(out_dir) / f"{src.stem.split('.v')[0]}.v{version}.yaml"
    if out.resolve() == src.resolve() or (out.exists() and not overwrite):
        raise FileExistsError(f"{out} exists: taxonomy versions are immutable (pass overwrite=True to replace a draft)")
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# {doc.get('name', src.stem)} version {version}: {path_str(node)} gained {', '.join(names)}\n"
              f"# (accepted recategorisation proposals; derived from {src.name}, which is left unchanged)\n")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120))
    try:
        load_taxonomy(tmp)  # the new version must load, or no file is left behind
    except Exception:
        tmp.unlink()
        raise
    tmp.replace(out)
    return out


def relabel(products_df: pd.DataFrame, cluster_assignments: pd.DataFrame, mapping: dict, node=None,
            taxonomy=None) -> pd.DataFrame:
    """Products of the node whose cluster was accepted move to node + (child,); every other row is unchanged.

    cluster_assignments: (platform, product_id, cluster), e.g. RecategoriseResult.products. mapping: cluster id ->
    child name (or full child path). node defaults to the (single) category_path of the assigned products. With a
    taxonomy (the new version), every new path is checked to exist. Returns a copy with `category_path` updated
    and a `relabelled` flag."""
    need = {"platform", "product_id", "cluster"}
    if not need <= set(cluster_assignments.columns):
        raise ValueError(f"cluster_assignments needs columns {sorted(need)}, has {list(cluster_assignments.columns)}")
    known = set(cluster_assignments["cluster"].tolist())
    missing = sorted(set(mapping) - known)
    if missing:
        raise ValueError(f"mapping refers to clusters {missing} that no product is assigned to")
    out = products_df.copy()
    key = out["platform"].astype(str) + ":" + out["product_id"].astype(str)
    ca = cluster_assignments
    cluster_of = pd.Series(ca["cluster"].to_numpy(), index=ca["platform"].astype(str) + ":" + ca["product_id"].astype(str))
    if cluster_of.index.duplicated().any():
        raise ValueError("cluster_assignments lists a product more than once")
    unknown = cluster_of.index.difference(key)
    if len(unknown):
        raise ValueError(f"{len(unknown)} assigned products are not in products_df, e.g. {list(unknown[:3])}")
    assigned = key.isin(cluster_of.index).to_numpy()
    paths = out["category_path"].map(tuple)
    nodes_seen = set(paths[assigned])
    node = _node(node) if node is not None else (next(iter(nodes_seen)) if len(nodes_seen) == 1 else None)
    if node is None or nodes_seen - {node}:
        raise ValueError(f"assigned products sit at {sorted(map(path_str, nodes_seen))}; they must all sit at the "
                         f"recategorised node {path_str(node) if node else '(pass node=...)'}")
    new_paths = {}
    for c, child in mapping.items():
        path = node + (child,) if isinstance(child, str) else tuple(child)
        if path[:-1] != node or len(path) != len(node) + 1:
            raise ValueError(f"cluster {c} -> {path_str(path)} is not a child of {path_str(node)}")
        if taxonomy is not None and path not in taxonomy:
            raise ValueError(f"cluster {c} -> {path_str(path)} is not in taxonomy version {taxonomy.version}")
        new_paths[c] = list(path)
    clusters = key.map(cluster_of)
    move = assigned & clusters.isin(list(new_paths)).to_numpy()
    out.loc[move, "category_path"] = pd.Series([new_paths[c] for c in clusters[move]], index=out.index[move])
    out["relabelled"] = move
    return out
