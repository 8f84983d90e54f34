"""Two-stage routing and abstention for a shop the model never trained on (issue 18).

The in-distribution router (inference/routing.py) chooses stage 1's threshold on the training shops' validation
rows. On a new shop the cheap lexical stage 1 is confidently wrong, so that threshold sends almost nothing on to
stage 2. Here the threshold is read off the new shop's own *unlabelled* products instead, by agreement between the
stages: the lowest stage-1 path confidence t such that, among the products with stage-1 confidence >= t, stage 1's
path differs from stage 2's (the adapted classifier) on at most `budget` of all the shop's products. The routed
answer then differs from stage 2 alone on at most that share of the shop, whatever its labels say; no label of the
new shop is read, and the budget is fixed a priori.

Agreement compares full paths: the routed answer is stage 1's full path, and both stages decode to leaves of the
same hierarchy, where a leaf is never a proper prefix of another leaf, so full-path equality is the same as
agreement at stage 1's depth, and a product that agrees scores exactly as stage 2 would at any label depth.

needs_review under shift, what AdaptedClassifier.classify answers (stage 2 runs on routed products only): a routed
product is flagged when the stages disagree or stage 2's calibrated path probability is below the threshold at
which the *training* shops' validation rows keep `review_precision` (adapted.val_threshold); any product when the
per-level abstention of stage1.yaml fires on the answering stage's confidences.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

ROUTE_ALL = 1.0 + 1e-6  # above any calibrated probability: every product goes to stage 2


@dataclass(frozen=True)
class ShiftRoutingConfig:
    budget: float = 0.001  # share of the shop's products on which the routed answer may differ from stage 2
    review_precision: float = 0.98  # training shops' validation precision above stage 2's review threshold


class BadShiftRouting(ValueError):
    """A ShiftRoutingConfig value outside its range, or views without the lexical view stage 1 reads."""


def check_shift_routing(cfg: ShiftRoutingConfig) -> ShiftRoutingConfig:
    bad = [f"budget={cfg.budget} (0 <= b < 1)"] if not 0 <= cfg.budget < 1 else []
    bad += [f"review_precision={cfg.review_precision} (0 < p <= 1)"] if not 0 < cfg.review_precision <= 1 else []
    if bad:
        raise BadShiftRouting("shift routing config: " + ", ".join(bad))
    return cfg


# ---- pure functions over arrays -----------------------------------------------------------------------------------

def stage_disagreement(paths1: list, paths2: list) -> np.ndarray:
    """Per product, whether the two stages' full paths differ."""
    return np.array([tuple(a) != tuple(b) for a, b in zip(paths1, paths2)], bool)


def agreement_threshold(prob1, disagree, budget: float) -> float:
    """The lowest stage-1 confidence t with #(prob1 >= t and disagree) <= floor(budget x n): products at or above t
    stay with stage 1. A cut only falls between distinct confidences (ties go together). All agree -> the lowest
    confidence (nothing routed); no t qualifies -> ROUTE_ALL."""
    prob1, disagree = np.asarray(prob1, np.float64), np.asarray(disagree, bool)
    if not len(prob1):
        return ROUTE_ALL
    allowed = math.floor(budget * len(prob1) + 1e-9)
    order = np.argsort(-prob1, kind="stable")
    sorted_prob, wrong = prob1[order], np.cumsum(disagree[order])
    ends = np.flatnonzero(np.r_[sorted_prob[1:] != sorted_prob[:-1], True])  # last row of each run of ties
    ok = ends[wrong[ends] <= allowed]  # wrong is non-decreasing: a prefix of the cuts qualifies
    return float(sorted_prob[ok[-1]]) if len(ok) else ROUTE_ALL


def route(prob1, threshold: float) -> np.ndarray:
    """Products sent on to stage 2 (stage-1 confidence below the threshold), as routing.py routes."""
    return np.asarray(prob1, np.float64) < threshold


def review_flags(routed, disagree, prob2, review_below: float, abstained) -> np.ndarray:
    """needs_review: the abstention fired, or a routed product whose stages disagree or whose stage-2 path
    probability is below `review_below` (stage 2 is only known where it ran)."""
    routed = np.asarray(routed, bool)
    unsure2 = np.nan_to_num(np.asarray(prob2, np.float64), nan=1.0) < review_below
    return np.asarray(abstained, bool) | (routed & (np.asarray(disagree, bool) | unsure2))


def combine(routed, pred1, pred2) -> tuple[list, np.ndarray, np.ndarray]:
    """(paths, conf, stage 1|2) answering each product with stage 2 where routed, else stage 1."""
    routed = np.asarray(routed, bool)
    paths = [tuple(b) if r else tuple(a) for a, b, r in zip(pred1.paths, pred2.paths, routed)]
    conf = np.where(routed[:, None], pred2.conf, pred1.conf) if len(routed) else pred2.conf
    return paths, conf, np.where(routed, 2, 1).astype(np.int8)


# ---- stage 1 and the thresholds for one new shop ------------------------------------------------------------------

@dataclass
class ShiftRouter:
    stage1: object  # calibration.Stage over the lexical view, trained on the training shops
    route_below: float  # agreement threshold on the new shop
    review_below: float  # stage 2's path probability keeping review_precision on the training shops' val rows
    in_distribution_below: float  # routing.py's choice on the training shops' val rows, for comparison
    prediction1: object  # calibration.Prediction of stage 1 on every new-shop product
    info: dict = field(default_factory=dict)


def in_distribution_threshold(stage1, stage2, base1: tuple, base2: tuple) -> float:
    """routing.choose_threshold on the training shops' validation rows (stage1.yaml's max_drop): today's router."""
    from pipelines.inference.routing import choose_threshold, hf1_counts
    from pipelines.inference.stage1 import stage1_config

    (f1, a1, labels, split), (f2, a2, _, _) = base1, base2
    val = np.flatnonzero(split == "val")
    if not len(val):
        return 0.0
    truth = [labels[i] for i in val]
    p1 = stage1.predict({m: v[val] for m, v in f1.items()}, {m: v[val] for m, v in a1.items()})
    p2 = stage2.predict({m: v[val] for m, v in f2.items()}, {m: v[val] for m, v in a2.items()})
    max_drop = float(stage1_config().get("routing", {}).get("max_drop", 0.002))
    return choose_threshold(p1.prob, hf1_counts(truth, p1.paths), hf1_counts(truth, p2.paths), max_drop)["threshold"]


def fit_shift_router(views, primary, centre, taxonomy, out_dir, *, config: ShiftRoutingConfig = ShiftRoutingConfig(),
                     seed: int = 0, threads: int = 0, max_epochs: int | None = None) -> ShiftRouter:
    """Stage 1 (lexical only, onboard_strategy(("lexical",)), the base rows adaptation_rounds trains on) and the
    thresholds for the new shop of `views`; `primary` is the adapted stage 2's AdaptRound (its fitted stage and its
    prediction on every new-shop product), `centre` the views its features were centred on. Label-free."""
    from pipelines.adapt.adapted import centred_views, training_base, val_threshold
    from pipelines.onboard.classifier import onboard_strategy, train_calibrated_stage

    check_shift_routing(config)
    if "lexical" not in views.modalities:
        raise BadShiftRouting(f"stage 1 reads the lexical view: the adapted classifier reads {views.modalities}")
    base2 = training_base(views, centred_views(views, centre)[0])
    f, a, labels, split = training_base(views, views.train_features)  # stage 1: the uncentred lexical view
    base1 = ({"lexical": f["lexical"]}, {"lexical": a["lexical"]}, labels, split)
    stage1, info = train_calibrated_stage(onboard_strategy(("lexical",)), *base1, taxonomy, out_dir, seed=seed,
                                          threads=threads, max_epochs=max_epochs)
    pred1 = stage1.predict({"lexical": views.new_features["lexical"]}, {"lexical": views.new_available["lexical"]})
    disagree = stage_disagreement(pred1.paths, primary.new_prediction.paths)
    route_below = agreement_threshold(pred1.prob, disagree, config.budget)
    review_below = val_threshold(primary.fitted.stage, *base2, config.review_precision)
    in_dist = in_distribution_threshold(stage1, primary.fitted.stage, base1, base2)
    info = {"budget": config.budget, "review_precision": config.review_precision, "route_below": route_below,
            "review_below": review_below, "in_distribution_below": in_dist,
            "routed_share": float(route(pred1.prob, route_below).mean()) if len(disagree) else 0.0,
            "disagreement_share": float(disagree.mean()) if len(disagree) else 0.0, "stage1": info}
    return ShiftRouter(stage1, route_below, review_below, in_dist, pred1, info)


def routed_outcome(pred1, pred2, threshold: float, abstain_at: list, review_below: float | None) -> dict:
    """What a router answers on the new shop's products: paths (full), stage, needs_review, shares. With
    `review_below` None, needs_review is the abstention alone (today's TwoStage)."""
    from pipelines.inference.calibration import abstain

    routed = route(pred1.prob, threshold)
    paths, conf, stage = combine(routed, pred1, pred2)
    _, abstained = abstain(paths, conf, abstain_at or [0.0] * conf.shape[1])
    review = abstained if review_below is None else review_flags(
        routed, stage_disagreement(pred1.paths, pred2.paths), pred2.prob, review_below, abstained)
    n = max(len(paths), 1)
    return {"threshold": float(threshold), "paths": paths, "stage": stage, "needs_review": review,
            "routed_share": float(routed.sum()) / n, "review_share": float(review.sum()) / n}


def shift_routing_outcomes(views, primary, centre, taxonomy, out_dir, settings, *,
                           config: ShiftRoutingConfig = ShiftRoutingConfig(), max_epochs: int | None = None) -> dict:
    """{"in_distribution": ..., "agreement": ..., "router": info} on every product of the new shop, label-free:
    stage 1 trained here, stage 2 = `primary` (the adapted classifier's AdaptRound)."""
    from pipelines.inference.stage1 import stage1_config

    router = fit_shift_router(views, primary, centre, taxonomy, out_dir, config=config, seed=settings.seed,
                              threads=settings.threads, max_epochs=max_epochs)
    abstain_at = list(stage1_config().get("abstain", []))
    pred1, pred2 = router.prediction1, primary.new_prediction
    return {"in_distribution": routed_outcome(pred1, pred2, router.in_distribution_below, abstain_at, None),
            "agreement": routed_outcome(pred1, pred2, router.route_below, abstain_at, router.review_below),
            "router": router.info}


# ---- the adapted classifier's classify() with routing -------------------------------------------------------------

def classify_routed(classifier, texts: list[str]) -> pd.DataFrame:
    """AdaptedClassifier.classify when it carries a stage 1: stage 1 on every product, stage 2 (centred features,
    text vectors) only on those below `route_below`; the ShopClassifier.classify columns."""
    from pipelines.inference.calibration import abstain
    from pipelines.inference.features import lexical_features

    n, depth = len(texts), classifier.depth
    lex, ok = lexical_features(classifier.lexical, texts)
    pred1 = classifier.stage1.predict({"lexical": lex}, {"lexical": ok})
    routed = route(pred1.prob, classifier.route_below)
    paths, conf = [tuple(p) for p in pred1.paths], pred1.conf.copy()
    alternatives = list(pred1.alternatives or [[]] * n)
    disagree, prob2 = np.zeros(n, bool), np.full(n, np.nan)
    idx = np.flatnonzero(routed)
    if len(idx):
        pred2 = classifier.stage.predict(*classifier.features([texts[i] for i in idx]))
        for j, i in enumerate(idx):
            disagree[i] = tuple(pred2.paths[j]) != paths[i]
            paths[i], alternatives[i] = tuple(pred2.paths[j]), (pred2.alternatives or [[]] * len(idx))[j]
        conf[idx], prob2[idx] = pred2.conf, pred2.prob
    cut, abstained = abstain(paths, conf, classifier.abstain_at or [0.0] * depth)
    review = review_flags(routed, disagree, prob2, classifier.review_below or 0.0, abstained)
    columns = {"category_path": cut, "full_path": paths} | {f"conf_L{k + 1}": conf[:, k] for k in range(depth)}
    return pd.DataFrame(columns | {"stage": np.where(routed, 2, 1).astype(np.int8), "needs_review": review,
                                   "alternatives": alternatives})


# ---- scoring (after the new shop's hand mapping is read) ----------------------------------------------------------

def score_routing(hand: list, rows: np.ndarray, outcomes: dict, stage2_paths: list) -> dict:
    """Per router, on the scored products `rows` (mask): routed hF1 vs stage 2 alone (difference in points),
    shares routed and flagged, and the share of the routed answer's errors (at the label's depth) flagged."""
    from pipelines.classify.metrics import hierarchical_prf

    idx = np.flatnonzero(rows)
    if not len(idx):
        return {}
    true = [tuple(hand[i]) for i in idx]
    stage2 = hierarchical_prf(true, [stage2_paths[i] for i in idx], truncate=True)["hF1"]
    out = {}
    for name, o in outcomes.items():
        if not isinstance(o, dict) or "paths" not in o:
            continue
        pred = [o["paths"][i] for i in idx]
        routed = hierarchical_prf(true, pred, truncate=True)["hF1"]
        wrong = np.array([tuple(p[:len(t)]) != t for p, t in zip(pred, true)])
        flagged = np.asarray(o["needs_review"], bool)[idx]
        out[name] = {"n": len(idx), "threshold": o["threshold"], "routed_share": round(float(np.mean(o["stage"][idx] == 2)), 4),
                     "hF1_routed": round(routed, 4), "hF1_stage2": round(stage2, 4),
                     "diff_points": round(100 * (routed - stage2), 3),
                     "review_share": round(float(flagged.mean()), 4), "errors": int(wrong.sum()),
                     "errors_flagged_share": round(float(flagged[wrong].mean()), 4) if wrong.any() else None}
    return out


def routing_summary(cells: list, targets: dict, router: str = "agreement") -> dict:
    """Per shop, `router`'s difference to stage 2 and errors caught; whether both targets hold on every holdout."""
    per_shop = {c["holdout"]: c.get("routing", {}).get(router, {}) for c in cells}
    diffs = [s.get("diff_points") for s in per_shop.values()]
    return {"router": router, "per_shop": {h: {k: s.get(k) for k in ("routed_share", "diff_points", "review_share",
                                                                       "errors_flagged_share")}
                                           for h, s in per_shop.items()},
            "met": {"routed_within_points": bool(diffs) and all(d is not None and d >= -targets["routed_within_points"]
                                                                for d in diffs),
                    # a shop whose routed answer makes no error on the scored products has none to catch
                    "review_holds_errors": bool(per_shop) and all(
                        bool(s) and (s.get("errors_flagged_share") is None
                                     or s["errors_flagged_share"] >= targets["review_holds_errors"])
                        for s in per_shop.values())}}
