"""Self-training: the new shop's confident predictions become training rows.

Three choices keep the pseudo-labels honest and from drowning the real ones:
  * the confidence threshold is read off the *training* shops' validation rows: the lowest calibrated path
    probability at which those rows' predictions are still at least `precision` right (at the label's depth), so no
    label of the new shop is read;
  * whole product groups: a group's products (colour/size variants) take the group's prediction only when they all
    agree and their mean confidence clears the threshold, so one variant's slip does not become a label;
  * a class-balanced cap: no leaf takes more than `balance` times the mean number of accepted groups per leaf (at
    least `min_groups_per_leaf`), the most confident first, so a leaf the model over-predicts on the new shop does
    not grow with its own mistakes.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PseudoLabelConfig:
    precision: float = 0.99  # the training shops' validation precision the threshold must keep
    balance: float = 2.0  # a leaf takes at most balance x the mean accepted groups per leaf ...
    min_groups_per_leaf: int = 20  # ... but at least this many


class BadPseudoLabelConfig(ValueError):
    """A PseudoLabelConfig value outside its range."""


def check_pseudo_config(cfg: PseudoLabelConfig) -> PseudoLabelConfig:
    bad = [f"precision={cfg.precision} (0 < p <= 1)"] if not 0 < cfg.precision <= 1 else []
    bad += [f"balance={cfg.balance} (> 0)"] if cfg.balance <= 0 else []
    bad += [f"min_groups_per_leaf={cfg.min_groups_per_leaf} (>= 0)"] if cfg.min_groups_per_leaf < 0 else []
    if bad:
        raise BadPseudoLabelConfig("pseudo-label config: " + ", ".join(bad))
    return cfg


def threshold_at_precision(confidence, correct, precision: float) -> float:
    """The lowest confidence t such that the rows with confidence >= t are at least `precision` correct (the
    training shops' validation rows); 1.0 (nothing passes but certainty) when no t reaches it."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, bool)
    if not len(confidence):
        return 1.0
    order = np.argsort(-confidence, kind="stable")
    kept_precision = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(kept_precision >= precision)
    return float(confidence[order][ok[-1]]) if len(ok) else 1.0


def group_predictions(paths: list, confidence, groups) -> dict:
    """{group: (path, mean confidence, products agree)} over the new shop's product groups."""
    members = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    out = {}
    for g, rows in members.items():
        first = tuple(paths[rows[0]])
        agree = all(tuple(paths[i]) == first for i in rows)
        out[g] = (first, float(np.mean([confidence[i] for i in rows])), agree)
    return out


def balanced_groups(accepted: dict, cfg: PseudoLabelConfig) -> set:
    """The accepted groups ({group: (path, confidence)}) kept under the per-leaf cap, most confident first."""
    by_leaf = defaultdict(list)
    for g, (path, conf) in accepted.items():
        by_leaf[path].append((conf, g))
    if not by_leaf:
        return set()
    cap = max(cfg.min_groups_per_leaf, math.ceil(cfg.balance * len(accepted) / len(by_leaf)))
    return {g for items in by_leaf.values() for _, g in sorted(items, key=lambda x: (-x[0], str(x[1])))[:cap]}


def select_pseudo_labels(paths: list, confidence, groups, threshold: float,
                         cfg: PseudoLabelConfig = PseudoLabelConfig()) -> tuple[np.ndarray, list, dict]:
    """-> (bool per product: pseudo-labelled, its label (the group's path; () where not), summary)."""
    check_pseudo_config(cfg)
    groups = [str(g) for g in groups]
    per_group = group_predictions(paths, confidence, groups)
    accepted = {g: (p, c) for g, (p, c, agree) in per_group.items() if agree and c >= threshold and p}
    kept = balanced_groups(accepted, cfg)
    mask = np.array([g in kept for g in groups], bool)
    labels = [per_group[g][0] if m else () for g, m in zip(groups, mask)]
    summary = {"threshold": round(float(threshold), 4), "groups": len(per_group), "groups_confident": len(accepted),
               "groups_kept": len(kept), "products": int(mask.sum()), "share": round(float(mask.mean()), 4)
               if len(mask) else 0.0, "leaves": len({per_group[g][0] for g in kept})}
    return mask, labels, summary
