"""Which taxonomy nodes hide finer categories: every node holding products, scored by size, embedding
dispersion and the number of native sub-labels the shops use below it.

    candidate_nodes(products, embeddings, taxonomy)   -> DataFrame of nodes, scores, candidate flag and reason
    scored_candidates(products, store, taxonomy, cfg) -> the same, dispersion measured on a seeded sample
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.recategorise.config import load_recategorise_config
from pipelines.recategorise.nodes import native_labels
from pipelines.recategorise.representation import frozen_features, l2_rows
from pipelines.taxonomy.tree import Taxonomy, path_str


def _dispersion(x: np.ndarray) -> float:
    """Mean cosine distance to the centroid of the rows that have an embedding (NaN rows skipped)."""
    x = l2_rows(x[~np.isnan(x).any(1)])
    if len(x) < 2:
        return np.nan
    centroid = x.mean(0)
    return float(1 - (x @ (centroid / np.linalg.norm(centroid))).mean())


def _node_row(products: pd.DataFrame, pos: np.ndarray, node: tuple, embeddings: np.ndarray | None, c: dict,
              cfg: dict, shallow: set) -> dict:
    """One node's size, shops, dispersion and supported native sub-labels."""
    sub = products.iloc[pos]
    labels = pd.Series([f"{p}:{lab}" for p, lab in zip(sub["platform"], native_labels(sub, node, cfg))
                        if lab is not None])
    counts = labels.value_counts()
    supported = counts[(counts >= c["min_label_support"]) & (counts >= c["min_label_share"] * len(pos))]
    return {"node": path_str(node), "depth": len(node), "size": len(pos),
            "platforms": int(sub["platform"].nunique()),
            "dispersion": _dispersion(embeddings[pos]) if embeddings is not None else np.nan,
            "native_labels": len(supported),
            "top_native_labels": ", ".join(f"{k} ({v})" for k, v in supported.head(6).items()),
            "configured_shallow": node in shallow}


def candidate_nodes(products_df: pd.DataFrame, embeddings: np.ndarray | None, taxonomy: Taxonomy,
                    cfg: dict | None = None) -> pd.DataFrame:
    """Every taxonomy node that holds products directly, scored for hidden sub-categories.

    dispersion = mean cosine distance of the node's embeddings (rows without one are skipped, so a sample per
    node suffices, see dispersion_rows) to their centroid; native_labels = distinct
    (platform, fine native label) pairs with real support. score = mean percentile rank of size, dispersion and
    native_labels. Candidates: the nodes configured as shallow, plus large nodes scoring >= min_score."""
    cfg = load_recategorise_config(cfg)
    c = cfg["candidates"]
    if embeddings is not None and len(embeddings) != len(products_df):
        raise ValueError(f"embeddings have {len(embeddings)} rows, products {len(products_df)}: align them first")
    paths = products_df["category_path"].map(tuple)
    shallow = set(taxonomy.shallow)
    rows = []
    for node in taxonomy.nodes:
        pos = np.flatnonzero((paths == node).to_numpy())
        if len(pos):
            rows.append(_node_row(products_df, pos, node, embeddings, c, cfg, shallow))
    out = pd.DataFrame(rows)
    if out.empty:
        raise ValueError("no product sits at any taxonomy node: is category_path filled?")
    ranks = out[["size", "dispersion", "native_labels"]].rank(pct=True)
    out["score"] = ranks.mean(axis=1, skipna=True).round(3)
    large = (out["size"] >= c["min_size"]) & (out["score"] >= c["min_score"]) & (out["native_labels"] >= 2)
    out["candidate"] = out["configured_shallow"] | large
    out["reason"] = np.select([out["configured_shallow"], large], ["configured shallow", "large, dispersed, "
                              "several native sub-labels"], "")
    deepest = large & ~out["configured_shallow"] & (out["depth"] >= taxonomy.depth)
    out.loc[deepest, "reason"] += f" (a {taxonomy.levels[-1]} leaf: sub-nodes need a deeper taxonomy)"
    return out.sort_values(["candidate", "score"], ascending=False).reset_index(drop=True)


def dispersion_rows(products: pd.DataFrame, per_node: int, seed: int = 0) -> np.ndarray:
    """Row positions of up to `per_node` products per category path (seeded): dispersion needs no more, and only
    these need a text embedding."""
    paths = products["category_path"].map(tuple)
    rng = np.random.default_rng(seed)
    rows = [rng.choice(idx, min(per_node, len(idx)), replace=False)
            for idx in pd.Series(np.arange(len(products))).groupby(paths.to_numpy()).agg(list).map(np.asarray)]
    return np.sort(np.concatenate(rows))


def scored_candidates(products: pd.DataFrame, store: str | Path, taxonomy: Taxonomy, cfg: dict) -> pd.DataFrame:
    """candidate_nodes with dispersion measured on a sample of each node's frozen text embeddings."""
    rows = dispersion_rows(products, int(cfg["candidates"]["dispersion_sample"]))
    sampled = frozen_features(products.iloc[rows], store, cfg, ("text",))["text"]
    text = np.full((len(products), sampled.shape[1]), np.nan, dtype=np.float32)
    text[rows] = sampled
    return candidate_nodes(products, text, taxonomy, cfg)
