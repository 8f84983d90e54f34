"""Recategorise one node, or the shallow nodes of a data root: the steps of the other modules in order.

    recategorise_node(products, node, features, cfg, out_dir, threads=...) -> RecategoriseResult
    run_recategorisation(data_root, out_dir, nodes, cfg, store_root, threads=...) -> summary per node
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.recategorise.candidates import scored_candidates
from pipelines.recategorise.clustering import cluster_node, scaled_cascade
from pipelines.recategorise.config import load_recategorise_config
from pipelines.recategorise.evaluation import node_metrics, raw_baseline_features
from pipelines.recategorise.nodes import as_node, at_node, load_raw_products, native_labels, node_products, node_slug
from pipelines.recategorise.plots import scatter_plot
from pipelines.recategorise.proposals import proposal_table
from pipelines.recategorise.report import recategorisation_markdown, write_recategorisation_index, \
    write_recategorisation_report
from pipelines.recategorise.representation import clustering_features, frozen_features, load_images, node_texts, \
    simclr_features
from pipelines.recategorise.result import RecategoriseResult
from pipelines.taxonomy.tree import path_str


def _products_at(products_df: pd.DataFrame, node: tuple, features: dict) -> tuple[pd.DataFrame, dict]:
    """The node's products and their frozen features; a clear error when they are misaligned."""
    mask = at_node(products_df, node)
    products = products_df[mask].reset_index(drop=True)
    features = {k: np.asarray(v)[mask] for k, v in features.items() if v is not None}
    for k, v in features.items():
        if len(v) != len(products):
            raise ValueError(f"features[{k!r}] is not aligned with products_df")
    return products, features


def _require_enough(products: pd.DataFrame, node: tuple, features: dict, cc: dict) -> None:
    """Too few products for two clusters, or no text embeddings: a clear error before any training."""
    if len(products) < 2 * int(cc["min_cluster_size"]):
        raise ValueError(f"node {path_str(node)} holds {len(products)} products; recategorising needs at least "
                         f"{2 * int(cc['min_cluster_size'])} (2 x cascade.min_cluster_size)")
    if features.get("text") is None:
        raise ValueError("recategorise_node needs features['text'] (frozen text embeddings, see frozen_features)")


def _failure(products: pd.DataFrame, i: int, reason: str) -> dict:
    return {"platform": products.at[i, "platform"], "product_id": products.at[i, "product_id"], "reason": reason}


def _usable_products(products: pd.DataFrame, features: dict, cfg: dict):
    """Products without a text embedding are left out (a failure record each); images are loaded, and an
    unreadable file is a failure record too (the product is clustered on its text). Text-only products are
    expected and not recorded."""
    texts = node_texts(products, cfg)
    text_emb = np.asarray(features["text"], dtype=np.float32)
    bad_text = np.isnan(text_emb).any(1)
    failures = [_failure(products, i, "no text embedding") for i in np.flatnonzero(bad_text)]
    keep = ~bad_text
    products, text_emb = products[keep].reset_index(drop=True), text_emb[keep]
    texts = [t for t, k in zip(texts, keep) if k]
    features = {k: v[keep] for k, v in features.items()}
    images, img_errors = load_images(products["image_path"].tolist()) if cfg.get("images", True) \
        else ([None] * len(products), ["images disabled"] * len(products))
    failures += [_failure(products, i, f"{e} (clustered on text only)")
                 for i, e in enumerate(img_errors) if e and e.startswith("unreadable")]
    return products, features, texts, text_emb, images, failures


def _assignments(products: pd.DataFrame, native: pd.Series, clustered: dict, km_raw: np.ndarray) -> pd.DataFrame:
    """assignments.parquet: every product's cluster (-1 noise), its assigned cluster, the baseline's, its 2-D view."""
    labels, view = clustered["casc"]["labels"], clustered["view"]
    return pd.DataFrame({"platform": products["platform"].to_numpy(),
                         "product_id": products["product_id"].astype(str).to_numpy(),
                         "title": products["title"].to_numpy(), "image_path": products["image_path"].to_numpy(),
                         "native_label": native.to_numpy(), "cluster": labels,
                         "cluster_assigned": clustered["assigned"], "kmeans_raw": km_raw,
                         "x": view[:, 0], "y": view[:, 1]})


def _noise(labels: np.ndarray, platforms: np.ndarray) -> dict:
    return {"count": int((labels < 0).sum()), "share": round(float((labels < 0).mean()), 4),
            "by_platform": {p: round(float((labels[platforms == p] < 0).mean()), 4) for p in sorted(set(platforms))}}


def recategorise_node(products_df: pd.DataFrame, node, features: dict, cfg: dict | None = None,
                      out_dir: str | Path | None = None, backbone_factory=None, log=print,
                      threads: int = 0) -> RecategoriseResult:
    """Cluster the products sitting at `node` and propose sub-categories.

    features: {'text': frozen text embeddings, optional 'image': frozen image embeddings} aligned with
    products_df rows (NaN rows = not available; see frozen_features). Image views for SimCLR always come from the
    image files; the frozen image embeddings feed the k-means baseline. cfg: overrides of the YAML config.
    threads: torch threads (0 = the cores this process may use). With out_dir, writes image grids, the UMAP
    plot, clusters.csv, assignments.parquet, result.json and report.html there."""
    from pipelines.features.encoders import configure_threads

    cfg, node, t_start = load_recategorise_config(cfg), as_node(node), time.perf_counter()
    products, features = _products_at(products_df, node, features)
    cfg["cascade"] = scaled_cascade(cfg["cascade"], len(products))  # recorded in result.config
    _require_enough(products, node, features, cfg["cascade"])
    configure_threads(threads)
    log(f"recategorise {path_str(node)}: {len(products)} products "
        f"({', '.join(f'{p} {n}' for p, n in products['platform'].value_counts().items())})")
    products, features, texts, text_emb, images, failures = _usable_products(products, features, cfg)
    rep = simclr_features(texts, text_emb, images, cfg, backbone_factory, log, threads)
    platforms = products["platform"].to_numpy()
    x = clustering_features(rep["simclr"], text_emb, platforms, cfg)
    clustered = cluster_node(x, cfg, path_str(node), log)
    casc, labels = clustered["casc"], clustered["casc"]["labels"]
    native = native_labels(products, node, cfg)
    raw = raw_baseline_features(text_emb, features.get("image", rep["raw_image"]))
    metrics, km_raw = node_metrics(x, raw, platforms, native, labels, clustered["assigned"], casc.get("refine"), cfg)
    timings = {**rep["timings"], **clustered["timings"], "total_s": round(time.perf_counter() - t_start, 1)}
    out = Path(out_dir) if out_dir else None
    clusters = proposal_table(products, x, labels, casc, native, images, cfg, out)
    result = RecategoriseResult(
        node=node, products=_assignments(products, native, clustered, km_raw), clusters=clusters, metrics=metrics,
        noise=_noise(labels, platforms), failures=pd.DataFrame(failures, columns=["platform", "product_id", "reason"]),
        timings=timings, steps=casc["steps"], config=cfg)
    if out is not None:
        names = dict(zip(clusters["cluster_id"], clusters["name"]))
        result.plots = {"umap": str(scatter_plot(clustered["view"], labels, names, native,
                                                 out / "umap_clusters.png", path_str(node))),
                        "grids": [g if isinstance(g, str) else None for g in clusters["image_grid"]]}  # NaN->None
        write_recategorisation_report(result, out)
    return result


def run_recategorisation(data_root: str | Path, out_dir: str | Path, nodes: list | None = None,
                         cfg: dict | None = None, store_root: str | Path | None = None, log=print, *,
                         threads: int = 0, taxonomy_path: str | Path | None = None) -> dict:
    """Candidate nodes of a data root (scored), then recategorise `nodes` (default: the taxonomy's shallow nodes).
    Writes out_dir/candidates.csv, out_dir/<node>/report.html (+ PNGs, clusters.csv, assignments.parquet),
    out_dir/recategorisation.json and .md and out_dir/index.html. Frozen embeddings come from store_root
    (default out_dir/store). threads: torch threads (0 = the cores this process may use)."""
    from pipelines.taxonomy.tree import load_taxonomy

    cfg = load_recategorise_config(cfg)
    taxonomy = load_taxonomy(taxonomy_path)
    nodes = [as_node(n) for n in (nodes or taxonomy.shallow)]
    for n in nodes:
        if n not in taxonomy:
            raise ValueError(f"node {path_str(n)} is not in the taxonomy")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = Path(store_root) if store_root else out / "store"
    t0 = time.perf_counter()
    products = load_raw_products(data_root, taxonomy)
    log(f"normalised {len(products)} products in {time.perf_counter() - t0:.0f} s")
    candidates = scored_candidates(products, store, taxonomy, cfg)
    candidates.to_csv(out / "candidates.csv", index=False)
    log(candidates[candidates["candidate"]].drop(columns="top_native_labels").to_string(index=False))
    at_nodes = node_products(products, nodes)
    features = frozen_features(at_nodes, store, cfg, threads=threads)
    summary = {}
    for node in nodes:
        res = recategorise_node(at_nodes, node, features, cfg, out / node_slug(node), log=log, threads=threads)
        summary[path_str(node)] = res.summary()
    write_recategorisation_index(summary, candidates, out)
    log(recategorisation_markdown(summary))
    return summary
