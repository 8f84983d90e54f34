"""Training-time augmentation of title style (issue 18, pipelines/adapt/augment.py): the variants on real sample
titles, where the restyled copies land, that their lexical expert scores do not come from a model that trained on
their source, and an adapted classifier trained with them. Real sample data, real (small) models."""
import re

import numpy as np
import pytest

from pipelines.settings import MAPPINGS_DIR, SAMPLE_DIR, Settings


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """hm + myntra (labelled) as the training shops, flipkart's products read without its mapping as the new shop,
    and the lexical views built with two restyled copies per labelled train row."""
    from pipelines.adapt.views import build_adapt_views
    from pipelines.onboard.products import read_shop_unlabelled
    from pipelines.onboard.training import load_training_shops
    from pipelines.taxonomy.tree import load_taxonomy

    root = tmp_path_factory.mktemp("augment")
    settings = Settings(data_root=SAMPLE_DIR, work_dir=root / "work", quiet=True, threads=1)
    taxonomy = load_taxonomy()
    tables = load_training_shops(["hm", "myntra"], settings.raw_dir, taxonomy, MAPPINGS_DIR)
    new = read_shop_unlabelled("flipkart", settings.raw_dir("flipkart"), verify_images=False).products
    views = build_adapt_views(tables, new, "flipkart", None, ("lexical",), augment=2)
    return {"root": root, "settings": settings, "taxonomy": taxonomy, "tables": tables, "new": new, "views": views,
            "flipkart": load_training_shops(["flipkart"], settings.raw_dir, taxonomy, MAPPINGS_DIR)["flipkart"]}


# ---- the styles, on real sample titles ---------------------------------------------------------------------------

def test_brand_styles_on_real_titles(env):
    from pipelines.adapt.augment import brand_first, brand_of, restyle

    hm = env["tables"]["hm"].iloc[0]  # H&M never names its brand in the title
    moved = restyle(hm["title"], hm["description"], brand_of(hm["title"], hm["brand"]), "brand_first")
    assert moved == (f"H&M {hm['title']}", hm["description"])  # added where absent
    assert restyle(hm["title"], hm["description"], "H&M", "brand_removed") is None  # nothing to remove

    myntra = env["tables"]["myntra"]  # no brand column: the words before the gender word
    row = myntra[myntra["title"] == "Pitaraa Women Bronze Beaded Bracelet"].iloc[0]
    assert brand_of(row["title"], row["brand"]) == "Pitaraa"
    assert restyle(row["title"], "", "Pitaraa", "brand_removed") == ("Women Bronze Beaded Bracelet", "")
    assert restyle(row["title"], "", "Pitaraa", "brand_first") is None  # already leads with it

    fk = env["flipkart"]  # brand named, but not first: moved to the front, every other word kept in order
    def named(t, b):  # whole words, any case
        return len(re.findall(r"(?<!\w)" + re.escape(b) + r"(?!\w)", t, flags=re.IGNORECASE))

    inside = [(t, b) for t, b in zip(fk["title"], fk["brand"].fillna(""))
              if b and named(t, b) and not t.lower().startswith(b.lower())]
    assert inside, "the sample has flipkart titles naming the brand after the first word"
    for title, brand in inside:
        new = brand_first(title, brand)
        assert new.startswith(brand + " ") and named(new, brand) == 1, (title, new)
        assert new.split()[-1] == title.split()[-1]


def test_short_keeps_the_head_noun_and_no_description_drops_only_the_description(env):
    from pipelines.adapt.augment import recase, restyle

    title = "Just Natural Unisex Charcoal Rain Jacket"
    assert restyle(title, "", "Just Natural", "short", short_words=3) == ("Just Natural Jacket", "")
    assert restyle("Women Clogs", "", "", "short") is None  # already short
    hm = env["tables"]["hm"].iloc[0]
    assert restyle(hm["title"], hm["description"], "", "no_description") == (hm["title"], "")
    assert restyle(title, "", "", "no_description") is None  # nothing to drop
    assert recase("KAJCI Embroidered women's waistcoat", "title") == "Kajci Embroidered Women's Waistcoat"
    assert recase(title, "upper") == title.upper() and recase(title, "lower") == title.lower()


def test_variants_are_deterministic_distinct_and_seeded(env):
    from pipelines.adapt.augment import AugmentConfig, title_variants
    from pipelines.features.store import text_of

    rows = env["tables"]["myntra"].head(40).to_dict("records") + env["tables"]["hm"].head(40).to_dict("records")
    cfg = AugmentConfig(variants=3)
    first = [title_variants(r["title"], r["description"], r["brand"], r["product_id"], cfg) for r in rows]
    again = [title_variants(r["title"], r["description"], r["brand"], r["product_id"], cfg)
             for r in reversed(rows)][::-1]
    assert first == again  # the same product, the same copies, in any order
    other_seed = [title_variants(r["title"], r["description"], r["brand"], r["product_id"], AugmentConfig(3, seed=1))
                  for r in rows]
    assert other_seed != first
    for r, variants in zip(rows, first):
        assert 1 <= len(variants) <= 3
        texts = [text_of(t, d).lower() for _, t, d in variants]
        assert len(set(texts)) == len(texts) and text_of(r["title"], r["description"]).lower() not in texts
        assert len({s.split("+")[0] for s, _, _ in variants}) == len(variants)  # one copy per style


# ---- where the copies land ---------------------------------------------------------------------------------------

def test_copies_are_train_rows_of_their_source_group_and_label_never_of_val_or_test(env):
    from pipelines.adapt.augment import STYLES, brand_of, restyle
    from pipelines.adapt.views import training_side

    views, aug = env["views"], env["views"].augmented
    rows = training_side(env["tables"])
    groups = (rows["platform"].astype(str) + ":" + rows["group_id"].astype(str)).to_numpy()
    fit = views.mapped & (views.split == "train")
    assert len(aug.source) > fit.sum()  # about two copies a row
    assert set(aug.split) == {"train"}
    assert fit[aug.source].all()  # only labelled train rows are copied ...
    uncopied = sorted(set(np.flatnonzero(fit)) - set(aug.source))  # only where no style changes the title
    assert len(uncopied) < 0.05 * fit.sum()
    for i in uncopied:
        r = rows.iloc[i]
        brand = brand_of(r["title"], r["brand"])
        assert all(restyle(r["title"], r["description"], brand, style) is None for style in STYLES), r["title"]
    assert not np.isin(aug.source, np.flatnonzero(views.split != "train")).any()
    assert (aug.groups == groups[aug.source]).all() and (aug.shop == views.train_shop[aug.source]).all()
    assert all(aug.labels[k] == views.labels[i] for k, i in enumerate(aug.source))
    val_test_groups = set(groups[np.isin(views.split, ["val", "test"])])
    assert not val_test_groups & set(aug.groups)  # grouped splits: no copy shares a group with val/test
    assert aug.features["lexical"].shape == (len(aug.source), views.train_features["lexical"].shape[1])
    assert aug.available["lexical"].all()


def test_views_without_augmentation_compute_no_copies_and_refuse_the_ingredient(env, tmp_path):
    from pipelines.adapt.adapted import AdaptConfig, adaptation_rounds
    from pipelines.adapt.augment import NoAugmentedRows
    from pipelines.adapt.views import AdaptViews

    plain = AdaptViews(**{**env["views"].__dict__, "augmented": None})
    with pytest.raises(NoAugmentedRows, match="augment"):
        next(adaptation_rounds(plain, AdaptConfig(self_train_rounds=0, augment_titles=True, fusion="late"), env["taxonomy"],
                               tmp_path, threads=1, max_epochs=1))
    assert not (tmp_path / "round0").exists()


# ---- no leak through the stacked expert --------------------------------------------------------------------------

def test_a_copy_is_scored_by_its_sources_fold_model_not_by_an_expert_that_saw_it(env):
    from pipelines.adapt.augment import fold_expert_scores
    from pipelines.adapt.views import training_side
    from pipelines.features import lexical
    from pipelines.inference.features import embedding_texts

    views, aug = env["views"], env["views"].augmented
    rows = training_side(env["tables"])
    texts = embedding_texts(rows["title"], rows["description"])
    groups = (rows["platform"].astype(str) + ":" + rows["group_id"].astype(str)).tolist()
    fit = np.flatnonzero(views.mapped & (views.split == "train"))
    dim = views.space["svd"][-2].n_components
    # the rule: a copy with its source's very text gets exactly its source's out-of-fold scores (the same folds,
    # the same fold models as lexical.fit_expert) ...
    same = fold_expert_scores([texts[i] for i in fit], [views.labels[i] for i in fit], [groups[i] for i in fit],
                              [texts[i] for i in fit], np.arange(len(fit)))
    oof = views.train_features["lexical"][fit, dim:]
    np.testing.assert_allclose(same, oof, atol=1e-4)
    # ... and the copies in the views follow it: their scores for their own label sit well below what the full
    # expert, which trained on their sources, gives the same texts
    classes = list(views.space["expert"].classes_)
    own = np.array([classes.index(" > ".join(p)) for p in aug.labels])
    copy_scores = aug.features["lexical"][np.arange(len(own)), dim + own]
    full = lexical.expert_scores(views.space["expert"], aug.texts)[np.arange(len(own)), own]
    assert full.mean() > copy_scores.mean() + 0.2, (full.mean(), copy_scores.mean())
    oof_own = oof[np.searchsorted(fit, aug.source), own]
    assert abs(copy_scores.mean() - oof_own.mean()) < abs(full.mean() - oof_own.mean())
    # and, checked independently: the copies of the first fold's rows carry the scores of a model fitted on the
    # other folds (which never saw their sources), the other copies do not
    from sklearn.model_selection import GroupKFold

    from pipelines.classify.baselines import tfidf_svm_model

    y = np.array([" > ".join(views.labels[i]) for i in fit])
    train_rows, fold0 = next(GroupKFold(n_splits=5).split(fit, y, [groups[i] for i in fit]))
    model = tfidf_svm_model(0).fit([texts[fit[i]] for i in train_rows], y[train_rows])
    cols = dim + np.array([classes.index(c) for c in model.classes_])
    unseen = dim + np.array([j for j, c in enumerate(classes) if c not in set(model.classes_)], int)
    in_fold0 = np.isin(aug.source, fit[fold0])
    assert 0 < in_fold0.sum() < len(in_fold0)
    expected = model.decision_function(aug.texts)
    np.testing.assert_allclose(aug.features["lexical"][np.ix_(in_fold0, cols)], expected[in_fold0], atol=1e-4)
    assert (aug.features["lexical"][np.ix_(in_fold0, unseen)] == -2.0).all()  # a class the fold never saw
    assert np.abs(aug.features["lexical"][np.ix_(~in_fold0, cols)] - expected[~in_fold0]).max() > 0.1


# ---- the ingredient in training and in the measurement ------------------------------------------------------------

def test_augment_titles_trains_on_the_copies_and_classifies(env, tmp_path):
    from pipelines.adapt.adapted import AdaptConfig, adaptation_rounds, adapted_classifier

    views = env["views"]
    cfg = AdaptConfig(self_train_rounds=0, augment_titles=True, fusion="late")
    assert cfg.name == "augment-titles" and AdaptConfig(augment_titles=True, fusion="late").name.endswith(
        ", augment-titles")
    args = dict(seed=0, threads=1, max_epochs=2)
    plain = next(adaptation_rounds(views, AdaptConfig(augment_titles=False, fusion="late", self_train_rounds=0), env["taxonomy"],
                                   tmp_path / "p", **args))
    (step,) = list(adaptation_rounds(views, cfg, env["taxonomy"], tmp_path / "a", **args))
    assert step.fitted.info["train_rows"] == plain.fitted.info["train_rows"] + len(views.augmented.source)
    classifier = adapted_classifier(views, step.fitted, cfg, None)
    out = classifier.classify(env["new"]["title"].head(20).tolist(), env["new"]["description"].head(20).tolist())
    assert len(out) == 20 and all(env["taxonomy"].is_valid_path(p) for p in out["full_path"])
    assert classifier.info["adaptation"] == "augment-titles"


def test_augment_titles_with_centred_text_vectors(env, tmp_path):
    """The text view: copies embedded through the same TextEmbedder (store), centred by their source shop's mean."""
    from pipelines.adapt.adapted import AdaptConfig, adaptation_rounds
    from pipelines.adapt.augment import AugmentConfig, augmented_features
    from pipelines.adapt.views import build_adapt_views
    from pipelines.onboard.embedding import TextEmbedder

    tables = {shop: t.head(150) for shop, t in env["tables"].items()}
    embed = TextEmbedder.from_settings(env["settings"])
    views = build_adapt_views(tables, env["new"].head(100), "flipkart", embed, ("lexical", "text"),
                              augment=AugmentConfig(variants=1))
    aug = views.augmented
    assert aug.features["text"].shape == (len(aug.source), embed.dim) and aug.available["text"].all()
    np.testing.assert_allclose(aug.features["text"], embed(aug.texts)[0], atol=1e-6)  # the same embedder
    feats, _, _ = augmented_features(views, ("text",))
    np.testing.assert_allclose(np.linalg.norm(feats["text"], axis=1), 1.0, atol=1e-4)  # renormalised after centring
    assert not np.allclose(feats["text"], aug.features["text"])
    (step,) = list(adaptation_rounds(views, AdaptConfig(("text",), 0, augment_titles=True, fusion="late"), env["taxonomy"],
                                     tmp_path, seed=0, threads=1, max_epochs=2))
    assert len(step.new_prediction.paths) == 100


def test_measurement_crosses_augmentation_with_centring_and_rounds(env, tmp_path):
    from pipelines.adapt.measure import AdaptMeasureConfig, parse_augment, predict_variants, variant_configs

    assert parse_augment("off,on") == (False, True) and parse_augment("on") == (True,)
    with pytest.raises(ValueError, match="--augment"):
        parse_augment("maybe")
    cfg = AdaptMeasureConfig(fusions=("late",), centres=((),), rounds=0, augment=(False, True), max_epochs=1)
    assert [v.name for v in variant_configs(cfg)] == ["none", "augment-titles"]
    assert AdaptMeasureConfig(fusions=("late",), centres=((),), rounds=1, augment=(True,)).primary.augment_titles
    found, _ = predict_variants(env["views"], cfg, env["taxonomy"], tmp_path, env["settings"])
    assert set(found) == {"none", "augment-titles"}
    assert found["augment-titles"]["info"]["train_rows"] > found["none"]["info"]["train_rows"]
    assert (tmp_path / "no-centre-augment-titles" / "round0").exists()


def test_cli_takes_the_augmentation_settings_of_the_ablation(tmp_path, capsys):
    from orchestration import cli
    from orchestration.cli_parser import build_parser
    from pipelines.adapt.measure import parse_augment

    args = build_parser(cli).parse_args(["adapt", "measure", "--out", "x", "--augment", "off,on"])
    assert args.fn is cli.cmd_adapt_measure and parse_augment(args.augment) == (False, True)
    assert parse_augment(build_parser(cli).parse_args(["adapt", "measure", "--out", "x"]).augment) == (False, True)
    out = tmp_path / "m"
    assert cli.main(["adapt", "measure", "--out", str(out), "--augment", "sometimes", "--data", "sample"]) == 2
    assert "--augment 'sometimes'" in capsys.readouterr().err and not out.exists()  # refused before measuring
