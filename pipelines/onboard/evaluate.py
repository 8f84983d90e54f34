"""Scoring an onboarding against the shop's hand-written mapping: the only place a held-out shop's labels are read.

    score_mapping_proposal(proposal, native_paths, hand_mapping)   proposed vs hand mapping, weighted by products
    score_scope_detection(scores, flags, native_paths, hand_mapping)  out-of-scope AUROC and flag rates

Proposal vs hand mapping (issue 17's first target): every product the hand mapping maps counts once; the proposal's
rule for it is the most specific decided row matching its native path (mapping-table semantics); it is correct when
that row gives a path whose first d levels equal the hand path, d = the depth the hand mapping gives (a shallower
proposal is wrong: it does not say what the hand mapping says). `consistent` also accepts a shallower proposal that
is a prefix of the hand path. Confident rows: the same over the products whose rule the proposal marks confident.
Out of scope (second target): positives are the products the hand mapping sends to `unmapped: out of scope: ...`,
negatives the mapped ones; ambiguous and placeholder rows are neither.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from pipelines.onboard.mapping_proposal import REASON_OUT_OF_SCOPE, native_key, parse_levels, proposal_rules
from pipelines.onboard.training import SCOPE_IN, SCOPE_OUT, scope_of_rule
from pipelines.taxonomy.tree import path_str

TARGETS = {"mapping_correct": 0.95, "confident_correct": 0.98, "scope_auroc": 0.95, "in_scope_flag_rate": 0.02}


def hand_labels(native_paths, hand_mapping) -> pd.DataFrame:
    """(hand_path tuple or (), scope 'in'/'out'/'other') per product, from the hand mapping."""
    rules = [hand_mapping.lookup(n) for n in native_paths]
    return pd.DataFrame({"hand_path": [tuple(r.category_path) if r is not None and not r.unmapped_reason else ()
                                       for r in rules],
                         "scope": [scope_of_rule(r) for r in rules]})


def _share(mask) -> float | None:
    mask = np.asarray(mask, bool)
    return round(float(mask.mean()), 4) if len(mask) else None


def _proposed(proposal: pd.DataFrame, native_paths) -> tuple[list, list]:
    """Per product: the proposal's decided path (None: out of scope or no decided rule) and its row's confident
    flag."""
    rules = proposal_rules(proposal)
    confident = {native_key(parse_levels(n)): bool(c) for n, c in zip(proposal["native_path"], proposal["confident"])}
    paths, flags = [], []
    for native in native_paths:
        rule = rules.lookup(native)
        paths.append(None if rule is None or rule.unmapped_reason == REASON_OUT_OF_SCOPE else tuple(rule.category_path))
        flags.append(rule is not None and confident.get(native_key(rule.pattern), False))
    return paths, flags


def _top_errors(native_paths, hand: list, proposed: list, wrong: np.ndarray, k: int = 10) -> list[dict]:
    counts = Counter((path_str(native[:3]), path_str(h), path_str(p) if p else "(none / out of scope)")
                     for native, h, p, w in zip(native_paths, hand, proposed, wrong) if w)
    return [{"native_path": n, "hand": h, "proposed": p, "products": c} for (n, h, p), c in counts.most_common(k)]


def score_mapping_proposal(proposal: pd.DataFrame, native_paths, hand_mapping) -> dict:
    """Proposed vs hand mapping, weighted by products (see the module docstring)."""
    native_paths = [list(n) for n in native_paths]
    labels = hand_labels(native_paths, hand_mapping)
    proposed, confident = _proposed(proposal, native_paths)
    mapped = (labels["scope"] == SCOPE_IN).to_numpy()
    hand = labels["hand_path"].tolist()
    correct = np.array([p is not None and p[:len(h)] == h for p, h in zip(proposed, hand)])
    consistent = np.array([p is not None and p[:min(len(p), len(h))] == h[:min(len(p), len(h))] and len(p) > 0
                           for p, h in zip(proposed, hand)])
    conf = np.asarray(confident, bool) & mapped
    out_rows = (labels["scope"] == SCOPE_OUT).to_numpy()
    return {"products": int(mapped.sum()), "correct": _share(correct[mapped]),
            "consistent": _share(consistent[mapped]),
            "covered": _share(np.array([p is not None for p in proposed])[mapped]),
            "confident_products": int(conf.sum()), "confident_share": _share(conf[mapped]),
            "confident_correct": _share(correct[conf]),
            "out_of_scope_products": int(out_rows.sum()),
            "out_of_scope_proposed_unmapped": _share(np.array([p is None for p in proposed])[out_rows]),
            "by_hand_depth": {str(d): _share(correct[mapped & (labels["hand_path"].map(len) == d).to_numpy()])
                              for d in sorted(set(labels.loc[mapped, "hand_path"].map(len)))},
            "top_errors": _top_errors(native_paths, hand, proposed, mapped & ~correct)}


def score_scope_detection(scores, flags, native_paths, hand_mapping) -> dict:
    """AUROC of the scores on hand out-of-scope vs mapped products; in-scope flag rate and recall at the flags."""
    from sklearn.metrics import roc_auc_score

    scope = hand_labels([list(n) for n in native_paths], hand_mapping)["scope"].to_numpy()
    scores, flags = np.asarray(scores, float), np.asarray(flags, bool)
    pos, neg = scope == SCOPE_OUT, scope == SCOPE_IN
    known = pos | neg
    auroc = float(roc_auc_score(pos[known], scores[known])) if pos.any() and neg.any() else None
    return {"in_scope": int(neg.sum()), "out_of_scope": int(pos.sum()), "neither": int((~known).sum()),
            "auroc": None if auroc is None else round(auroc, 4), "in_scope_flag_rate": _share(flags[neg]),
            "out_of_scope_recall": _share(flags[pos])}


def targets_met(mapping: dict, scope: dict) -> dict:
    """Each of the issue's targets for one shop: True / False, or None when it cannot be measured (no positives)."""
    def at_least(value, bound):
        return None if value is None else bool(value >= bound)

    flag = scope.get("in_scope_flag_rate")
    return {"mapping_correct": at_least(mapping.get("correct"), TARGETS["mapping_correct"]),
            "confident_correct": at_least(mapping.get("confident_correct"), TARGETS["confident_correct"]),
            "scope_auroc": at_least(scope.get("auroc"), TARGETS["scope_auroc"]),
            "in_scope_flag_rate": None if flag is None else bool(flag <= TARGETS["in_scope_flag_rate"])}
