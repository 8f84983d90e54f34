"""Which products of a new shop a person should label first: the ones the model is least sure of, spread over the
taxonomy and never two of one product group.

    picks = pick_label_first(predictions, products, k=50)   # -> <out>/label_first.csv
    rank_for_labelling(table, k)                            # the shared order (adapt/active.py picks groups by it)

Uncertainty sampling alone picks near-duplicates (ten colour variants of one unclear dress) and piles onto the one
confusing corner of the taxonomy; a labelling budget buys more when each answer teaches something new. So:
  - uncertainty = 1 - the lowest per-level calibrated confidence of the product's predicted path (its weakest
    decision), ties broken by product id;
  - diversity = at most one product per product group, and the picks go round-robin over the predicted level-2
    nodes (each node's most uncertain product first; nodes ordered by their most uncertain product).
Products flagged out of scope are left out: labelling them teaches the classifier nothing about the taxonomy.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

LABEL_FIRST_FILE = "label_first.csv"
LABEL_FIRST_COLUMNS = ["rank", "product_id", "group_id", "predicted_path", "node", "uncertainty", "min_confidence"]


def weakest_confidence(conf) -> np.ndarray:
    """The lowest per-level calibrated confidence along each row's predicted path ([n, depth], NaN below a shallow
    leaf: those levels are ignored; a row with none counts as certain)."""
    conf = np.asarray(conf, float)
    conf = np.where(np.isnan(conf), np.inf, conf) if conf.size else np.ones((len(conf), 1))
    weakest = conf.min(axis=1)
    return np.where(np.isinf(weakest), 1.0, weakest)


def uncertainty_scores(predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(uncertainty, min per-level confidence) per prediction row; missing levels (a shallow path) are ignored."""
    levels = [c for c in predictions.columns if c.startswith("conf_L")]
    weakest = weakest_confidence(predictions[levels].to_numpy(float) if levels else np.ones((len(predictions), 1)))
    return 1.0 - weakest, weakest


def _round_robin(candidates: pd.DataFrame, k: int) -> list:
    """Row labels of `candidates` (sorted most uncertain first), one per node per round, k at most."""
    queues = {node: list(rows.index) for node, rows in candidates.groupby("node", sort=False)}
    picked: list = []
    while queues and len(picked) < k:
        for node in list(queues):
            picked.append(queues[node].pop(0))
            if not queues[node]:
                del queues[node]
            if len(picked) == k:
                break
    return picked


def rank_for_labelling(table: pd.DataFrame, k: int | None = None, key: str = "product_id") -> pd.DataFrame:
    """The labelling order shared by onboarding's label-first list and the adaptation's active loop: `table`
    (one row per product: `key`, group_id, node, uncertainty) -> its first `k` rows (all when None) in order: one
    product per group (the group's most uncertain speaks for it), round-robin over the nodes, most uncertain
    first within a node (ties by `key`)."""
    table = table.sort_values(["uncertainty", key], ascending=[False, True], kind="stable")
    table = table.drop_duplicates("group_id", keep="first")
    return table.loc[_round_robin(table, len(table) if k is None else max(int(k), 0))]


def pick_label_first(predictions: pd.DataFrame, products: pd.DataFrame, k: int = 50) -> pd.DataFrame:
    """The `k` products to label first (LABEL_FIRST_COLUMNS, rank 1 first) from row-aligned `predictions` (a
    prediction_table: product_id, model_path, conf_L*, out_of_scope) and `products` (product_id, group_id)."""
    from pipelines.taxonomy.tree import parse_path, path_str

    if len(predictions) != len(products):
        raise ValueError(f"predictions ({len(predictions)} rows) and products ({len(products)}) are not aligned")
    uncertainty, weakest = uncertainty_scores(predictions)
    path_col = "model_path" if "model_path" in predictions.columns else "category_path"
    groups = products["group_id"] if "group_id" in products.columns else products["product_id"]
    table = pd.DataFrame({"product_id": predictions["product_id"].astype(str).to_numpy(),
                          "group_id": groups.astype(str).to_numpy(),
                          "predicted_path": predictions[path_col].fillna("").astype(str).to_numpy(),
                          "uncertainty": np.round(uncertainty, 4), "min_confidence": np.round(weakest, 4)})
    table["node"] = [path_str(parse_path(p)[:2]) for p in table["predicted_path"]]
    if "out_of_scope" in predictions.columns:
        table = table[~predictions["out_of_scope"].astype(bool).to_numpy()]
    picked = rank_for_labelling(table, k).reset_index(drop=True)
    picked.insert(0, "rank", np.arange(1, len(picked) + 1))
    return picked[LABEL_FIRST_COLUMNS]


def write_label_first(predictions: pd.DataFrame, products: pd.DataFrame, out_dir, k: int = 50):
    """<out_dir>/label_first.csv, atomically."""
    from pathlib import Path

    from pipelines.files import atomic_write_csv

    return atomic_write_csv(pick_label_first(predictions, products, k), Path(out_dir) / LABEL_FIRST_FILE)
