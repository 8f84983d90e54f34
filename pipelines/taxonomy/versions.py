"""Accepting recategorisation proposals: a new taxonomy version, and products re-labelled under the new nodes.

A taxonomy file is never edited in place: accepted proposals go into `<stem>.v<version+1>.yaml`, so mappings and
models made against the old version stay valid and the old file remains the record of what they meant.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from pipelines.taxonomy.tree import load_taxonomy, parse_path, path_str


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


class RelabelCountError(RuntimeError):
    """Re-labelling changed the number of products (it must only move them): a bug, reported with both counts."""


def proposal_names(proposals: list[dict]) -> list[str]:
    """The distinct child names of the accepted proposals, in order (equal names merge into one child)."""
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
    return names


def _next_version_doc(src: Path, node: tuple, names: list[str], proposals: list[dict]) -> dict:
    """The taxonomy document of the next version: `node` gains `names` as children, stops being shallow, and the
    history records where each came from."""
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
    return doc


def _write_version(doc: dict, src: Path, node: tuple, names: list[str], out: Path, overwrite: bool) -> Path:
    """Write the new version next to (never over) the source; it must load, or no file is left behind."""
    version = doc["version"]
    if out.suffix not in (".yaml", ".yml"):
        out = out / f"{src.stem.split('.v')[0]}.v{version}.yaml"
    if out.resolve() == src.resolve() or (out.exists() and not overwrite):
        raise ValueError(f"{out} exists: taxonomy versions are immutable (write a new file, or pass overwrite=True "
                         "to replace a draft)")
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# {doc.get('name', src.stem)} version {version}: {path_str(node)} gained {', '.join(names)}\n"
              f"# (accepted recategorisation proposals; derived from {src.name}, which is left unchanged)\n")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120))
    try:
        load_taxonomy(tmp)
    except Exception:
        tmp.unlink()
        raise
    tmp.replace(out)
    return out


def accept_proposals(taxonomy_path: str | Path, node, proposals: list[dict], out: str | Path,
                     overwrite: bool = False) -> Path:
    """Write the next taxonomy version where `node` gains the accepted children; the input stays untouched.
    `out` is the new file (.yaml) or a directory (the file is then `<stem>.v<N+1>.yaml`).

    proposals: [{"cluster_id": 3, "name": "Sports Shoes"}, ...]; several clusters may share a name (they merge
    into one child). The node stops being listed as shallow. Returns the new file's path."""
    src = Path(taxonomy_path)
    taxonomy = load_taxonomy(src)  # validates the source first
    node = _node(node)
    if node not in taxonomy:
        raise ValueError(f"{src}: node {path_str(node)} is not in the taxonomy")
    if len(node) >= taxonomy.depth:
        raise ValueError(f"{path_str(node)} is at the deepest level ({taxonomy.levels[-1]}): it cannot gain children")
    names = proposal_names(proposals)
    clash = sorted(set(names) & {c[-1] for c in taxonomy.children(node)})
    if clash:
        raise ValueError(f"{path_str(node)} already has children named {clash}")
    doc = _next_version_doc(src, node, names, proposals)
    return _write_version(doc, src, node, names, Path(out), overwrite)


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


def accept_from_report(report_dir: str | Path, node, cluster_ids: list[int], out: str | Path,
                       names: list[str] | None = None, taxonomy_path: str | Path | None = None,
                       overwrite: bool = False) -> dict:
    """Accept clusters of a recategorisation report: the new taxonomy version (see accept_proposals) and the node's
    products re-labelled under the new children, written beside it as `<new stem>.relabelled.parquet`
    (platform, product_id, title, cluster, old_path, category_path, relabelled). Products of clusters not accepted
    and noise stay at the node, which remains a valid (now inner) node, so old mappings keep their meaning.

    report_dir: a node's report directory (clusters.csv, assignments.parquet) or the run directory holding it.
    names: one per cluster id to override the proposed names (clusters with equal names merge)."""
    from pipelines.settings import TAXONOMY_PATH
    from pipelines.recategorise.nodes import node_slug

    node = _node(node)
    report = Path(report_dir)
    if not (report / "clusters.csv").exists():
        report = report / node_slug(node)
    if not (report / "clusters.csv").exists() or not (report / "assignments.parquet").exists():
        raise FileNotFoundError(f"{report_dir}: no clusters.csv + assignments.parquet for {path_str(node)}")
    clusters = pd.read_csv(report / "clusters.csv").set_index("cluster_id")
    if names is not None and len(names) != len(cluster_ids):
        raise ValueError(f"{len(names)} names for {len(cluster_ids)} clusters: give one name per cluster id")
    unknown = sorted(set(cluster_ids) - set(clusters.index))
    if unknown:
        raise ValueError(f"clusters {unknown} are not in {report / 'clusters.csv'} (ids {sorted(clusters.index)})")
    proposals = [{"cluster_id": int(c), "name": names[i] if names else clusters.at[c, "name"]}
                 for i, c in enumerate(cluster_ids)]
    new_file = accept_proposals(taxonomy_path or TAXONOMY_PATH, node, proposals, out, overwrite)
    taxonomy = load_taxonomy(new_file)
    assignments = pd.read_parquet(report / "assignments.parquet")
    products = assignments[["platform", "product_id", "title", "cluster"]].copy()
    products["category_path"] = [list(node)] * len(products)
    mapping = {p["cluster_id"]: " ".join(str(p["name"]).split()) for p in proposals}
    relabelled = relabel(products, assignments, mapping, node, taxonomy)
    relabelled.insert(4, "old_path", [path_str(node)] * len(relabelled))
    relabelled["category_path"] = relabelled["category_path"].map(path_str)
    if len(relabelled) != len(assignments):  # re-labelling moves products, never drops or adds them
        raise RelabelCountError(f"re-labelling {path_str(node)} gave {len(relabelled)} products for "
                                f"{len(assignments)} assigned")
    table = new_file.with_name(new_file.stem + ".relabelled.parquet")
    relabelled.to_parquet(table, index=False)
    return {"taxonomy": str(new_file), "version": taxonomy.version, "node": path_str(node),
            "added": sorted(set(mapping.values())), "relabelled_products": str(table),
            "products": int(len(relabelled)), "per_path": relabelled["category_path"].value_counts().to_dict()}
