"""The review loop (issue 20) without a browser: the append-only decision store and its validation, the three queues
built from a real onboarding of the sample's H&M feed (real two-stage models), labels applied to the sample
catalogue, mapping acceptance, the Label Studio round trip on a file, and the page's escaping and token cookie."""
import json
import os
import shutil

import pandas as pd
import pytest

from pipelines.settings import MAPPINGS_DIR

from review_fixtures import FEED, onboarded_hm


@pytest.fixture(scope="module")
def taxonomy():
    from pipelines.taxonomy.tree import load_taxonomy

    return load_taxonomy()


@pytest.fixture
def store(tmp_path, taxonomy):
    from pipelines.review.store import DecisionStore, default_review_db

    s = DecisionStore(default_review_db(tmp_path / "work"), taxonomy)
    yield s
    s.close()


@pytest.fixture(scope="module")
def source_dir(two_stage_models, tmp_path_factory):
    return onboarded_hm(two_stage_models, tmp_path_factory)


@pytest.fixture(scope="module")
def source(source_dir):
    from pipelines.review.queues import load_review_source

    return load_review_source(source_dir)


def test_store_is_append_only_and_latest_is_a_query(store, tmp_path):
    from sqlalchemy import text
    from sqlalchemy.exc import DatabaseError

    from pipelines.review.store import DecisionStore

    first = store.record("needs_review", "hm", "1", "accept", "Clothing > Tops", reviewer="ana")
    store.record("needs_review", "hm", "1", "correct", "Clothing > Dresses & Jumpsuits", reviewer="bo")  # bo disagrees
    store.record("needs_review", "hm", "2", "skip", reviewer="ana")
    assert len(store.decisions()) == 3  # both answers on product 1 stay visible
    latest = store.latest().set_index("item_id")
    assert latest.loc["1", "decision"] == "correct" and latest.loc["1", "reviewer"] == "bo"
    assert set(store.latest(include_skips=False)["item_id"]) == {"1"}
    assert str(store.latest().loc[0, "decided_at"])[:4] >= "2026"
    for statement in ("UPDATE review_decisions SET path = 'x'", f"DELETE FROM review_decisions WHERE id = {first}"):
        with pytest.raises(DatabaseError, match="append-only"):
            with store.engine.begin() as conn:
                conn.execute(text(statement))
    assert not hasattr(store, "update") and not hasattr(store, "delete")
    again = DecisionStore(store.url, store.taxonomy)  # any SQLAlchemy URL; a second client sees the same table
    assert again.decisions()["path"].tolist() == ["Clothing > Tops", "Clothing > Dresses & Jumpsuits", ""]
    again.close()


@pytest.mark.parametrize("args, error, needle", [
    (("needs_review", "maybe", "Clothing"), "UnknownDecision", "unknown decision 'maybe'"),
    (("needs_review", "correct", "Clothing > Spaceships"), "PathNotInTaxonomy", "is not a path of taxonomy"),
    (("needs_review", "accept", ""), "PathNotInTaxonomy", "needs a taxonomy path"),
    (("needs_review", "skip", "Clothing"), "PathNotInTaxonomy", "takes no path"),
    (("backlog", "accept", "Clothing"), "UnknownQueue", "unknown queue 'backlog'"),
])
def test_store_refuses_bad_decisions_with_named_errors(store, args, error, needle):
    from pipelines.review import store as store_module

    queue, decision, path = args
    with pytest.raises(getattr(store_module, error), match=needle):
        store.record(queue, "hm", "1", decision, path, reviewer="ana")
    with pytest.raises(store_module.MissingReviewer, match="reviewer's name"):
        store.record("needs_review", "hm", "1", "accept", "Clothing", reviewer="   ")
    assert store.decisions().empty  # nothing half-written


def test_label_first_is_uncertain_diverse_and_in_scope(source_dir):
    from pipelines.review.queues import read_output_csv
    from pipelines.taxonomy.tree import parse_path, path_str

    picks = read_output_csv(source_dir / "label_first.csv")
    pred = read_output_csv(source_dir / "predictions.csv").set_index("product_id")
    products = pd.read_parquet(source_dir / "products.parquet").set_index("product_id")
    assert len(picks) >= 10
    assert picks["group_id"].is_unique  # at most one product per group
    assert not pred.loc[picks["product_id"], "out_of_scope"].eq("True").any()
    assert (products.loc[picks["product_id"], "group_id"].to_numpy() == picks["group_id"].to_numpy()).all()
    nodes = [path_str(parse_path(p)[:2]) for p in pred.loc[picks["product_id"], "model_path"]]
    n_nodes = len(set(nodes))
    assert len(set(nodes[:n_nodes])) == n_nodes  # round-robin: every node once before any twice
    unc = picks["uncertainty"].astype(float).to_numpy()
    first_of_node = {n: u for n, u in zip(reversed(nodes[:n_nodes]), reversed(unc[:n_nodes]))}
    for node, u in zip(nodes, unc):  # within a node, most uncertain first
        assert u <= first_of_node[node] + 1e-9


def test_queues_from_a_real_onboarding(source, source_dir, store):
    from pipelines.review.queues import queue_progress, read_output_csv

    pred = read_output_csv(source_dir / "predictions.csv")
    flagged = pred[(pred["needs_review"] == "True") | (pred["out_of_scope"] == "True")]
    assert source.shop == "hm" and source.model_version
    queues = source.queues
    assert [i.item_id for i in queues["needs_review"].items] == flagged["product_id"].tolist()
    assert len(queues["label_first"].items) == len(read_output_csv(source_dir / "label_first.csv"))
    assert len(queues["mappings"].items) == len(read_output_csv(source_dir / "mapping.proposed.csv")) > 0
    item = queues["label_first"].items[0]
    feed = pd.read_csv(FEED, sep="\t", dtype=str, keep_default_na=False).set_index("id")
    assert item.title == feed.loc[item.item_id, "title"] and item.description == feed.loc[item.item_id, "description"]
    assert item.image is not None and item.image.is_file() and item.image.is_absolute()
    assert item.predicted_path and [c for _, c in item.confidences if c is not None]
    store.record("label_first", "hm", item.item_id, "accept", item.predicted_path, reviewer="ana")
    store.record("label_first", "hm", queues["label_first"].items[1].item_id, "skip", reviewer="ana")
    progress = queue_progress(queues["label_first"], store.latest())
    assert progress == {"decided": 1, "total": len(queues["label_first"].items)}  # a skip is not a decision


def test_images_only_from_the_queues_own_folders(source, tmp_path):
    queue = source.queues["label_first"]
    item = next(i for i in queue.items if i.image is not None)
    assert queue.image_file(item.image_name) == item.image.resolve()
    (tmp_path / "secret.jpg").write_bytes(b"x")
    for name in ("../secret.jpg", str(tmp_path / "secret.jpg"), "secret.jpg", "..", ".hidden.jpg", "a/b.jpg", ""):
        assert queue.image_file(name) is None, name


def _catalogue(sample_work):
    from pipelines.ingest.catalogue import read_products

    return read_products(sample_work["work"] / "assets" / "catalogue" / "all.parquet")


def test_reviewed_labels_replace_catalogue_labels(store, sample_work, taxonomy):
    from pipelines.review.labels import apply_reviewed_labels, reviewed_labels

    cat = _catalogue(sample_work)
    hm = cat[cat["platform"] == "hm"].head(5)
    ids = hm["product_id"].tolist()
    old = {p: list(c) for p, c in zip(hm["product_id"], hm["category_path"])}
    other = next(" > ".join(leaf) for leaf in taxonomy.leaves() if list(leaf) != old[ids[0]])
    store.record("needs_review", "hm", ids[0], "accept", " > ".join(old[ids[0]]), reviewer="ana")
    store.record("label_first", "hm", ids[0], "correct", other, reviewer="bo")  # later, other queue: wins
    store.record("needs_review", "hm", ids[1], "out_of_scope", reviewer="ana")
    store.record("needs_review", "hm", ids[2], "correct", other, reviewer="ana")
    store.record("needs_review", "hm", ids[2], "skip", reviewer="bo")  # a skip does not undo the correction
    store.record("needs_review", "hm", "not-a-product", "accept", other, reviewer="ana")
    store.record("mappings", "hm", "Ladieswear > Dresses", "accept", other, reviewer="ana")  # not a product label
    reviewed = reviewed_labels(store.decisions())
    assert reviewed.columns.tolist() == ["platform", "product_id", "category_path", "out_of_scope", "reviewer",
                                         "model_version"]
    assert sorted(reviewed["product_id"]) == sorted([ids[0], ids[1], ids[2], "not-a-product"])
    result = apply_reviewed_labels(cat, reviewed)
    labels = result.products.set_index("uid")["category_path"]
    assert labels[f"hm:{ids[0]}"] == other.split(" > ") and labels[f"hm:{ids[2]}"] == other.split(" > ")
    assert labels[f"hm:{ids[3]}"] == old[ids[3]]  # untouched
    assert f"hm:{ids[1]}" not in labels.index and len(result.products) == len(cat) - 1
    assert result.unmapped["uid"].tolist() == [f"hm:{ids[1]}"]
    assert result.unmapped["reason"].iloc[0] == "unmapped: out of scope: reviewed"
    assert (result.relabelled, result.not_in_catalogue) == (2, 1)


def test_accepted_mappings_become_the_shops_mapping_table(store, tmp_path, taxonomy):
    from pipelines.ingest.mapping import load_mapping
    from pipelines.review.mapping_decisions import write_reviewed_mapping

    table = tmp_path / "hm.csv"
    shutil.copy(MAPPINGS_DIR / "hm.csv", table)
    before = pd.read_csv(table)
    store.record("mappings", "hm", "Ladieswear > Hoodies Special", "accept", "Clothing > Tops", reviewer="ana")
    store.record("mappings", "hm", "Home > Candles", "out_of_scope", reviewer="ana")
    store.record("mappings", "hm", "Menswear > Capes", "skip", reviewer="ana")
    store.record("mappings", "myntra", "Other > Thing", "accept", "Clothing", reviewer="ana")  # another shop
    summary = write_reviewed_mapping(store.decisions(), "hm", table, taxonomy)
    assert summary["adopted"] == 2
    rules = load_mapping(table, taxonomy)  # a valid mapping table
    assert rules.lookup(("Ladieswear", "Hoodies Special")).category_path == ("Clothing", "Tops")
    assert rules.lookup(("Home", "Candles")).unmapped_reason == "out of scope: reviewed"
    after = pd.read_csv(table)
    assert len(after) == len(before) + 2 and "Other > Thing" not in after["native_path"].tolist()


def test_label_studio_round_trip_on_a_file(source, store, tmp_path, taxonomy):
    from pipelines.review.label_studio import import_label_studio, label_studio_config, label_studio_tasks

    queue = source.queues["label_first"]
    tasks = label_studio_tasks(queue, source.model_version)
    exported = tmp_path / "tasks.json"
    exported.write_text(json.dumps(tasks))
    assert "<Taxonomy" in label_studio_config(taxonomy)
    tasks = json.loads(exported.read_text())
    first = tasks[0]
    assert first["data"]["title"] == queue.items[0].title and first["data"]["item_id"] == queue.items[0].item_id
    pred = first["predictions"][0]
    assert pred["result"][0]["value"]["taxonomy"] == [queue.items[0].predicted_path.split(" > ")]
    assert 0 <= pred["score"] <= 1
    other = next(list(leaf) for leaf in taxonomy.leaves() if " > ".join(leaf) != tasks[1]["data"]["predicted_path"])
    answers = [pred["result"], [{"type": "taxonomy", "value": {"taxonomy": [other]}}],
               [{"type": "choices", "from_name": "scope", "value": {"choices": ["out_of_scope"]}}]]
    for task, result in zip(tasks, answers):  # what Label Studio's JSON export holds once annotated
        task["annotations"] = [{"id": 1, "completed_by": {"email": "lena@example.com"}, "result": result,
                                "updated_at": "2026-12-01T10:00:00Z"}]
    tasks[3]["annotations"] = [{"id": 2, "was_cancelled": True, "result": [], "completed_by": 5}]
    annotated = tmp_path / "export.json"
    annotated.write_text(json.dumps(tasks[:4]))
    assert import_label_studio(annotated, store, "ls-model") == 4
    got = store.decisions()
    assert got["decision"].tolist() == ["accept", "correct", "out_of_scope", "skip"]
    assert got["path"].tolist()[:3] == [queue.items[0].predicted_path, " > ".join(other), ""]
    assert got["reviewer"].tolist() == ["lena@example.com"] * 3 + ["label-studio:5"]
    assert set(got["queue"]) == {"label_first"} and set(got["model_version"]) == {"ls-model"}


def test_label_studio_import_lists_every_bad_task(store, tmp_path):
    from pipelines.review.label_studio import LabelStudioImportError, import_label_studio

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([
        {"id": 7, "data": {"queue": "label_first", "shop": "hm", "item_id": "1"}, "annotations": [
            {"result": [{"type": "taxonomy", "value": {"taxonomy": [["Clothing", "Spaceships"]]}}]}]},
        {"id": 8, "data": {"title": "no ids"}, "annotations": []},
        {"id": 9, "data": {"queue": "label_first", "shop": "hm", "item_id": "2"}},
        "not a task",
        {"id": 10, "data": {"queue": "label_first", "shop": "hm", "item_id": "3"}, "annotations": [
            {"result": [{"type": "taxonomy", "value": {"taxonomy": [["Clothing"], ["Footwear"]]}}]}]},
        {"id": 11, "data": {"queue": "label_first", "shop": "hm", "item_id": "4"}, "annotations": [
            {"result": [{"type": "taxonomy", "value": {"taxonomy": [["Clothing"]]}}]}]},
    ]))
    with pytest.raises(LabelStudioImportError) as err:
        import_label_studio(bad, store)
    message = str(err.value)
    for needle in ("5 of 6 tasks", "id 7): 'Clothing > Spaceships' is not a path", "id 8): data lacks",
                   "id 9): no annotation", "#3 (id ?): not a task", "id 10): 2 taxonomy paths"):
        assert needle in message, message
    assert store.decisions().empty  # all or nothing
    bad.write_text("{not json")
    with pytest.raises(LabelStudioImportError, match="not a Label Studio JSON export"):
        import_label_studio(bad, store)


def test_page_escapes_hostile_feed_text(source):
    from dataclasses import replace

    from pipelines.review.page import item_html
    from pipelines.review.queues import ReviewQueue

    hostile = '</script><script>alert(1)</script><img src=x onerror=alert(2)>'
    item = replace(source.queues["label_first"].items[0], title=hostile, description=hostile, predicted_path=hostile)
    queue = ReviewQueue("label_first", [item])
    html = item_html(source, queue, 0, {"decided": 0, "total": 1}, pd.DataFrame(columns=["decided_at"]),
                     hostile, [hostile])
    assert "<script>alert" not in html and "<img src=x" not in html and html.count("</script>") == 2
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in html


def test_review_routes_need_the_token_and_a_reviewer(source_dir, tmp_path, taxonomy):
    """Beyond loopback the service's token guards /review too; a browser signs in once (cookie)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from pipelines.inference.guards import BearerAuth, BodyBudget, RequestRefused, ServiceLimits
    from pipelines.inference.review_routes import ReviewApp, add_review_routes
    from pipelines.inference.service import _refused
    from pipelines.review.store import default_review_db

    token = "t" * 24
    app = FastAPI()
    app.add_middleware(BearerAuth, token=token)
    app.add_exception_handler(RequestRefused, _refused)
    review = ReviewApp.open(source_dir, default_review_db(tmp_path / "work"), taxonomy)
    add_review_routes(app, review, token)
    app.state.limits, app.state.bodies = ServiceLimits(), BodyBudget(ServiceLimits().max_body_bytes_in_flight)
    client = TestClient(app, base_url="https://testserver")
    assert client.get("/review").status_code == 401
    assert client.post("/review/login", data={"token": "wrong" * 5}).status_code == 401
    assert client.get("/review", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.post("/review/login", data={"token": token}, follow_redirects=False).status_code == 303
    page = client.get("/review")  # the cookie now
    assert page.status_code == 200 and "Products to label first" in page.text and "0 / " in page.text
    item = review.source.queues["label_first"].items[0]
    r = client.post("/review/label_first/decision", json={"item_id": item.item_id, "decision": "accept"})
    assert r.status_code == 422 and "reviewer" in r.json()["detail"]
    r = client.post("/review/label_first/decision", json={"item_id": item.item_id, "decision": "accept",
                                                          "reviewer": "ana"})
    assert r.status_code == 200 and r.json()["next"] == 1
    assert client.get("/review/nope").status_code == 404
    assert client.get("/review/label_first/image/..%2F..%2Fpredictions.csv").status_code == 404
    assert "Footwear > Shoes" in client.get("/review/taxonomy", params={"q": "shoe"}).json()["nodes"]


def test_accuracy_on_reviewed_items_per_model_version(store):
    from pipelines.review.labels import review_accuracy_by_version

    answers_by_version = {"v1": ["accept", "correct", "correct"], "v2": ["accept", "accept", "out_of_scope"]}
    for version, answers in answers_by_version.items():
        for i, decision in enumerate(answers):
            path = "Clothing > Tops" if decision in ("accept", "correct") else ""
            store.record("needs_review", "hm", str(i), decision, path, model_version=version, reviewer="ana")
    store.record("needs_review", "hm", "0", "skip", model_version="v2", reviewer="bo")  # not an answer
    table = review_accuracy_by_version(store.decisions()).set_index("model_version")
    assert table.loc["v1", ["reviewed", "accepted", "corrected"]].tolist() == [3, 1, 2]
    assert table.loc["v1", "accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    assert table.loc["v2", "accuracy"] == 1.0 and table.loc["v2", "out_of_scope"] == 1
    # the benchmark report's review section follows the same figures from version to version
    from pipelines.review.report import review_section

    section = review_section(store.decisions())
    assert "| v1 | 3 | 1 | 2 | 0 | 33.33 |" in section and "| v2 | 3 | 2 | 0 | 1 | 100.00 |" in section
    assert "No product reviewed yet" in review_section(store.decisions().iloc[:0])


def test_reading_a_missing_decision_table_creates_nothing(tmp_path, taxonomy):
    from pipelines.review.store import read_decisions

    assert read_decisions(f"sqlite:///{tmp_path / 'review' / 'decisions.db'}", taxonomy).empty
    assert not (tmp_path / "review").exists()


def test_cli_review_export_import_and_mappings(source_dir, tmp_path):
    import subprocess
    import sys

    from pipelines.settings import ROOT

    env = {**os.environ, "PRODCAT_WORK": str(tmp_path / "work")}
    db = f"sqlite:///{tmp_path / 'decisions.db'}"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "orchestration.cli", "review", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)

    tasks_file = tmp_path / "tasks.json"
    done = cli("export", "--source", str(source_dir), "--queue", "mappings", "--out", str(tasks_file))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tasks.config.xml").read_text().startswith("<View>")
    tasks = json.loads(tasks_file.read_text())
    decided = [t for t in tasks if t["data"]["predicted_path"]][:2]
    for task in decided:
        task["annotations"] = [{"completed_by": {"email": "lena@example.com"},
                                "result": task["predictions"][0]["result"]}]
    (tmp_path / "export.json").write_text(json.dumps(decided))
    done = cli("import", str(tmp_path / "export.json"), "--db", db)
    assert done.returncode == 0 and "recorded 2 decisions" in done.stdout, done.stderr
    table = tmp_path / "hm.csv"
    done = cli("mappings", "--shop", "hm", "--out", str(table), "--db", db)
    assert done.returncode == 0, done.stderr
    rules = pd.read_csv(table)
    assert sorted(rules["native_path"]) == sorted(t["data"]["item_id"] for t in decided)
    (tmp_path / "bad.json").write_text(json.dumps([{"data": {}}]))
    done = cli("import", str(tmp_path / "bad.json"), "--db", db)
    assert done.returncode == 2 and "1 of 1 tasks cannot be imported" in done.stderr and "Traceback" not in done.stderr


def test_queue_from_a_classify_output_joined_to_its_export(two_stage_models, tmp_path):
    """`prodcat classify` writes no texts: the needs_review queue joins its predictions to the raw export."""
    from pipelines.inference.export import classify_export
    from pipelines.review.queues import ReviewSourceError, load_review_source, read_output_csv
    from pipelines.settings import SAMPLE_DIR

    out = tmp_path / "classify" / "predictions.csv"
    classify_export("hm", SAMPLE_DIR / "hm", out, two_stage_models["settings"], mode="stage1", progress=False)
    pred = read_output_csv(out)
    flagged = pred[pred["needs_review"] == "True"]
    with pytest.raises(ReviewSourceError, match="no products.parquet"):
        load_review_source(out)
    source = load_review_source(out, export=("hm", SAMPLE_DIR / "hm"))
    queue = source.queues["needs_review"]
    assert source.shop == "hm" and [i.item_id for i in queue.items] == flagged["product_id"].tolist()
    assert len(queue.items) > 0 and all(i.title for i in queue.items)
    assert sum(i.image is not None for i in queue.items) > len(queue.items) / 2
    item = next(i for i in queue.items if i.image is not None)
    assert queue.image_file(item.image_name) == item.image.resolve()
    assert not source.queues["label_first"].items and not source.queues["mappings"].items
