"""Hierarchical classification metrics.

hP/hR/hF1 (Kiritchenko et al.): each path is expanded to the set of its ancestors and itself (root excluded;
a node is identified by its full path), micro-averaged over products. Where a label is coarser than the prediction
(the shop only said "Clothing > Tops"), `truncate=True` scores the prediction at the label's depth: the deeper
levels are unknown, not wrong. Both readings are reported by `evaluate`.
"""
from __future__ import annotations

import numpy as np


def ancestors(path) -> set:
    path = tuple(path)
    return {path[:i + 1] for i in range(len(path))}


def hierarchical_prf(true_paths, pred_paths, truncate: bool = False) -> dict:
    inter = n_pred = n_true = 0
    for t, p in zip(true_paths, pred_paths):
        t, p = tuple(t), tuple(p)
        if truncate:
            p = p[:len(t)]
        a_t, a_p = ancestors(t), ancestors(p)
        inter += len(a_t & a_p)
        n_pred += len(a_p)
        n_true += len(a_t)
    hp = inter / n_pred if n_pred else 0.0
    hr = inter / n_true if n_true else 0.0
    return {"hP": hp, "hR": hr, "hF1": 2 * hp * hr / (hp + hr) if hp + hr else 0.0}


def per_level(true_paths, pred_paths, depth: int) -> dict:
    from sklearn.metrics import f1_score

    out = {}
    for lvl in range(depth):
        pairs = [(tuple(t[:lvl + 1]), tuple(p[:lvl + 1])) for t, p in zip(true_paths, pred_paths) if len(t) > lvl]
        if not pairs:
            continue
        t = [" > ".join(a) for a, _ in pairs]
        p = [" > ".join(b) if len(b) > lvl else "<none>" for _, b in pairs]
        out[f"acc_L{lvl + 1}"] = float(np.mean([a == b for a, b in zip(t, p)]))
        out[f"macroF1_L{lvl + 1}"] = float(f1_score(t, p, average="macro", labels=sorted(set(t)), zero_division=0))
        out[f"n_L{lvl + 1}"] = len(pairs)
    return out


def consistency(pred_paths, taxonomy) -> float:
    """Path-consistency rate: share of predictions that are valid taxonomy paths (every prefix a node)."""
    if not len(pred_paths):
        return 1.0
    return float(np.mean([taxonomy.is_valid_path(p) for p in pred_paths]))


def leaf_rate(pred_paths, taxonomy) -> float:
    """Share of predictions that are valid paths ending at a leaf (full depth, or a shallow leaf)."""
    if not len(pred_paths):
        return 1.0
    return float(np.mean([taxonomy.is_valid_path(p) and taxonomy.is_leaf(p) for p in pred_paths]))


def expected_calibration_error(confidence, correct, bins: int = 15) -> float:
    """Equal-width bins over (0, 1]; sum over bins of (bin share) * |mean confidence - accuracy|."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    if not len(confidence):
        return 0.0
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for b in np.unique(which):
        m = which == b
        ece += m.mean() * abs(confidence[m].mean() - correct[m].mean())
    return float(ece)


def evaluate(true_paths, pred_paths, taxonomy, confidence=None) -> dict:
    """Every headline metric for one set of predictions (confidence = path probability, for ECE)."""
    strict = hierarchical_prf(true_paths, pred_paths)
    known = hierarchical_prf(true_paths, pred_paths, truncate=True)
    out = {**known, **{f"strict_{k}": v for k, v in strict.items()}, **per_level(true_paths, pred_paths,
                                                                                   taxonomy.depth)}
    out["consistency"] = consistency(pred_paths, taxonomy)
    out["leaf_rate"] = leaf_rate(pred_paths, taxonomy)
    exact = [tuple(p[:len(t)]) == tuple(t) for t, p in zip(true_paths, pred_paths)]
    out["path_acc"] = float(np.mean(exact)) if exact else 0.0
    if confidence is not None:
        out["ECE"] = expected_calibration_error(confidence, exact)
    out["n"] = len(true_paths)
    return out
