"""Routing and abstention under shift (issue 18, pipelines/adapt/shift_routing.py): the agreement threshold and the
review flags on hand-made arrays with known answers, the adapted classifier routing on the sample (hm + myntra
labelled, flipkart unlabelled), and the measurement scoring routing only after every prediction was made."""
import math

import numpy as np
import pytest
from test_adapt import env  # noqa: F401  the sample: hm + myntra labelled, flipkart read without its mapping


# ---- pure functions ----------------------------------------------------------------------------------------------

def test_agreement_threshold_known_answers():
    from pipelines.adapt.shift_routing import ROUTE_ALL, agreement_threshold, route

    prob = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    dis = np.array([0, 0, 1, 0, 0, 1, 0, 0, 0, 0], bool)
    assert agreement_threshold(prob, dis, 0.0) == 0.95  # no disagreement allowed: stop above 0.9
    assert agreement_threshold(prob, dis, 0.1) == 0.7  # one allowed: down to just above the second one
    assert agreement_threshold(prob, dis, 0.2) == 0.2  # both allowed: every product stays with stage 1
    assert not route(prob, agreement_threshold(prob, dis, 0.2)).any()
    assert route(prob, 0.7).tolist() == [False] * 5 + [True] * 5
    # shuffled input gives the same answer (nothing depends on the order of the products)
    perm = np.random.default_rng(0).permutation(len(prob))
    assert agreement_threshold(prob[perm], dis[perm], 0.1) == 0.7
    # ties go together: the disagreeing 0.9 cannot stay with stage 1 without its agreeing twin
    assert agreement_threshold([0.9, 0.9, 0.5], [False, True, False], 0.0) == ROUTE_ALL
    assert agreement_threshold([], [], 0.1) == ROUTE_ALL


def test_agreement_threshold_all_agree_routes_nothing_all_disagree_routes_all():
    from pipelines.adapt.shift_routing import agreement_threshold, route

    prob = np.random.default_rng(1).uniform(0.2, 1.0, 500)
    t = agreement_threshold(prob, np.zeros(500, bool), 0.001)
    assert t == prob.min() and not route(prob, t).any()
    t = agreement_threshold(prob, np.ones(500, bool), 0.001)
    assert route(prob, t).all()


@pytest.mark.parametrize("budget", [0.0, 0.001, 0.01, 0.05, 0.3])
def test_agreement_threshold_respects_the_budget_and_is_the_lowest(budget):
    from pipelines.adapt.shift_routing import agreement_threshold

    rng = np.random.default_rng(2)
    prob = np.round(rng.uniform(0, 1, 3000), 3)  # ties on purpose
    dis = rng.uniform(0, 1, 3000) > prob  # more disagreement where stage 1 is unsure
    allowed = math.floor(budget * len(prob))
    t = agreement_threshold(prob, dis, budget)
    assert int((dis & (prob >= t)).sum()) <= allowed
    lower = prob[prob < t]
    if len(lower):  # the next lower confidence would break the budget
        assert int((dis & (prob >= lower.max())).sum()) > allowed


def test_review_flags():
    from pipelines.adapt.shift_routing import review_flags

    routed = np.array([1, 1, 1, 0, 0, 0], bool)
    disagree = np.array([1, 0, 0, 1, 0, 0], bool)  # stage 1 not answering alone on row 3: not known to classify
    prob2 = np.array([0.99, 0.5, 0.95, np.nan, 0.1, 0.9])
    abstained = np.array([0, 0, 0, 0, 0, 1], bool)
    flags = review_flags(routed, disagree, prob2, 0.9, abstained)
    assert flags.tolist() == [True, True, False, False, False, True]
    assert not review_flags(routed, np.zeros(6, bool), np.ones(6), 0.9, np.zeros(6, bool)).any()


def test_routed_outcome_and_scoring_on_hand_made_predictions():
    from pipelines.adapt.shift_routing import routed_outcome, score_routing
    from pipelines.inference.calibration import Prediction

    a, b, c = ("Clothing", "Tops", "T-Shirts"), ("Clothing", "Bottoms", "Jeans"), ("Footwear", "Shoes", "Sneakers")
    conf = np.full((4, 3), 0.99, np.float32)
    p1 = Prediction([a, b, a, c], conf, np.array([0.99, 0.98, 0.4, 0.3], np.float32))
    p2 = Prediction([a, b, b, c], conf.copy(), np.array([0.95, 0.5, 0.97, 0.6], np.float32))
    out = routed_outcome(p1, p2, 0.5, [0.5, 0.4, 0.3], review_below=0.9)
    assert out["stage"].tolist() == [1, 1, 2, 2] and out["paths"] == [a, b, b, c] and out["routed_share"] == 0.5
    assert out["needs_review"].tolist() == [False, False, True, True]  # row 2: the stages disagree; row 3: unsure
    plain = routed_outcome(p1, p2, 0.5, [0.5, 0.4, 0.3], review_below=None)
    assert not plain["needs_review"].any()  # the in-distribution router flags by abstention only
    hand = [a, a, b, c[:2]]
    scored = score_routing(hand, np.ones(4, bool), {"agreement": out, "router": {}}, [a, a, b, c])
    s = scored["agreement"]
    assert set(scored) == {"agreement"} and s["errors"] == 1 and s["errors_flagged_share"] == 0.0  # row 1 wrong
    assert s["diff_points"] < 0  # stage 2 had row 1 right
    assert s["routed_share"] == 0.5 and s["review_share"] == 0.5


def test_bad_settings_are_named():
    from pipelines.adapt.shift_routing import BadShiftRouting, ShiftRoutingConfig, check_shift_routing

    with pytest.raises(BadShiftRouting, match="budget"):
        check_shift_routing(ShiftRoutingConfig(budget=1.5))
    with pytest.raises(BadShiftRouting, match="review_precision"):
        check_shift_routing(ShiftRoutingConfig(review_precision=0))


# ---- the adapted classifier on the sample ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def routed_classifier(env):
    from pipelines.adapt.adapted import AdaptConfig, adapt_shop_classifier

    return adapt_shop_classifier(env["tables"], env["new"], "flipkart", env["taxonomy"], env["root"] / "routing-clf",
                                 cfg=AdaptConfig(augment_titles=False, fusion="late", self_train_rounds=1), modalities=("lexical",), max_epochs=15,
                                 threads=1)


def _classify(classifier, new):
    return classifier.classify(new["title"].tolist(), new["description"].tolist())


def test_adapted_classifier_routes_on_the_threshold_it_computed(env, routed_classifier):
    from dataclasses import replace

    from pipelines.adapt.shift_routing import route
    from pipelines.inference.features import embedding_texts, lexical_features

    clf, new = routed_classifier, env["new"]
    assert clf.stage1 is not None and 0 <= clf.route_below <= 1 + 1e-5 and 0 <= clf.review_below <= 1
    out = _classify(clf, new)
    assert {"category_path", "full_path", "conf_L1", "conf_L3", "stage", "needs_review", "alternatives"} <= set(out)
    assert len(out) == len(new) and set(out["stage"]) <= {1, 2}
    assert all(env["taxonomy"].is_valid_path(p) for p in out["full_path"])
    assert all(tuple(f[:len(c)]) == tuple(c) for c, f in zip(out["category_path"], out["full_path"]))
    # the share sent to stage 2 is the one the threshold gives on the shop's products
    assert float((out["stage"] == 2).mean()) == pytest.approx(clf.info["routing"]["routed_share"])
    # products stage 1 kept differ from stage 2 alone on at most the budget's share of the shop
    alone = _classify(replace(clf, stage1=None), new)
    kept = (out["stage"] == 1).to_numpy()
    differ = np.array([tuple(a) != tuple(b) for a, b in zip(out["full_path"], alone["full_path"])])
    assert differ[kept].sum() <= math.floor(clf.info["routing"]["budget"] * len(new))
    assert not differ[~kept].any()  # routed products get exactly stage 2's answer
    # a threshold in the middle of stage 1's confidences: both stages answer, stage 2 only on the routed ones
    lex, ok = lexical_features(clf.lexical, embedding_texts(new["title"], new["description"]))
    p1 = clf.stage1.predict({"lexical": lex}, {"lexical": ok})
    mid = replace(clf, route_below=float(np.median(p1.prob)))
    both = _classify(mid, new)
    assert (both["stage"] == 2).tolist() == route(p1.prob, mid.route_below).tolist()
    assert set(both["stage"]) == {1, 2}
    routed = (both["stage"] == 2).to_numpy()
    assert all(tuple(a) == tuple(b) for a, b in zip(both["full_path"][routed], alone["full_path"][routed]))
    disagree = np.array([tuple(a) != tuple(b) for a, b in zip(p1.paths, both["full_path"])])
    assert both["needs_review"].to_numpy()[routed & disagree].all()  # routed and the stages disagree: flagged


def test_adapted_classifier_without_routing_answers_with_stage_2(env, tmp_path):
    from pipelines.adapt.adapted import AdaptConfig, adapt_shop_classifier

    clf = adapt_shop_classifier(env["tables"], env["new"].head(200), "flipkart", env["taxonomy"], tmp_path,
                                cfg=AdaptConfig(augment_titles=False, fusion="late", self_train_rounds=0), modalities=("lexical",), max_epochs=2,
                                threads=1, routing=None)
    assert clf.stage1 is None and "routing" not in clf.info
    assert set(_classify(clf, env["new"].head(20))["stage"]) == {1}  # the single-stage contract


# ---- the measurement ---------------------------------------------------------------------------------------------

def test_measurement_scores_routing_after_predictions_within_the_budget(env, tmp_path, monkeypatch):
    import pipelines.ingest.mapping as mapping
    from pipelines.adapt import measure, shift_routing

    events, captured = [], {}
    real = {"load": mapping.load_mapping, "predict": measure.predict_variants,
            "route": shift_routing.shift_routing_outcomes, "score": shift_routing.score_routing}

    def load(path, *a, **k):
        events.append(("mapping", path.stem))
        return real["load"](path, *a, **k)

    def predict(*a, **k):
        events.append("predicted")
        captured["found"], captured["primary"] = out = real["predict"](*a, **k)
        return out

    def routes(*a, **k):
        events.append("routed")
        captured["routes"] = out = real["route"](*a, **k)
        return out

    def score(*a, **k):
        events.append("scored")
        return real["score"](*a, **k)

    monkeypatch.setattr(mapping, "load_mapping", load)
    monkeypatch.setattr(measure, "predict_variants", predict)
    monkeypatch.setattr(shift_routing, "shift_routing_outcomes", routes)
    monkeypatch.setattr(shift_routing, "score_routing", score)
    no_curves = {"label_fractions": ()} if "label_fractions" in measure.AdaptMeasureConfig.__dataclass_fields__ else {}
    cfg = measure.AdaptMeasureConfig(fusions=("late",), centres=((),), rounds=1, augment=(False,), max_epochs=10, **no_curves)  # routing
    cell = measure.measure_adaptation_holdout("flipkart", ["hm", "myntra", "flipkart"], env["settings"], tmp_path,
                                              cfg, modalities=("lexical",))
    held_out = min(i for i, e in enumerate(events) if e == ("mapping", "flipkart"))
    assert events.index("predicted") < events.index("routed") < held_out < events.index("scored")
    routing = cell["routing"]
    assert {"in_distribution", "agreement", "router"} <= set(routing)
    for name in ("in_distribution", "agreement"):
        r = routing[name]
        assert 0 <= r["routed_share"] <= 1 and 0 <= r["review_share"] <= 1 and r["n"] == cell["variants"][
            "self-train-x1"]["test"]["n"]
        assert r["hF1_stage2"] == cell["variants"]["self-train-x1"]["test"]["hF1"]
    # on the shop's products, the agreement router's answer differs from stage 2 alone within the budget
    stage2 = [tuple(p) for p in captured["primary"].new_prediction.paths]
    answer = captured["routes"]["agreement"]
    differ = np.array([a != b for a, b in zip(answer["paths"], stage2)])
    assert differ.sum() <= math.floor(routing["router"]["budget"] * len(stage2))
    assert not differ[answer["stage"] == 2].any()
    if not differ.any():
        assert routing["agreement"]["diff_points"] == 0.0
    summary = measure.summarise_adaptation([cell], cfg)
    assert set(summary["routing"]["met"]) == {"routed_within_points", "review_holds_errors"}
    assert summary["met"]["routed_within_points"] == (routing["agreement"]["diff_points"] >= -0.2)
