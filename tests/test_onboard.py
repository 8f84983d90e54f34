"""Onboarding a new shop (issue 17): out-of-scope detection, proposed mappings, the report, accepting a proposal,
and the leave-one-platform-out measurement's honest protocol. Real sample data, real (small) models."""
import csv
import json

import numpy as np
import pandas as pd
import pytest

from pipelines.settings import BENCHMARK_DIR, DATA, MAPPINGS_DIR, SAMPLE_DIR, Settings

GOOGLE = BENCHMARK_DIR / "reference" / "google_product_taxonomy-with-ids.en-US.txt"
FEED = DATA / "feeds" / "hm" / "google.tsv"


def google_subset(root):
    """Google's product taxonomy down to its third level (about a fifth of its names: quick to embed), or None."""
    if not GOOGLE.exists():
        return None
    path = root / "google_taxonomy_l3.txt"
    path.write_text("\n".join(line for line in GOOGLE.read_text().splitlines() if line.count(">") < 3))
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """hm + myntra as the training shops (flipkart plays the new shop): a lexical classifier and the detector."""
    from pipelines.inference.features import embedding_texts
    from pipelines.onboard.classifier import fit_shop_classifier
    from pipelines.onboard.embedding import TextEmbedder
    from pipelines.onboard.scope import build_anchors, fit_scope_detector
    from pipelines.onboard.training import load_training_shops, mapped_rows
    from pipelines.taxonomy.tree import load_taxonomy

    root = tmp_path_factory.mktemp("onboard")
    settings = Settings(data_root=SAMPLE_DIR, work_dir=root / "work", quiet=True)
    taxonomy = load_taxonomy()
    embed = TextEmbedder.from_settings(settings)
    training = load_training_shops(["hm", "myntra"], settings.raw_dir, taxonomy, MAPPINGS_DIR)
    classifier = fit_shop_classifier(mapped_rows(training), taxonomy, root / "model", modalities=("lexical",),
                                     max_epochs=12)
    vectors = {s: embed(embedding_texts(t["title"], t["description"]))[0] for s, t in training.items()}
    anchors = build_anchors(taxonomy, training, google_subset(root))
    detector = fit_scope_detector(anchors, embed, training, vectors)
    return {"root": root, "settings": settings, "taxonomy": taxonomy, "embed": embed, "classifier": classifier,
            "detector": detector, "training": training}


@pytest.fixture(scope="module")
def flipkart_onboarded(env):
    """The sample's Flipkart export onboarded as a new shop: unlabelled, then classified, flagged, proposed."""
    from pipelines.onboard.products import read_shop_unlabelled
    from pipelines.onboard.run import onboard_products

    export = read_shop_unlabelled("flipkart", SAMPLE_DIR / "flipkart", verify_images=False)
    predictions, proposal = onboard_products(export.products, env["classifier"], env["detector"], env["embed"])
    return {"export": export, "predictions": predictions, "proposal": proposal}


def test_detector_flags_flipkart_non_fashion_above_chance(env, flipkart_onboarded):
    """Threshold chosen on hm + myntra validation rows only; Flipkart's home/electronics/... rows (hand-mapped
    `unmapped: out of scope`) score above its fashion rows and are flagged far more often."""
    from pipelines.ingest.mapping import load_mapping
    from pipelines.onboard.evaluate import score_scope_detection

    det, pred = env["detector"], flipkart_onboarded["predictions"]
    assert set(det.info["training_shops"]) == {"hm", "myntra"}
    hand = load_mapping(MAPPINGS_DIR / "flipkart.csv", env["taxonomy"])
    native = flipkart_onboarded["export"].products["native_path"].tolist()
    res = score_scope_detection(pred["scope_score"], pred["out_of_scope"], native, hand)
    assert res["out_of_scope"] > 100 and res["in_scope"] > 500
    assert res["auroc"] > 0.8
    assert res["out_of_scope_recall"] > 3 * res["in_scope_flag_rate"]
    assert res["out_of_scope_recall"] > 0.5


def test_proposal_covers_native_categories_and_maps_clothing(flipkart_onboarded):
    prop = flipkart_onboarded["proposal"]
    assert list(prop.columns[:3]) == ["native_path", "category_path", "unmapped_reason"]
    decided = prop["category_path"].map(bool)
    assert (decided ^ (prop["unmapped_reason"] != "")).all()  # exactly one of path / reason on every row
    assert (prop["support"] >= 1).all() and prop["agreement"].between(0, 1).all()
    clothing = prop[prop["native_path"] == "Clothing"].iloc[0]
    assert clothing["category_path"][0] == "Clothing" and clothing["support"] > 200
    oos = prop[prop["unmapped_reason"].str.startswith("out of scope")]
    assert {"Home Furnishing", "Kitchen & Dining"} & set(oos["native_path"])


def test_agreement_rules_on_a_tiny_shop():
    """Deepest agreed node, out-of-scope majority, too few products, no agreement: the proposal's rules."""
    from pipelines.onboard.mapping_proposal import ProposalConfig, propose_mapping

    tops, tee, shoes = ("Clothing", "Tops", "Tops & Blouses"), ("Clothing", "Tops", "T-Shirts"), ("Footwear", "Shoes")
    rows = [(["Tees"], tee, False)] * 4 + [(["Tees"], tops, False)] + [(["Mix"], tee, False)] * 2 + \
        [(["Mix"], shoes, False)] * 2 + [(["Home"], tee, True)] * 3 + [(["Odd"], tee, False)] * 2
    products = pd.DataFrame({"native_path": [r[0] for r in rows], "title": [f"t{i}" for i in range(len(rows))],
                             "image_path": [None] * len(rows)})
    preds = pd.DataFrame({"full_path": [r[1] for r in rows], "conf_L1": 0.9, "conf_L2": 0.9, "conf_L3": 0.8,
                          "out_of_scope": [r[2] for r in rows]})
    prop = propose_mapping(products, preds, ProposalConfig()).set_index("native_path")
    assert prop.loc["Tees", "category_path"] == tee and prop.loc["Tees", "agreement"] == 0.8
    assert prop.loc["Tees", "confidence"] == pytest.approx(0.8 * 0.9 * 0.9 * 0.8, abs=1e-4)
    assert prop.loc["Mix", "category_path"] == () and prop.loc["Mix", "unmapped_reason"] == "no agreement"
    assert prop.loc["Home", "unmapped_reason"].startswith("out of scope")
    assert prop.loc["Odd", "unmapped_reason"] == "too few products"
    assert not prop.loc["Tees", "confident"]  # 5 products, agreement 0.8, but confidence 0.52 < 0.7


def test_onboard_a_feed_end_to_end_writes_predictions_proposal_and_report(env, tmp_path):
    """A Google Merchant TSV feed of a shop the models never saw: predictions with confidence, needs_review and
    out_of_scope, mapping.proposed.csv in the mapping table format, Markdown + HTML report with thumbnails;
    rows in = products + quarantined."""
    from pipelines.ingest.mapping import load_mapping
    from pipelines.onboard.run import onboard_shop

    if not FEED.exists():
        pytest.skip("sample feeds not present")
    out = tmp_path / "acme"
    summary = onboard_shop("acme", FEED, "google", out, env["settings"], classifier=env["classifier"],
                           detector=env["detector"], network=False)
    assert summary["rows_in"] == summary["products"] + summary["quarantined"] == 50
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert {"product_id", "category_path", "model_path", "conf_L1", "needs_review", "out_of_scope"} <= set(pred.columns)
    assert len(pred) == summary["products"] and pred["conf_L1"].between(0, 1).all()
    table = load_mapping(out / "mapping.proposed.csv", env["taxonomy"])  # loads as a mapping table as is
    assert table.rules and (out / "onboarding.md").read_text().startswith("# Onboarding acme")
    page = (out / "onboarding.html").read_text()
    assert "data:image/jpeg;base64," in page and "<script" not in page
    assert json.loads((out / "onboarding.json").read_text())["proposal"]["rows"] == len(table.rules)


def test_report_escapes_hostile_shop_text(env, flipkart_onboarded, tmp_path):
    from pipelines.onboard.report import write_onboarding_report

    products = flipkart_onboarded["export"].products.copy()
    predictions = flipkart_onboarded["predictions"].copy()
    products.loc[0, "title"] = predictions.loc[0, "title"] = "<script>alert(1)</script> | x"
    predictions.loc[0, "needs_review"] = True
    summary = {"shop": "x<b>", "feed": "f", "format": "csv", "rows_in": 1, "products": 1, "quarantined": 0,
               "proposal": {"with_path": 0, "confident": 0}}
    files = write_onboarding_report(tmp_path, summary, products, predictions, flipkart_onboarded["proposal"],
                                    flipkart_onboarded["export"].quarantine)
    page = files["report_html"].read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "x&lt;b&gt;" in page
    assert "\\| x" in files["report_md"].read_text()


def _proposal_file(flipkart_onboarded, tmp_path):
    from pipelines.onboard.mapping_proposal import write_mapping_proposal

    return write_mapping_proposal(flipkart_onboarded["proposal"], tmp_path)


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_accept_adopts_only_reviewed_rows_with_the_reviewers_edits(flipkart_onboarded, tmp_path):
    from pipelines.onboard.mapping_proposal import accept_mapping_proposal

    path = _proposal_file(flipkart_onboarded, tmp_path)
    rows = _rows(path)
    rows[0]["reviewed"] = "yes"
    rows[1]["reviewed"], rows[1]["category_path"], rows[1]["unmapped_reason"] = "x", "Accessories > Bags", ""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "mappings" / "flipkart.csv"
    res = accept_mapping_proposal(path, out)
    written = _rows(out)
    assert res["adopted"] == 2 and [r["native_path"] for r in written] == [rows[0]["native_path"],
                                                                            rows[1]["native_path"]]
    assert written[1]["category_path"] == "Accessories > Bags" and list(written[0]) == ["native_path", "category_path",
                                                                                        "unmapped_reason"]


def test_accept_by_confidence_takes_decided_rows_at_or_above_it(flipkart_onboarded, tmp_path):
    from pipelines.onboard.mapping_proposal import accept_mapping_proposal

    prop = flipkart_onboarded["proposal"]
    path = _proposal_file(flipkart_onboarded, tmp_path)
    out = tmp_path / "m.csv"
    res = accept_mapping_proposal(path, out, reviewed_only=False, min_confidence=0.6)
    decided = prop["category_path"].map(bool) | prop["unmapped_reason"].str.startswith("out of scope")
    expected = prop[decided & (prop["confidence"] >= 0.6)]
    assert 0 < res["adopted"] == len(expected) < len(prop)
    assert {r["native_path"] for r in _rows(out)} == set(expected["native_path"])
    assert not any(r["unmapped_reason"] in ("too few products", "no agreement") for r in _rows(out))


def test_accept_refuses_an_invalid_reviewed_row_and_keeps_the_old_table(flipkart_onboarded, tmp_path):
    from pipelines.onboard.mapping_proposal import ProposalError, accept_mapping_proposal

    path = _proposal_file(flipkart_onboarded, tmp_path)
    rows = _rows(path)
    rows[0]["reviewed"], rows[0]["category_path"], rows[0]["unmapped_reason"] = "yes", "Clothing > Spacesuits", ""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "m.csv"
    out.write_text("native_path,category_path,unmapped_reason\nClothing,Clothing,\n")
    with pytest.raises(ProposalError, match="Spacesuits"):
        accept_mapping_proposal(path, out)
    assert out.read_text() == "native_path,category_path,unmapped_reason\nClothing,Clothing,\n"


def test_label_free_path_refuses_a_labelled_frame_and_runs_without_labels(env):
    """Protocol: the held-out shop's products reach onboarding without category_path; a frame holding it is refused."""
    from pipelines.ingest.normalize import normalize_platform
    from pipelines.onboard.products import LabelLeak
    from pipelines.onboard.run import onboard_products

    labelled = normalize_platform("flipkart", SAMPLE_DIR / "flipkart", verify_images=False).products.head(40)
    with pytest.raises(LabelLeak, match="category_path"):
        onboard_products(labelled, env["classifier"], env["detector"], env["embed"])
    predictions, proposal = onboard_products(labelled.drop(columns=["category_path"]), env["classifier"],
                                             env["detector"], env["embed"])
    assert len(predictions) == 40 and len(proposal)


def test_measurement_reads_the_held_out_mapping_only_to_score(env, tmp_path, monkeypatch):
    """The held-out shop goes through onboarding without its mapping ever being opened; labels enter only in
    score_holdout."""
    import pipelines.ingest.mapping as mapping
    from pipelines.onboard.mapping_proposal import ProposalConfig
    from pipelines.onboard.measure import onboard_holdout, score_holdout
    from pipelines.onboard.products import LABEL_COLUMNS

    opened, real = [], mapping.load_mapping
    monkeypatch.setattr(mapping, "load_mapping", lambda path, taxonomy: opened.append(str(path)) or real(path, taxonomy))
    export, predictions, proposal = onboard_holdout("flipkart", env["settings"], env["classifier"], env["detector"],
                                                    env["embed"], tmp_path, ProposalConfig())
    assert opened == [] and not set(LABEL_COLUMNS) & set(export.products.columns)
    scores = score_holdout("flipkart", export, predictions, proposal, env["taxonomy"])
    assert opened == [str(MAPPINGS_DIR / "flipkart.csv")]
    assert 0 <= scores["mapping"]["correct"] <= 1 and scores["mapping"]["products"] > 500


def test_measure_onboarding_writes_targets_json_and_report_section(env, tmp_path):
    from pipelines.onboard.measure import measure_onboarding

    md = tmp_path / "report" / "benchmark.md"
    md.parent.mkdir()
    md.write_text("# Benchmark\n")
    report = measure_onboarding(env["settings"], tmp_path / "out", holdouts=["hm"], modalities=("lexical",),
                                google_taxonomy=google_subset(tmp_path), max_epochs=2, benchmark_md=md)
    cell = report["shops"]["hm"]
    assert cell["training_shops"] == ["myntra", "flipkart"] and set(cell["met"]) == {
        "mapping_correct", "confident_correct", "scope_auroc", "in_scope_flag_rate", "feed_roundtrip"}
    saved = json.loads((tmp_path / "out" / "onboarding.json").read_text())
    assert saved["shops"]["hm"]["mapping"]["products"] == cell["mapping"]["products"] > 400
    text = md.read_text()
    assert text.startswith("# Benchmark") and "<!-- onboarding:start -->" in text and "| hm |" in text
    assert (tmp_path / "out" / "hm" / "mapping.proposed.csv").exists()
    assert np.isfinite(cell["scope"]["in_scope_flag_rate"])
    # target 3: H&M's export as Google TSV / XML and Shopify CSV onboards to the same products and predictions
    rt = cell["roundtrip"]
    assert set(rt) == {"google-tsv", "google-xml", "shopify", "met"} and rt["met"] is True
    assert all(rt[f]["products"]["matched"] == cell["products"] for f in ("google-tsv", "google-xml", "shopify"))
    assert cell["met"]["feed_roundtrip"] is True and "Feed round trip" in text and "| hm | shopify |" in text


def test_roundtrip_sees_a_feed_that_changes_a_product(env, tmp_path):
    """The round-trip comparison is not vacuous: one title edited in the written Google TSV, one product dropped
    from the Shopify CSV - each is counted, and the shop's round trip is then not identical."""
    import csv

    from pipelines.onboard.products import read_feed_unlabelled, read_shop_unlabelled
    from pipelines.onboard.roundtrip import compare_products, export_shop_feeds

    native = read_shop_unlabelled("hm", SAMPLE_DIR / "hm", verify_images=False).products
    feeds, images = export_shop_feeds("hm", SAMPLE_DIR / "hm", tmp_path)
    lines = feeds["google-tsv"].read_text(encoding="utf-8").splitlines(keepends=True)
    cells = lines[1].split("\t")
    cells[1] = "Jupiter All-Weather Trainer"
    lines[1] = "\t".join(cells)
    feeds["google-tsv"].write_text("".join(lines), encoding="utf-8")
    tsv = compare_products(native, read_feed_unlabelled("hm", feeds["google-tsv"], verify_images=False).products,
                           images)
    assert tsv["matched"] == len(native) and tsv["equal"]["title"] == len(native) - 1

    with open(feeds["shopify"], newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    with open(feeds["shopify"], "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows[:1] + rows[2:])  # the first variant row gone
    shop = compare_products(native, read_feed_unlabelled("hm", feeds["shopify"], verify_images=False).products, images)
    assert shop["feed"] == shop["matched"] == len(native) - 1


def _write_feed(path, rows):
    header = "id\ttitle\tdescription\timage_link\tbrand\tproduct_type\n"
    path.write_text(header + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_bad_rows_are_quarantined_with_their_reason_and_counted(env, tmp_path):
    from pipelines.onboard.run import onboard_shop

    feed = _write_feed(tmp_path / "feed.tsv", [
        ("1", "Blue denim jeans", "slim fit", "", "Acme", "Women > Jeans"),
        ("2", "", "no title", "", "Acme", "Women > Jeans"),
        ("1", "Blue denim jeans again", "", "", "Acme", "Women > Jeans"),
        ("3", "Ceramic coffee mug", "350 ml", "https://img.invalid/3.jpg", "Acme", "Kitchen > Mugs")])
    out = tmp_path / "out"
    summary = onboard_shop("acme", feed, "google-tsv", out, env["settings"], classifier=env["classifier"],
                           detector=env["detector"], network=False)
    assert (summary["rows_in"], summary["products"], summary["quarantined"]) == (4, 2, 2)
    q = pd.read_csv(out / "quarantine.csv")
    assert sorted(q["reason_kind"]) == ["duplicate id (first seen on line 2)", "empty title"]


def test_a_feed_without_usable_rows_says_why_and_leaves_the_quarantine(env, tmp_path):
    from pipelines.onboard.products import NoUsableRows
    from pipelines.onboard.run import onboard_shop

    feed = _write_feed(tmp_path / "feed.tsv", [("1", "", "", "", "", "A"), ("2", " ", "", "", "", "B")])
    with pytest.raises(NoUsableRows, match="all 2 rows were quarantined"):
        onboard_shop("acme", feed, None, tmp_path / "out", env["settings"], classifier=env["classifier"],
                     detector=env["detector"], network=False)
    assert len(pd.read_csv(tmp_path / "out" / "quarantine.csv")) == 2


def test_an_unknown_feed_format_is_a_clear_error(env, tmp_path):
    from pipelines.ingest.shops import BadExport
    from pipelines.onboard.run import onboard_shop

    feed = tmp_path / "feed.txt"
    feed.write_text("sku;name\n1;shirt\n")
    with pytest.raises(BadExport, match="cannot tell the feed format"):
        onboard_shop("acme", feed, None, tmp_path / "out", env["settings"], classifier=env["classifier"],
                     detector=env["detector"], network=False)
    with pytest.raises(BadExport, match="unknown feed format 'csv-ish'"):
        onboard_shop("acme", feed, "csv-ish", tmp_path / "out", env["settings"], classifier=env["classifier"],
                     detector=env["detector"], network=False)


def test_onboard_with_the_two_stage_champion_routes_and_flags(two_stage_models, env, tmp_path):
    """The production path: the feed classified by TwoStage (stage 1, then the stage-2 model for the unsure ones),
    the detector trained on the registered sample shops (the default when none is given)."""
    from pipelines.onboard.run import onboard_shop

    if not FEED.exists():
        pytest.skip("sample feeds not present")
    out = tmp_path / "acme"
    summary = onboard_shop("acme", FEED, None, out, two_stage_models["settings"],
                           model_dir=two_stage_models["stage2_dir"], network=False,
                           google_taxonomy=google_subset(tmp_path), training_shops=["myntra", "flipkart"])
    assert summary["classifier"]["mode"] == "routed" and summary["products"] == 50
    pred = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert set(pred["stage"]) <= {1, 2} and pred["model_path"].str.len().gt(0).all()
    assert (pred.loc[pred["out_of_scope"], "category_path"] == "").all()
    assert summary["out_of_scope"] <= 5  # H&M fashion: the detector leaves it in scope


def test_predictions_carry_the_models_runners_up_for_the_reviewer(env, flipkart_onboarded):
    """Each prediction lists the two next-best valid taxonomy paths (what the review page offers besides the
    prediction): never the predicted path, each a real node path, in descending probability."""
    from pipelines.taxonomy.tree import parse_path

    p = flipkart_onboarded["predictions"]
    assert (p["alt1_path"] != "").all() and (p["alt2_path"] != "").all()
    assert (p["alt1_path"] != p["model_path"]).all() and (p["alt2_path"] != p["alt1_path"]).all()
    assert (p["alt1_score"] >= p["alt2_score"]).all() and p["alt1_score"].between(0, 1).all()
    leaves = {tuple(x) for x in env["classifier"].stage.model.hierarchy.leaves}
    assert all(parse_path(a) in leaves for a in p["alt1_path"]) and all(parse_path(a) in leaves for a in p["alt2_path"])
