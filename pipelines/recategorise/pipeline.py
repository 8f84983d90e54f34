"""Recategorisation: find taxonomy nodes that hide finer categories, cluster their products, propose sub-nodes.

    candidate_nodes(products, embeddings, taxonomy)          -> DataFrame of nodes with their scores
    recategorise_node(products, node, features, cfg, out_dir) -> RecategoriseResult (clusters, metrics, proposals)
    write_report(result, out_dir)                             -> self-contained HTML report for the taxonomy owners
    run_recategorisation(data_root, out_dir)                  -> candidates + the shallow nodes of a data root

Method (arXiv 2508.20013): SimCLR representation (models/simclr.py) -> UMAP clustering space -> cascade HDBSCAN
(clusters too large or too loose are re-clustered, recursively, until a stopping rule). Native fine labels the
shared taxonomy dropped (Myntra articleType, H&M product_type_name, a Flipkart tree level) only evaluate the
clusters, against k-means on the raw frozen embeddings with the same number of clusters.
"""
from __future__ import annotations

import base64
import copy
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipelines.features.encoders import configure_threads
from pipelines.taxonomy.tree import Taxonomy, parse_path, path_str

CONFIG_PATH = Path(__file__).resolve().parents[1] / "models" / "configs" / "recategorise.yaml"


# ---------------------------------------------------------------- config, nodes, native labels

def load_config(overrides: dict | None = None, path: str | Path | None = None) -> dict:
    """The YAML config with `overrides` merged in (nested dicts merge key by key)."""
    cfg = yaml.safe_load(Path(path or CONFIG_PATH).read_text())

    def merge(base, extra):
        for k, v in (extra or {}).items():
            base[k] = merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return base

    return merge(cfg, copy.deepcopy(overrides))


def as_node(node) -> tuple[str, ...]:
    return parse_path(node) if isinstance(node, str) else tuple(node)


def at_node(products: pd.DataFrame, node) -> np.ndarray:
    """Products whose shared-taxonomy path ends exactly at `node` (not deeper)."""
    node = as_node(node)
    return products["category_path"].map(lambda p: tuple(p) == node).to_numpy(bool)


def native_label(native_path, platform: str, node, cfg: dict) -> str | None:
    """The shop's fine label below `node`: the configured native level, skipping audience levels ("For Girls")."""
    levels = cfg["native_label_level"].get(path_str(as_node(node)), cfg["native_label_level"]["default"])
    if platform not in levels:
        return None
    path, k = list(native_path), int(levels[platform])
    while k < len(path) and any(path[k].startswith(p) for p in cfg.get("native_skip_prefixes", [])):
        k += 1
    return path[k] if k < len(path) else None


def native_labels(products: pd.DataFrame, node, cfg: dict) -> pd.Series:
    return pd.Series([native_label(n, p, node, cfg) for n, p in zip(products["native_path"], products["platform"])],
                     index=products.index, dtype=object)


def product_texts(products: pd.DataFrame, cfg: dict) -> list[str]:
    from pipelines.features.store import text_of

    if cfg.get("text", "title") == "title+description":
        return [text_of(t, d) for t, d in zip(products["title"], products["description"])]
    return [str(t) for t in products["title"]]


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def centre_per_platform(x: np.ndarray, platforms: np.ndarray) -> np.ndarray:
    """Subtract each shop's mean feature vector. A shop's photo style and title habits shift all its products the
    same way, so without this clusters split by shop before they split by product type (full benchmark, Shoes:
    H&M's 223 shoes fell into 2 clusters, purity 0.673 -> 0.861 with centring)."""
    x = np.array(x, dtype=np.float32, copy=True)
    for p in np.unique(platforms):
        x[platforms == p] -= x[platforms == p].mean(0)
    return x


# ---------------------------------------------------------------- candidate nodes

def candidate_nodes(products_df: pd.DataFrame, embeddings: np.ndarray | None, taxonomy: Taxonomy,
                    cfg: dict | None = None) -> pd.DataFrame:
    """Every taxonomy node that holds products directly, scored for hidden sub-categories.

    dispersion = mean cosine distance of the node's embeddings (rows without one are skipped, so a sample per
    node suffices, see dispersion_rows) to their centroid; native_labels = distinct
    (platform, fine native label) pairs with real support. score = mean percentile rank of size, dispersion and
    native_labels. Candidates: the nodes configured as shallow, plus large nodes scoring >= min_score."""
    cfg = load_config(cfg)
    c = cfg["candidates"]
    if embeddings is not None and len(embeddings) != len(products_df):
        raise ValueError(f"embeddings have {len(embeddings)} rows, products {len(products_df)}: align them first")
    paths = products_df["category_path"].map(tuple)
    rows = []
    for node in taxonomy.nodes:
        pos = np.flatnonzero((paths == node).to_numpy())
        if not len(pos):
            continue
        sub = products_df.iloc[pos]
        labels = pd.Series([f"{p}:{lab}" for p, lab in zip(sub["platform"], native_labels(sub, node, cfg))
                            if lab is not None])
        counts = labels.value_counts()
        supported = counts[(counts >= c["min_label_support"]) & (counts >= c["min_label_share"] * len(pos))]
        dispersion = np.nan
        if embeddings is not None:
            x = embeddings[pos]
            x = _l2(x[~np.isnan(x).any(1)])
            if len(x) >= 2:
                centroid = x.mean(0)
                dispersion = float(1 - (x @ (centroid / np.linalg.norm(centroid))).mean())
        rows.append({"node": path_str(node), "depth": len(node), "size": len(pos),
                     "platforms": int(sub["platform"].nunique()), "dispersion": dispersion,
                     "native_labels": len(supported),
                     "top_native_labels": ", ".join(f"{k} ({v})" for k, v in supported.head(6).items()),
                     "configured_shallow": node in set(taxonomy.shallow)})
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


# ---------------------------------------------------------------- representation

def default_backbone_factory(cfg: dict):
    """() -> (module [B,3,H,W] -> [B,D], mean, std) through the project's encoder loader
    (EfficientNet-Lite0 ImageNet weights, key-renamed into timm's tf_efficientnet_lite0)."""
    def factory():
        from pipelines.features.encoders import load_encoder

        enc = load_encoder(cfg["simclr"]["image_encoder"], device="cpu")
        if not hasattr(enc, "model") or enc.modality != "image":
            raise ValueError(f"{cfg['simclr']['image_encoder']!r} is not an image encoder")
        norm = enc.preprocess if hasattr(enc.preprocess, "mean") else enc  # normalisation the weights expect
        return enc.model, np.asarray(norm.mean, dtype=float).tolist(), np.asarray(norm.std, dtype=float).tolist()
    return factory


def load_images(paths) -> tuple[list, list]:
    """(PIL images or None, error or None) per path; unreadable files are per-item failures."""
    from PIL import Image

    images, errors = [], []
    for p in paths:
        if p is None or (isinstance(p, float) and np.isnan(p)) or not str(p):
            images.append(None), errors.append("no image")
            continue
        try:
            with Image.open(p) as im:
                images.append(im.convert("RGB")), errors.append(None)
        except Exception as e:  # PIL raises many types for bad bytes
            images.append(None), errors.append(f"unreadable image: {type(e).__name__}: {e}"[:200])
    return images, errors


def simclr_features(texts: list[str], text_emb: np.ndarray, images: list, cfg: dict, backbone_factory=None,
                    log=print) -> dict:
    """Train SimCLR on the node's products; return its representation plus the raw frozen image features."""
    import torch

    from models import simclr as S

    sc = cfg["simclr"]
    torch.manual_seed(int(sc["seed"]))
    n = len(texts)
    has_image = np.array([im is not None for im in images], dtype=bool) if cfg.get("images", True) \
        else np.zeros(n, dtype=bool)
    # SimCLR trains on a seeded subset (augmented views are the cost); every product gets a representation
    rng = np.random.default_rng(int(sc["seed"]))
    train = np.sort(rng.choice(n, min(n, int(sc["max_train_products"])), replace=False))
    timings, image_views, image_clean, raw_image = {}, None, None, None
    tail = torch.nn.Identity()
    if has_image.any():
        t0 = time.perf_counter()
        model, mean, std = (backbone_factory or default_backbone_factory(cfg))()
        trunk, tail = S.split_backbone(model, int(sc["unfreeze_last_blocks"]))
        augment, clean = S.image_transforms(int(sc["image_size"]), mean, std, sc["crop_scale"], sc["jitter"],
                                            sc["grayscale"])
        idx = np.flatnonzero(has_image)
        cleans = S.view_bank([images[i] for i in idx], trunk, clean, int(sc["bank_batch_size"]), int(sc["seed"]))
        image_clean = torch.zeros((n, *cleans.shape[1:]))
        image_clean[torch.from_numpy(idx)] = cleans  # rows without an image stay zero and are flagged by has_image
        if has_image[train].any():
            views = [S.view_bank([images[i] if has_image[i] else None for i in train], trunk, augment,
                                 int(sc["bank_batch_size"]), int(sc["seed"]) + v + 1)
                     for v in range(int(sc["image_views"]))]
            image_views = torch.stack(views, dim=1)  # [n_train, V, ...]
        with torch.no_grad():  # raw frozen features (before any training) for the ablation when none are given
            pooled = tail.eval()(cleans).reshape(len(idx), -1).numpy()
            raw_image = np.full((n, pooled.shape[1]), np.nan, dtype=np.float32)
            raw_image[idx] = pooled
        timings["view_bank_s"] = round(time.perf_counter() - t0, 1)
        log(f"  view bank: {len(idx)} clean views + {int(has_image[train].sum())} images x {sc['image_views']} "
            f"augmented views in {timings['view_bank_s']} s")
    text_bank = torch.from_numpy(text_emb.astype(np.float32))
    vocab = S.build_vocab(texts, int(sc["min_token_count"]))
    tokens = S.token_lists(texts, vocab, int(sc["max_tokens"]))
    t0 = time.perf_counter()
    model = S.train_simclr(image_views, has_image[train], text_bank[train], [tokens[i] for i in train], len(vocab),
                           tail, sc)
    timings["simclr_train_s"] = round(time.perf_counter() - t0, 1)
    log(f"  simclr: {len(train)} products, {sc['epochs']} epochs in {timings['simclr_train_s']} s, "
        f"final loss {model.final_loss:.3f}")
    rep = model.represent(image_clean, has_image, text_bank, S.pad_tokens(tokens, int(sc["max_tokens"])))
    return {"simclr": rep, "raw_image": raw_image, "has_image": has_image, "timings": timings,
            "final_loss": model.final_loss, "vocab_size": len(vocab)}


def umap_reduce(x: np.ndarray, n_components: int, n_neighbors: int, min_dist: float, metric: str,
                seed: int = 0) -> np.ndarray:
    import umap  # slow to import: only here

    if len(x) <= n_components + 1:
        raise ValueError(f"UMAP to {n_components} dims needs more than {n_components + 1} points, got {len(x)}")
    reducer = umap.UMAP(n_components=n_components, n_neighbors=min(n_neighbors, len(x) - 1), min_dist=min_dist,
                        metric=metric, random_state=seed)
    return reducer.fit_transform(x).astype(np.float32)


# ---------------------------------------------------------------- cascade clustering

def cohesion(x: np.ndarray) -> float:
    """Mean cosine similarity of members to their centroid (1 = identical)."""
    x = _l2(x)
    c = x.mean(0)
    return float((x @ (c / max(np.linalg.norm(c), 1e-12))).mean())


def hdbscan_labels(space: np.ndarray, cc: dict) -> np.ndarray:
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
            coh = cohesion(features[members])
            too_big, too_loose = len(members) > cc["max_share"] * n, coh < cc["min_cohesion"]
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
    x = _l2(np.asarray(features, dtype=np.float64))
    ids = np.arange(int(labels.max()) + 1)
    centroids = _l2(np.stack([x[labels == c].mean(0) for c in ids]))
    assigned, iterations, moved = labels.copy(), 0, 0
    for iterations in range(1, max_iter + 1):
        nearest = (x @ centroids.T).argmax(1)
        moved = int((nearest != assigned).sum())
        assigned = nearest
        for c in ids:
            if (assigned == c).any():  # an emptied cluster keeps its centre and may win products back
                centroids[c] = _l2(x[assigned == c].mean(0, keepdims=True))[0]
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


# ---------------------------------------------------------------- evaluation

def purity(y_true, y_pred) -> float:
    """Share of items whose cluster's majority label is their own label."""
    from sklearn.metrics.cluster import contingency_matrix

    m = contingency_matrix(np.asarray(y_true), np.asarray(y_pred))
    return float(m.max(axis=0).sum() / m.sum())


def cluster_metrics(y_true, y_pred) -> dict:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not len(y_true):
        return {"n": 0}
    return {"n": int(len(y_true)), "n_labels": int(len(set(y_true))), "n_clusters": int(len(set(y_pred))),
            "purity": round(purity(y_true, y_pred), 4),
            "nmi": round(float(normalized_mutual_info_score(y_true, y_pred)), 4),
            "ari": round(float(adjusted_rand_score(y_true, y_pred)), 4),
            "majority_share": round(float(pd.Series(y_true).value_counts().iloc[0] / len(y_true)), 4)}


def evaluate(platforms: np.ndarray, labels: pd.Series, pred: np.ndarray, drop_noise: bool = False) -> dict:
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
        m = evaluate(platforms, labels, kmeans_labels(x, kk, seed, 1))["overall"]
        rows.append({"k": kk, "mean_size": round(len(x) / kk, 1),
                     **{key: m[key] for key in ("purity", "nmi", "ari") if key in m}})
    return rows


# ---------------------------------------------------------------- proposals

def name_clusters(titles: list[str], labels: np.ndarray, n_terms: int = 3) -> dict:
    """c-TF-IDF (BERTopic-style): a cluster's titles form one document; term weight = its frequency in the
    cluster x log(1 + average words per cluster / its frequency over all clusters). Top terms, no overlaps."""
    from sklearn.feature_extraction.text import CountVectorizer

    ids = sorted(set(labels.tolist()) - {-1})
    docs = [" ".join(t for t, lab in zip(titles, labels) if lab == c) for c in ids]
    cv = CountVectorizer(ngram_range=(1, 2), token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b", stop_words="english",
                         lowercase=True)
    tf = cv.fit_transform(docs).toarray().astype(float)
    vocab = cv.get_feature_names_out()
    words_per_class = tf[:, [i for i, v in enumerate(vocab) if " " not in v]].sum(1).mean()
    weight = tf / np.clip(tf.sum(1, keepdims=True), 1, None) * np.log(1 + words_per_class / tf.sum(0))
    out = {}
    for row, c in enumerate(ids):
        terms = []
        for i in np.argsort(-weight[row]):
            if weight[row, i] <= 0 or len(terms) == n_terms:
                break
            term = vocab[i]
            if any(set(term.split()) <= set(t.split()) or set(t.split()) <= set(term.split()) for t in terms):
                continue  # "sports" adds nothing next to "sports shoes"
            terms.append(term)
        out[c] = {"name": terms[0].title() if terms else f"Cluster {c}", "terms": terms,
                  "term_weights": [round(float(weight[row, list(vocab).index(t)]), 4) for t in terms]}
    seen = {}
    for c in ids:  # names must be unique to become sibling taxonomy nodes
        name = out[c]["name"]
        if name in seen:
            extra = next((t for t in out[c]["terms"][1:] if t.title() not in name), str(c))
            out[c]["name"] = f"{name} ({extra.title()})"
        seen[out[c]["name"]] = c
    return out


def image_grid(paths: list, out_path: Path, n: int = 16, thumb: int = 96) -> Path | None:
    """Thumbnails (white-padded squares) of up to n member images in a 4-column PNG; None if none is readable."""
    from PIL import Image

    from models.simclr import pad_square

    tiles = []
    for p in paths:
        if len(tiles) == n:
            break
        try:
            with Image.open(p) as im:
                tiles.append(pad_square(im).resize((thumb, thumb)))
        except Exception:  # an unreadable member image is skipped in the grid (it was reported at load time)
            continue
    if not tiles:
        return None
    cols = min(4, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    grid = Image.new("RGB", (cols * thumb + (cols + 1) * 2, rows * thumb + (rows + 1) * 2), (200, 200, 200))
    for i, t in enumerate(tiles):
        grid.paste(t, (2 + (i % cols) * (thumb + 2), 2 + (i // cols) * (thumb + 2)))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out_path)
    return out_path


def scatter_plot(xy: np.ndarray, labels: np.ndarray, names: dict, native: pd.Series, out_path: Path,
                 title: str) -> Path:
    """2-D UMAP coloured by cluster (noise grey) beside the same points coloured by native label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 7))
    cmap = plt.get_cmap("tab20")
    ax = axes[0]
    noise = labels < 0
    ax.scatter(xy[noise, 0], xy[noise, 1], s=3, c="#cccccc", label=f"noise ({int(noise.sum())})")
    for c in sorted(set(labels.tolist()) - {-1}):
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(c % 20))
        cx, cy = np.median(xy[m], axis=0)
        ax.annotate(f"{c}: {names.get(c, '')}"[:28], (cx, cy), fontsize=7, ha="center",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.7, "lw": 0})
    ax.set_title(f"{title}: clusters")
    ax = axes[1]
    lab = native.fillna("(no native label)").to_numpy()
    for i, (value, _) in enumerate(pd.Series(lab).value_counts().head(19).items()):
        m = lab == value
        ax.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(i % 20), label=str(value)[:30])
    ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_title("native fine labels (not used for clustering)")
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path


# ---------------------------------------------------------------- result, main entry

@dataclass
class RecategoriseResult:
    node: tuple
    products: pd.DataFrame  # platform, product_id, title, native_label, cluster (-1 noise), cluster_assigned, x, y
    clusters: pd.DataFrame  # cluster_id, name, terms, size, share, cohesion, lineage, depth, native purity, ...
    metrics: dict           # method (all / clustered) vs baselines, per platform and overall
    noise: dict
    failures: pd.DataFrame  # products left out, with the reason
    timings: dict
    plots: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    report_path: str | None = None

    def proposals(self) -> list[dict]:
        return [{"cluster_id": int(r.cluster_id), "name": r.name, "size": int(r.size), "cohesion": r.cohesion,
                 "terms": list(r.terms), "samples": list(r.samples), "image_grid": r.image_grid}
                for r in self.clusters.itertuples()]

    def summary(self) -> dict:
        return {"node": path_str(self.node), "products": int(len(self.products)), "noise": self.noise,
                "n_clusters": int(len(self.clusters)), "metrics": self.metrics, "timings": self.timings,
                "failures": int(len(self.failures)), "plots": self.plots, "report": self.report_path,
                "steps": self.steps, "proposals": self.proposals()}


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


def recategorise_node(products_df: pd.DataFrame, node, features: dict, cfg: dict | None = None,
                      out_dir: str | Path | None = None, backbone_factory=None, log=print) -> RecategoriseResult:
    """Cluster the products sitting at `node` and propose sub-categories.

    features: {'text': frozen text embeddings, optional 'image': frozen image embeddings} aligned with
    products_df rows (NaN rows = not available; see frozen_features). Image views for SimCLR always come from the
    image files; the frozen image embeddings feed the k-means baseline. cfg: overrides of the YAML config.
    With out_dir, writes image grids, the UMAP plot, clusters.csv, result.json and report.html there."""
    cfg = load_config(cfg)
    node = as_node(node)
    t_start = time.perf_counter()
    mask = at_node(products_df, node)
    products = products_df[mask].reset_index(drop=True)
    features = {k: np.asarray(v)[mask] for k, v in features.items() if v is not None}
    for k, v in features.items():
        if len(v) != len(products):
            raise ValueError(f"features[{k!r}] is not aligned with products_df")
    cc = cfg["cascade"] = scaled_cascade(cfg["cascade"], len(products))
    if len(products) < 2 * int(cc["min_cluster_size"]):
        raise ValueError(f"node {path_str(node)} holds {len(products)} products; recategorising needs at least "
                         f"{2 * int(cc['min_cluster_size'])} (2 x cascade.min_cluster_size)")
    configure_threads()  # torch on PRODCAT_THREADS or the cores this process may use
    log(f"recategorise {path_str(node)}: {len(products)} products "
        f"({', '.join(f'{p} {n}' for p, n in products['platform'].value_counts().items())})")
    texts = product_texts(products, cfg)
    timings = {}
    if features.get("text") is None:
        raise ValueError("recategorise_node needs features['text'] (frozen text embeddings, see frozen_features)")
    text_emb = np.asarray(features["text"], dtype=np.float32)
    failures = []
    bad_text = np.isnan(text_emb).any(1)
    for i in np.flatnonzero(bad_text):
        failures.append({"platform": products.at[i, "platform"], "product_id": products.at[i, "product_id"],
                         "reason": "no text embedding"})
    keep = ~bad_text
    products, text_emb = products[keep].reset_index(drop=True), text_emb[keep]
    texts = [t for t, k in zip(texts, keep) if k]
    features = {k: v[keep] for k, v in features.items()}

    images, img_errors = load_images(products["image_path"].tolist()) if cfg.get("images", True) \
        else ([None] * len(products), ["images disabled"] * len(products))
    for i, e in enumerate(img_errors):
        if e and e.startswith("unreadable"):  # text-only products are expected; unreadable files are not
            failures.append({"platform": products.at[i, "platform"], "product_id": products.at[i, "product_id"],
                             "reason": f"{e} (clustered on text only)"})
    rep = simclr_features(texts, text_emb, images, cfg, backbone_factory, log)
    timings.update(rep["timings"])
    x = rep["simclr"]
    if cfg["features"]["raw_text_weight"]:
        x = np.hstack([x, cfg["features"]["raw_text_weight"] * _l2(text_emb)])
    platforms = products["platform"].to_numpy()
    if cfg["features"].get("centre_per_platform"):
        x = centre_per_platform(x, platforms)

    um = cfg["umap"]
    seed = int(cfg["simclr"]["seed"])
    reduce = lambda f: umap_reduce(f, um["n_components"], um["n_neighbors"], um["min_dist"], um["metric"], seed)  # noqa: E731
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
    labels = casc["labels"]
    timings["cascade_s"] = round(time.perf_counter() - t0, 1)
    k = int(labels.max() + 1)
    if k < 1:
        raise ValueError(f"node {path_str(node)}: HDBSCAN found no cluster at all (every product is noise); "
                         f"lower cascade.min_cluster_size ({cc['min_cluster_size']})")
    log(f"  cascade: {k} clusters, noise {int((labels < 0).sum())} ({(labels < 0).mean():.1%})")

    # baselines: k-means with the same k on the raw frozen embeddings (image slot mean-imputed when missing)
    raw_image = features.get("image", rep["raw_image"])
    raw = [_l2(text_emb)]
    ok = ~np.isnan(raw_image).any(1) if raw_image is not None else np.zeros(len(products), dtype=bool)
    if ok.any():
        img = np.zeros(raw_image.shape, dtype=np.float32)
        img[ok] = _l2(raw_image[ok])
        img[~ok] = img[ok].mean(0)
        raw.append(img)
    native = native_labels(products, node, cfg)
    n_init = int(cfg["baseline"]["n_init"])
    km_raw = kmeans_labels(np.hstack(raw), k, seed, n_init)
    km_simclr = kmeans_labels(x, k, seed, n_init)
    metrics = {"method": {"all": evaluate(platforms, native, assigned),
                          "clustered": evaluate(platforms, native, labels, drop_noise=True)},
               "baseline_kmeans_raw": {"all": evaluate(platforms, native, km_raw)},
               "kmeans_simclr": {"all": evaluate(platforms, native, km_simclr)},
               "native_labelled": int(native.notna().sum()),
               "native_knn_agreement": label_agreement(np.hstack(raw), platforms, native),
               "raw_features": "text" + ("+image" if len(raw) > 1 else ""), "refine": casc.get("refine"),
               "purity_by_k": purity_by_granularity(x, platforms, native, k, cfg["granularity"]["factors"], seed)}
    timings["total_s"] = round(time.perf_counter() - t_start, 1)

    names = name_clusters(products["title"].astype(str).tolist(), labels, int(cfg["proposals"]["n_terms"]))
    out = Path(out_dir) if out_dir else None
    rows, grids = [], []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        xc = _l2(x[members])
        order = members[np.argsort(-(xc @ (xc.mean(0) / np.linalg.norm(xc.mean(0)))))]  # most typical first
        lab = native.iloc[members].dropna()
        lab = pd.Series([f"{p}:{v}" for p, v in zip(platforms[lab.index], lab)])
        counts = lab.value_counts()
        grid = None
        if out is not None:
            paths = [products.at[i, "image_path"] for i in order if images[i] is not None]
            grid = image_grid(paths, out / "grids" / f"cluster_{c}.png", int(cfg["proposals"]["grid"]),
                              int(cfg["proposals"]["thumb"]))
            grids.append(str(grid) if grid else None)
        rows.append({"cluster_id": c, "name": names[c]["name"], "terms": names[c]["terms"], "size": len(members),
                     "share": round(len(members) / len(products), 4), "cohesion": round(cohesion(x[members]), 4),
                     "lineage": casc["lineage"][c], "depth": casc["depth"][c],
                     "platforms": {p: int(n) for p, n in pd.Series(platforms[members]).value_counts().items()},
                     "top_native": counts.index[0] if len(counts) else None,
                     "native_purity": round(float(counts.iloc[0] / counts.sum()), 4) if len(counts) else None,
                     "native_counts": {label: int(n) for label, n in counts.head(5).items()},
                     "samples": products.loc[order[:int(cfg["proposals"]["n_samples"])], "title"].tolist(),
                     "image_grid": str(grid) if grid else None})
    clusters = pd.DataFrame(rows)
    table = pd.DataFrame({"platform": platforms, "product_id": products["product_id"].astype(str).to_numpy(),
                          "title": products["title"].to_numpy(), "image_path": products["image_path"].to_numpy(),
                          "native_label": native.to_numpy(), "cluster": labels, "cluster_assigned": assigned,
                          "kmeans_raw": km_raw, "x": view[:, 0], "y": view[:, 1]})
    result = RecategoriseResult(
        node=node, products=table, clusters=clusters, metrics=metrics,
        noise={"count": int((labels < 0).sum()), "share": round(float((labels < 0).mean()), 4),
               "by_platform": {p: round(float((labels[platforms == p] < 0).mean()), 4) for p in sorted(set(platforms))}},
        failures=pd.DataFrame(failures, columns=["platform", "product_id", "reason"]), timings=timings,
        steps=casc["steps"], config=cfg)
    if out is not None:
        result.plots = {"umap": str(scatter_plot(view, labels, {c: names[c]["name"] for c in range(k)}, native,
                                                 out / "umap_clusters.png", path_str(node))),
                        "grids": grids}
        write_report(result, out)
    return result


# ---------------------------------------------------------------- report

def _img_tag(path, width=None) -> str:
    if not isinstance(path, (str, Path)) or not path or not Path(path).exists():
        return "<em>no images</em>"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}"' + (f' width="{width}"' if width else "") + ">"


def _agreement_text(metrics: dict) -> str:
    agree = metrics.get("native_knn_agreement", {})
    return ", ".join(f"{scope} {v['agreement']:.1%}" for scope, v in agree.items()) or "n/a"


def granularity_text(metrics: dict) -> str:
    return ", ".join(f"{r['k']} clusters (~{r['mean_size']:g} products each) purity {r['purity']:.3f}"
                     for r in metrics.get("purity_by_k", [])) or "n/a"


def _metric_rows(metrics: dict) -> str:
    rows = []
    method = "cascade + centroid refinement" if metrics.get("refine") else "cascade (noise -> nearest cluster)"
    runs = [(method, metrics["method"]["all"]),
            ("cascade (clustered points only)", metrics["method"]["clustered"]),
            ("baseline: k-means on raw embeddings, same k", metrics["baseline_kmeans_raw"]["all"]),
            ("ablation: k-means on SimCLR features, same k", metrics["kmeans_simclr"]["all"])]
    for name, per in runs:
        for scope, m in per.items():
            if m.get("n"):
                rows.append(f"<tr><td>{html.escape(name)}</td><td>{scope}</td><td>{m['n']}</td><td>{m['n_labels']}</td>"
                            f"<td>{m['n_clusters']}</td><td><b>{m['purity']:.3f}</b></td><td>{m['nmi']:.3f}</td>"
                            f"<td>{m['ari']:.3f}</td><td>{m['majority_share']:.3f}</td></tr>")
    return "\n".join(rows)


def write_report(result: RecategoriseResult, out_dir: str | Path) -> str:
    """Self-contained HTML (plots and grids inlined as base64) for the people who own the taxonomy."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.clusters.drop(columns=["samples"]).to_csv(out / "clusters.csv", index=False)
    result.products.to_parquet(out / "assignments.parquet", index=False)
    node = html.escape(path_str(result.node))
    cl_rows = []
    for r in result.clusters.itertuples():
        samples = "<br>".join(html.escape(str(s)) for s in r.samples)
        cl_rows.append(
            f"<tr><td>{r.cluster_id}</td><td><b>{html.escape(r.name)}</b><br><small>{html.escape(', '.join(r.terms))}"
            f"</small></td><td>{r.size}<br><small>{r.share:.1%}</small></td><td>{r.cohesion:.3f}</td>"
            f"<td>{html.escape(str(r.lineage))}</td><td>{html.escape(str(r.top_native))}<br><small>purity "
            f"{'' if r.native_purity is None else f'{r.native_purity:.2f}'}</small></td>"
            f"<td><small>{samples}</small></td><td>{_img_tag(r.image_grid, 200)}</td></tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Recategorisation: {node}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;
padding:4px 6px;vertical-align:top}} th{{background:#eee}}</style></head><body>
<h1>Proposed sub-categories for <code>{node}</code></h1>
<p>{len(result.products)} products, {len(result.clusters)} clusters, noise {result.noise['count']}
({result.noise['share']:.1%}) &mdash; noise is reported, never hidden; evaluation below shows both ways.
Products left out: {len(result.failures)}. Run time: {html.escape(json.dumps(result.timings))}.</p>
<h2>UMAP view</h2>{_img_tag(result.plots.get('umap'))}
<h2>Agreement with the shops' own fine labels</h2>
<p>Native labels were not used to form clusters. Each shop is scored against its own vocabulary; overall = purity over all labelled products (majority label per cluster and shop), NMI/ARI weighted by products per shop.</p>
<table><tr><th>clustering</th><th>scope</th><th>n</th><th>native labels</th><th>clusters</th><th>purity</th>
<th>NMI</th><th>ARI</th><th>majority-label share</th></tr>{_metric_rows(result.metrics)}</table>
<p>Purity grows with the number of clusters whatever their quality (k-means on the clustering features):
{html.escape(granularity_text(result.metrics))}.</p>
<p>How consistent the native labels themselves are: {html.escape(_agreement_text(result.metrics))} of labelled
products carry the majority label of their 10 nearest same-shop neighbours (raw embeddings). Purity far above this
needs clusters of about ten products.</p>
<h2>Clusters (proposals)</h2>
<table><tr><th>id</th><th>proposed name / distinctive terms</th><th>size</th><th>cohesion</th><th>cascade path</th>
<th>top native label</th><th>typical products</th><th>images</th></tr>{''.join(cl_rows)}</table>
<h2>Cascade decisions</h2><pre>{html.escape(json.dumps(result.steps, indent=1))}</pre>
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    result.report_path = str(path)
    (out / "result.json").write_text(json.dumps(result.summary(), indent=2, default=str))
    return str(path)


# ---------------------------------------------------------------- runs over a data root

def node_slug(node) -> str:
    """'Footwear > Shoes' -> 'footwear_shoes' (directory names)."""
    return "_".join(as_node(node)).lower().replace(" & ", "-and-").replace(" ", "-").replace("/", "-")


def load_products(data_root: str | Path, taxonomy: Taxonomy | None = None) -> pd.DataFrame:
    """Every platform's raw export under data_root, normalised (images are checked later, for node products only)."""
    from pipelines.settings import PLATFORMS
    from pipelines.ingest.normalize import normalize_platform

    frames = [normalize_platform(p, Path(data_root) / p, taxonomy=taxonomy, verify_images=False).products
              for p in PLATFORMS if (Path(data_root) / p).is_dir()]
    if not frames:
        raise FileNotFoundError(f"no platform export under {data_root} (expected {', '.join(PLATFORMS)})")
    return pd.concat(frames, ignore_index=True)


def node_products(products: pd.DataFrame, nodes: list) -> pd.DataFrame:
    """The products sitting exactly at `nodes`, with their images checked (unreadable -> image_path None)."""
    from pipelines.ingest.normalize import check_images

    out = products[np.any([at_node(products, n) for n in nodes], axis=0)].reset_index(drop=True)
    paths = [p if isinstance(p, str) and p else None for p in out["image_path"]]  # NaN from parquet = no image
    out["image_status"] = check_images(paths)
    out.loc[out["image_status"] != "ok", "image_path"] = None
    return out


def frozen_features(products: pd.DataFrame, store: str | Path, cfg: dict, modalities=("text", "image")) -> dict:
    """Frozen text / image embeddings of `products` from the content-addressed store (computed only when missing);
    NaN rows where a product has none."""
    from pipelines.features.store import embed_products

    names = {"text": cfg["text_encoder"], "image": cfg["simclr"]["image_encoder"]}
    out = {}
    for m in modalities:
        manifest, matrix = embed_products(products, m, names[m], store)
        matrix[~manifest["ok"].to_numpy()] = np.nan
        out[m] = matrix
    return out


def scored_candidates(products: pd.DataFrame, store: str | Path, taxonomy: Taxonomy, cfg: dict) -> pd.DataFrame:
    """candidate_nodes with dispersion measured on a sample of each node's frozen text embeddings."""
    rows = dispersion_rows(products, int(cfg["candidates"]["dispersion_sample"]))
    sampled = frozen_features(products.iloc[rows], store, cfg, ("text",))["text"]
    text = np.full((len(products), sampled.shape[1]), np.nan, dtype=np.float32)
    text[rows] = sampled
    return candidate_nodes(products, text, taxonomy, cfg)


def run_recategorisation(data_root: str | Path, out_dir: str | Path, nodes: list | None = None,
                         cfg: dict | None = None, store_root: str | Path | None = None, log=print) -> dict:
    """Candidate nodes of a data root (scored), then recategorise `nodes` (default: the taxonomy's shallow nodes).
    Writes out_dir/candidates.csv, out_dir/<node>/report.html (+ PNGs, clusters.csv, assignments.parquet),
    out_dir/recategorisation.json and .md and out_dir/index.html. Frozen embeddings come from store_root."""
    from pipelines.taxonomy.tree import load_taxonomy

    cfg = load_config(cfg)
    taxonomy = load_taxonomy()
    nodes = [as_node(n) for n in (nodes or taxonomy.shallow)]
    for n in nodes:
        if n not in taxonomy:
            raise ValueError(f"node {path_str(n)} is not in the taxonomy")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = Path(store_root) if store_root else out / "store"
    t0 = time.perf_counter()
    products = load_products(data_root, taxonomy)
    log(f"normalised {len(products)} products in {time.perf_counter() - t0:.0f} s")
    candidates = scored_candidates(products, store, taxonomy, cfg)
    candidates.to_csv(out / "candidates.csv", index=False)
    log(candidates[candidates["candidate"]].drop(columns="top_native_labels").to_string(index=False))
    at_nodes = node_products(products, nodes)
    features = frozen_features(at_nodes, store, cfg)
    summary = {}
    for node in nodes:
        res = recategorise_node(at_nodes, node, features, cfg, out / node_slug(node), log=log)
        summary[path_str(node)] = res.summary()
    write_summary(summary, candidates, out)
    log(summary_markdown(summary))
    return summary


def write_summary(summary: dict, candidates: pd.DataFrame | None, out: Path) -> Path:
    """recategorisation.json / .md and index.html (metrics per node vs the baseline, candidate nodes, links)."""
    out = Path(out)
    (out / "recategorisation.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "recategorisation.md").write_text(summary_markdown(summary))
    links = "".join(f'<li><a href="{node_slug(node)}/report.html">{html.escape(node)}</a> &mdash; '
                    f'{s["n_clusters"]} proposals, noise {s["noise"]["share"]:.1%}</li>' for node, s in summary.items())
    lines = summary_markdown(summary).splitlines()
    md_rows = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|"))
                      + "</tr>" for i, line in enumerate(lines) if i != 1 and line.startswith("|"))
    notes = "".join(f"<p>{html.escape(line)}</p>" for line in lines if line and not line.startswith("|"))
    cand = candidates.to_html(index=False, float_format=lambda v: f"{v:.3f}") if candidates is not None else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Recategorisation</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;
padding:3px 6px}}</style></head><body><h1>Recategorisation of shallow taxonomy nodes</h1>
<h2>Reports per node</h2><ul>{links}</ul>
<h2>Agreement with native fine labels: cascade vs k-means on raw embeddings (same k)</h2><table>{md_rows}</table>
{notes}
<h2>Candidate nodes (automatic detection)</h2>{cand}</body></html>"""
    path = out / "index.html"
    path.write_text(page)
    return path


def summary_markdown(summary: dict) -> str:
    lines = ["| node | scope | n | labels | clusters | noise | purity (cascade / k-means raw) | NMI | ARI | "
             "purity clustered-only | label 10-NN agreement | time s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for node, s in summary.items():
        m = s["metrics"]
        for scope, a in m["method"]["all"].items():
            b, c = m["baseline_kmeans_raw"]["all"][scope], m["method"]["clustered"].get(scope, {})
            agree = m.get("native_knn_agreement", {}).get(scope, {}).get("agreement", float("nan"))
            noise = s["noise"].get("by_platform", {}).get(scope, s["noise"]["share"])  # overall: the node's share
            lines.append(f"| {node} | {scope} | {a['n']} | {a['n_labels']} | {a['n_clusters']} | "
                         f"{noise:.1%} | {a['purity']:.3f} / {b['purity']:.3f} | "
                         f"{a['nmi']:.3f} / {b['nmi']:.3f} | {a['ari']:.3f} / {b['ari']:.3f} | "
                         f"{c.get('purity', float('nan')):.3f} | {agree:.3f} | {s['timings']['total_s']} |")
    for node, s in summary.items():  # purity only means something next to the granularity it is measured at
        lines += ["", f"{node}, k-means purity on the clustering features by number of clusters: "
                      f"{granularity_text(s['metrics'])}"]
    return "\n".join(lines) + "\n"
