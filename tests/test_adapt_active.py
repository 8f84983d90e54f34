"""The labelling curves of issue 18 (pipelines/adapt/active.py): which groups the active loop asks a person to label,
the random few-shot curve beside it, that only the asked groups' labels reach training, and the curves inside
`prodcat adapt measure`. Real sample data (hm + myntra labelled, flipkart new), real small lexical models."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from pipelines.settings import MAPPINGS_DIR, SAMPLE_DIR, Settings

FRACTIONS = (0.005, 0.01, 0.02)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """flipkart as the new shop (read without its mapping), its adaptation's self-training round, its hand labels
    kept aside for the checks."""
    from pipelines.adapt.adapted import AdaptConfig, adaptation_rounds
    from pipelines.adapt.views import build_adapt_views
    from pipelines.ingest.mapping import load_mapping
    from pipelines.onboard.evaluate import hand_labels
    from pipelines.onboard.products import read_shop_unlabelled
    from pipelines.onboard.training import load_training_shops
    from pipelines.taxonomy.tree import load_taxonomy

    root = tmp_path_factory.mktemp("active")
    settings = Settings(data_root=SAMPLE_DIR, work_dir=root / "work", quiet=True, threads=1)
    taxonomy = load_taxonomy()
    tables = load_training_shops(["hm", "myntra"], settings.raw_dir, taxonomy, MAPPINGS_DIR)
    new = read_shop_unlabelled("flipkart", settings.raw_dir("flipkart"), verify_images=False).products
    views = build_adapt_views(tables, new, "flipkart", None, ("lexical",))
    start = list(adaptation_rounds(views, AdaptConfig(augment_titles=False, fusion="late", centre=(), self_train_rounds=1), taxonomy, root / "adapt",
                                   seed=0, threads=1, max_epochs=8))[-1]
    truth = hand_labels([list(n) for n in new["native_path"]], load_mapping(MAPPINGS_DIR / "flipkart.csv", taxonomy))
    return {"root": root, "settings": settings, "taxonomy": taxonomy, "new": new, "views": views, "start": start,
            "truth": truth["hand_path"].tolist()}


@pytest.fixture(scope="module")
def curves(env):
    """Both strategies' loops on flipkart, each with its own recording oracle and every training's rows captured."""
    import pipelines.adapt.adapted as adapted
    from pipelines.adapt.active import HandLabelOracle, label_curve

    trained, real = [], adapted._train_stage

    def recording(features, available, labels, split, **kw):
        trained.append({"labels": list(labels), "split": np.asarray(split).copy()})
        return real(features, available, labels, split, **kw)

    candidates = (env["new"]["split"].astype(str) == "train").to_numpy()
    out = {}
    adapted._train_stage = recording
    try:
        for strategy in ("random", "active"):
            oracle = HandLabelOracle("flipkart", env["new"], env["taxonomy"])
            start = len(trained)
            points = list(label_curve(env["views"], env["start"], candidates, oracle, FRACTIONS, strategy,
                                      env["taxonomy"], env["root"] / "curves", seed=0, threads=1, max_epochs=8))
            out[strategy] = {"points": points, "oracle": oracle, "trained": trained[start:]}
    finally:
        adapted._train_stage = real
    return out


def _group_uncertainty(prediction, groups) -> dict:
    from pipelines.onboard.label_first import weakest_confidence

    table = pd.DataFrame({"g": groups, "u": 1 - weakest_confidence(prediction.conf)})
    return table.groupby("g")["u"].max().to_dict()


def test_the_oracle_is_asked_only_for_picked_train_split_groups_and_sets_grow_nested(env, curves):
    from pipelines.adapt.active import candidate_groups

    groups = env["new"]["group_id"].astype(str).to_numpy()
    test_groups = set(groups[(env["new"]["split"].astype(str) == "test").to_numpy()])
    pool = candidate_groups(groups, (env["new"]["split"].astype(str) == "train").to_numpy())
    assert len(pool) > 500 and not set(pool) & test_groups
    for strategy, run in curves.items():
        points, asked = run["points"], run["oracle"].asked
        assert asked == [g for p in points for g in p["picked"]], strategy  # only the newly picked, each once
        assert len(set(asked)) == len(asked) and set(asked) <= set(pool) and not set(asked) & test_groups
        sizes = [p["groups_labelled"] for p in points]
        assert sizes == [math.ceil(f * len(pool)) for f in FRACTIONS] and sizes[0] < sizes[-1]
        for small, large in zip(points, points[1:]):
            assert set(small["groups"]) < set(large["groups"])  # nested
            assert small["groups"] == {g: large["groups"][g] for g in small["groups"]}  # an answer is kept
        assert points[-1]["products_labelled"] == int(np.isin(groups, list(points[-1]["groups"])).sum())


def test_active_picks_uncertain_diverse_groups_from_the_current_model(env, curves):
    from pipelines.adapt.active import candidate_groups, pick_uncertain_groups

    groups = env["new"]["group_id"].astype(str).to_numpy()
    pool = candidate_groups(groups, (env["new"]["split"].astype(str) == "train").to_numpy())
    active, random = curves["active"]["points"], curves["random"]["points"]
    assert set(active[-1]["groups"]) != set(random[-1]["groups"])
    unc = _group_uncertainty(env["start"].new_prediction, groups)
    first = active[0]["picked"]
    assert np.mean([unc[g] for g in first]) > np.mean([unc[g] for g in random[-1]["groups"]])
    assert min(unc[g] for g in first) >= np.median([unc[g] for g in pool])  # among the most uncertain groups
    # spread: the first picks cover as many predicted level-2 nodes as they can
    nodes = {g: tuple(p)[:2] for g, p in zip(groups, env["start"].new_prediction.paths)}
    assert len({nodes[g] for g in first}) == len(first)
    # a real loop: each later step picks from the model the previous step trained, not from the start model
    for before, step in zip(active, active[1:]):
        again = pick_uncertain_groups(before["prediction"], groups, pool, len(step["picked"]),
                                      labelled=before["groups"])
        assert again == step["picked"]
    stale = pick_uncertain_groups(env["start"].new_prediction, groups, pool, len(active[-1]["picked"]),
                                  labelled=active[-2]["groups"])
    assert stale != active[-1]["picked"]


def test_training_gets_labels_only_for_picked_groups(env, curves):
    groups = env["new"]["group_id"].astype(str).to_numpy()
    start = env["start"]
    for strategy, run in curves.items():
        assert len(run["trained"]) == len(FRACTIONS)
        for point, seen in zip(run["points"], run["trained"]):
            rows = np.flatnonzero(point["rows"])
            new_labels = seen["labels"][len(seen["labels"]) - len(rows):]
            assert (seen["split"][len(seen["labels"]) - len(rows):] == "train").all()
            assert "val" in set(seen["split"])  # early stopping on the training shops' val rows
            for i, label in zip(rows, new_labels):
                g = groups[i]
                if g in point["groups"]:
                    assert label == point["groups"][g] != ()
                else:  # an unpicked group: only its pseudo-label, never its hand label
                    assert start.pseudo_rows[i] and label == start.pseudo_labels[i]
            unpicked_pseudo_wrong = [i for i in np.flatnonzero(start.pseudo_rows)
                                     if groups[i] not in point["groups"] and env["truth"][i]
                                     and tuple(start.pseudo_labels[i]) != env["truth"][i]]
            assert unpicked_pseudo_wrong and all(point["labels"][i] != env["truth"][i] for i in unpicked_pseudo_wrong)
            # a labelled group's rows carry the person's answer, its pseudo-label is dropped
            answered = [i for i in range(len(groups)) if point["groups"].get(groups[i])]
            assert answered and all(point["rows"][i] for i in answered)


def test_group_picker_core_is_label_first_order_with_near_duplicates_held_back():
    from pipelines.adapt.active import pick_random_groups, pick_uncertain_groups
    from pipelines.inference.calibration import Prediction
    from pipelines.onboard.label_first import pick_label_first

    a, b = ("Clothing", "Tops", "T-shirts"), ("Footwear", "Shoes", "Sneakers")
    paths = [a, a, a, b, b, a]
    conf = np.array([[0.9, 0.5, 0.9], [0.9, 0.2, 0.9], [0.9, 0.6, 0.9], [0.9, 0.7, np.nan], [0.9, 0.9, 0.9],
                     [0.9, 0.3, 0.9]])
    groups = ["g1", "g1", "g2", "g3", "g4", "g5"]
    pred = Prediction(paths, conf, conf.min(1))
    pool = ["g1", "g2", "g3", "g4", "g5"]
    # g1 (0.8 via its second product), then node Footwear's g3, then g5, g2; g4 last
    assert pick_uncertain_groups(pred, groups, pool, 5) == ["g1", "g3", "g5", "g4", "g2"]
    assert pick_uncertain_groups(pred, groups, pool, 2, labelled={"g1": a}) == ["g5", "g3"]
    # the same order as onboarding's label-first list (one shared core)
    table = pd.DataFrame({"product_id": [f"p{i}" for i in range(6)], "model_path": [" > ".join(p) for p in paths],
                          **{f"conf_L{l + 1}": conf[:, l] for l in range(3)}})
    first = pick_label_first(table, pd.DataFrame({"group_id": groups}), k=5)
    assert first["group_id"].tolist() == ["g1", "g3", "g5", "g4", "g2"]
    # g5 says what g1 says: held back until the distinct groups are taken
    vectors = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1], [1, 0.01, 0]], np.float32)
    assert pick_uncertain_groups(pred, groups, pool, 3, vectors=vectors) == ["g1", "g3", "g4"]
    assert pick_uncertain_groups(pred, groups, pool, 5, vectors=vectors)[-1] == "g5"
    # random: seeded, nested
    many = [f"g{i}" for i in range(100)]
    assert pick_random_groups(many, 10, seed=3) == pick_random_groups(many, 30, seed=3)[:10]
    assert pick_random_groups(many, 10, seed=3) != pick_random_groups(many, 10, seed=4)


def test_label_fractions_parse_and_refuse_bad_values():
    from pipelines.adapt.active import BadLabelFractions, parse_label_fractions

    assert parse_label_fractions("0.05, 0.005,0.01") == (0.005, 0.01, 0.05)
    assert parse_label_fractions("") == ()
    for bad in ("0", "1.5", "one"):
        with pytest.raises(BadLabelFractions):
            parse_label_fractions(bad)


def test_measurement_writes_scored_curves_and_the_report_table(env, tmp_path):
    from pipelines.adapt.measure import AdaptMeasureConfig, measure_adaptation

    md = tmp_path / "benchmark.md"
    md.write_text("# Benchmark\n")
    cfg = AdaptMeasureConfig(fusions=("late",), centres=((),), rounds=1, max_epochs=2, label_fractions=(0.01, 0.02))
    measure_adaptation(env["settings"], tmp_path / "out", holdouts=["flipkart"], benchmark_md=md, cfg=cfg,
                       modalities=("lexical",))
    data = json.loads((tmp_path / "out" / "adaptation.json").read_text())
    cell = data["shops"]["flipkart"]
    curves, test_n = cell["curves"], cell["variants"]["self-train-x1"]["test"]["n"]
    for strategy in ("random", "active"):
        points = curves[strategy]
        assert [p["fraction"] for p in points] == [0.01, 0.02]
        assert [p["groups_labelled"] for p in points] == [math.ceil(f * curves["candidate_groups"])
                                                          for f in (0.01, 0.02)]
        assert all(p["test"]["n"] == test_n and 0 < p["test"]["hF1"] <= 1 for p in points)
    assert curves["oracle_questions"] == 2 * curves["active"][-1]["groups_labelled"]
    summary = data["summary"]["curves"]
    assert summary["mean_test_hF1"]["active"]["0.01"] == curves["active"][0]["test"]["hF1"]
    assert data["summary"]["met"]["active_1pct_mean_test_hF1"] == (summary["mean_test_hF1"]["active"]["0.01"] >= 0.95)
    text = md.read_text()
    assert "| labelled groups % | random mean | active mean | flipkart random / active (groups) |" in text
    row = f"| 1 | {100 * summary['mean_test_hF1']['random']['0.01']:.2f} | "
    assert row in text and "| 2 |" in text


def test_no_curves_when_label_fractions_are_empty(env, tmp_path):
    from pipelines.adapt.measure import AdaptMeasureConfig, measure_adaptation_holdout

    cfg = AdaptMeasureConfig(fusions=("late",), centres=((),), rounds=0, max_epochs=1, label_fractions=())
    cell = measure_adaptation_holdout("flipkart", ["hm", "myntra", "flipkart"], env["settings"], tmp_path, cfg,
                                      modalities=("lexical",))
    assert "curves" not in cell
