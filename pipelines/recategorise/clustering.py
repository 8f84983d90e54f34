"""Cascade clustering (arXiv 2508.20013): UMAP clustering space -> HDBSCAN, clusters too large or too loose
re-clustered recursively, then a centroid refinement that moves each product to its nearest cluster centre.

    cluster_node(x, cfg, log) -> clustering space, 2-D view, cascade result (labels, lineage, depth, steps), assigned
"""
from __future__ import annotations

import time

import numpy as np

from pipelines.recategorise.representation import l2_rows


class NoClusterFound(ValueError):
    """HDBSCAN called every product of the node noise: there is nothing to propose."""


def umap_reduce(x: np.ndarray, n_components: int, n_neighbors: int, min_dist: float, metric: str,
                seed: int = 0) -> np.ndarray:
    import umap  # slow to import: only here

    if len(x) <= n_components + 1:
        raise ValueError(f"UMAP to {n_components} dims needs more than {n_components + 1} points, got {len(x)}")
    reducer = umap.UMAP(n_components=n_components, n_neighbors=min(n_neighbors, len(x) - 1), min_dist=min_dist,
                        metric=metric, random_state=seed)
    return reducer.fit_transform(x).astype(np.float32)


def cohesion(x: np.ndarray) -> float:
    """Mean cosine similarity of members to their centroid (1 = identical)."""
    x = l2_rows(x)
    c = x.mean(0)
    return float((x @ (c / max(np.linalg.norm(c), 1e-12))).mean())


def scaled_cascade(cc: dict, n: int) -> dict:
    """Cluster sizes follow the node: min_cluster_size = n * min_cluster_share within [min, max] (a 200-product
    sample node gets small clusters, a 7,000-product node no crumbs); min_split_size stays 3 x that."""
    cc = dict(cc)
    if isinstance(cc["min_cluster_size"], (list, tuple)):  # a fixed int is taken as is
        lo, hi = cc["min_cluster_size"]
        cc["min_cluster_size"] = int(np.clip(round(n * float(cc["min_cluster_share"])), lo, hi))
    cc["min_samples"] = min(int(cc["min_samples"]), cc["min_cluster_size"])
    cc["min_split_size"] = 3 * cc["min_cluster_size"]
    return cc


def hdbscan_labels(space: np.ndarray, cc: dict) -> np.ndarray:
    """HDBSCAN labels (-1 = noise); all noise when there are too few points for two clusters."""
    import hdbscan

    if len(space) < 2 * int(cc["min_cluster_size"]):
        return np.full(len(space), -1)
    return hdbscan.HDBSCAN(min_cluster_size=int(cc["min_cluster_size"]), min_samples=int(cc["min_samples"]),
                           cluster_selection_method=cc["selection"]).fit_predict(space)


def cascade_cluster(features: np.ndarray, space: np.ndarray, cc: dict, reduce=None) -> dict:
    """HDBSCAN on `space`; every cluster larger than max_share of the node or less cohesive than min_cohesion
    (in `features`) is re-clustered — in a fresh UMAP of its members when cc['reembed'] and `reduce` is given —
    until min_split_size / max_depth stop it or its re-clustering finds < 2 clusters or mostly noise.

    Returns labels (-1 = noise, at any depth), lineage per cluster ("2/0" = sub-cluster 0 of top cluster 2),
    depth per cluster and a log of every split decision."""
    n = len(features)
    labels = np.full(n, -1)
    lineage, depth_of, steps = {}, {}, []

    def split(idx, sub_space, depth, prefix) -> bool:
        sub = hdbscan_labels(sub_space, cc)
        ids = sorted(set(sub.tolist()) - {-1})
        noise = float((sub == -1).mean())
        accept = len(ids) >= (1 if depth == 0 else 2) and (depth == 0 or noise <= cc["max_split_noise"])
        steps.append({"cluster": prefix.rstrip("/") or "node", "depth": depth, "size": len(idx),
                      "found": len(ids), "noise_share": round(noise, 3), "accepted": accept})
        if not accept:
            return False
        for j, c in enumerate(ids):
            members = idx[sub == c]
            too_big, too_loose = len(members) > cc["max_share"] * n, cohesion(features[members]) < cc["min_cohesion"]
            if depth < cc["max_depth"] and len(members) >= cc["min_split_size"] and (too_big or too_loose):
                child = reduce(features[members]) if (cc.get("reembed") and reduce) else sub_space[sub == c]
                if split(members, child, depth + 1, f"{prefix}{j}/"):
                    continue
            k = len(lineage)
            labels[members], lineage[k], depth_of[k] = k, f"{prefix}{j}", depth
        return True

    split(np.arange(n), space, 0, "")
    return {"labels": labels, "lineage": lineage, "depth": depth_of, "steps": steps}


def assign_noise(space: np.ndarray, labels: np.ndarray, k: int = 10) -> np.ndarray:
    """Noise points -> majority cluster of their k nearest clustered neighbours (for evaluation next to noise)."""
    from sklearn.neighbors import KNeighborsClassifier

    clustered = labels >= 0
    if clustered.all() or not clustered.any():
        return labels.copy()
    knn = KNeighborsClassifier(n_neighbors=min(k, int(clustered.sum()))).fit(space[clustered], labels[clustered])
    out = labels.copy()
    out[~clustered] = knn.predict(space[~clustered])
    return out


def refine_clusters(features: np.ndarray, casc: dict, max_iter: int = 100) -> dict:
    """Spherical k-means in the clustering features, seeded by the cascade's clusters: the cascade decides how
    many sub-categories there are and where; the refinement moves each product to its nearest cluster centroid
    until nothing moves (UMAP + HDBSCAN draw density boundaries, which cut shoe subtypes worse than distances to
    a centre). Noise products get a cluster too (`assigned`), but `labels` keeps them -1: noise stays reported.
    Clusters that empty out are dropped and the ids compacted (lineage and depth follow)."""
    labels = casc["labels"]
    x = l2_rows(np.asarray(features, dtype=np.float64))
    ids = np.arange(int(labels.max()) + 1)
    centroids = l2_rows(np.stack([x[labels == c].mean(0) for c in ids]))
    assigned, iterations, moved = labels.copy(), 0, 0
    for iterations in range(1, max_iter + 1):
        nearest = (x @ centroids.T).argmax(1)
        moved = int((nearest != assigned).sum())
        assigned = nearest
        for c in ids:
            if (assigned == c).any():  # an emptied cluster keeps its centre and may win products back
                centroids[c] = l2_rows(x[assigned == c].mean(0, keepdims=True))[0]
        if not moved:
            break
    clustered = labels >= 0
    kept = sorted(set(assigned[clustered].tolist()))  # a cluster only noise products would join is no proposal
    assigned = (x @ centroids[kept].T).argmax(1)  # position in kept = the new, compact id
    new_id = {old: new for new, old in enumerate(kept)}
    before = np.array([new_id.get(c, -1) for c in labels])  # the cascade's cluster, in the new ids
    return {"labels": np.where(clustered, assigned, -1), "assigned": assigned,
            "lineage": {new_id[c]: casc["lineage"][c] for c in kept},
            "depth": {new_id[c]: casc["depth"][c] for c in kept}, "steps": casc["steps"],
            "refine": {"iterations": iterations, "converged": not moved, "dropped_clusters": len(ids) - len(kept),
                       "moved_share": round(float((assigned != before)[clustered].mean()), 4)}}


def cluster_node(x: np.ndarray, cfg: dict, label: str, log=print) -> dict:
    """UMAP clustering space and 2-D view of `x`, the cascade, then refinement (or noise -> nearest clusters).

    Returns space, view, casc (labels with -1 noise, lineage, depth, steps, refine), assigned (every product's
    cluster, noise included) and timings. Raises NoClusterFound when HDBSCAN finds nothing at all in `label`."""
    um, cc, seed = cfg["umap"], cfg["cascade"], int(cfg["simclr"]["seed"])

    def reduce(f):
        return umap_reduce(f, um["n_components"], um["n_neighbors"], um["min_dist"], um["metric"], seed)

    timings = {}
    t0 = time.perf_counter()
    space = reduce(x)
    view = umap_reduce(x, 2, um["view_neighbors"], um["view_min_dist"], um["metric"], seed)
    timings["umap_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    casc = cascade_cluster(x, space, cc, reduce)
    if casc["labels"].max() >= 0 and cfg["refine"]["max_iter"]:
        casc = refine_clusters(x, casc, int(cfg["refine"]["max_iter"]))
        assigned = casc["assigned"]
        log(f"  refine: {casc['refine']}")
    else:
        assigned = assign_noise(space, casc["labels"], int(cfg["noise"]["knn"]))
    timings["cascade_s"] = round(time.perf_counter() - t0, 1)
    labels = casc["labels"]
    if labels.max() < 0:
        raise NoClusterFound(f"node {label}: HDBSCAN found no cluster at all (every product is noise); "
                             f"lower cascade.min_cluster_size ({cc['min_cluster_size']})")
    log(f"  cascade: {int(labels.max() + 1)} clusters, noise {int((labels < 0).sum())} ({(labels < 0).mean():.1%})")
    return {"space": space, "view": view, "casc": casc, "assigned": assigned, "timings": timings}
