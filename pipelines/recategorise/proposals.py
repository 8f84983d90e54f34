"""Proposed sub-categories: a distinctive name per cluster (c-TF-IDF over its titles), its most typical
products, its shops and native labels, and an image grid: the table the taxonomy owners accept from.

    name_clusters(titles, labels)              -> {cluster: name, terms, term weights}, names unique
    proposal_table(products, x, labels, ...)   -> one row per cluster (the clusters.csv of a report)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.recategorise.clustering import cohesion
from pipelines.recategorise.plots import image_grid
from pipelines.recategorise.representation import l2_rows


def _top_terms(weights: np.ndarray, vocab, n_terms: int) -> list[str]:
    """Highest-weighted terms, skipping one that a chosen term contains or is contained in."""
    terms = []
    for i in np.argsort(-weights):
        if weights[i] <= 0 or len(terms) == n_terms:
            break
        term = vocab[i]
        if any(set(term.split()) <= set(t.split()) or set(t.split()) <= set(term.split()) for t in terms):
            continue  # "sports" adds nothing next to "sports shoes"
        terms.append(term)
    return terms


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
        terms = _top_terms(weight[row], vocab, n_terms)
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


def most_typical_first(x: np.ndarray, members: np.ndarray) -> np.ndarray:
    """`members` ordered by cosine to their centroid, closest first (samples and grids show typical products)."""
    xc = l2_rows(x[members])
    return members[np.argsort(-(xc @ (xc.mean(0) / np.linalg.norm(xc.mean(0)))))]


def proposal_table(products: pd.DataFrame, x: np.ndarray, labels: np.ndarray, casc: dict, native: pd.Series,
                   images: list, cfg: dict, out: Path | None) -> pd.DataFrame:
    """One row per cluster: name, terms, size, share, cohesion, cascade lineage and depth, shops, top native label
    and its purity, sample titles, and (with `out`) the path of its image grid under out/grids/."""
    platforms = products["platform"].to_numpy()
    pc = cfg["proposals"]
    names = name_clusters(products["title"].astype(str).tolist(), labels, int(pc["n_terms"]))
    rows = []
    for c in range(int(labels.max() + 1)):
        members = np.flatnonzero(labels == c)
        order = most_typical_first(x, members)
        lab = native.iloc[members].dropna()
        counts = pd.Series([f"{p}:{v}" for p, v in zip(platforms[lab.index], lab)]).value_counts()
        grid = None
        if out is not None:
            paths = [products.at[i, "image_path"] for i in order if images[i] is not None]
            grid = image_grid(paths, out / "grids" / f"cluster_{c}.png", int(pc["grid"]), int(pc["thumb"]))
        rows.append({"cluster_id": c, "name": names[c]["name"], "terms": names[c]["terms"], "size": len(members),
                     "share": round(len(members) / len(products), 4), "cohesion": round(cohesion(x[members]), 4),
                     "lineage": casc["lineage"][c], "depth": casc["depth"][c],
                     "platforms": {p: int(n) for p, n in pd.Series(platforms[members]).value_counts().items()},
                     "top_native": counts.index[0] if len(counts) else None,
                     "native_purity": round(float(counts.iloc[0] / counts.sum()), 4) if len(counts) else None,
                     "native_counts": {label: int(n) for label, n in counts.head(5).items()},
                     "samples": products.loc[order[:int(pc["n_samples"])], "title"].tolist(),
                     "image_grid": str(grid) if grid else None})
    return pd.DataFrame(rows)
