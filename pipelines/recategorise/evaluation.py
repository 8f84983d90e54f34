"""How well clusters match the shops' own fine labels (never used to form them), next to the references that
make the figures readable: k-means on the raw frozen embeddings with the same k (the baseline), k-means on the
clustering features (ablation), purity at finer granularities, and how consistent the native labels are locally.

    node_metrics(...) -> the metrics dict of one node (method all / clustered, baselines, agreement, purity_by_k)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.recategorise.representation import l2_rows


def purity(y_true, y_pred) -> float:
    """Share of items whose cluster's majority label is their own label."""
    from sklearn.metrics.cluster import contingency_matrix

    m = contingency_matrix(np.asarray(y_true), np.asarray(y_pred))
    return float(m.max(axis=0).sum() / m.sum())


def cluster_metrics(y_true, y_pred) -> dict:
    """n, labels, clusters, purity, NMI, ARI and the majority label's share (purity of one big cluster)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not len(y_true):
        return {"n": 0}
    return {"n": int(len(y_true)), "n_labels": int(len(set(y_true))), "n_clusters": int(len(set(y_pred))),
            "purity": round(purity(y_true, y_pred), 4),
            "nmi": round(float(normalized_mutual_info_score(y_true, y_pred)), 4),
            "ari": round(float(adjusted_rand_score(y_true, y_pred)), 4),
            "majority_share": round(float(pd.Series(y_true).value_counts().iloc[0] / len(y_true)), 4)}


def evaluate_clusters(platforms: np.ndarray, labels: pd.Series, pred: np.ndarray, drop_noise: bool = False) -> dict:
    """Per platform (each shop against its own native vocabulary) and `overall`: purity over all labelled products
    (a cluster's majority label taken per platform, since vocabularies differ; a cluster mixing shops is not
    penalised: that is what a shared taxonomy wants) and NMI/ARI as the product-weighted mean over platforms."""
    has = labels.notna().to_numpy() & ((pred >= 0) if drop_noise else True)
    out = {}
    for p in sorted(set(platforms[has])):
        rows = has & (platforms == p)
        out[p] = cluster_metrics(labels[rows].to_numpy(), pred[rows])
    n = sum(m["n"] for m in out.values())
    if not n:
        return {"overall": {"n": 0}}
    w = {p: m["n"] / n for p, m in out.items()}
    overall = {"n": n, "n_labels": sum(m["n_labels"] for m in out.values()),
               "n_clusters": int(len(set(pred[has].tolist())))}
    overall.update({k: round(sum(w[p] * m[k] for p, m in out.items()), 4) for k in ("purity", "nmi", "ari",
                                                                                      "majority_share")})
    return {"overall": overall, **out}


def label_agreement(x: np.ndarray, platforms: np.ndarray, labels: pd.Series, k: int = 10) -> dict:
    """How consistent the native labels are locally: the share of labelled products whose label is the majority
    label of their k nearest labelled neighbours from the same shop (in `x`). Clusters purer than this need to be
    about k products small, so it is the reference a purity target should be read against."""
    from collections import Counter

    from sklearn.neighbors import NearestNeighbors

    y_all = labels.to_numpy()
    has = labels.notna().to_numpy()
    out = {}
    for p in sorted(set(platforms[has])):
        rows = np.flatnonzero(has & (platforms == p))
        if len(rows) <= k:
            continue
        _, idx = NearestNeighbors(n_neighbors=k + 1).fit(x[rows]).kneighbors(x[rows])
        y = y_all[rows]
        majority = np.array([Counter(y[r[1:]]).most_common(1)[0][0] for r in idx], dtype=object)
        out[p] = {"n": int(len(rows)), "agreement": round(float(np.mean(majority == y)), 4)}
    n = sum(v["n"] for v in out.values())
    out["overall"] = {"n": n, "agreement": round(sum(v["n"] * v["agreement"] for v in out.values()) / n, 4)
                      if n else float("nan")}
    return out


def kmeans_labels(x: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)


def purity_by_granularity(x: np.ndarray, platforms: np.ndarray, labels: pd.Series, k: int, factors, seed: int = 0
                          ) -> list[dict]:
    """k-means purity/NMI/ARI on the clustering features at k x each factor (at most 2 products per cluster):
    purity rises with the number of clusters whatever their quality, so a purity target only means something
    next to the granularity it is asked at."""
    rows = []
    for kk in dict.fromkeys(min(int(k * f), len(x) // 2) for f in factors):  # the cap may repeat a k: once
        m = evaluate_clusters(platforms, labels, kmeans_labels(x, kk, seed, 1))["overall"]
        rows.append({"k": kk, "mean_size": round(len(x) / kk, 1),
                     **{key: m[key] for key in ("purity", "nmi", "ari") if key in m}})
    return rows


def raw_baseline_features(text_emb: np.ndarray, raw_image: np.ndarray | None) -> tuple[np.ndarray, str]:
    """([L2 text | L2 image] of the raw frozen embeddings, 'text+image'), the baseline's input; a product without
    an image gets the mean image vector (so k-means neither drops it nor clusters the image-less together);
    ([L2 text], 'text') when no product has an image."""
    raw = [l2_rows(text_emb)]
    ok = ~np.isnan(raw_image).any(1) if raw_image is not None else np.zeros(len(text_emb), dtype=bool)
    if ok.any():
        img = np.zeros(raw_image.shape, dtype=np.float32)
        img[ok] = l2_rows(raw_image[ok])
        img[~ok] = img[ok].mean(0)
        raw.append(img)
    return np.hstack(raw), "text" + ("+image" if len(raw) > 1 else "")


def node_metrics(x: np.ndarray, raw: tuple[np.ndarray, str], platforms: np.ndarray, native: pd.Series,
                 labels: np.ndarray, assigned: np.ndarray, refine: dict | None, cfg: dict) -> tuple[dict, np.ndarray]:
    """(metrics, k-means labels on the raw embeddings): the method (every product / clustered ones only) against
    k-means with the same k on the raw embeddings (`raw`, see raw_baseline_features) and on the clustering
    features (`x`), plus native-label agreement and purity by granularity."""
    raw, raw_features = raw
    seed, n_init = int(cfg["simclr"]["seed"]), int(cfg["baseline"]["n_init"])
    k = int(labels.max() + 1)
    km_raw = kmeans_labels(raw, k, seed, n_init)
    km_simclr = kmeans_labels(x, k, seed, n_init)
    return {"method": {"all": evaluate_clusters(platforms, native, assigned),
                       "clustered": evaluate_clusters(platforms, native, labels, drop_noise=True)},
            "baseline_kmeans_raw": {"all": evaluate_clusters(platforms, native, km_raw)},
            "kmeans_simclr": {"all": evaluate_clusters(platforms, native, km_simclr)},
            "native_labelled": int(native.notna().sum()),
            "native_knn_agreement": label_agreement(raw, platforms, native),
            "raw_features": raw_features, "refine": refine,
            "purity_by_k": purity_by_granularity(x, platforms, native, k, cfg["granularity"]["factors"], seed)
            }, km_raw
